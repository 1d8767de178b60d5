"""Every canvas through the one optimiser: shapes, seeds, the loss going down, projections,
starts from images, the settings' checks and the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from clipag.augment import ViewConfig
from clipag.canvas import CANVASES, CanvasConfig, StrokesConfig, build
from clipag.canvas.pyramid import level_sides
from clipag.errors import ClipagError
from clipag.generate import GenerateConfig, encode_targets, generate, optimise
from clipag.optimise import lr_factor
from clipag.prompts import parse_prompt
from clipag.recipes import recipe_config

SMALL_STROKES = StrokesConfig(count=12, samples=6)


def config_for(name: str, **kw) -> GenerateConfig:
    canvas = CanvasConfig(name=name, strokes=SMALL_STROKES)
    base = GenerateConfig(steps=6, init="noise", size=32, canvas=canvas,
                          views=ViewConfig(global_views=3, patch_views=1))
    return dataclasses.replace(base, **kw)


@pytest.mark.parametrize("name", sorted(CANVASES))
def test_each_canvas_makes_seeded_images_in_range(tiny_guide, name):
    config = config_for(name)
    # the first model call of a process may round differently from later ones (seen on the
    # CPU with the tiny guide, whatever the canvas): compare two calls after it
    generate(["a red circle"], tiny_guide, config, seeds=[0])
    a = generate(["a red circle", "a blue square"], tiny_guide, config, seeds=[1, 2])
    b = generate(["a red circle", "a blue square"], tiny_guide, config, seeds=[1, 2])
    assert a.images.shape == (2, 3, 32, 32)
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert torch.equal(a.images, b.images)
    assert a.records[0]["settings"]["canvas"]["name"] == name
    assert a.records[0]["settings"]["lr"] > 0  # resolved from the canvas's default
    other = generate(["a red circle", "a blue square"], tiny_guide, config, seeds=[3, 2])
    assert not torch.equal(other.images[0], a.images[0])


@pytest.mark.parametrize("name", sorted(CANVASES))
def test_each_canvas_lowers_the_loss(tiny_guide, name):
    """The guide's loss of the prompt falls over a short run (views fixed by the seed)."""
    torch.manual_seed(0)
    config = config_for(name, steps=30, keep="last", grad_clip=0.0,
                        views=ViewConfig(global_views=4, patch_views=0, noise=0.0,
                                         brightness=0.0, saturation=(1.0, 1.0),
                                         contrast=(1.0, 1.0), translate=0.0, scale=(1, 1),
                                         cutout=0.0))
    losses = []
    targets = encode_targets(tiny_guide, [parse_prompt("a red circle")])
    start = torch.full((1, 3, 32, 32), 0.5)
    canvas = build(config, start, [0], 32)
    optimise(tiny_guide, targets, canvas, config,
             on_step=lambda info: losses.append(float(info.loss[0])))
    assert len(losses) >= 3
    assert losses[-1] < losses[0]


def test_strokes_are_projected_into_their_ranges(tiny_guide):
    strokes = dataclasses.replace(SMALL_STROKES, width=(2.0, 3.0), width_lr=5.0, color_lr=5.0)
    config = config_for("strokes", canvas=CanvasConfig(name="strokes", strokes=strokes))
    targets = encode_targets(tiny_guide, [parse_prompt("a red circle")])
    canvas = build(config, None, [0], 32)
    optimise(tiny_guide, targets, canvas, config)
    _, widths, colors = canvas.tensors
    assert widths.min() >= 2.0 and widths.max() <= 3.0
    assert colors.min() >= 0 and colors.max() <= 1


def test_the_points_learning_rate_follows_the_clipdraw_schedule():
    schedule = ((0.5, 0.4), (0.75, 0.1))
    assert [lr_factor(schedule, s, 1000) for s in (1, 500, 501, 750, 751, 1000)] == \
        [1.0, 1.0, 0.4, 0.4, 0.1, 0.1]


def test_pyramid_and_fourier_start_from_the_start_image():
    images = torch.rand(2, 3, 32, 32) * 0.9 + 0.05
    for name in ("pyramid", "fourier"):
        canvas = build(config_for(name), images, [0, 1], 32)
        assert (canvas.render() - images).abs().max() < 2e-3, name
    assert level_sides(224, 8) == [2, 4, 7, 14, 28, 56, 112, 224]
    assert level_sides(32, 99) == [1, 2, 4, 8, 16, 32]


def test_strokes_write_an_svg_beside_the_image(tiny_guide):
    result = generate(["a red circle"], tiny_guide, config_for("strokes"), seeds=[0])
    svg = result.files[0][".svg"]
    assert svg.count("<path ") == SMALL_STROKES.count and "<title>a red circle</title>" in svg
    assert result.records[0]["init"] == "strokes (from the seed)"
    assert generate(["a red circle"], tiny_guide, config_for("pixels"), seeds=[0]).files == [{}]


def test_the_clipdraw_recipe_is_the_notebooks():
    c = recipe_config("clipdraw")
    assert (c.canvas.name, c.size, c.steps, c.learning_rate, c.grad_clip, c.keep) == \
        ("strokes", 224, 1000, 1.0, 0.0, "last")
    s = c.canvas.strokes
    assert (s.count, s.max_segments, s.width, s.width_lr, s.color_lr, s.background) == \
        (256, 3, (1.0, 50.0), 0.1, 0.01, (1.0, 1.0, 1.0))
    assert (c.views.global_views, c.views.patch_views, c.views.style) == (4, 0, "clipdraw")


@pytest.mark.parametrize("change,message", [
    ({"canvas": CanvasConfig(name="oil")}, "unknown canvas 'oil'"),
    ({"canvas": CanvasConfig(name="strokes", strokes=StrokesConfig(count=0))}, "--strokes"),
    ({"canvas": CanvasConfig(name="strokes", strokes=StrokesConfig(width=(5.0, 2.0)))},
     "--stroke-width must be [low, high]"),
    ({"canvas": CanvasConfig(name="strokes", strokes=StrokesConfig(reach=float("nan")))},
     "--reach must be a finite number"),
    ({"canvas": CanvasConfig(name="strokes", strokes=StrokesConfig(background=(1.0, 2.0, 0.0)))},
     "--background must be [r, g, b]"),
    ({"canvas": CanvasConfig(name="pyramid", pyramid=dataclasses.replace(
        CanvasConfig().pyramid, levels=0))}, "--levels must be a whole number >= 1"),
    ({"canvas": CanvasConfig(name="fourier", fourier=dataclasses.replace(
        CanvasConfig().fourier, decay=float("inf")))}, "--decay"),
    ({"canvas": CanvasConfig(name="strokes"), "scales": (16,)}, "pixels canvas only"),
    ({"canvas": CanvasConfig(name="strokes"), "init_image": "x.png"}, "cannot start from an image"),
    ({"keep": "first"}, "--keep"),
])
def test_bad_canvas_settings(change, message):
    with pytest.raises(ClipagError, match=re.escape(message)):
        dataclasses.replace(GenerateConfig(), **change).check()


# --- the command line ----------------------------------------------------------------------

def cli(args, cwd: Path):
    from clipag.cli.main import cli as group

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(group, args, catch_exceptions=False)
    except SystemExit as exc:  # the group exits itself
        raise AssertionError(exc) from None
    finally:
        os.chdir(old)


def run(args, cwd: Path):
    """`clipag ARGS` in a subprocess-free way: (exit code, output)."""
    from clipag.cli.main import cli as group

    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(group, args, standalone_mode=True)
    finally:
        os.chdir(old)
    return result.exit_code, result.output


FAST = ["--steps", "3", "--strokes", "16", "--size", "64", "-q"]


def test_draw_writes_png_svg_and_sidecar_and_resumes(tmp_path):
    code, out = run(["draw", "a red circle on a blue background", *FAST, "-o", "x.svg"], tmp_path)
    assert code == 0, out
    png, svg, side = (tmp_path / f"x{s}" for s in (".png", ".svg", ".json"))
    assert png.is_file() and svg.is_file() and side.is_file()
    meta = json.loads(side.read_text())
    assert meta["settings"]["canvas"]["name"] == "strokes"
    assert meta["settings"]["canvas"]["strokes"]["count"] == 16
    assert meta["negative_weight"] == 0.3
    before = png.stat().st_mtime_ns
    code, out = run(["draw", "a red circle on a blue background", *FAST, "-o", "x.png"], tmp_path)
    assert code == 2 and "exists" in out  # the same file without --overwrite
    code, out = run(["draw", "-f", "p.txt", *FAST, "--samples", "2"], _prompts(tmp_path))
    assert code == 0, out
    written = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert sum(n.endswith(".svg") for n in written) == 4 and sum(n.endswith(".png")
                                                                for n in written) == 4
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "outputs").iterdir()}
    code, out = run(["draw", "-f", "p.txt", *FAST, "--samples", "2"], tmp_path)
    assert code == 0
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "outputs").iterdir()}
    assert png.stat().st_mtime_ns == before


def _prompts(folder: Path) -> Path:
    (folder / "p.txt").write_text("a red circle\na green square\n")
    return folder


@pytest.mark.parametrize("args,message", [
    (["--canvas", "oil"], "'oil' is not one of"),
    (["--strokes", "0"], "--strokes"),
    (["--stroke-width", "5,2"], "LOW,HIGH with LOW <= HIGH"),
    (["--stroke-width", "1,inf"], "LOW,HIGH"),
    (["--reach", "nan"], "--reach"),
    (["--background", "1,1"], "R,G,B"),
    (["-o", "x.jpg"], "name the output .png or .svg"),
    (["--canvas", "pixels", "-o", "x.svg"], "only the strokes canvas writes SVG"),
    (["--scales", "16,32"], "pixels canvas only"),
])
def test_draw_bad_input_is_one_error_line_and_writes_nothing(tmp_path, args, message):
    code, out = run(["draw", "a red circle", *FAST, *args], tmp_path)
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith("error:") and message in out, out
    assert "Traceback" not in out
    assert list(tmp_path.iterdir()) == []


def test_draw_into_an_unwritable_folder_is_one_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    code, out = run(["draw", "a red circle", *FAST, "-o", "file/x.svg"], tmp_path)
    assert code == 2 and out.startswith("error:") and "cannot write" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_generate_takes_every_canvas_from_a_prompts_file(tmp_path):
    lines = [{"prompt": "a red circle", "canvas": "pyramid", "levels": 3},
             {"prompt": "a red circle", "canvas": "strokes", "strokes": 8},
             {"prompt": "a red circle", "canvas": "fourier", "decay": 0.5}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    code, out = run(["generate", "-f", "p.jsonl", "--steps", "2", "--views", "2",
                     "--init-candidates", "4", "-q"], tmp_path)
    assert code == 0, out
    names = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert sum(n.endswith(".svg") for n in names) == 1 and sum(n.endswith(".png")
                                                              for n in names) == 3
    metas = [json.loads(p.read_text()) for p in sorted((tmp_path / "outputs").glob("*.json"))]
    assert [m["settings"]["canvas"]["name"] for m in metas] == ["pyramid", "strokes", "fourier"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x", "canvas": "oil"}) + "\n")
    code, out = run(["generate", "-f", "bad.jsonl", "--steps", "2", "-q"], tmp_path)
    assert code == 2 and "unknown canvas 'oil'" in out and "bad.jsonl:1" in out


def test_draw_task_keys_ignore_start_settings_strokes_never_use():
    from clipag.batch import task_key

    base = recipe_config("clipdraw")
    key = task_key("a red circle", (), 0.3, 0, base, {"model": "m"})
    for change in ({"init": "noise"}, {"init_candidates": 7}, {"threshold": 0.5}):
        assert task_key("a red circle", (), 0.3, 0, dataclasses.replace(base, **change),
                        {"model": "m"}) == key
    strokes = dataclasses.replace(base.canvas.strokes, count=12)
    other = dataclasses.replace(base, canvas=dataclasses.replace(base.canvas, strokes=strokes))
    assert task_key("a red circle", (), 0.3, 0, other, {"model": "m"}) != key


def test_generate_with_the_clipdraw_recipe_weighs_negatives_as_draw_does(tmp_path):
    code, out = run(["generate", "a red circle", "--recipe", "clipdraw", *FAST, "-n", "a cross",
                     "-o", "x.png"], tmp_path)
    assert code == 0, out
    assert json.loads((tmp_path / "x.json").read_text())["negative_weight"] == 0.3
    code, out = run(["draw", "a red circle", "--recipe", "clipag", *FAST, "-o", "y.png"],
                    tmp_path)
    assert code == 0, out  # draw draws strokes whatever recipe it starts from
    assert (tmp_path / "y.svg").is_file()


def test_video_without_frames_is_refused(tmp_path):
    code, out = run(["draw", "a red circle", *FAST, "--video", "--save-every", "0"], tmp_path)
    assert code == 2 and "--video needs frames" in out
    code, out = run(["draw", "a red circle", *FAST, "--device", "bogus"], tmp_path)
    assert code == 2 and "unknown device" in out
