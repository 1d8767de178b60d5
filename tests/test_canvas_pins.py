"""The canvas rewrite changes no pixel: the pixels canvas makes the same images as the loop
it replaced. tests/data/pixel_pins.safetensors holds the images these runs made before the
rewrite (written at commit 67042ee by `python tests/test_canvas_pins.py`, one thread)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipag.generate import GenerateConfig, generate
from clipag.augment import ViewConfig
from clipag.models import _guide, build_model

PINS = Path(__file__).parent / "data" / "pixel_pins.safetensors"
SMALL = GenerateConfig(steps=6, init="noise", views=ViewConfig(global_views=3, patch_views=2))
RUNS = {
    "plain": SMALL,
    "stages": dataclasses.replace(SMALL, size=32, scales=(8, 16), tv_weight=0.3, tv_wrap=True,
                                  anchor=10.0, anchor_side=8, steps=7),
    "chunked": dataclasses.replace(SMALL, view_batch=4, weight_decay=0.01, threshold=0.0,
                                   save_every=2),
    "reference": dataclasses.replace(SMALL, views=ViewConfig(global_views=2, patch_views=2,
                                                             style="reference")),
}


def tiny():
    model, tokenizer = build_model("clipag-tiny", seed=0)
    return _guide(model, tokenizer, "tiny", {"arch": "clipag-tiny"})


def make(name: str) -> torch.Tensor:
    result = generate(["a red circle", "a blue square"], tiny(), RUNS[name], seeds=[3, 5])
    return torch.cat([result.images, *result.frames]) if result.frames else result.images


@pytest.mark.parametrize("name", sorted(RUNS))
def test_pixels_canvas_makes_the_images_the_old_loop_made(name):
    torch.set_num_threads(1)
    pinned = load_file(PINS)[name]
    now = make(name)
    assert now.shape == pinned.shape
    diff = (now - pinned).abs()
    # the same arithmetic in the same order: equal here; other CPUs may round differently,
    # which Adam's first steps can turn into a few pixels moved by one learning rate
    assert diff.mean() < 1e-3
    assert (diff > 1e-3).float().mean() < 0.02


if __name__ == "__main__":
    torch.set_num_threads(1)
    save_file({name: make(name).contiguous() for name in RUNS}, str(PINS))
