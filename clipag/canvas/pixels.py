"""The pixels themselves as the parameter (the CLIPAG notebook's representation), projected
after each step by dynamic thresholding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Canvas, ParamGroup


def dynamic_threshold(x: torch.Tensor, p: float) -> torch.Tensor:
    """Imagen's dynamic thresholding on images in [0, 1] (mapped to [-1, 1] and back);
    p = 0 is a plain clamp."""
    if not p:
        return x.clamp(0, 1)
    y = x * 2 - 1
    s = torch.quantile(y.abs().flatten(1), p, dim=1).clamp_min(1.0).view(-1, 1, 1, 1)
    return ((y.clamp(-s, s) / s) + 1) / 2


def resample(images: torch.Tensor, side: int) -> torch.Tensor:
    """Images at another side: bicubic (clamped to [0, 1]) up, area average down."""
    if side > images.shape[-1]:
        return F.interpolate(images, size=(side, side), mode="bicubic",
                             align_corners=False).clamp(0, 1)
    return F.interpolate(images, size=(side, side), mode="area")


class Pixels(Canvas):
    name = "pixels"
    multiscale = True

    def __init__(self, images: torch.Tensor, lr: float, weight_decay: float = 0.0,
                 threshold: float = 0.95):
        # contiguous, so that the gradient (and its nan_to_num copy) has the pixels' layout,
        # as the fused AdamW update assumes
        pixels = images.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
        self.lr, self.weight_decay, self.threshold = lr, weight_decay, threshold
        self.groups = [ParamGroup("pixels", pixels, lr, weight_decay)]

    @classmethod
    def create(cls, config, images: torch.Tensor, seeds, size: int, device=None) -> "Pixels":
        return cls(images.to(device), config.learning_rate, config.weight_decay, config.threshold)

    def render(self) -> torch.Tensor:
        return self.groups[0].tensor

    def project(self) -> None:
        pixels = self.groups[0].tensor
        with torch.no_grad():
            pixels.copy_(dynamic_threshold(pixels, self.threshold))

    def resized(self, side: int) -> "Pixels":
        return Pixels(resample(self.groups[0].tensor.detach(), side), self.lr,
                      self.weight_decay, self.threshold)
