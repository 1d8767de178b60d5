"""Issue 35, classes 9, 11 and 7 (in part): every bad input is found before any work and
said as what it is, in one `error:` line with exit code 2, no traceback and nothing written.

- class 9 (checked too late): a prompts-file line whose settings do not fit the model is
  refused, naming its FILE:LINE, before the lines above it are generated;
- class 11 (misleading words): a bad --device, an unreadable CrossFlow file, a guide mix
  given to robustify, clipag's other files given as a guide, the scales a CrossFlow start
  drops, an empty class folder and unreadable images in `eval`;
- class 7 (memory): a prompts file that never ends or is huge, and an init image of
  1 x 1,000,000 pixels."""

import os
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import clipag.checkpoint
import clipag.prompts
from clipag.cli.main import cli
from clipag.errors import ClipagError
from clipag.flow.crossflow import CrossFlow, FlowConfig, load_flow, save_flow, text_probe
from clipag.images import decode_image
from clipag.init import GaussianMixture, fit
from clipag.load import ModelSpec
from clipag.train.robustify import TrainConfig, robustify
from bad_input import one_error_line

FAST = ["--steps", "2", "--views", "2", "--patch-views", "0", "--init-candidates", "4",
        "--device", "cpu", "-q"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def flow16(tmp_path, tiny_guide):
    """A tiny CrossFlow with 16 px drafts, on the tiny guide's text tower."""
    with torch.no_grad():
        dim = tiny_guide.encode_texts(["x"]).shape[-1]
    cfg = FlowConfig(text_dim=dim, resolution=16, patch=2, width=32, depth=2, heads=2,
                     ve_hidden=64, embed_dim=16)
    return save_flow(tmp_path / "flow16.safetensors", CrossFlow(cfg),
                     {"text_model": "tiny", "text_probe": text_probe(tiny_guide.encode_texts)})


@pytest.fixture
def mixture(tmp_path):
    images = torch.rand(40, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return fit(images, components=2, rank=2, seed=0).save(tmp_path / "mixture.safetensors")


# --- class 9: every line checked against the model before the first image ------------------

@pytest.mark.parametrize("line, flags, message", [
    ('"scales": [32, 16]', [], "--scales must rise"),
    ('"size": 8', ["--patch-views", "2", "--patch-fraction", "0.3"],
     "size 8 is too small for patch views"),
    ('"scales": [8, 16], "steps": 2', [], "--steps must be >= 3"),
])
def test_a_bad_line_3_is_refused_by_its_line_before_lines_1_and_2_are_made(
        tmp_path, tiny_checkpoint, line, flags, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red circle"}\n{"prompt": "a blue square", "seed": 3}\n'
                       '{"prompt": "x", ' + line + "}\n")
    out = tmp_path / "out"
    result = run("generate", "-f", prompts, "-c", tiny_checkpoint, "-d", out, *FAST, *flags)
    one_error_line(result, f"{prompts}:3: ", message)
    assert not out.exists()


def test_a_bad_command_line_is_not_blamed_on_a_line(tmp_path, tiny_checkpoint):
    """Lines without settings of their own are not named: the flags are at fault."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    result = run("generate", "-f", prompts, "-c", tiny_checkpoint, "-d", tmp_path / "out",
                 *FAST, "--scales", "16,8")
    one_error_line(result, "error: --scales must rise")
    assert not (tmp_path / "out").exists()


def test_a_byte_order_mark_keeps_a_first_comment_a_comment(tmp_path, tiny_checkpoint):
    prompts = tmp_path / "p.txt"
    prompts.write_bytes(b"\xef\xbb\xbf# my prompts\na red circle\n")
    out = tmp_path / "out"
    result = run("generate", "-f", prompts, "-c", tiny_checkpoint, "-d", out, *FAST)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["0000-a-red-circle-s0.png"]


# --- class 11: misleading words ------------------------------------------------------------

@pytest.mark.parametrize("command", ["generate", "draw"])
def test_a_bogus_device_is_an_error_even_when_every_image_is_finished(tmp_path, tiny_checkpoint,
                                                                     command):
    out = tmp_path / "x.png"
    args = [command, "a red circle", "-c", tiny_checkpoint, "-o", out, "--steps", "2",
            "--views", "2", "--patch-views", "0", "-q"]
    if command == "draw":
        args += ["--strokes", "4"]
    result = run(*args, "--device", "cpu")
    assert result.exit_code == 0, result.output
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    one_error_line(run(*args, "--device", "bogus"), "unknown device 'bogus'")
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def _unreadable(path, monkeypatch):
    """A file this process may not read: chmod 000, or where root reads anyway, its open
    refused as the kernel would."""
    path.chmod(0)
    if os.geteuid() != 0:
        return
    real = open

    def refuse(name, *args, **kwargs):
        if os.path.abspath(name) == os.path.abspath(path):
            raise PermissionError(13, "Permission denied", str(name))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(clipag.checkpoint, "open", refuse, raising=False)


@pytest.mark.parametrize("how, message", [
    ("folder", "is a folder"), ("truncated", "is truncated"),
    ("unreadable", "cannot be read: Permission denied")])
def test_an_unreadable_crossflow_file_says_what_is_wrong(tmp_path, flow16, tiny_checkpoint,
                                                         monkeypatch, how, message):
    bad = tmp_path / "bad.safetensors"
    if how == "folder":
        bad.mkdir()
    elif how == "truncated":
        bad.write_bytes(flow16.read_bytes()[:300])
    else:
        bad.write_bytes(flow16.read_bytes())
        _unreadable(bad, monkeypatch)
    try:
        with pytest.raises(ClipagError, match=message) as caught:
            load_flow(bad, torch.device("cpu"))
        assert "not a clipag CrossFlow" not in str(caught.value)
        out = tmp_path / "out"
        result = run("generate", "a red circle", "-c", tiny_checkpoint, "--init",
                     f"crossflow:{bad}", "-d", out, *FAST)
        one_error_line(result, str(bad), message)
        assert "not a clipag CrossFlow" not in result.output and not out.exists()
        if how != "folder":  # click refuses a folder as --flow itself
            result = run("crossflow", "sample", "a red circle", "--flow", bad, "-d", out,
                         "--device", "cpu")
            one_error_line(result, str(bad), message)
            assert not out.exists() or not list(out.iterdir())
    finally:
        if bad.is_file():
            bad.chmod(0o644)


def test_a_flow_or_mixture_given_as_the_other_says_which_it_is(tmp_path, flow16, mixture,
                                                                tiny_checkpoint):
    out = tmp_path / "out"
    result = run("generate", "a red circle", "-c", tiny_checkpoint, "--init", mixture,
                 "-d", out, *FAST)
    assert result.exit_code == 0, result.output  # the mixture is a good --init
    for init, needles in [(f"crossflow:{mixture}", ["Gaussian-mixture start", "--init FILE"]),
                          (str(flow16), ["CrossFlow", "--init crossflow:FILE"])]:
        one_error_line(run("generate", "a red circle", "-c", tiny_checkpoint, "--init", init,
                           "-d", tmp_path / "o2", *FAST), *needles)
    assert not (tmp_path / "o2").exists()
    with pytest.raises(ClipagError, match="CrossFlow checkpoint"):
        GaussianMixture.load(flow16)


def test_robustify_refuses_a_guide_mix_in_the_library_too(tmp_path, world_captions):
    config = TrainConfig(data=str(world_captions), out=str(tmp_path / "r.safetensors"), steps=1)
    with pytest.raises(ClipagError, match="is a mix of guides, which .* cannot be trained"):
        robustify(config, ModelSpec(model="world-robust*1+world-vanilla"), torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["-c", "--pretrained"])
def test_a_flow_or_mixture_given_as_the_guide_says_what_it_is_and_where_it_goes(
        tmp_path, flow16, mixture, flag):
    model = ["--model", "clipag-tiny"] if flag == "--pretrained" else []
    out = tmp_path / "out"
    for path, needles in [(flow16, ["CrossFlow", "not a clipag guide model",
                                    "--init crossflow:FILE"]),
                          (mixture, ["Gaussian-mixture start", "not a clipag guide model",
                                     "--init FILE"])]:
        result = run("generate", "a red circle", *model, flag, path, "-d", out, *FAST)
        one_error_line(result, str(path), *needles)
        assert "--model ARCH" not in result.output
    assert not out.exists()


def test_a_crossflow_start_counts_only_the_scales_it_runs(tmp_path, tiny_checkpoint, flow16):
    """A 16 px draft drops the 8 px stage: 8,16,32 then 64 is three stages, not four."""
    out = tmp_path / "x.png"
    base = ["generate", "a red circle", "-c", tiny_checkpoint, "--init", f"crossflow:{flow16}",
            "--flow-steps", "1", "--size", "64", "--views", "2", "--patch-views", "0",
            "--device", "cpu", "-q"]
    result = run(*base, "--scales", "8,16,32", "--steps", "3", "-o", out)
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.size == (64, 64)
    one_error_line(run(*base, "--scales", "8,16,32", "--steps", "2", "-o", tmp_path / "y.png"),
                   "--steps must be >= 3 for 3 scales", "skips the scales below its 16 px draft")
    assert not (tmp_path / "y.png").exists()


def _class_folders(root, classes):
    """Class folders of tiny PNGs; `classes` maps a name to (good images, corrupt ones)."""
    rng = np.random.default_rng(0)
    for name, (good, bad) in classes.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(good):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                folder / f"{i}.png")
        for i in range(bad):
            (folder / f"bad{i}.png").write_bytes(b"not a png")
    return root


def test_eval_names_an_empty_class_folder_instead_of_dropping_it(tmp_path, tiny_checkpoint):
    data = _class_folders(tmp_path / "data", {"circle": (2, 0), "square": (0, 0)})
    report = tmp_path / "r.json"
    result = run("eval", data, "-c", tiny_checkpoint, "--eps", "0", "--json", report)
    one_error_line(result, "square", "no images")
    assert not report.exists()


def test_eval_shows_how_many_images_were_skipped_as_unreadable(tmp_path, tiny_checkpoint):
    data = _class_folders(tmp_path / "data", {"circle": (2, 1), "square": (2, 2)})
    result = run("eval", data, "-c", tiny_checkpoint, "--eps", "0")
    assert result.exit_code == 0, result.output
    assert "unreadable" in result.output
    rows = [line for line in result.output.splitlines() if "0." in line or "1.0" in line]
    cells = [c.strip() for c in rows[-1].replace("┃", "│").split("│") if c.strip()]
    assert cells[:3] == ["4", "3", "2"], result.output  # images, skipped, classes


# --- class 7: memory -------------------------------------------------------------------------

def test_a_prompts_file_that_never_ends_is_refused(tmp_path, tiny_checkpoint):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sources = [fifo] + (["/dev/zero"] if os.path.exists("/dev/zero") else [])
    for source in sources:
        began = time.monotonic()
        result = run("generate", "-f", source, "-c", tiny_checkpoint, "-d", tmp_path / "out",
                     *FAST)
        one_error_line(result, str(source), "not a regular file")
        assert time.monotonic() - began < 30
    assert not (tmp_path / "out").exists()


def test_a_prompts_file_past_the_cap_is_refused(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(clipag.prompts, "MAX_PROMPTS_BYTES", 1 << 10)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n" * 100)
    result = run("generate", "-f", prompts, "-c", tiny_checkpoint, "-d", tmp_path / "out",
                 *FAST)
    one_error_line(result, str(prompts), "larger than")
    assert not (tmp_path / "out").exists()
    prompts.write_text("a red circle\n" * 10)  # under the cap: fine
    assert [j.prompt for j in clipag.prompts.read_prompts_file(prompts)] == ["a red circle"] * 10


def test_a_one_pixel_wide_init_image_is_cropped_before_it_is_resized(tmp_path, tiny_checkpoint,
                                                                     monkeypatch):
    strip = tmp_path / "strip.png"
    Image.fromarray(np.full((1_000_000, 1, 3), 200, np.uint8)).save(strip)
    assert strip.stat().st_size < 10_000
    largest = []
    real = Image.Image.resize

    def resize(self, size, *args, **kwargs):
        largest.append(size[0] * size[1])
        return real(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    began = time.monotonic()
    image = decode_image(strip, 224)
    assert image.shape == (3, 224, 224) and torch.allclose(image, torch.tensor(200 / 255))
    assert max(largest) <= 224 * 224  # never the 224 x 224,000,000 the old resize asked for
    out = tmp_path / "x.png"
    result = run("generate", "a red circle", "-c", tiny_checkpoint, "--init-image", strip,
                 "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - began < 120
    with Image.open(out) as made:
        assert made.size == (32, 32)


def test_images_of_ordinary_shapes_resize_as_before(tmp_path):
    """Up to 4:1 the whole image is resized, then cropped, exactly as before."""
    rng = np.random.default_rng(1)
    for w, h in [(40, 30), (30, 100), (17, 17), (200, 51)]:
        pil = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        scale = 32 / min(w, h)
        rw, rh = max(32, round(w * scale)), max(32, round(h * scale))
        left, top = (rw - 32) // 2, (rh - 32) // 2
        want = pil.resize((rw, rh), Image.BICUBIC).crop((left, top, left + 32, top + 32))
        path = tmp_path / f"{w}x{h}.png"
        pil.save(path)
        got = decode_image(path, 32)
        assert torch.equal(got, torch.from_numpy(np.asarray(want).copy()).permute(2, 0, 1)
                           .float() / 255)
