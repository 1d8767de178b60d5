"""A stack of images at many resolutions, summed at the output side and squashed,
(tanh(sum) + 1) / 2: the parameterisation of Direct Ascent Synthesis (Fort & Whitaker 2025).
Coarse levels move large regions at once, so the guide's gradient shapes the layout before
the detail; a start image goes into the finest level, the others start at zero."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Canvas, ParamGroup


def level_sides(size: int, levels: int) -> list[int]:
    """size, ceil(size/2), ... down to 1, the `levels` finest of them, coarse first."""
    sides = [size]
    while sides[-1] > 1:
        sides.append(-(-sides[-1] // 2))
    return sorted(sides[:levels])


def _atanh_image(images: torch.Tensor) -> torch.Tensor:
    return torch.atanh((images * 2 - 1).clamp(-0.999, 0.999))


class Pyramid(Canvas):
    name = "pyramid"

    def __init__(self, images: torch.Tensor, levels: int, lr: float, weight_decay: float = 0.0):
        b, _, size, _ = images.shape
        self.size = size
        self.groups = []
        for side in level_sides(size, levels):
            value = (_atanh_image(images.detach()) if side == size
                     else images.new_zeros(b, 3, side, side))
            self.groups.append(ParamGroup(f"level-{side}", value.contiguous().requires_grad_(True),
                                          lr, weight_decay))

    @classmethod
    def create(cls, config, images: torch.Tensor, seeds, size: int, device=None) -> "Pyramid":
        return cls(images.to(device), config.canvas.pyramid.levels, config.learning_rate, config.weight_decay)

    def render(self) -> torch.Tensor:
        total = 0
        for g in self.groups:
            t = g.tensor
            if t.shape[-1] != self.size:
                t = F.interpolate(t, size=(self.size, self.size), mode="bicubic",
                                  align_corners=False)
            total = total + t
        return (torch.tanh(total) + 1) / 2
