"""What every canvas is: B images held as parameters that render to (B, 3, H, W) in [0, 1].

The optimiser (clipag.optimise) sees only this: the parameter groups with their learning
rates, `render`, `project` after each step, and, for the canvases that support coarse-to-fine
stages, `resized`. Every parameter tensor has the image index as its first dimension, so the
optimiser can clip gradients and keep the best state image by image without knowing what
the tensors mean."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ParamGroup:
    name: str
    tensor: torch.Tensor  # (B, ...) a leaf that requires grad
    lr: float
    weight_decay: float = 0.0
    # (fraction of the run, factor): from step int(fraction * steps) on, lr * factor
    schedule: tuple[tuple[float, float], ...] = ()


class Canvas:
    """Base class; subclasses set `groups` and implement `render`."""

    name = "canvas"
    multiscale = False  # whether `resized` works (coarse-to-fine --scales)
    from_images = True  # whether it starts from pixel start images (init, --init-image)
    suffixes: tuple[str, ...] = ()  # the extra files `files` writes beside the image
    groups: list[ParamGroup]

    @classmethod
    def create(cls, config, images: torch.Tensor | None, seeds, size: int,
               device=None) -> "Canvas":
        """B = len(seeds) images of side `size` on `device`, from the start images (B, 3, size,
        size) where the canvas takes them (`from_images`), else from each image's seed."""
        raise NotImplementedError

    def render(self) -> torch.Tensor:
        raise NotImplementedError

    def project(self) -> None:
        """Bring the parameters back into their valid range after a step (in place)."""

    def resized(self, side: int) -> "Canvas":
        raise NotImplementedError(f"the {self.name} canvas has no coarse-to-fine stages")

    def files(self, b: int, title: str = "") -> dict[str, str]:
        """Extra files that describe image b besides its raster, by suffix ({".svg": text})."""
        return {}

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [g.tensor for g in self.groups]

    def load(self, tensors: list[torch.Tensor]) -> None:
        """Set the parameters' values (same shapes), e.g. to the best state seen."""
        with torch.no_grad():
            for t, v in zip(self.tensors, tensors):
                t.copy_(v)
