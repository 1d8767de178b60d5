"""Differentiable views of the images being optimised, built on the device as one batch.

Each step makes `global_views` views of the whole image and `patch_views` random crops
(a side of `patch_fraction` of the image) resized to the model's input; every view then gets
pixel noise, DiffAugment-style colour jitter (brightness shift, saturation and contrast
scale), a random translation and resize, and a cutout square.

The clipag style draws every random number of a step in one call on the device and warps with
`F.affine_grid` + `F.grid_sample`. kornia's augmentation modules spent hundreds of small tensor
operations per call on parameter checks, dictionaries and matrix algebra, and on a GPU each one
is a kernel launch: with them, the default views made a step run 957 operations outside the
model, now 270 (`research/probe_step_ops.py`; docs/experiments.md, rows G2 and G7). The warp
and the cutout are kornia's RandomAffine and RandomErasing maps for the same random numbers,
checked against kornia itself in tests/test_augment.py.

`style="reference"` draws the views as the CLIPAG notebook does instead: whole-pixel
translations, one resize factor for each batch of views (global and patch views each draw
their own), a cutout square whose centre may fall near the border (so part of it is clipped
off), and one noise image shared by an image's patch views, added before cropping, the crops
clamped to [0, 1]. The colour jitter is the same in both styles.

`style="clipdraw"` draws the views as CLIPDraw does (the CLIPAG + CLIPDraw notebook): each
global view is a random perspective warp (distortion 0.5, white shown where the warp leaves
the image), then a random resized crop of 70-90% of the area, at the model's input side; no
noise, colour jitter or cutout. Patch views, if asked for, are crops as in the clipag style.

`style="clipstyler"` draws the views as CLIPStyler does: each global view is the whole image
at the model's input side, unaugmented; each patch view a square crop (a side of
`patch_fraction` of the image's shorter side) under a random perspective warp (distortion 0.5,
black where the warp leaves the crop).

Images need not be square: a global view is the whole image resized to the model's square
input, a patch view a square window of the image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F

from .errors import ClipagError


VIEW_STYLES = ("clipag", "reference", "clipdraw", "clipstyler")


@dataclass(frozen=True)
class ViewConfig:
    global_views: int = 32
    patch_views: int = 32
    patch_fraction: float = 128 / 224
    noise: float = 0.01
    brightness: float = 0.5  # shift U(-b, b)
    saturation: tuple[float, float] = (0.0, 2.0)
    contrast: tuple[float, float] = (0.5, 1.5)
    translate: float = 0.125
    scale: tuple[float, float] = (0.8, 1.2)
    cutout: float = 0.5  # side of the cutout square as a fraction of the view
    style: str = "clipag"  # "clipag", "reference" or "clipdraw" (see the module)

    def with_jitter(self, strength: float) -> "ViewConfig":
        """The colour jitter scaled by `strength`: 1 is the reference (brightness U(-0.5, 0.5),
        saturation U(0, 2), contrast U(0.5, 1.5)), 0 turns it off, up to 2 goes further (the
        scales' lower ends stop at 0)."""
        if not 0 <= strength <= 2:
            raise ClipagError(f"--jitter must be in [0, 2], got {strength}")
        return dataclasses.replace(self, brightness=0.5 * strength,
                                   saturation=(max(0.0, 1 - strength), 1 + strength),
                                   contrast=(max(0.0, 1 - 0.5 * strength), 1 + 0.5 * strength))


def _between(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Uniform numbers u in [0, 1) mapped to [low, high), shaped (n, 1, 1, 1)."""
    return (low + (high - low) * u).view(-1, 1, 1, 1)


def color_jitter(x: torch.Tensor, cfg: ViewConfig, u: torch.Tensor | None = None) -> torch.Tensor:
    """Brightness shift, then saturation and contrast scales around the mean (no clamping,
    so gradients flow everywhere). `u` (n, 3): uniform numbers in [0, 1) for the three, drawn
    here when not given."""
    if u is None:
        u = torch.rand(x.shape[0], 3, device=x.device)
    if cfg.brightness:
        x = x + _between(u[:, 0], -cfg.brightness, cfg.brightness).to(x.dtype)
    if cfg.saturation != (1.0, 1.0):
        gray = x.mean(dim=1, keepdim=True)
        x = (x - gray) * _between(u[:, 1], *cfg.saturation).to(x.dtype) + gray
    if cfg.contrast != (1.0, 1.0):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _between(u[:, 2], *cfg.contrast).to(x.dtype) + mean
    return x


def _warp(x: torch.Tensor, theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of x (n, C, H, W) to (n, C, *size) through the affine maps theta
    (n, 2, 3) from output to input coordinates normalised to [-1, 1] at the pixel edges
    (align_corners=False); zeros outside. The grid is made in float32 even under autocast
    (its matrix product would otherwise run in fp16 and move samples by a fifth of a pixel)."""
    if x.shape[0] == 0:
        return x.new_zeros(0, x.shape[1], *size)
    with torch.autocast(x.device.type, enabled=False):
        grid = F.affine_grid(theta.float(), [x.shape[0], x.shape[1], *size], align_corners=False)
        return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                             align_corners=False)


def _affine(scale: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor) -> torch.Tensor:
    """(n, 2, 3) maps x_in = scale * x_out + shift (per axis), from (n,) tensors."""
    zero = torch.zeros_like(scale)
    return torch.stack([scale, zero, shift_x, zero, scale, shift_y], dim=1).view(-1, 2, 3)


def random_affine(x: torch.Tensor, u: torch.Tensor, translate: float,
                  scale: tuple[float, float]) -> torch.Tensor:
    """Each view zoomed by s ~ U(scale) about its centre and shifted by t ~ U(-translate,
    translate) of its side on each axis, zeros shifted in: kornia's RandomAffine (no rotation,
    no shear) for the same numbers. `u` (n, 3): uniform numbers in [0, 1) for (tx, ty, s)."""
    s = scale[0] + (scale[1] - scale[0]) * u[:, 2]
    # a shift of t sides is 2t in normalised units; the output point p shows the input at
    # (p - shift) / s
    shift = (2 * u[:, :2] - 1) * (2 * translate)
    return _warp(x, _affine(1 / s, -shift[:, 0] / s, -shift[:, 1] / s), x.shape[-2:])


def random_crop(x: torch.Tensor, u: torch.Tensor, fraction: float, size: int) -> torch.Tensor:
    """A square window of side `fraction` of each image's shorter side, its position uniform
    over the image (u (n, 2): uniform numbers in [0, 1) for x, y), resampled to size x size."""
    h, w = x.shape[-2:]
    fx, fy = fraction * min(h, w) / w, fraction * min(h, w) / h  # as fractions of each axis
    cx, cy = (2 * u[:, 0] - 1) * (1 - fx), (2 * u[:, 1] - 1) * (1 - fy)  # normalised centre
    if fx == fy:
        theta = _affine(torch.full_like(u[:, 0], fx), cx, cy)
    else:
        zero = torch.zeros_like(cx)
        theta = torch.stack([torch.full_like(cx, fx), zero, cx, zero, torch.full_like(cy, fy), cy],
                            dim=1).view(-1, 2, 3)
    return _warp(x, theta, (size, size))


def cutout(x: torch.Tensor, u: torch.Tensor, fraction: float) -> torch.Tensor:
    """A square of side round(fraction * side) blanked in each view, placed wholly inside it,
    its top-left corner floor(u * (side - square + 1)): kornia's RandomErasing (value 0, ratio
    1) for the same numbers. `u` (n, 2): uniform numbers in [0, 1) for x, y."""
    n, _, h, w = x.shape
    square = [min(max(round(fraction * math.sqrt(h * w)), 1), length) for length in (h, w)]
    masks = []
    for axis, length, side in ((1, h, square[0]), (0, w, square[1])):
        start = (u[:, axis] * (length - side + 1)).floor()[:, None]
        at = torch.arange(length, device=x.device)
        masks.append((at >= start) & (at < start + side))
    blank = masks[0][:, :, None] & masks[1][:, None, :]
    return x * (~blank)[:, None].to(x.dtype)


class Views(torch.nn.Module):
    """images (B, 3, H, W) -> (global views (B*G, 3, s, s), patch views (B*P, 3, s, s)),
    ordered image by image."""

    def __init__(self, size: int, cfg: ViewConfig):
        super().__init__()
        self.size, self.cfg = size, cfg
        side = cfg.patch_fraction  # only the reference style crops with kornia, as the notebook
        self.crop = K.RandomResizedCrop((size, size), scale=(side * side, side * side),
                                        ratio=(1.0, 1.0), p=1.0) if cfg.style == "reference" else None
        if cfg.style in ("clipdraw", "clipstyler"):
            self.perspective = K.RandomPerspective(distortion_scale=0.5, p=1.0)
            self.resized_crop = K.RandomResizedCrop((size, size), scale=(0.7, 0.9), p=1.0)

    def _augment(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Noise, colour jitter, the affine warp and the cutout, from the uniform numbers u
        (n, 10): colour (columns 0-2), translation and zoom (3-5), cutout position (6-7)."""
        cfg = self.cfg
        if cfg.noise:
            x = x + cfg.noise * torch.randn_like(x)
        x = color_jitter(x, cfg, u[:, 0:3])
        if cfg.translate or cfg.scale != (1.0, 1.0):
            x = random_affine(x, u[:, 3:6], cfg.translate, cfg.scale)
        if cfg.cutout:
            x = cutout(x, u[:, 6:8], cfg.cutout)
        return x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.style == "reference":
            return self._reference(images)
        if self.cfg.style == "clipdraw":
            return self._clipdraw(images)
        if self.cfg.style == "clipstyler":
            return self._clipstyler(images)
        cfg = self.cfg
        b = images.shape[0]
        n_patch = b * cfg.patch_views
        u = torch.rand(b * cfg.global_views + n_patch, 10, device=images.device)
        views = []
        if cfg.global_views:
            views.append(self._whole(images).repeat_interleave(cfg.global_views, dim=0))
        if cfg.patch_views:
            views.append(random_crop(images.repeat_interleave(cfg.patch_views, dim=0),
                                     u[-n_patch:, 8:10], cfg.patch_fraction, self.size))
        batch = self._augment(torch.cat(views), u) if views else images[:0]
        n_global = b * cfg.global_views
        return batch[:n_global], batch[n_global:]

    def _whole(self, images: torch.Tensor) -> torch.Tensor:
        """The images at the model's input side (as they are when they already have it)."""
        if images.shape[-1] == self.size and images.shape[-2] == self.size:
            return images
        return F.interpolate(images, size=(self.size, self.size), mode="bilinear",
                             align_corners=False, antialias=True)

    def _reference(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The notebook's views: each batch (global, patch) augmented on its own."""
        cfg = self.cfg
        empty = images.new_zeros(0, 3, self.size, self.size)
        global_views = patch_views = empty
        if cfg.global_views:
            x = self._whole(images).repeat_interleave(cfg.global_views, dim=0)
            if cfg.noise:
                x = x + cfg.noise * torch.randn_like(x)
            global_views = self._reference_augment(x)
        if cfg.patch_views:
            x = images
            if cfg.noise:  # one noise image per image, shared by its patch views
                x = x + cfg.noise * torch.randn_like(images)
            x = self.crop(x.repeat_interleave(cfg.patch_views, dim=0)).clamp(0, 1)
            patch_views = self._reference_augment(x)
        return global_views, patch_views

    def _clipdraw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIPDraw's views: perspective (white fill), then a 70-90% resized crop."""
        cfg = self.cfg
        patch_views = images.new_zeros(0, 3, self.size, self.size)
        if cfg.patch_views:
            u = torch.rand(images.shape[0] * cfg.patch_views, 2, device=images.device)
            patch_views = random_crop(images.repeat_interleave(cfg.patch_views, dim=0), u,
                                      cfg.patch_fraction, self.size)
        if not cfg.global_views:
            return images.new_zeros(0, 3, self.size, self.size), patch_views
        x = images.repeat_interleave(cfg.global_views, dim=0)
        x = 1 - self.perspective(1 - x)  # zeros shifted in are white
        return self.resized_crop(x), patch_views

    def _clipstyler(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIPStyler's views: the whole image as it is; square crops under a perspective."""
        cfg = self.cfg
        global_views = self._whole(images).repeat_interleave(cfg.global_views, dim=0)
        patch_views = images.new_zeros(0, 3, self.size, self.size)
        if cfg.patch_views:
            u = torch.rand(images.shape[0] * cfg.patch_views, 2, device=images.device)
            crops = random_crop(images.repeat_interleave(cfg.patch_views, dim=0), u,
                                cfg.patch_fraction, self.size)
            patch_views = self.perspective(crops)
        return global_views, patch_views

    def _reference_augment(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        x = color_jitter(x, cfg)
        if cfg.translate:
            x = whole_pixel_shift(x, cfg.translate)
        if cfg.scale != (1.0, 1.0):
            x = batch_resize(x, cfg.scale)
        if cfg.cutout:
            x = clipped_cutout(x, cfg.cutout)
        return x


def whole_pixel_shift(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Each view shifted by whole pixels, up to round(fraction * side) each way, zeros shifted
    in (an exact gather from the zero-padded views, no interpolation)."""
    n, _, h, w = x.shape
    ly, lx = int(h * fraction + 0.5), int(w * fraction + 0.5)
    dy = (torch.rand(n, device=x.device) * (2 * ly + 1)).long() - ly
    dx = (torch.rand(n, device=x.device) * (2 * lx + 1)).long() - lx
    padded = F.pad(x, (lx, lx, ly, ly))
    rows = torch.arange(h, device=x.device)[None] + (ly - dy)[:, None]  # out[i] = in[i - dy]
    cols = torch.arange(w, device=x.device)[None] + (lx - dx)[:, None]
    picked = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None],
                    cols[:, None, :]]  # (n, h, w, channels)
    return picked.permute(0, 3, 1, 2)


def batch_resize(x: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """The whole batch resized by one factor drawn from U(scale), then centre-cropped or
    zero-padded back to its side. The factor is drawn on the CPU: no device sync."""
    side = x.shape[-1]
    factor = scale[0] + (scale[1] - scale[0]) * torch.rand(()).item()
    new = max(1, int(factor * side))
    if new == side:
        return x
    y = F.interpolate(x, size=(new, new), mode="bilinear", align_corners=False)
    if new < side:
        left = (side - new) // 2
        right = side - new - left
        return F.pad(y, (left, right, left, right))
    left = (new - side) // 2
    return y[..., left:left + side, left:left + side]


def clipped_cutout(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """A square of side round(fraction * side) blanked in each view, its centre uniform over
    the whole view, so near the border part of it falls outside and is clipped off."""
    n, _, h, w = x.shape
    sides = [int(h * fraction + 0.5), int(w * fraction + 0.5)]
    masks = []
    for length, side in zip((h, w), sides):
        centre = (torch.rand(n, 1, device=x.device) * (length + 1 - side % 2)).floor()
        start = centre - side // 2
        at = torch.arange(length, device=x.device)
        masks.append((at >= start) & (at < start + side))
    blank = masks[0][:, :, None] & masks[1][:, None, :]
    return x * (~blank)[:, None].to(x.dtype)
