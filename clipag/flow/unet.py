"""A small convolutional U-Net as CrossFlow's velocity network (`net="unet"`).

The text enters through z0 (no cross-attention, as CrossFlow has it) and, with an optional
condition vector (the VE's mean), through the time embedding; what changes against the
transformer is the prior of the network that transports z0 to the image. The plain transformer
over 2x2 pixel patches has to learn locality from data and, at the sizes this CPU trains,
drew scattered specks instead of one object (docs/experiments.md, rows I20-I25). Convolutions
make a coherent blob the easy thing to draw. Time and the CFG indicator modulate every
residual block (FiLM: a scale and a shift per channel); self-attention runs at the coarsest
level (side 4), where every position sees every other.

Levels halve the side from R down to 4: channels width, 2 width, 2 width, ...; `depth`
residual blocks per level on the way down and on the way up.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1], (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = (t.float() * 1000)[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def condition_mlp(inputs: int, emb: int) -> nn.Sequential:
    """A condition vector (B, inputs) -> an addition to the time embedding (B, emb); its last
    layer starts at zero, so a conditioned net starts as the plain one."""
    mlp = nn.Sequential(nn.Linear(inputs, emb), nn.SiLU(), nn.Linear(emb, emb))
    nn.init.zeros_(mlp[2].weight)
    nn.init.zeros_(mlp[2].bias)
    return mlp


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class Attention(nn.Module):
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def level_channels(resolution: int, width: int) -> list[int]:
    """Channels per level, from side `resolution` (a power of two >= 4) down to side 4."""
    levels = int(math.log2(resolution // 4)) + 1
    return [width] + [2 * width] * (levels - 1)


class UNetVelocity(nn.Module):
    """(x_t (B, 3, R, R), t (B,), indicator (B,) in {0, 1}[, cond (B, ...)]) -> velocity
    (B, 3, R, R)."""

    def __init__(self, resolution: int, width: int, depth: int, heads: int, cond_dim: int = 0):
        super().__init__()
        emb = 4 * width
        self.width = width
        self.time = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.indicator = nn.Embedding(2, emb)
        self.condition = condition_mlp(cond_dim, emb) if cond_dim else None
        chans = level_channels(resolution, width)
        self.inp = nn.Conv2d(3, width, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [width], width
        for i, ch in enumerate(chans):
            for _ in range(depth):
                self.down.append(ResBlock(c, ch, emb))
                c = ch
                skips.append(c)
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1, self.mid_attn, self.mid2 = ResBlock(c, c, emb), Attention(c, heads), ResBlock(c, c, emb)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, ch in reversed(list(enumerate(chans))):
            for _ in range(depth + 1):
                self.up.append(ResBlock(c + skips.pop(), ch, emb))
                c = ch
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.depth, self.levels = depth, len(chans)
        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, indicator: torch.Tensor,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.width)) + self.indicator(indicator.long())
        if self.condition is not None:
            emb = emb + self.condition(cond.flatten(1))
        h = self.inp(x)
        skips, blocks, downs = [h], iter(self.down), iter(self.downsample)
        for level in range(self.levels):
            for _ in range(self.depth):
                h = next(blocks)(h, emb)
                skips.append(h)
            if level < self.levels - 1:
                h = next(downs)(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        blocks, ups = iter(self.up), iter(self.upsample)
        for level in reversed(range(self.levels)):
            for _ in range(self.depth + 1):
                h = next(blocks)(torch.cat([h, skips.pop()], dim=1), emb)
            if level > 0:
                h = next(ups)(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))
