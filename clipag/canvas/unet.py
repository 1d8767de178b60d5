"""A small U-Net that renders the image from an input image, the representation of CLIPStyler
(Kwon & Ye 2022): the network's weights are the parameters, the input (the content image, or a
start image) stays fixed. By default residual: the network adds to the input's logits and its
last layer starts at zero, so the first render is the input (CLIPStyler's plain network starts
from a random image and needs VGG19's content loss to find the content again). 3 levels down
and 3 up with skip connections, `channels` at the top level doubling each level down,
LeakyReLU, a sigmoid output. Sides need not be multiples of 8: the input is padded by
reflection and the output cropped back.

Each image has its own network; all B are one flat tensor (B, P), run together as grouped
convolutions, so the optimiser clips and keeps them image by image as any canvas. `forward`
is a pure function of (weights, input): a trained network (`state`) applies to other images in
one pass (`apply_net`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Canvas, ParamGroup

DEPTH = 3  # levels down (and up); the input is padded to a multiple of 2 ** DEPTH


def layer_shapes(channels: int) -> list[tuple[str, int, int, int]]:
    """(name, in, out, kernel) of every convolution, in the order they run."""
    c = [channels * 2 ** i for i in range(DEPTH + 1)]
    shapes = [("in.0", 3, c[0], 3), ("in.1", c[0], c[0], 3)]
    for i in range(1, DEPTH + 1):
        shapes += [(f"down{i}.0", c[i - 1], c[i], 3), (f"down{i}.1", c[i], c[i], 3)]
    for i in range(DEPTH, 0, -1):
        shapes += [(f"up{i}.0", c[i], c[i - 1], 3), (f"up{i}.1", 2 * c[i - 1], c[i - 1], 3)]
    return shapes + [("out", c[0], 3, 1)]


def parameter_count(channels: int) -> int:
    return sum(o * i * k * k + o for _, i, o, k in layer_shapes(channels))


def init_weights(channels: int, generator: torch.Generator, residual: bool = False
                 ) -> torch.Tensor:
    """One network's flat weights (P,): torch's default convolution start (uniform within
    1 / sqrt(fan-in) for weights and biases); with `residual` the last layer starts at zero."""
    parts = []
    for name, i, o, k in layer_shapes(channels):
        bound = 1 / math.sqrt(i * k * k)
        part = (torch.rand(o * i * k * k + o, generator=generator) * 2 - 1) * bound
        parts.append(part * 0 if residual and name == "out" else part)
    return torch.cat(parts)


def forward(weights: torch.Tensor, x: torch.Tensor, channels: int, residual: bool = False
            ) -> torch.Tensor:
    """B networks' flat weights (B, P) applied to their inputs x (B, 3, H, W) in [0, 1]:
    (B, 3, H, W) in (0, 1); `residual`: the output's logits are the input's plus the net's."""
    b, _, h, w = x.shape
    unit = 2 ** DEPTH
    ph, pw = -h % unit, -w % unit
    mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
    y = F.pad(x, (0, pw, 0, ph), mode=mode) if ph or pw else x
    y = y.reshape(1, b * 3, h + ph, w + pw)
    at = 0

    def conv(y: torch.Tensor, shape: tuple[str, int, int, int], stride: int = 1,
             act: bool = True) -> torch.Tensor:
        nonlocal at
        _, i, o, k = shape
        n = o * i * k * k
        kernel = weights[:, at:at + n].reshape(b * o, i, k, k)
        bias = weights[:, at + n:at + n + o].reshape(b * o)
        at += n + o
        y = F.conv2d(y, kernel, bias, stride=stride, padding=k // 2, groups=b)
        return F.leaky_relu(y, 0.2) if act else y

    shapes = iter(layer_shapes(channels))
    y = conv(conv(y, next(shapes)), next(shapes))
    skips = []
    for _ in range(DEPTH):
        skips.append(y)
        y = conv(conv(y, next(shapes), stride=2), next(shapes))
    for _ in range(DEPTH):
        skip = skips.pop()
        y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        y = conv(y, next(shapes))
        # the skip and the upsampled path side by side, image by image (grouped channels)
        c = skip.shape[1] // b
        y = torch.cat([skip.view(1, b, c, *skip.shape[-2:]), y.view(1, b, c, *y.shape[-2:])],
                      dim=2).view(1, b * 2 * c, *skip.shape[-2:])
        y = conv(y, next(shapes))
    y = conv(y, next(shapes), act=False).view(b, 3, h + ph, w + pw)[..., :h, :w]
    if residual:
        y = y + torch.logit(x.clamp(1e-3, 1 - 1e-3))
    return torch.sigmoid(y)


class UNet(Canvas):
    name = "unet"

    def __init__(self, inputs: torch.Tensor, weights: torch.Tensor, channels: int, lr: float,
                 weight_decay: float = 0.0, residual: bool = False):
        self.inputs, self.channels, self.residual = inputs.detach(), channels, residual
        self.groups = [ParamGroup("net", weights.contiguous().requires_grad_(True), lr,
                                  weight_decay, schedule=((0.5, 0.5),))]

    @classmethod
    def create(cls, config, images: torch.Tensor, seeds, size: int, device=None) -> "UNet":
        channels, residual = config.canvas.unet.channels, config.canvas.unet.residual
        weights = torch.stack([init_weights(channels, torch.Generator().manual_seed(s), residual)
                               for s in seeds])
        return cls(images.to(device), weights.to(device), channels, config.learning_rate,
                   config.weight_decay, residual)

    def render(self) -> torch.Tensor:
        return forward(self.groups[0].tensor, self.inputs, self.channels, self.residual)

    def state(self, b: int) -> torch.Tensor:
        """Image b's network: its flat weights (P,)."""
        return self.groups[0].tensor[b].detach().cpu().clone()
