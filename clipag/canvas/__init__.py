"""Canvases: the representations an image is optimised in. `build` makes one from a config;
the optimiser drives any of them through clipag.canvas.base.Canvas."""

from __future__ import annotations

import torch

from .base import Canvas, ParamGroup
from .config import (CANVAS_NAMES, CanvasConfig, FourierConfig, PyramidConfig, StrokesConfig,
                     UNetConfig)
from .fourier import Fourier
from .pixels import Pixels, dynamic_threshold
from .pyramid import Pyramid
from .strokes import Strokes
from .unet import UNet

CANVASES: dict[str, type[Canvas]] = {c.name: c for c in (Pixels, Pyramid, Fourier, Strokes, UNet)}
assert tuple(CANVASES) == CANVAS_NAMES

__all__ = ["Canvas", "ParamGroup", "CANVASES", "CanvasConfig", "StrokesConfig", "PyramidConfig",
           "FourierConfig", "UNetConfig", "build", "dynamic_threshold"]


def build(config, images: torch.Tensor | None, seeds, size: int,
          device: torch.device | str = "cpu") -> Canvas:
    """The canvas `config.canvas.name` for B = len(seeds) images of side `size`, from start
    images (B, 3, size, size) where the canvas takes them, else from each image's seed."""
    return CANVASES[config.canvas.name].create(config, images, seeds, size, device)
