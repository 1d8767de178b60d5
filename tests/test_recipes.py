"""The reference recipe (the CLIPAG notebook's view geometry and optimiser), the wrap-around
smoothness penalty, and the judge's placement reads."""

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from clipag.cli.main import cli
from clipag.augment import ViewConfig, Views, batch_resize, clipped_cutout, whole_pixel_shift
from clipag.errors import ClipagError
from clipag.generate import GenerateConfig, generate, smoothness
from clipag.recipes import recipe_config, uses_recommended
from clipag.world.judge import read_image

STILL = dict(noise=0.0, translate=0.0, scale=(1.0, 1.0), cutout=0.0)  # no randomness but noise


def test_reference_views_have_the_model_side_and_carry_gradients():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 48, 48, requires_grad=True)
    g, p = Views(32, ViewConfig(global_views=3, patch_views=5, style="reference"))(x)
    assert g.shape == (6, 3, 32, 32) and p.shape == (10, 3, 32, 32)
    (g.sum() + p.sum()).backward()
    assert x.grad.abs().sum() > 0


def test_reference_patch_views_share_one_noise_image_global_views_do_not():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32)
    cfg = ViewConfig(global_views=4, patch_views=4, patch_fraction=1.0, style="reference",
                     **dict(STILL, noise=0.05)).with_jitter(0.0)
    g, p = Views(32, cfg)(x)
    assert all(torch.equal(p[0], p[i]) for i in range(1, 4))
    assert not torch.equal(p[0], x[0])  # the shared noise is there
    assert not any(torch.equal(g[0], g[i]) for i in range(1, 4))


def test_whole_pixel_shift_moves_by_whole_pixels_and_fills_zeros():
    torch.manual_seed(0)
    x = torch.arange(1.0, 65.0).view(1, 1, 8, 8).repeat(50, 1, 1, 1)
    y = whole_pixel_shift(x, 0.25)  # up to 2 pixels each way
    for view in y[:, 0]:
        kept = view[view > 0]
        assert torch.equal(kept, kept.round())  # no interpolation between pixels
        rows, cols = torch.nonzero(view == 1.0 + 9.0, as_tuple=True)  # pixel (1, 1), if kept
        if len(rows):
            assert abs(rows.item() - 1) <= 2 and abs(cols.item() - 1) <= 2
    assert (y == 0).any()  # something was shifted in


def test_batch_resize_uses_one_factor_for_the_whole_batch():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 20, 20).repeat(6, 1, 1, 1)
    for scale in ((0.7, 0.8), (1.2, 1.3)):
        y = batch_resize(x, scale)
        assert y.shape == x.shape
        assert all(torch.equal(y[0], y[i]) for i in range(6))
    assert (batch_resize(x, (0.7, 0.8))[:, :, 0] == 0).all()  # shrunk: zero border


def test_clipped_cutout_blanks_at_most_the_square_and_often_less():
    torch.manual_seed(0)
    ones = torch.ones(400, 1, 16, 16)
    blanked = (clipped_cutout(ones, 0.5) == 0).flatten(1).sum(1)
    assert blanked.max().item() == 64  # an 8x8 square when it lies inside
    assert (blanked < 64).float().mean() > 0.3  # clipped at the border in many views
    assert (blanked > 0).all()


def test_reference_style_is_validated():
    with pytest.raises(ClipagError, match="view style must be one of clipag, reference"):
        GenerateConfig(views=ViewConfig(style="notebook")).check()


def test_recipes():
    ref = recipe_config("reference")
    assert ref.weight_decay == 0.01 and ref.views.style == "reference"
    assert ref.scales == () and ref.tv_weight == 0.0
    assert (ref.views.global_views, ref.views.patch_views) == (32, 32)
    assert recipe_config("clipag") == GenerateConfig()
    assert uses_recommended("clipag") and not uses_recommended("reference")
    with pytest.raises(ClipagError, match="unknown recipe"):
        recipe_config("fast")


def test_reference_recipe_generates_deterministically(tiny_guide):
    config = dataclasses.replace(recipe_config("reference"), steps=3, init="noise",
                                 views=ViewConfig(global_views=2, patch_views=2,
                                                  style="reference"))
    a = generate(["a red circle"], tiny_guide, config, [3]).images
    b = generate(["a red circle"], tiny_guide, config, [3]).images
    assert a.shape[-1] == tiny_guide.image_size
    assert torch.allclose(a, b, atol=1e-5)


def _settings(folder):
    return json.loads(next(folder.glob("*.json")).read_text())["settings"]


def test_cli_recipe_reference_drops_the_presets_recommended_settings(tmp_path):
    runner = CliRunner()
    base = ["generate", "a red circle on a blue background", "--steps", "5", "-q",
            "--views", "2", "--patch-views", "2"]
    result = runner.invoke(cli, base + ["-d", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    clipag_settings = _settings(tmp_path / "a")
    assert clipag_settings["scales"] and clipag_settings["tv_weight"] > 0  # world-robust's
    result = runner.invoke(cli, base + ["--recipe", "reference", "-d", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    ref = _settings(tmp_path / "b")
    assert ref["scales"] == [] and ref["tv_weight"] == 0 and ref["weight_decay"] == 0.01
    assert ref["views"]["style"] == "reference" and ref["views"]["global_views"] == 2
    result = runner.invoke(cli, base + ["--recipe", "reference", "--weight-decay", "0",
                                         "--tv", "0.2", "-d", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    given = _settings(tmp_path / "c")  # flags apply over the recipe
    assert given["weight_decay"] == 0 and given["tv_weight"] == 0.2
    assert given["views"]["style"] == "reference"


def _square(at: tuple[int, int], side: int = 16, size: int = 64) -> torch.Tensor:
    x = torch.zeros(1, 3, size, size)
    x[..., at[0]:at[0] + side, at[1]:at[1] + side] = 1.0
    return x


def test_wrapped_smoothness_costs_the_same_everywhere_plain_does_not():
    centre, corner = _square((24, 24)), _square((0, 0))
    assert smoothness(corner, wrap=True).item() == pytest.approx(
        smoothness(centre, wrap=True).item(), rel=1e-6)
    assert smoothness(corner).item() < 0.6 * smoothness(centre).item()
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    rolled = x.roll((5, 3), dims=(-2, -1))
    assert torch.allclose(smoothness(rolled, wrap=True), smoothness(x, wrap=True), atol=1e-6)
    assert (smoothness(torch.full((1, 3, 8, 8), 0.3), wrap=True) == 0).all()


def test_tv_wrap_is_validated():
    with pytest.raises(ClipagError, match="--tv-wrap must be true or false"):
        GenerateConfig(tv_wrap="yes").check()


def test_judge_reads_where_the_object_is():
    centre, corner = _square((24, 24))[0], _square((0, 0))[0]
    c, k = read_image(centre), read_image(corner)
    assert c["offset"] < 0.02 and not c["edge"]
    assert k["offset"] > 0.3 and k["edge"]


def test_init_reports_tell_two_flows_apart():
    from clipag.world.benchmark import init_label

    assert init_label("crossflow:work/a/one.safetensors") == "crossflow:one"
    assert init_label("crossflow:/tmp/two.safetensors") == "crossflow:two"
    assert (init_label("gmm"), init_label("crossflow")) == ("gmm", "crossflow")


def test_cli_tv_wrap_flag_and_jsonl_key(tmp_path):
    runner = CliRunner()
    base = ["--steps", "2", "--views", "2", "--patch-views", "0", "--init", "noise", "-q"]
    result = runner.invoke(cli, ["generate", "a red circle", *base, "--tv", "0.3", "--tv-wrap",
                                 "-d", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert _settings(tmp_path / "a")["tv_wrap"] is True
    lines = tmp_path / "p.jsonl"
    lines.write_text('{"prompt": "a red circle", "tv_wrap": "yes"}\n')
    result = runner.invoke(cli, ["generate", "-f", str(lines), *base, "-d", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "tv_wrap" in result.output and "true or false" in result.output
    assert "Traceback" not in result.output


def test_tv_by_side_weights_each_coarse_stage_by_its_side(tiny_guide, monkeypatch):
    import sys

    gen = sys.modules["clipag.optimise"]
    seen = []
    real = gen._optimise_stage

    def record(guide, targets, start, config, *args, **kwargs):
        seen.append((start.render().shape[-1], config.tv_weight))
        return real(guide, targets, start, config, *args, **kwargs)

    monkeypatch.setattr(gen, "_optimise_stage", record)
    config = GenerateConfig(steps=3, size=32, scales=(8, 16), tv_weight=0.4, init="noise",
                            views=ViewConfig(global_views=2, patch_views=0))
    generate(["a red circle"], tiny_guide, config, [0])
    assert seen == [(8, 0.4), (16, 0.4), (32, 0.4)]
    seen.clear()
    generate(["a red circle"], tiny_guide, dataclasses.replace(config, tv_by_side=True), [0])
    assert seen == [(8, pytest.approx(0.1)), (16, pytest.approx(0.2)), (32, pytest.approx(0.4))]
