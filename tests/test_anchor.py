"""--anchor: a trust region around the start image. The refiner is charged for moving the
image's coarse layout (its average over an --anchor-side grid) away from the start's, so a
draft's shapes are kept while detail is added."""

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from clipag.augment import ViewConfig, Views
from clipag.cli.main import cli
from clipag.errors import ClipagError
from clipag.generate import (GenerateConfig, drift, encode_targets, layout, optimise,
                             step_gradient, view_rows)
from clipag.prompts import parse_prompt
from clipag.world.benchmark import tv_form

CONFIG = GenerateConfig(steps=20, lr=0.05, grad_clip=0.0, threshold=0.0,
                        views=ViewConfig(global_views=4, patch_views=2))


def _start(seed: int = 0, side: int = 32) -> torch.Tensor:
    """A blocky start image: a draft's layout, upsampled."""
    coarse = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="nearest")


def test_layout_averages_cells_and_drift_ignores_detail_finer_than_a_cell():
    flat = torch.full((1, 3, 64, 64), 0.5)
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 0.4 - 0.2
    detailed = flat + checker  # every 4 x 4 cell still averages 0.5
    assert layout(flat, 16).shape == (1, 3, 16, 16)
    assert layout(flat, 128) is flat  # nothing to average below the image's own side
    assert drift(detailed, layout(flat, 16)).item() == pytest.approx(0.0, abs=1e-6)
    moved = flat.clone()
    moved[..., :16, :16] = 1.0  # a square where the start has none: 1/16 of the image, 0.5 off
    assert drift(moved, layout(flat, 16)).item() == pytest.approx(0.5 ** 2 / 16, rel=1e-5)
    # a coarser image is compared at its own side, the anchor averaged down to it
    assert drift(layout(moved, 8), layout(flat, 16)).item() == pytest.approx(0.5 ** 2 / 16,
                                                                          rel=1e-5)


def _targets(guide):
    return encode_targets(guide, [parse_prompt("a red circle"), parse_prompt("a blue square")])


@pytest.mark.parametrize("scales", [(), (16,)])
def test_a_strong_anchor_keeps_the_start_layout_an_absent_one_does_not(tiny_guide, scales):
    start = _start()
    anchor = layout(start, 16)
    moved = {}
    for weight in (0.0, 1000.0):
        config = dataclasses.replace(CONFIG, anchor=weight, scales=scales)
        torch.manual_seed(0)
        result = optimise(tiny_guide, _targets(tiny_guide), start, config)
        assert result.images.shape == start.shape
        moved[weight] = drift(result.images, anchor)
    assert (moved[0.0] > 1e-3).all(), moved  # the guide does move the layout
    assert (moved[1000.0] < 0.2 * moved[0.0]).all(), moved


def _gradient(guide, config, anchor, view_batch=0):
    pixels = _start(1).requires_grad_(True)
    torch.manual_seed(3)
    config = dataclasses.replace(config, view_batch=view_batch)
    step_gradient(guide, Views(guide.image_size, config.views), pixels, _targets(guide), config,
                  view_rows(2, config, pixels.device), anchor=anchor)
    return pixels.grad


def test_the_anchor_term_is_the_same_in_view_chunks_and_pulls_towards_the_start(tiny_guide):
    config = dataclasses.replace(CONFIG, anchor=50.0)
    away = layout(_start(1), 16) + 0.3  # a start brighter everywhere than the pixels
    whole = _gradient(tiny_guide, config, away)
    for k in (1, 5):
        assert torch.allclose(_gradient(tiny_guide, config, away, k), whole, atol=1e-5, rtol=0)
    free = _gradient(tiny_guide, config, None)
    # the extra gradient is the anchor's: negative everywhere (descent brightens the pixels)
    assert ((whole - free) < 0).all()


def test_anchor_settings_are_checked():
    with pytest.raises(ClipagError, match="--anchor must be"):
        GenerateConfig(anchor=-1.0).check()
    with pytest.raises(ClipagError, match="--anchor-side"):
        GenerateConfig(anchor_side=0).check()
    assert "anchor 2 at 8 px" in tv_form(GenerateConfig(anchor=2.0, anchor_side=8))
    assert "from a CrossFlow draft" in tv_form(GenerateConfig())  # None: resolved per start
    assert "anchor" not in tv_form(GenerateConfig(anchor=0.0))
    GenerateConfig(anchor=None, anchor_side=None).check()  # None is a valid "auto"


def test_cli_anchor_flags_and_jsonl_keys(tmp_path):
    runner = CliRunner()
    base = ["--steps", "2", "--views", "2", "--patch-views", "0", "--init", "noise", "-q"]
    result = runner.invoke(cli, ["generate", "a red circle", *base, "--anchor", "3",
                                 "--anchor-side", "8", "-d", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    settings = json.loads(next((tmp_path / "a").glob("*.json")).read_text())["settings"]
    assert settings["anchor"] == 3.0 and settings["anchor_side"] == 8
    result = runner.invoke(cli, ["generate", "a red circle", *base, "--anchor", "-1",
                                 "-d", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--anchor" in result.output
    lines = tmp_path / "p.jsonl"
    lines.write_text('{"prompt": "a red circle", "anchor_side": 0}\n')
    result = runner.invoke(cli, ["generate", "-f", str(lines), *base, "-d", str(tmp_path / "c")])
    assert result.exit_code == 2 and "anchor_side" in result.output
    assert "Traceback" not in result.output


def test_an_unset_anchor_keys_its_task_by_the_default_it_becomes(monkeypatch):
    """A resumed run skips an image whose key matches: a changed default anchor must change
    the key of a task that left it unset, and not of one that set it."""
    import clipag.batch as batch

    def key(config):
        return batch.task_key("a red circle", [], 0.5, 0, config, {"model": "m"})

    unset, own = GenerateConfig(init="crossflow"), GenerateConfig(init="crossflow", anchor=5.0,
                                                                  anchor_side=8)
    before = key(unset), key(own)
    monkeypatch.setattr(batch, "FLOW_ANCHOR", 7.0)
    assert key(unset) != before[0]
    assert key(own) == before[1]
