"""The clipag-style views: the warps and the cutout are kornia's maps for the same random
numbers (kornia is the oracle), the crop is an exact slice where the window falls on whole
pixels, and one step's views draw their random numbers in one call."""

import dataclasses

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F

from clipag.augment import (ViewConfig, Views, color_jitter, cutout, random_affine,
                            random_crop)


def _kornia_affine_params(u: torch.Tensor, translate: float, scale: tuple[float, float],
                          side: int) -> dict:
    """kornia RandomAffine's parameters for the uniform numbers u (n, 3) = (tx, ty, s)."""
    n = u.shape[0]
    s = scale[0] + (scale[1] - scale[0]) * u[:, 2]
    return {
        "translations": (2 * u[:, :2] - 1) * translate * side,
        "center": torch.full((n, 2), side / 2.0 - 0.5),
        "scale": s[:, None].repeat(1, 2),
        "angle": torch.zeros(n),
        "shear_x": torch.zeros(n),
        "shear_y": torch.zeros(n),
        "batch_prob": torch.ones(n, dtype=torch.bool),
        "forward_input_shape": torch.tensor([n, 3, side, side]),
    }


@pytest.mark.parametrize("side", [16, 33])
def test_random_affine_is_kornias_random_affine_for_the_same_numbers(side):
    torch.manual_seed(0)
    x = torch.rand(12, 3, side, side)
    u = torch.rand(12, 3)
    ours = random_affine(x, u, 0.125, (0.8, 1.2))
    oracle = K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), scale=(0.8, 1.2),
                            padding_mode="zeros", p=1.0)
    theirs = oracle(x, params=_kornia_affine_params(u, 0.125, (0.8, 1.2), side))
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert (ours == 0).any()  # zeros shifted in somewhere


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.6])
def test_cutout_is_kornias_random_erasing_for_the_same_numbers(fraction):
    torch.manual_seed(1)
    n, side = 40, 24
    x = torch.rand(n, 3, side, side) + 0.5
    u = torch.rand(n, 2)
    ours = cutout(x, u, fraction)
    square = round(fraction * side)
    oracle = K.RandomErasing(scale=(fraction ** 2, fraction ** 2), ratio=(1.0, 1.0), value=0.0,
                             p=1.0)
    params = {
        "widths": torch.full((n,), float(square)),
        "heights": torch.full((n,), float(square)),
        "xs": (u[:, 0] * (side - square + 1)).floor(),
        "ys": (u[:, 1] * (side - square + 1)).floor(),
        "values": torch.zeros(n),
        "batch_prob": torch.ones(n, dtype=torch.bool),
        "forward_input_shape": torch.tensor([n, 3, side, side]),
    }
    assert torch.equal(ours, oracle(x, params=params))
    assert ((ours == 0).all(dim=1).flatten(1).sum(1) == square * square).all()


def test_random_crop_is_a_slice_where_the_window_falls_on_whole_pixels():
    x = torch.rand(2, 3, 20, 20)
    # a window of 10 pixels in an image of 20: positions 0..10; u = position / 10
    u = torch.tensor([[0.0, 0.0], [0.3, 0.7]])
    crops = random_crop(x, u, 0.5, 10)
    assert torch.allclose(crops[0], x[0, :, 0:10, 0:10], atol=1e-5)
    assert torch.allclose(crops[1], x[1, :, 7:17, 3:13], atol=1e-5)
    big = random_crop(x, torch.tensor([[1.0, 1.0]] * 2), 0.5, 10)  # the far corner
    assert torch.allclose(big[0], x[0, :, 10:20, 10:20], atol=1e-5)


def test_random_crop_takes_a_window_of_the_fraction_whatever_the_output_side():
    """A 10-pixel window of a 20-pixel image resampled to 5 pixels: each output pixel's
    centre falls between four window pixels, so it is their mean (2x2 average pooling)."""
    x = torch.rand(1, 3, 20, 20)
    crop = random_crop(x, torch.tensor([[0.4, 0.2]]), 0.5, 5)  # window at x 4..14, y 2..12
    assert torch.allclose(crop, F.avg_pool2d(x[:, :, 2:12, 4:14], 2), atol=1e-5)


def test_the_warps_ignore_autocast():
    """Under autocast the grid's matrix product would run in 16 bits and move the samples;
    the views must be the float32 ones."""
    torch.manual_seed(3)
    x = torch.rand(4, 3, 40, 40)
    u = torch.rand(4, 3)
    plain = random_affine(x, u, 0.125, (0.8, 1.2)), random_crop(x, u[:, :2], 0.6, 31)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = random_affine(x, u, 0.125, (0.8, 1.2)), random_crop(x, u[:, :2], 0.6, 31)
    assert all(torch.equal(a, b) for a, b in zip(plain, mixed))


def test_no_images_no_views():
    g, p = Views(16, ViewConfig(global_views=2, patch_views=2))(torch.rand(0, 3, 24, 24))
    assert g.shape == (0, 3, 16, 16) and p.shape == (0, 3, 16, 16)


def test_views_use_the_documented_columns_of_their_random_numbers(monkeypatch):
    """Colour from columns 0-2, the warp from 3-5, the cutout from 6-7, the patch crop from
    8-9: the views equal the functions called on those columns by hand."""
    cfg = ViewConfig(global_views=2, patch_views=3, noise=0.0, cutout=0.3)
    x = torch.rand(1, 3, 24, 24)
    u = torch.rand(5, 10)
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: u.clone())
    g, p = Views(16, cfg)(x)
    rows = torch.cat([F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False,
                                    antialias=True).repeat(2, 1, 1, 1),
                      random_crop(x.repeat(3, 1, 1, 1), u[2:, 8:10], cfg.patch_fraction, 16)])
    rows = color_jitter(rows, cfg, u[:, 0:3])
    rows = cutout(random_affine(rows, u[:, 3:6], cfg.translate, cfg.scale), u[:, 6:8], 0.3)
    assert torch.allclose(torch.cat([g, p]), rows, atol=1e-6)


def test_views_draw_their_numbers_in_one_call_and_repeat_with_a_seed(monkeypatch):
    calls = []
    real = torch.rand

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "rand", counting)
    views = Views(16, ViewConfig(global_views=4, patch_views=3))
    x = torch.rand(2, 3, 24, 24)
    calls.clear()
    torch.manual_seed(5)
    first = views(x)
    assert len(calls) == 1 and tuple(calls[0][:2]) == (2 * (4 + 3), 10)
    torch.manual_seed(5)
    again = views(x)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    torch.manual_seed(6)
    assert not torch.equal(views(x)[0], first[0])


def test_views_translate_and_zoom_within_their_ranges():
    """A bright spot at the centre lands within translate * side of where it was, and moves in
    most views; a spot off the centre, with no translation, lands at zoom x its distance from
    the centre, the zoom in [0.8, 1.2] and varying."""
    torch.manual_seed(2)
    side = 32
    still = ViewConfig(global_views=200, patch_views=0, noise=0.0, cutout=0.0).with_jitter(0.0)

    def centroids(x: torch.Tensor, cfg: ViewConfig) -> torch.Tensor:
        views = Views(side, cfg)(x)[0][:, 0]
        grid = torch.arange(side, dtype=torch.float32)
        mass = views.sum((1, 2))
        return torch.stack([(views.sum(1) * grid).sum(1) / mass,
                            (views.sum(2) * grid).sum(1) / mass], 1) - 15.5

    x = torch.zeros(1, 3, side, side)
    x[..., 15:17, 15:17] = 1.0
    shift = centroids(x, still)
    assert shift.abs().max() <= 0.125 * side + 0.5
    assert (shift.abs() > 0.5).any(1).float().mean() > 0.5
    x = torch.zeros(1, 3, side, side)
    x[..., 21:23, 21:23] = 1.0  # 6 pixels right of and below the centre
    zoom = centroids(x, dataclasses.replace(still, translate=0.0)) / 6.0
    assert torch.allclose(zoom[:, 0], zoom[:, 1], atol=0.02)  # the same zoom on both axes
    assert zoom.min() > 0.78 and zoom.max() < 1.22 and zoom.std() > 0.05
