"""--view-batch: the views go through the model K at a time with the same gradient."""

import dataclasses

import pytest
import torch

from clipag.augment import ViewConfig, Views
from clipag.generate import (GenerateConfig, encode_targets, generate, step_gradient,
                             view_rows)
from clipag.prompts import parse_prompt, with_negatives

# A small lr: Adam's first update is lr * g / (|g| + eps), about lr * sign(g), so entries whose
# gradient is near zero turn float-rounding differences into pixel differences up to ~lr/1e4.
CONFIG = GenerateConfig(steps=4, lr=0.005, init="noise", tv_weight=0.2, save_every=1,
                        views=ViewConfig(global_views=3, patch_views=2))
PROMPTS = ["a red circle | a square:0.5", "a blue square"]


def _gradient(guide, config, seed):
    """One step's pixel gradient and losses from a fixed image, the views drawn from `seed`."""
    parsed = [with_negatives(parse_prompt(p), ["green"]) for p in PROMPTS]
    targets = encode_targets(guide, parsed)
    pixels = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    pixels.requires_grad_(True)
    views = Views(guide.image_size, config.views)
    torch.manual_seed(seed)
    losses = step_gradient(guide, views, pixels, targets, config, view_rows(2, config, pixels.device))
    return pixels.grad, losses


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_step_gradient_is_the_same_in_chunks(tiny_guide, seed):
    whole, (g0, p0) = _gradient(tiny_guide, CONFIG, seed)
    assert whole.abs().sum() > 0 and g0.shape == p0.shape == (2,)
    for k in (1, 3, 4, 9):  # 10 views in all: chunks that split images and view kinds
        part, (g, p) = _gradient(tiny_guide, dataclasses.replace(CONFIG, view_batch=k), seed)
        assert torch.allclose(part, whole, atol=1e-5, rtol=0), k
        assert torch.allclose(g, g0, atol=1e-5) and torch.allclose(p, p0, atol=1e-5), k
    # and the gradient does depend on the views drawn: the comparison above is not vacuous
    other, _ = _gradient(tiny_guide, CONFIG, seed + 10)
    assert not torch.allclose(other, whole, atol=1e-5, rtol=0)


def test_view_rows_only_when_chunking_helps():
    device = torch.device("cpu")
    assert view_rows(2, CONFIG, device) is None  # 0: one pass
    assert view_rows(2, dataclasses.replace(CONFIG, view_batch=10), device) is None  # all fit
    owner, share = view_rows(2, dataclasses.replace(CONFIG, view_batch=3), device)
    assert owner.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]
    assert torch.allclose(share, torch.tensor([1 / 3] * 6 + [5 / 2] * 4))


@pytest.mark.parametrize("views", [ViewConfig(global_views=3, patch_views=2),
                                   ViewConfig(global_views=0, patch_views=3),
                                   ViewConfig(global_views=3, patch_views=0)])
def test_a_few_steps_give_the_same_pixels_in_chunks(tiny_guide, views):
    config = dataclasses.replace(CONFIG, views=views)
    runs = [generate(PROMPTS, tiny_guide, dataclasses.replace(config, view_batch=k),
                     seeds=[3, 4], negatives=["green"]) for k in (0, 1, 3)]
    whole = runs[0]
    assert len(whole.frames) == 4
    for run in runs[1:]:
        for a, b in zip(run.frames, whole.frames):
            assert torch.allclose(a, b, atol=1e-5, rtol=0)
        assert torch.allclose(run.images, whole.images, atol=1e-5, rtol=0)
        for a, b in zip(run.records, whole.records):
            assert a["best_loss"] == pytest.approx(b["best_loss"], abs=1e-5)
    # the pixels did move: equal frames are not just the start image four times
    assert (whole.frames[-1] - whole.frames[0]).abs().max() > 1e-3


def test_chunks_with_multiscale_and_a_larger_output(tiny_guide):
    config = dataclasses.replace(CONFIG, size=48, steps=4, scales=(24,))
    whole = generate(PROMPTS, tiny_guide, config, seeds=[0, 1])
    part = generate(PROMPTS, tiny_guide, dataclasses.replace(config, view_batch=2), seeds=[0, 1])
    assert part.images.shape == (2, 3, 48, 48)
    assert torch.allclose(part.images, whole.images, atol=1e-5, rtol=0)


def test_view_batch_is_recorded_and_checked(tiny_guide):
    made = generate(["a red circle"], tiny_guide,
                    dataclasses.replace(CONFIG, steps=1, view_batch=2))
    assert made.records[0]["settings"]["view_batch"] == 2
    from clipag.errors import ClipagError
    with pytest.raises(ClipagError, match="--view-batch must be >= 0, got -1"):
        dataclasses.replace(CONFIG, view_batch=-1).check()
