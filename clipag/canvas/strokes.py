"""N open cubic Bezier strokes over a background colour, CLIPDraw's representation (Frans et
al. 2021), rendered by clipag's own differentiable renderer (stroke_render) and written out as
an SVG that draws the same picture.

A stroke has 1..K segments (K = max_segments), so 3K + 1 control points in pixel units (only
the first 3k + 1 of a k-segment stroke are drawn), a width in pixels and a straight RGBA
colour. The start is CLIPDraw's: each stroke begins at a uniform random point and each next
control point steps up to reach/2 of the side from the last; width start_width; colour and
alpha uniform. Three parameter groups as the notebook: points (lr, then 0.4x from half the run
and 0.1x from three quarters), widths and colours; after each step widths are clamped to the
width range and colours to [0, 1]. Strokes cannot start from an image."""

from __future__ import annotations

import torch

from .base import Canvas, ParamGroup
from .stroke_render import render_strokes
from .svg import strokes_svg

POINTS_SCHEDULE = ((0.5, 0.4), (0.75, 0.1))  # the CLIPDraw notebook's point learning rate


def random_strokes(cfg, size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One image's start: points (N, 3K+1, 2), widths (N,), colours (N, 4), segments (N,)."""
    n, k = cfg.count, cfg.max_segments
    segments = torch.randint(1, k + 1, (n,), generator=generator)
    start = torch.rand(n, 1, 2, generator=generator)
    steps = cfg.reach * (torch.rand(n, 3 * k, 2, generator=generator) - 0.5)
    points = torch.cat([start, start + steps.cumsum(1)], 1)
    # points past a stroke's last segment repeat its end (never drawn; kept finite)
    last = 3 * segments
    index = torch.minimum(torch.arange(3 * k + 1)[None], last[:, None])
    points = torch.gather(points, 1, index[..., None].expand(-1, -1, 2)) * size
    widths = torch.full((n,), float(cfg.start_width))
    colors = torch.rand(n, 4, generator=generator)
    return points, widths, colors, segments


class Strokes(Canvas):
    name = "strokes"
    from_images = False
    suffixes = (".svg",)

    def __init__(self, points: torch.Tensor, widths: torch.Tensor, colors: torch.Tensor,
                 segments: torch.Tensor, cfg, size: int, lr: float, weight_decay: float = 0.0):
        self.cfg, self.size = cfg, size
        self.segments = segments
        self.background = torch.tensor(cfg.background, dtype=points.dtype,
                                       device=points.device).expand(points.shape[0], 3)
        self.groups = [
            ParamGroup("points", points.contiguous().requires_grad_(True), lr, weight_decay,
                       POINTS_SCHEDULE),
            ParamGroup("widths", widths.contiguous().requires_grad_(True), cfg.width_lr),
            ParamGroup("colors", colors.contiguous().requires_grad_(True), cfg.color_lr),
        ]

    @classmethod
    def create(cls, config, images, seeds, size: int, device=None) -> "Strokes":
        cfg = config.canvas.strokes
        parts = [random_strokes(cfg, size, torch.Generator().manual_seed(s)) for s in seeds]
        points, widths, colors, segments = (torch.stack(p).to(device) for p in zip(*parts))
        return cls(points, widths, colors, segments, cfg, size, config.learning_rate, config.weight_decay)

    def render(self) -> torch.Tensor:
        points, widths, colors = self.tensors
        return render_strokes(points, widths, colors, self.segments, self.background,
                              self.size, self.size, self.cfg.samples)

    def project(self) -> None:
        _, widths, colors = self.tensors
        with torch.no_grad():
            widths.clamp_(*self.cfg.width)
            colors.clamp_(0, 1)

    def files(self, b: int, title: str = "") -> dict[str, str]:
        points, widths, colors = self.tensors
        return {".svg": strokes_svg(points[b], widths[b], colors[b], self.segments[b],
                                    self.background[b], self.size, self.size, title)}
