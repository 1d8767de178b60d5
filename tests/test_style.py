"""Style transfer: directional targets, the U-Net canvas, the content metrics, `clipag style`
and its saved networks, and bad input."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clipag.augment import ViewConfig
from clipag.canvas.unet import forward, init_weights, parameter_count
from clipag.cli.main import cli
from clipag.content import content_penalty, self_similarity
from clipag.errors import ClipagError
from clipag.generate import GenerateConfig
from clipag.output import read_png_meta
from clipag.style import StyleConfig, style
from clipag.style_net import load_net
from clipag.targets import Targets, weighted_distance

FAST = ["--steps", "3", "--views", "2", "--patch-views", "2", "-q"]


def quick(**style_settings) -> GenerateConfig:
    return GenerateConfig(steps=4, views=ViewConfig(global_views=2, patch_views=2, cutout=0.0),
                          style=StyleConfig(**style_settings))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def image(path, size=(40, 24), mode="RGB", color=(200, 40, 40)):
    Image.new(mode, size, color).save(path)
    return path


# --- directional targets ------------------------------------------------------------------

def test_directional_distance_is_the_change_of_the_embedding_against_the_texts():
    torch.manual_seed(0)
    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    emb, origin, text = unit(torch.randn(2, 3, 8)), unit(torch.randn(2, 8)), unit(torch.randn(2, 1, 8))
    targets = Targets(text, torch.ones(2, 1), origin)
    change = unit(emb - origin[:, None])
    expected = (1 - (change * text).sum(-1)).mean(1)
    assert torch.allclose(weighted_distance(emb, targets), expected, atol=1e-6)
    # the floor zeroes every view closer than it, and their gradient with them
    d = 1 - (change * text).sum(-1)
    floor = float(d.median())
    leaf = emb.clone().requires_grad_(True)
    weighted_distance(leaf, targets, floor).sum().backward()
    assert torch.allclose(weighted_distance(emb, targets, floor),
                          torch.where(d < floor, 0, d).mean(1), atol=1e-6)
    assert (leaf.grad[d < floor].abs().sum(-1) == 0).all()
    assert (leaf.grad[d >= floor].abs().sum(-1) > 0).all()


# --- the U-Net canvas -----------------------------------------------------------------------

def test_unet_renders_any_size_each_image_on_its_own_network():
    weights = torch.stack([init_weights(4, torch.Generator().manual_seed(s)) for s in (0, 1)])
    assert weights.shape == (2, parameter_count(4))
    x = torch.rand(2, 3, 21, 34)  # neither side a multiple of 8
    y = forward(weights, x, 4)
    assert y.shape == (2, 3, 21, 34) and 0 < y.min() and y.max() < 1
    for b in range(2):  # the grouped batch is B separate networks
        assert torch.allclose(forward(weights[b:b + 1], x[b:b + 1], 4), y[b:b + 1], atol=1e-6)
    assert not torch.allclose(y[0], forward(weights[1:], x[:1], 4)[0])


def test_unet_gradient_matches_finite_differences():
    w = init_weights(2, torch.Generator().manual_seed(3)).double()[None].requires_grad_(True)
    x = torch.rand(1, 3, 9, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    probe = torch.rand(1, 3, 9, 12, dtype=torch.float64)
    (forward(w, x, 2) * probe).sum().backward()
    for i in torch.randint(0, w.shape[1], (6,), generator=torch.Generator().manual_seed(5)):
        step = torch.zeros_like(w)
        step[0, i] = 1e-6
        with torch.no_grad():
            fd = ((forward(w + step, x, 2) - forward(w - step, x, 2)) * probe).sum() / 2e-6
        assert abs(float(fd) - float(w.grad[0, i])) < 1e-6 + 1e-4 * abs(float(fd))


# --- content metrics ------------------------------------------------------------------------

def test_guide_content_distance_is_zero_on_the_content_and_sees_structure(tiny_guide):
    from clipag.world.scenes import Scene, render

    def scene(x, color="red", background="blue"):
        s = Scene("square", color, background, "large", 1, "center", ((x, 0.5, 0.4),))
        array = np.asarray(render(s, 32), dtype=np.float32) / 255
        return torch.from_numpy(array).permute(2, 0, 1)[None]

    content = scene(0.3)
    penalty = content_penalty("guide", tiny_guide, content, 1.0)
    assert float(penalty(content).detach()) < 1e-10
    moved = float(penalty(scene(0.7)).detach())
    assert moved > 1e-4
    # the distance has a gradient
    x = content.clone().add_(0.05 * torch.rand_like(content)).requires_grad_(True)
    penalty(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_self_similarity_ignores_a_shift_of_every_token():
    t = torch.randn(2, 5, 7)
    assert torch.allclose(self_similarity(t), self_similarity(t + torch.randn(2, 1, 7)), atol=1e-5)


def test_vgg_metric_needs_weights_on_disk_and_reads_the_published_file(tmp_path, monkeypatch,
                                                                       tiny_guide):
    from torchvision.models import vgg19

    from clipag import content as content_module

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ClipagError, match="VGG19 weights"):
        content_penalty("vgg", tiny_guide, torch.rand(1, 3, 16, 16), 1.0)
    torch.manual_seed(0)
    reference = vgg19().eval()
    path = content_module.vgg_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)  # torchvision's layout: a plain state dict
    net = content_module.load_vgg(torch.device("cpu"))
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(net(x), reference.features[:31](x))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipagError, match="not a readable VGG19"):
        content_module.load_vgg(torch.device("cpu"))


# --- the entry point ------------------------------------------------------------------------

def test_style_keeps_size_aspect_and_alpha_and_repeats_with_a_seed(tiny_guide):
    torch.manual_seed(0)
    content = torch.rand(4, 20, 36)
    config = quick(source="a photo")
    a = style(content, "a red painting", tiny_guide, config, [3])
    b = style(content, "a red painting", tiny_guide, config, [3])
    assert a.images.shape == (1, 4, 20, 36)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.images[0, 3], content[3])  # alpha carried through
    record = a.records[0]
    assert record["size"] == [36, 20] and record["alpha"] and record["source"] == "a photo"
    assert record["content_distance"] is not None and record["settings"]["style"]["floor"] == 0.7
    other = style(content, "a red painting", tiny_guide, config, [4])
    assert not torch.equal(a.images, other.images)


def test_style_moves_the_image_the_way_the_text_moves():
    from clipag.load import load_model
    from clipag.world.style_benchmark import content_image, style_cases

    guide = load_model("world-robust")
    case = style_cases(2)[0]
    config = dataclasses.replace(quick(source=case.source), steps=20, tv_weight=0.3,
                                 views=ViewConfig(global_views=8, patch_views=0, cutout=0.0))
    losses = []
    style(content_image(case), case.target, guide, config, [0],
          on_step=lambda info: losses.append(float(info.loss[0])))
    assert np.mean(losses[-5:]) < losses[0] - 0.05


@pytest.mark.parametrize("setting, value, message", [
    ("source", "  ", "--source"), ("metric", "lpips", "--content"),
    ("content_weight", float("nan"), "--content-weight"), ("floor", -1.0, "--floor"),
    ("max_side", 4, "--max-side")])
def test_style_settings_are_checked(tiny_guide, setting, value, message):
    config = quick(**{setting: value})
    with pytest.raises(ClipagError, match=message):
        style(torch.rand(3, 16, 16), "x", tiny_guide, config)


# --- the command ----------------------------------------------------------------------------

def test_style_command_writes_resumes_and_keeps_rgba(tmp_path, tiny_checkpoint):
    content = image(tmp_path / "photo.png", (40, 24), "RGBA", (200, 40, 40, 90))
    out = tmp_path / "out"
    result = run("style", content, "a watercolor painting", "-c", tiny_checkpoint, "-d", out,
                 "--samples", 2, *FAST)
    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["photo-a-watercolor-painting-s0.png",
                                      "photo-a-watercolor-painting-s1.png"]
    with Image.open(pngs[0]) as im:
        assert im.mode == "RGBA" and im.size == (40, 24)
        assert im.getchannel("A").getextrema() == (90, 90)
    meta = read_png_meta(pngs[0])
    assert meta["target"] == "a watercolor painting" and meta["settings"]["steps"] == 3
    assert json.loads(pngs[0].with_suffix(".json").read_text())["task"] == meta["task"]
    before = pngs[0].stat().st_mtime_ns
    again = run("style", content, "a watercolor painting", "-c", tiny_checkpoint, "-d", out,
                "--samples", 2, *FAST)
    assert again.exit_code == 0 and pngs[0].stat().st_mtime_ns == before  # finished: kept
    # a changed content file is a new task
    image(content, (40, 24), "RGBA", (10, 40, 200, 90))
    third = run("style", content, "a watercolor painting", "-c", tiny_checkpoint, "-d", out,
                "--samples", 2, *FAST)
    assert third.exit_code == 0 and len(list(out.glob("*.png"))) == 4


def test_style_folder_and_odd_formats(tmp_path, tiny_checkpoint):
    folder = tmp_path / "in"
    folder.mkdir()
    image(folder / "cmyk.jpg", (30, 20), "CMYK", (0, 200, 200, 0))
    Image.new("P", (24, 24), 3).save(folder / "palette.png")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(folder / "wide.png")
    result = run("style", folder, "a red painting", "-c", tiny_checkpoint, "-d", tmp_path / "o",
                 *FAST)
    assert result.exit_code == 0, result.output
    sizes = {p.name.split("-")[0]: Image.open(p).size for p in (tmp_path / "o").glob("*.png")}
    assert sizes == {"cmyk": (30, 20), "palette": (24, 24), "wide": (20, 20)}


def test_style_net_saved_and_applied_in_one_pass(tmp_path, tiny_checkpoint):
    content = image(tmp_path / "a.png", (24, 16))
    net = tmp_path / "net.safetensors"
    result = run("style", content, "a blue painting", "-c", tiny_checkpoint, "--recipe",
                 "clipstyler", "--channels", 4, "--patch-views", 2, "--steps", 2, "-q",
                 "-d", tmp_path / "o", "--save-net", net)
    assert result.exit_code == 0, result.output
    weights, channels, meta = load_net(net)
    assert channels == 4 and meta["target"] == "a blue painting"
    other = image(tmp_path / "b.png", (20, 12), color=(30, 200, 30))
    applied = run("style", other, "a blue painting", "--net", net, "-d", tmp_path / "n")
    assert applied.exit_code == 0, applied.output
    written = tmp_path / "n" / "b-a-blue-painting-net.png"
    assert str(written) in applied.output
    x = torch.from_numpy(np.asarray(Image.open(other), np.float32) / 255).permute(2, 0, 1)
    expected = (forward(weights[None], x[None], 4)[0] * 255).round()
    got = torch.from_numpy(np.asarray(Image.open(written), np.float32)).permute(2, 0, 1)
    assert torch.equal(got, expected)
    taken = run("style", content, "a blue painting", "-c", tiny_checkpoint, "--recipe",
                "clipstyler", "--channels", 4, "--steps", 2, "-q", "-d", tmp_path / "o2",
                "--save-net", net)
    assert taken.exit_code == 2 and "--overwrite" in taken.output
    assert not (tmp_path / "o2").exists()  # refused before any work
    wrong = run("style", other, "a red painting", "--net", net, "-d", tmp_path / "n")
    assert wrong.exit_code == 2 and "trained for 'a blue painting'" in wrong.output
    net.write_bytes(b"\x00" * 40)
    corrupt = run("style", other, "a blue painting", "--net", net, "-d", tmp_path / "n2")
    assert corrupt.exit_code == 2 and "not a readable safetensors" in corrupt.output


def _animated(path):
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


@pytest.mark.parametrize("make, args, message", [
    (lambda p: p / "missing.png", [], "not found"),
    (lambda p: (p / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nrubbish") and p / "bad.png", [],
     "cannot read"),
    (lambda p: image(p / "one.png", (1, 1)), [], "at least 8 pixels"),
    (lambda p: _animated(p / "anim.gif"), [], "animated"),
    (lambda p: image(p / "ok.png"), ["--max-side", "2"], "--max-side"),
    (lambda p: image(p / "ok.png"), ["--save-net", "n.safetensors"], "--recipe clipstyler"),
])
def test_style_bad_input_is_one_error_line(tmp_path, tiny_checkpoint, make, args, message):
    content = make(tmp_path)
    result = run("style", content, "a red painting", "-c", tiny_checkpoint, "-d", tmp_path / "o",
                 *args, *FAST)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))


def test_style_truncated_image_and_empty_target(tmp_path, tiny_checkpoint):
    whole = image(tmp_path / "whole.png", (64, 64))
    data = whole.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    result = run("style", tmp_path / "cut.png", "x", "-c", tiny_checkpoint, *FAST)
    assert result.exit_code == 2 and "cannot read" in result.output
    empty = run("style", whole, "  ", "-c", tiny_checkpoint, *FAST)
    assert empty.exit_code == 2 and "TARGET" in empty.output


def test_style_unwritable_output_folder(tmp_path, tiny_checkpoint):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    content = image(tmp_path / "a.png")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = run("style", content, "x", "-c", tiny_checkpoint, "-d", locked, *FAST)
    assert result.exit_code == 2 and "cannot write" in result.output


# --- the world proof ------------------------------------------------------------------------

def test_style_judge_reads_a_perfect_restyle_and_the_untouched_content():
    from clipag.world.style_benchmark import content_image, judge_style, style_cases
    from clipag.world.scenes import render

    for case in style_cases(6):
        content = content_image(case)
        assert judge_style(content, case) == {"changed": 0.0, "kept": 1.0, "iou": 1.0}
        changed = dataclasses.replace(case.scene, **{case.attribute: case.new})
        perfect = torch.from_numpy(np.asarray(render(changed, 64), np.float32) / 255).permute(2, 0, 1)
        read = judge_style(perfect, case)
        assert read["changed"] == 1.0 and read["kept"] == 1.0 and read["iou"] > 0.9
        assert case.new not in (case.scene.color, case.scene.background)
    assert {c.attribute for c in style_cases(4)} == {"background", "color"}


def test_style_takes_a_batch_of_contents_each_with_its_source(tiny_guide):
    a, b = torch.rand(3, 16, 24), torch.rand(3, 16, 24)
    out = style([a, b], ["a red x", "a blue x"], tiny_guide, quick(), [0, 1],
                sources=["a green x", "a pink x"])
    assert out.images.shape == (2, 3, 16, 24)
    assert [r["source"] for r in out.records] == ["a green x", "a pink x"]
    with pytest.raises(ClipagError, match="one size"):
        style([a, torch.rand(3, 16, 16)], ["x", "y"], tiny_guide, quick(), [0, 1])
    with pytest.raises(ClipagError, match="one target each"):
        style([a, b], ["x"], tiny_guide, quick(), [0])


def test_bench_style_writes_its_tables_and_grid_and_keeps_them(tmp_path, tiny_checkpoint):
    out = tmp_path / "res"
    args = ["bench", "style", "--guides", tiny_checkpoint, "--cases", 3, "--steps", 1,
            "--seed", "0,1", "--out", out, "--device", "cpu"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "style.json").read_text())
    assert data["cases"] == 3 and data["seeds"] == [0, 1] and len(data["reports"]) == 1
    for seed in data["reports"][0]["per_seed"]:
        assert set(seed) == {"changed", "kept", "iou", "iou_ok"}
        assert all(0 <= v <= 1 for v in seed.values())
    with Image.open(out / "style-grid.png") as grid:  # rows content, guide; a column a case
        assert grid.size == (3 * 128, 2 * 128)
    again = run(*args)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_view_batches_give_the_same_style_run(tiny_guide):
    content = torch.rand(3, 20, 28, generator=torch.Generator().manual_seed(1))
    config = quick(floor=0.0)
    whole = style(content, "a red painting", tiny_guide, config, [2])
    chunked = style(content, "a red painting", tiny_guide,
                    dataclasses.replace(config, view_batch=3), [2])
    assert (whole.images - chunked.images).abs().max() < 1e-4
    assert abs(whole.records[0]["best_loss"] - chunked.records[0]["best_loss"]) < 1e-5


def test_a_bad_image_among_several_is_refused_before_any_is_made(tmp_path, tiny_checkpoint):
    folder = tmp_path / "in"
    folder.mkdir()
    image(folder / "a.png")
    _animated(folder / "b.gif")
    result = run("style", folder, "a red painting", "-c", tiny_checkpoint, "-d", tmp_path / "o",
                 *FAST)
    assert result.exit_code == 2 and "animated" in result.output
    assert not (tmp_path / "o").exists()


def test_style_on_the_world_model_names_the_words_it_does_not_know(tmp_path):
    content = image(tmp_path / "a.png", (16, 16))
    result = run("style", content, "a watercolor painting", "--steps", 1, "--views", 1, "-q",
                 "-o", tmp_path / "w.png")
    assert result.exit_code == 0, result.output
    assert "not: watercolor, painting" in result.output and "--model clipag-vitb32" in result.output


def test_a_residual_unet_starts_at_its_input_and_its_saved_net_keeps_that(tmp_path, tiny_checkpoint):
    w = init_weights(4, torch.Generator().manual_seed(0), residual=True)[None]
    x = torch.rand(1, 3, 13, 22) * 0.9 + 0.05
    assert (forward(w, x, 4, residual=True) - x).abs().max() < 1e-5
    assert (forward(w, x, 4) - x).abs().max() > 0.1  # the plain network draws its own image
    content = image(tmp_path / "a.png", (24, 16))
    net = tmp_path / "r.safetensors"
    result = run("style", content, "a blue painting", "-c", tiny_checkpoint, "--recipe",
                 "clipstyler", "--residual", "--channels", 4, "--patch-views", 2, "--steps", 1,
                 "-q", "-d", tmp_path / "o", "--save-net", net)
    assert result.exit_code == 0, result.output
    weights, channels, meta = load_net(net)
    assert meta["residual"] == "true"
    assert run("style", content, "a blue painting", "--net", net, "-d", tmp_path / "n").exit_code == 0
    got = np.asarray(Image.open(tmp_path / "n" / "a-a-blue-painting-net.png"), np.float32) / 255
    x = torch.from_numpy(np.asarray(Image.open(content), np.float32) / 255).permute(2, 0, 1)
    expected = forward(weights[None], x[None], 4, residual=True)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("meta, message", [
    ({"channels": "2", "settings": "{bad"}, "settings field"),
    ({"channels": "x"}, "channels field"),
    ({"channels": "3"}, "do not make a U-Net"),
    ({"channels": "2", "residual": "maybe"}, "residual field"),
    ({"format": "other", "channels": "2"}, "not a clipag style network")])
def test_a_bad_style_network_file_is_one_error(tmp_path, meta, message):
    from safetensors.torch import save_file

    path = tmp_path / "n.safetensors"
    save_file({"weights": torch.zeros(parameter_count(2))}, str(path),
              metadata={"format": "clipag-style-net", **meta})
    with pytest.raises(ClipagError, match=message):
        load_net(path)
