"""The pure-PyTorch stroke renderer: gradients, culling, and the SVG that draws the same
picture under an independent renderer (resvg)."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from clipag.canvas import stroke_render
from clipag.canvas.config import StrokesConfig
from clipag.canvas.stroke_render import bezier_polyline, render_strokes
from clipag.canvas.strokes import random_strokes
from clipag.canvas.svg import strokes_svg



def scene(n: int, side: int, seed: int, width: tuple[float, float], k: int = 3,
          spread: float = 0.3, dtype=torch.float32):
    """Random strokes: points (1, n, 3k+1, 2), widths, colours, segments, a background."""
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(n, 1, 2, generator=g) * side
    steps = (torch.rand(n, 3 * k, 2, generator=g) - 0.5) * spread * side
    points = torch.cat([start, start + steps.cumsum(1)], 1).to(dtype)
    widths = (width[0] + (width[1] - width[0]) * torch.rand(n, generator=g)).to(dtype)
    colors = torch.rand(n, 4, generator=g).to(dtype)
    segments = torch.randint(1, k + 1, (n,), generator=g)
    background = torch.rand(3, generator=g).to(dtype)
    return points[None], widths[None], colors[None], segments[None], background[None]


def resvg(svg: str, side: int) -> torch.Tensor:
    resvg_py = pytest.importorskip("resvg_py")  # a test dependency: the independent renderer
    png = resvg_py.svg_to_bytes(svg_string=svg, width=side, height=side)
    array = np.array(Image.open(io.BytesIO(bytes(png))).convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("seed,n,width,alpha", [
    (0, 40, (0.5, 3.0), None),  # thin
    (1, 12, (10.0, 40.0), None),  # wide, overlapping
    (2, 60, (1.0, 12.0), 0.5),  # many, half-transparent
    (3, 25, (0.5, 25.0), 1.0),  # opaque over each other
])
def test_the_svg_renders_to_the_png_under_resvg(seed, n, width, alpha):
    side = 96
    points, widths, colors, segments, background = scene(n, side, seed, width)
    if alpha is not None:
        colors[..., 3] = alpha
    ours = render_strokes(points, widths, colors, segments, background, side, side)[0]
    svg = strokes_svg(points[0], widths[0], colors[0], segments[0], background[0], side, side,
                      title="a <test> & \"scene\"")
    ET.fromstring(svg.split("\n", 1)[1])  # well-formed XML, title escaped
    theirs = resvg(svg, side)
    diff = (ours - theirs).abs()
    assert diff.mean() <= 0.02, diff.mean()
    # and it is a picture, not a blank: the strokes cover a good part of it
    assert (ours - background[0].view(3, 1, 1)).abs().amax(0).gt(0.05).float().mean() > 0.05


def test_a_blank_scene_and_strokes_outside_are_the_background():
    points, widths, colors, segments, background = scene(5, 32, 0, (1, 2))
    out = render_strokes(points + 1000, widths, colors, segments, background, 32, 40)
    assert out.shape == (1, 3, 32, 40)
    assert torch.equal(out, background.view(1, 3, 1, 1).expand(1, 3, 32, 40))
    empty = render_strokes(points[:, :0], widths[:, :0], colors[:, :0], segments[:, :0],
                           background, 8, 8)
    assert torch.equal(empty, background.view(1, 3, 1, 1).expand(1, 3, 8, 8))


@pytest.mark.parametrize("seed", range(6))
def test_tiles_and_culling_change_nothing(seed, monkeypatch):
    """Rendered in tiles of 8, 16 and 32 px, with both cullings, the picture is the one a
    single tile over the whole canvas (nothing culled by tiles) draws; and measuring every
    piece of every stroke changes nothing either. Strokes of fewer segments than the most
    (the tip of a short stroke must keep its tiles) and wide ones, half-transparent."""
    side = 70
    points, widths, colors, segments = scene(30, side, seed, (0.5, 20))[:4]
    background = torch.rand(1, 3)
    whole = render_strokes(points, widths, colors, segments, background, side, side, tile=128)
    for tile in (8, 16, 32):
        tiled = render_strokes(points, widths, colors, segments, background, side, side,
                               tile=tile)
        assert (tiled - whole).abs().max() < 1e-5, (tile, (tiled - whole).abs().max())

    def every_piece(a, b, mask, stroke, origin, reach, tile):  # no piece culling at all
        index = torch.arange(a.shape[1])[None].expand(len(stroke), -1)
        return torch.where(mask[stroke], index, -1)

    monkeypatch.setattr(stroke_render, "_near_pieces", every_piece)
    unculled = render_strokes(points, widths, colors, segments, background, side, side)
    assert (unculled - whole).abs().max() < 1e-5


def test_the_tip_of_a_short_stroke_is_drawn():
    """A one-segment stroke in a two-segment slot, crossing tiles: drawn to its end."""
    points = torch.tensor([[[[2.0, 8.0], [20.0, 8.0], [40.0, 8.0], [60.0, 8.0],
                             [60.0, 8.0], [60.0, 8.0], [60.0, 8.0]]]])
    out = render_strokes(points, torch.tensor([[3.0]]), torch.tensor([[[0.0, 0, 0, 1]]]),
                         torch.tensor([[1]]), torch.ones(1, 3), 16, 64, samples=4)
    row = out[0, 0, 8]
    assert row[3:60].max() < 0.01 and row[62:].min() > 0.99  # black to x = 61.5, white after


def test_a_scene_with_nothing_on_the_canvas_still_has_a_gradient():
    points, widths, colors, segments, background = scene(3, 32, 0, (1, 2))
    points = (points + 1000).requires_grad_()
    out = render_strokes(points, widths, colors, segments, background, 32, 32)
    out.sum().backward()
    assert points.grad is not None and torch.all(points.grad == 0)


def test_images_of_a_batch_are_rendered_apart():
    a = scene(10, 48, 5, (1, 8))
    b = scene(10, 48, 6, (1, 8))
    both = render_strokes(*(torch.cat([x, y]) for x, y in zip(a, b)), 48, 48)
    assert torch.allclose(both[0], render_strokes(*a, 48, 48)[0], atol=1e-6)
    assert torch.allclose(both[1], render_strokes(*b, 48, 48)[0], atol=1e-6)


def test_gradients_match_finite_differences():
    side = 24
    points, widths, colors, segments, background = scene(4, side, 7, (3, 8), k=2, spread=0.5,
                                                         dtype=torch.float64)
    colors[..., 3] = 0.4 + 0.5 * colors[..., 3]
    weights = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)

    def loss(p, w, c):
        return (render_strokes(p, w, c, segments, background, side, side) * weights).sum()

    params = [points.clone().requires_grad_(), widths.clone().requires_grad_(),
              colors.clone().requires_grad_()]
    loss(*params).backward()
    g = torch.Generator().manual_seed(2)
    for i, p in enumerate(params):
        direction = torch.randn(p.shape, generator=g, dtype=torch.float64)
        eps = 1e-4
        values = [t.detach() for t in params]
        plus = values.copy()
        plus[i] = values[i] + eps * direction
        minus = values.copy()
        minus[i] = values[i] - eps * direction
        numeric = (loss(*plus) - loss(*minus)) / (2 * eps)
        analytic = (p.grad * direction).sum()
        assert abs(numeric - analytic) <= 1e-3 * max(1.0, abs(float(numeric))), (i, numeric,
                                                                                  analytic)
        assert abs(float(analytic)) > 1e-3  # every group really receives a gradient


def test_a_stroke_moves_where_its_gradient_says():
    """One short stroke and a target with the same stroke 4 px to the right: gradient
    descent on the points moves it right and the error falls."""
    side = 32
    base = torch.tensor([[[8.0, 16.0], [11.0, 14.0], [14.0, 18.0], [17.0, 16.0]]])[None]
    widths, colors = torch.tensor([[5.0]]), torch.tensor([[[0.0, 0.0, 0.0, 1.0]]])
    segments, background = torch.tensor([[1]]), torch.ones(1, 3)
    target = render_strokes(base + torch.tensor([4.0, 0.0]), widths, colors, segments,
                            background, side, side)
    points = base.clone().requires_grad_()
    optimizer = torch.optim.Adam([points], lr=0.2)
    errors = []
    for _ in range(40):
        optimizer.zero_grad()
        error = (render_strokes(points, widths, colors, segments, background, side,
                                side) - target).pow(2).sum()
        error.backward()
        errors.append(error.item())
        optimizer.step()
    shift = (points.detach() - base).mean(dim=(0, 1, 2))
    assert shift[0] > 2.0 and abs(shift[1]) < 1.0, shift
    assert errors[-1] < 0.2 * errors[0]


def test_polyline_passes_through_the_end_points():
    points = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [3.0, 2.0], [4.0, 0.0],
                            [5.0, -2.0], [7.0, -2.0], [8.0, 0.0]]])
    line = bezier_polyline(points, 4)
    assert line.shape == (1, 9, 2)
    assert torch.allclose(line[0, 0], points[0, 0]) and torch.allclose(line[0, 4], points[0, 3])
    assert torch.allclose(line[0, -1], points[0, -1])


def test_clipdraw_start_strokes_are_seeded_and_local():
    cfg = StrokesConfig()
    a = random_strokes(cfg, 224, torch.Generator().manual_seed(3))
    b = random_strokes(cfg, 224, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    points, widths, colors, segments = a
    assert points.shape == (256, 10, 2) and set(segments.tolist()) <= {1, 2, 3}
    assert torch.all(widths == 1.0) and colors.min() >= 0 and colors.max() <= 1
    # each next control point is within reach/2 of the side from the last, on each axis
    steps = (points[:, 1:] - points[:, :-1]).abs()
    assert steps.max() <= 0.05 * 224 + 1e-4
