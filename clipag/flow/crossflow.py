"""CrossFlow (Liu et al., CVPR 2025, arXiv 2412.15213) as a learned initializer: a flow that
starts from the text's own distribution instead of Gaussian noise.

- A Variational Encoder maps a CLIP text embedding to a Gaussian over latents with the image's
  shape (3, R, R); z0 is a sample of it. By default it is trained as the official code does:
  the regulariser -0.5 * sum(1 + logvar - (0.3 mu)^6 - exp(logvar)) summed over the latent
  (weight 1e-2: the variance is held near 1, the mean left almost free, so z0 keeps a real
  spread) and a contrastive term (weight 1) between z0 itself and the target image mapped to
  the latent's size. The earlier objective (standard KL averaged per element, weight 1e-3;
  contrast between 64-d projections, weight 0.1) collapsed the VE's spread to ~0.02 and is
  kept as `regulariser="standard"`, `contrast="projection"`; files written before these
  fields existed load as that. The VE reads the pooled, unit-norm CLIP text embedding the
  guide already computes (`text_input="pooled"`), or, as the paper does, the text tower's
  token sequence (`"tokens"`: its last hidden states, where a word the pooled vector blurs is
  still distinct) through a small transformer.
- Flow matching learns the straight path from z0 to the image x1 in [-1, 1]:
  x_t = (1 - (1 - sigma_min) t) z0 + t x1, velocity target x1 - (1 - sigma_min) z0, with no
  cross-attention: the text enters only through z0 (`condition="none"`, the paper's), or
  also through the VE's mean added to the velocity network's time embedding
  (`condition="mean"`: the net knows the text at every t, not only from what is left of z0
  in x_t; the noise of z0 stays hidden from it). The velocity network is a plain
  transformer over pixel patches (`net="transformer"`, the paper's) or a small convolutional
  U-Net (`net="unet"`, flow/unet.py). Training keeps an exponential moving average of the
  weights; the file stores it and sampling uses it.
- Classifier-free guidance through a binary indicator: with probability `uncond` a training
  pair gets indicator 0 and a random image of the batch as its target, so the indicator-0
  flow maps text latents to the image distribution at large; sampling mixes
  v = v0 + w (v1 - v0).

At R = 16 or 32 the flow works on pixels directly; no VAE is needed.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import (check_compatible, file_problem, header_shapes, load_state_dict,
                          read_meta, save_checkpoint, what_else)
from ..errors import ClipagError
from ..load import ModelSpec, load_spec
from ..models import Guide
from ..prompts import WeightedPrompt
from .unet import UNetVelocity, condition_mlp, timestep_embedding


CONTRASTS = ("latent", "projection")
NETS = ("transformer", "unet")
TEXT_INPUTS = ("pooled", "tokens")
REGULARISERS = ("official", "standard")
TIME_SAMPLINGS = ("uniform", "square")
# what the velocity network reads besides x_t: "none" (CrossFlow's: the text only through
# z0) or "mean" (also the VE's mean, the text's part of z0, never its noise)
CONDITIONS = ("none", "mean")
# what a field meant in files written before it existed: load them as they were trained
LEGACY_CONFIG = {"contrast": "projection"}


@dataclass(frozen=True)
class FlowConfig:
    """The architecture (stored in the checkpoint)."""

    text_dim: int
    resolution: int = 16
    patch: int = 2
    width: int = 192
    depth: int = 4
    heads: int = 4
    ve_hidden: int = 512
    embed_dim: int = 64  # the contrastive space with contrast="projection"
    # "latent": z0 itself against the image mapped to the latent's size (official);
    # "projection": both projected to embed_dim (the first clipag flows)
    contrast: str = "latent"
    # the velocity network: "transformer" (a plain one over pixel patches, as the paper) or
    # "unet" (convolutions; width = base channels, depth = residual blocks per level)
    net: str = "transformer"
    # what the VE reads: "pooled" (text_dim = the embedding's size) or "tokens" (text_dim =
    # the text tower's width, text_len = its context length)
    text_input: str = "pooled"
    text_len: int = 0
    # "mean": the velocity network also reads the VE's mean (flattened) through an MLP added
    # to its time embedding, zero for indicator-0 pairs. Given the noise of z0 too it could
    # solve x1 from x_t exactly and learn nothing; the mean carries only the text
    condition: str = "none"

    def validate(self) -> None:
        if self.text_input not in TEXT_INPUTS:
            raise ClipagError(f"unknown text input {self.text_input!r}: "
                              f"{' or '.join(TEXT_INPUTS)}")
        if self.text_input == "tokens" and self.text_len < 1:
            raise ClipagError("a token-sequence VE needs the text tower's context length")
        if self.condition not in CONDITIONS:
            raise ClipagError(f"unknown velocity condition {self.condition!r}: "
                              f"{' or '.join(CONDITIONS)}")
        if self.net not in NETS:
            raise ClipagError(f"unknown velocity network {self.net!r}: {' or '.join(NETS)}")
        if self.contrast not in CONTRASTS:
            raise ClipagError(f"unknown contrast {self.contrast!r}: {' or '.join(CONTRASTS)}")
        if self.resolution < 4 or self.resolution % self.patch:
            raise ClipagError(f"--resolution {self.resolution} must be >= 4 and a multiple of "
                              f"the patch size {self.patch}")
        if self.net == "unet" and (self.resolution < 4 or self.resolution & (self.resolution - 1)):
            raise ClipagError(f"--resolution {self.resolution}: the U-Net needs a power of two "
                              ">= 4 (it halves the side down to 4)")
        if self.width % self.heads:
            raise ClipagError(f"width {self.width} is not divisible by {self.heads} heads")

    @property
    def latent_numel(self) -> int:
        return 3 * self.resolution * self.resolution

    @property
    def condition_dim(self) -> int:
        """Size of the vector the velocity network reads besides x_t (0: none)."""
        return self.latent_numel if self.condition == "mean" else 0


# the range of each whole-number field of a FlowConfig a file may hold (its string fields
# are checked by `FlowConfig.validate` against their choices): a flow file's config is
# checked field by field against these, like a flag, before anything is built
FLOW_FIELD_RANGES = {
    "text_dim": (1, 65536), "resolution": (4, 1024), "patch": (1, 256), "width": (1, 8192),
    "depth": (1, 256), "heads": (1, 1024), "ve_hidden": (1, 65536), "embed_dim": (1, 65536),
    "text_len": (0, 4096)}
# the choices of each of its string fields
FLOW_FIELD_CHOICES = {"contrast": CONTRASTS, "net": NETS, "text_input": TEXT_INPUTS,
                      "condition": CONDITIONS}


def flow_config_from(raw: Any, source: str) -> FlowConfig:
    """The FlowConfig a file's metadata records, each field checked (type, range, choice);
    a ClipagError naming `source` and the field otherwise."""
    if not isinstance(raw, dict):
        raise ClipagError(f"{source}: its CrossFlow config (metadata field 'flow') must be a JSON "
                          f"object, got {json.dumps(raw)[:60]}")
    raw = {**LEGACY_CONFIG, **raw}
    known = {f.name: f for f in fields(FlowConfig)}
    for name, value in raw.items():
        if name not in known:
            raise ClipagError(f"{source}: its CrossFlow config has an unknown field {name!r}")
        if name in FLOW_FIELD_RANGES:
            low, high = FLOW_FIELD_RANGES[name]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ClipagError(f"{source}: CrossFlow config field {name!r} must be a whole "
                                  f"number in {low}..{high}, got {json.dumps(value)[:60]}")
        elif name in FLOW_FIELD_CHOICES and value not in FLOW_FIELD_CHOICES[name]:
            raise ClipagError(f"{source}: CrossFlow config field {name!r} must be "
                              f"{' or '.join(FLOW_FIELD_CHOICES[name])}, got "
                              f"{json.dumps(value)[:60]}")
    missing = [name for name, f in known.items()
               if name not in raw and f.default is MISSING]
    if missing:
        raise ClipagError(f"{source}: its CrossFlow config lacks the field {missing[0]!r}")
    cfg = FlowConfig(**raw)
    try:
        cfg.validate()
    except ClipagError as exc:
        raise ClipagError(f"{source}: its CrossFlow config (metadata field 'flow') does not hold "
                          f"together: {str(exc).lstrip('-')}") from None
    return cfg


# width and depth when not given: a transformer's width and layers (FlowConfig's), a U-Net's
# base channels and residual blocks per level
NET_SIZES = {"transformer": (FlowConfig.width, FlowConfig.depth), "unet": (64, 2)}


@dataclass(frozen=True)
class LossWeights:
    """The training objective (recorded in the flow file's metadata)."""

    kl: float = 1e-2
    contrastive: float = 1.0
    uncond: float = 0.1  # probability of an indicator-0 (unconditional) pair
    regulariser: str = "official"  # or "standard": the usual KL, averaged per element
    sigma_min: float = 1e-5
    time: str = "uniform"  # or "square": t = u^2, more steps near the text latent

    def validate(self) -> None:
        if self.regulariser not in REGULARISERS:
            raise ClipagError(f"unknown VE regulariser {self.regulariser!r}: "
                              f"{' or '.join(REGULARISERS)}")
        if self.time not in TIME_SAMPLINGS:
            raise ClipagError(f"unknown time sampling {self.time!r}: {' or '.join(TIME_SAMPLINGS)}")
        for name in ("kl", "contrastive"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ClipagError(f"the {name} weight must be a finite number >= 0, got {value}")
        if not 0 <= self.uncond < 1:
            raise ClipagError("--uncond must be in [0, 1)")
        if not 0 <= self.sigma_min < 1:
            raise ClipagError("sigma_min must be in [0, 1)")


class TextVE(nn.Module):
    """Text embedding (B, D) -> mean and log-variance of z0, each (B, 3, R, R)."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.shape = (3, cfg.resolution, cfg.resolution)
        self.net = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.ve_hidden), nn.GELU(),
            nn.Linear(cfg.ve_hidden, cfg.ve_hidden), nn.GELU(),
            nn.Linear(cfg.ve_hidden, 2 * cfg.latent_numel))

    def forward(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.net(text).chunk(2, dim=-1)
        return mean.view(-1, *self.shape), logvar.clamp(-10, 2).view(-1, *self.shape)


class TokenVE(nn.Module):
    """Token states (B, L, W), zero at padding -> mean and log-variance of z0. Two transformer
    layers over the tokens (padding masked out), each token then cut to `token_dim` values and
    the sequence flattened, so where a word stands is kept, into TextVE's MLP head."""

    token_width, token_dim, layers = 128, 16, 2

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.shape = (3, cfg.resolution, cfg.resolution)
        w = self.token_width
        self.embed = nn.Linear(cfg.text_dim, w)
        self.position = nn.Parameter(torch.randn(1, cfg.text_len, w) * 0.02)
        layer = nn.TransformerEncoderLayer(w, 4, 4 * w, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, self.layers, enable_nested_tensor=False)
        self.down = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, self.token_dim))
        self.net = nn.Sequential(
            nn.Linear(cfg.text_len * self.token_dim, cfg.ve_hidden), nn.GELU(),
            nn.Linear(cfg.ve_hidden, cfg.ve_hidden), nn.GELU(),
            nn.Linear(cfg.ve_hidden, 2 * cfg.latent_numel))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.shape[1:] != self.position.shape[1:2] + (self.embed.in_features,):
            raise ClipagError(f"this CrossFlow reads token sequences of shape "
                              f"{self.position.shape[1]} x {self.embed.in_features}, got "
                              f"{' x '.join(map(str, tokens.shape[1:]))}: another text tower")
        valid = tokens.abs().sum(-1) > 0  # (B, L)
        h = self.blocks(self.embed(tokens) + self.position, src_key_padding_mask=~valid)
        h = self.down(h) * valid.unsqueeze(-1)
        mean, logvar = self.net(h.flatten(1)).chunk(2, dim=-1)
        return mean.view(-1, *self.shape), logvar.clamp(-10, 2).view(-1, *self.shape)


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), averaged over elements and batch."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()


def official_ve_regulariser(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """CrossFlow's VE term: -0.5 * sum(1 + logvar - (0.3 mean)^6 - exp(logvar)) summed over
    the latent, averaged over the batch. Zero at N(0, 1); it holds the variance near 1 and
    barely charges the mean until |mean| nears 1 / 0.3."""
    per_element = 1 + logvar - (0.3 * mean).pow(6) - logvar.exp()
    return -0.5 * per_element.flatten(1).sum(1).mean()


def ve_regulariser(mean: torch.Tensor, logvar: torch.Tensor, kind: str) -> torch.Tensor:
    return official_ve_regulariser(mean, logvar) if kind == "official" else \
        kl_to_standard_normal(mean, logvar)


class VelocityNet(nn.Module):
    """A plain transformer over pixel patches; the time and the CFG indicator are two extra
    tokens. (x_t (B, 3, R, R), t (B,), indicator (B,) in {0, 1}) -> velocity (B, 3, R, R)."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        p, n = cfg.patch, (cfg.resolution // cfg.patch) ** 2
        self.embed = nn.Linear(3 * p * p, cfg.width)
        self.position = nn.Parameter(torch.randn(1, n + 2, cfg.width) * 0.02)
        self.time = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.SiLU(),
                                  nn.Linear(cfg.width, cfg.width))
        self.indicator = nn.Embedding(2, cfg.width)
        self.condition = condition_mlp(cfg.condition_dim, cfg.width) if cfg.condition_dim else None
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, 3 * p * p)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, indicator: torch.Tensor,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        b, r, p = x.shape[0], self.cfg.resolution, self.cfg.patch
        patches = F.unfold(x, p, stride=p).transpose(1, 2)  # (B, N, 3 p p)
        time_token = self.time(timestep_embedding(t, self.cfg.width))
        if self.condition is not None:
            time_token = time_token + self.condition(cond.flatten(1))
        tokens = torch.cat([time_token[:, None],
                            self.indicator(indicator.long())[:, None],
                            self.embed(patches)], dim=1) + self.position
        h = self.norm(self.blocks(tokens))[:, 2:]
        return F.fold(self.out(h).transpose(1, 2), (r, r), p, stride=p).view(b, 3, r, r)


class CrossFlow(nn.Module):
    def __init__(self, cfg: FlowConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.ve = TextVE(cfg) if cfg.text_input == "pooled" else TokenVE(cfg)
        self.velocity = VelocityNet(cfg) if cfg.net == "transformer" else \
            UNetVelocity(cfg.resolution, cfg.width, cfg.depth, cfg.heads, cfg.condition_dim)
        # the contrastive term: the target image mapped to z0's size ("latent"), or z0 and
        # the image each projected to embed_dim ("projection")
        if cfg.contrast == "projection":
            self.latent_proj = nn.Linear(cfg.latent_numel, cfg.embed_dim)
        size = cfg.latent_numel if cfg.contrast == "latent" else cfg.embed_dim
        self.image_proj = nn.Sequential(nn.Linear(cfg.latent_numel, cfg.ve_hidden), nn.GELU(),
                                        nn.Linear(cfg.ve_hidden, size))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def condition(self, mean: torch.Tensor, indicator: torch.Tensor) -> torch.Tensor | None:
        """What the velocity network reads besides x_t: the VE mean where the indicator is 1,
        zero where it is 0 (the unconditional flow sees no text); None for CrossFlow's own."""
        if self.cfg.condition == "none":
            return None
        return mean * indicator.view(-1, 1, 1, 1).to(mean)

    def contrast_features(self, z0: torch.Tensor, x1: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit features of the text latents and of their images, (B, K) each."""
        z = z0.flatten(1)
        if self.cfg.contrast == "projection":
            z = self.latent_proj(z)
        return F.normalize(z, dim=-1), F.normalize(self.image_proj(x1.flatten(1)), dim=-1)

    def latent(self, text: torch.Tensor, generator: torch.Generator | None = None,
               temperature: float = 1.0, mix: torch.Tensor | None = None, count: int = 1
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z0 sampled from the VE, mean, logvar); temperature scales the sampled spread.
        With `mix` (P,) weights summing to 1, the P texts' Gaussians become one: the
        weighted mean of their means and of their variances. With `count`, that many z0
        per Gaussian (the rows of one text together)."""
        mean, logvar = self.ve(text)
        if mix is not None:
            w = mix.to(mean).view(-1, 1, 1, 1)
            mean = (w * mean).sum(0, keepdim=True)
            logvar = (w * logvar.exp()).sum(0, keepdim=True).log()
        if count > 1:
            mean, logvar = (t.repeat_interleave(count, dim=0) for t in (mean, logvar))
        eps = torch.randn(mean.shape, generator=generator, device="cpu").to(mean.device)
        return mean + temperature * (0.5 * logvar).exp() * eps, mean, logvar


@dataclass
class FlowLoss:
    total: torch.Tensor
    flow: torch.Tensor
    kl: torch.Tensor
    contrastive: torch.Tensor


def to_signed(images: torch.Tensor) -> torch.Tensor:
    return images * 2 - 1


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def flow_loss(model: CrossFlow, text: torch.Tensor, images: torch.Tensor,
              weights: LossWeights = LossWeights()) -> FlowLoss:
    """One training loss: images (B, 3, R, R) in [0, 1], text (B, D) their caption embeddings."""
    x1 = to_signed(images)
    b = len(x1)
    z0, mean, logvar = model.latent(text)
    uncond = torch.rand(b, device=x1.device) < weights.uncond
    shuffled = x1[torch.randperm(b, device=x1.device)]
    target = torch.where(uncond.view(-1, 1, 1, 1), shuffled, x1)
    t = torch.rand(b, device=x1.device)
    if weights.time == "square":
        t = t * t
    tt = t.view(-1, 1, 1, 1)
    keep = 1 - weights.sigma_min
    xt = (1 - keep * tt) * z0 + tt * target
    indicator = (~uncond).long()
    v = model.velocity(xt, t, indicator, model.condition(mean, indicator))
    flow = F.mse_loss(v, target - keep * z0)
    kl = ve_regulariser(mean, logvar, weights.regulariser)
    zl, zi = model.contrast_features(z0, x1)
    logits = model.logit_scale.exp().clamp(max=100) * zl @ zi.t()
    labels = torch.arange(b, device=x1.device)
    contrastive = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    total = flow + weights.kl * kl + weights.contrastive * contrastive
    return FlowLoss(total, flow.detach(), kl.detach(), contrastive.detach())


@dataclass(frozen=True)
class SampleConfig:
    # 50 Euler steps at guidance 4 drew the object's colour in 0.51 of the drafts of the pooled
    # flow shipped before against 0.41 at 10 steps and guidance 2 (32 prompts, 3 seeds), for
    # 0.75 s a draft on the CPU instead of 0.17 (rows I37-I38, I50 of docs/experiments.md)
    steps: int = 50
    guidance: float = 4.0
    method: str = "euler"  # or "heun"
    # spread of the VE latent (0 = its mean). 0.5, chosen for the token flow shipped before:
    # background 0.99 against 0.88 at 1 on 48 prompts it was not chosen on, colour alike;
    # refined 25 steps, colour 0.73 against 0.69 at 0.25 (rows I59-I67 of
    # docs/experiments.md). The embedded mean-conditioned flow on those 48 prompts: shape
    # 0.47 against 0.45 at 1, colour 0.91 against 0.90 (row I76)
    temperature: float = 0.5
    candidates: int = 1  # drafts drawn per image; the guide's best is kept (1 = the paper's)

    def validate(self) -> None:
        if self.steps < 1:
            raise ClipagError("flow --steps must be >= 1")
        if self.candidates < 1:
            raise ClipagError("--flow-candidates must be >= 1")
        if self.method not in ("euler", "heun"):
            raise ClipagError(f"unknown ODE method {self.method!r}: euler or heun")
        for name in ("guidance", "temperature"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ClipagError(f"--{name} must be a finite number >= 0, got {value}")


@torch.no_grad()
def sample(model: CrossFlow, text: torch.Tensor, config: SampleConfig = SampleConfig(),
           generator: torch.Generator | None = None, mix: torch.Tensor | None = None,
           count: int = 1) -> torch.Tensor:
    """Images (B * count, 3, R, R) in [0, 1] from the VE's text input (B, D) or (B, L, W),
    integrating the guided velocity from t = 0 (the text latent) to t = 1; with `mix`, from
    the texts' weighted mixture (see CrossFlow.latent), B = 1. `count` images per text, drawn
    together in one batch."""
    config.validate()
    model.eval()
    x, mean, _ = model.latent(text, generator, config.temperature, mix, count)
    b, dt = len(x), 1.0 / config.steps
    ones = torch.ones(b, device=x.device, dtype=torch.long)
    indicator = torch.cat([ones, 0 * ones])
    cond = model.condition(torch.cat([mean, mean]), indicator)

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((2 * b,), t, device=x.device)
        v_cond, v_uncond = model.velocity(torch.cat([x, x]), tt, indicator, cond).chunk(2)
        return v_uncond + config.guidance * (v_cond - v_uncond)

    for i in range(config.steps):
        t = i * dt
        v = velocity(x, t)
        if config.method == "heun":
            v = (v + velocity(x + dt * v, t + dt)) / 2
        x = x + dt * v
    return to_unit(x)


PROBE_TEXT = "a red circle on a blue background"


def text_probe(encode) -> list[float]:
    """A short fingerprint of a text tower: the first 8 values of one caption's embedding."""
    with torch.no_grad():
        return [round(float(v), 4) for v in encode([PROBE_TEXT])[0, :8].cpu()]


def same_text_tower(probe: list[float], encode) -> bool:
    return max(abs(a - b) for a, b in zip(probe, text_probe(encode))) < 0.02


class EMA(nn.Module):
    """An exponential moving average of a model's weights, warmed up so that early steps
    are not dominated by the initial weights: decay_k = min(decay, (1 + k) / (10 + k))."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0 <= decay < 1:
            raise ClipagError(f"the EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.average = copy.deepcopy(model).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        k = int(self.updates)
        d = min(self.decay, (1 + k) / (10 + k))
        for avg, new in zip(self.average.state_dict().values(), model.state_dict().values()):
            if avg.is_floating_point():
                avg.lerp_(new.to(avg.dtype), 1 - d)
            else:
                avg.copy_(new)
        self.updates += 1


def save_flow(path, model: CrossFlow, meta: dict, half: bool = False):
    meta = {**meta, "kind": "crossflow", "flow": asdict(model.cfg)}
    return save_checkpoint(path, model.state_dict(), meta, dtype=torch.float16 if half else None)


def load_flow(path, device: torch.device) -> tuple[CrossFlow, dict]:
    """A CrossFlow checkpoint written by `save_flow`, read safely (safetensors only)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise ClipagError(f"CrossFlow checkpoint not found: {path}")
    problem = file_problem(path)  # a folder, no permission: say so, not "not a CrossFlow"
    if problem is not None:
        raise ClipagError(f"CrossFlow checkpoint {path} {problem}")
    meta = read_meta(path)
    if not meta or meta.get("kind") != "crossflow" or "flow" not in meta:
        raise ClipagError(what_else(path, meta, "crossflow")
                          or f"{path} is not a clipag CrossFlow checkpoint (train one with "
                          "`clipag crossflow train`)")
    cfg = flow_config_from(meta["flow"], str(path))
    check_meta_fields(meta, str(path))
    check_shapes(path, cfg)
    model = CrossFlow(cfg)
    state = load_state_dict(path)
    check_compatible(model, state, str(path))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval(), meta


def check_meta_fields(meta: dict, source: str) -> None:
    """The fields besides the config a flow file's metadata holds, checked like flags: the
    text tower it was trained on and its probe of that tower."""
    name = meta.get("text_model")
    if not isinstance(name, str) or not name.strip():
        raise ClipagError(f"{source}: metadata field 'text_model' must name the model (or file) "
                          f"whose text tower it was trained on, got {json.dumps(name)[:60]}")
    probe = meta.get("text_probe")
    if probe is not None and not (
            isinstance(probe, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                            and math.isfinite(x) for x in probe)):
        raise ClipagError(f"{source}: metadata field 'text_probe' must be a list of finite "
                          f"numbers, got {json.dumps(probe)[:60]}")


def check_shapes(path: Path, cfg: FlowConfig) -> None:
    """The weights the config asks for, built without memory (the meta device), against the
    shapes the file's header records: a config that does not describe the file's weights is
    refused before a real model, perhaps far larger than the file, is allocated."""
    shapes = header_shapes(path)
    if shapes is None:
        return  # load_state_dict says what is wrong with the file
    with torch.device("meta"):
        model = CrossFlow(cfg)
    try:
        check_compatible(model, {k: torch.empty(v, device="meta") for k, v in shapes.items()},
                         str(path))
    except ClipagError as exc:
        raise ClipagError(f"{exc} (the model its metadata field 'flow' describes)") from None


DEFAULT_FLOW = Path(__file__).parent.parent / "assets" / "world-crossflow.safetensors"


def flow_path(spec: str) -> Path:
    """The file an --init of `crossflow` (the embedded world flow) or `crossflow:PATH` names."""
    return Path(spec.split(":", 1)[1]) if ":" in spec else DEFAULT_FLOW


def draft_side(spec: str) -> int | None:
    """The side of the drafts the flow an --init `crossflow[:PATH]` names makes, read from
    its header alone (no weights); None where the file does not say (`load_flow` then
    says what is wrong with it)."""
    try:
        meta = read_meta(flow_path(spec))
        side = flow_config_from(meta["flow"], spec).resolution
    except (ClipagError, TypeError, KeyError):
        return None
    return side if isinstance(side, int) and not isinstance(side, bool) else None


def text_guide_for(meta: dict, device: torch.device, guide: Guide | None = None,
                   spec: ModelSpec | None = None) -> Guide:
    """The CLIP whose text tower the flow was trained with: `guide` when its tower matches,
    else `spec`, else the model the checkpoint names; refused when the towers differ."""
    probe = meta.get("text_probe")
    if guide is not None and probe and same_text_tower(probe, guide.encode_texts):
        return guide
    if spec is None or (spec.model is None and spec.checkpoint is None):
        name = meta.get("text_model", "")
        spec = ModelSpec(checkpoint=name) if Path(name).suffix else ModelSpec(model=name)
        try:
            text = load_spec(spec, device, quiet=True)
        except ClipagError as exc:
            raise ClipagError(f"the text model this CrossFlow names (its metadata field "
                              f"'text_model': {name!r}) does not load: {exc}") from None
    else:
        text = load_spec(spec, device, quiet=True)
    if probe and not same_text_tower(probe, text.encode_texts):
        raise ClipagError(f"this CrossFlow was trained on the text tower of "
                          f"{meta.get('text_model')!r}; {text.name} has a different one")
    cfg = meta.get("flow", {})
    if cfg.get("text_input", "pooled") == "pooled":
        with torch.no_grad():
            dim = text.encode_texts([PROBE_TEXT]).shape[-1]
        if dim != cfg.get("text_dim"):
            raise ClipagError(f"this CrossFlow reads {cfg.get('text_dim')}-d text embeddings, but "
                              f"{text.name} (its metadata field 'text_model': "
                              f"{meta.get('text_model')!r}) makes {dim}-d ones")
    return text


@dataclass
class FlowInit:
    """Low-resolution drafts from a CrossFlow, one per (prompt, seed), to start the refiner."""

    model: CrossFlow
    text: Guide
    sampling: SampleConfig

    def condition(self, prompts: list[WeightedPrompt]
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The VE's input and mixing weights for the positive prompts. Pooled: (1, D), their
        embeddings' weighted mean, unit norm, no mixing. Tokens: (P, L, W), each prompt's
        token states, and (P,) weights summing to 1 (a sequence cannot be averaged)."""
        positive = [p for p in prompts if p.weight > 0]
        texts = [p.text for p in positive]
        weights = torch.tensor([p.weight for p in positive])
        with torch.no_grad():
            if self.model.cfg.text_input == "tokens":
                return self.text.encode_text_tokens(texts), weights / weights.sum()
            emb = self.text.encode_texts(texts)
        return F.normalize((emb * weights[:, None].to(emb)).sum(0), dim=-1)[None], None

    def draft(self, prompts: list[WeightedPrompt], seed: int) -> torch.Tensor:
        """(3, R, R) in [0, 1]; the same prompt and seed give the same draft."""
        return self.drafts(prompts, seed, 1)[0]

    def drafts(self, prompts: list[WeightedPrompt], seed: int, count: int) -> torch.Tensor:
        """(count, 3, R, R) in [0, 1], drawn together from one seeded generator; the first is
        `draft`'s (to float rounding: the batch goes through the net at once)."""
        text, mix = self.condition(prompts)
        return sample(self.model, text.to(next(self.model.parameters()).device), self.sampling,
                      torch.Generator().manual_seed(seed), mix, count)


def load_flow_init(spec: str, device: torch.device, guide: Guide | None,
                   sampling: SampleConfig) -> FlowInit:
    """`crossflow` (the embedded world flow) or `crossflow:PATH`."""
    path = flow_path(spec)
    if ":" not in spec and not path.is_file():
        raise ClipagError(f"the embedded CrossFlow is missing from this install ({path}); "
                          "train one with `clipag crossflow train` and pass --init crossflow:FILE")
    model, meta = load_flow(path, device)
    return FlowInit(model, text_guide_for(meta, device, guide), sampling)
