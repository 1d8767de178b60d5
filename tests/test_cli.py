import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from PIL import Image

from clipag.cli.main import cli
from clipag.output import read_png_meta

FAST = ["--steps", "3", "--views", "2", "--patch-views", "2", "--init", "noise", "-q"]


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def test_generate_writes_png_sidecar_and_metadata(tmp_path, tiny_checkpoint):
    out = tmp_path / "chair.png"
    result = run("generate", "a red chair:1 | wooden floor:0.3", "-c", tiny_checkpoint,
                 "-o", out, "--seed", 5, "--negative", "blurry", *FAST)
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.size == (32, 32)
    meta = read_png_meta(out)
    assert meta["prompt"] == "a red chair:1 | wooden floor:0.3" and meta["seed"] == 5
    assert [p["weight"] for p in meta["parsed"]] == [1.0, 0.3, -0.5]
    assert meta["settings"]["steps"] == 3 and meta["model"]["arch"] == "clipag-tiny"
    assert json.loads(out.with_suffix(".json").read_text()) == meta
    # an existing output is kept unless asked
    again = run("generate", "a red chair", "-c", tiny_checkpoint, "-o", out, *FAST)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert run("generate", "x", "-c", tiny_checkpoint, "-o", out, "--overwrite",
               *FAST).exit_code == 0


@pytest.mark.parametrize("flag, flag_message, line, line_message", [
    (["--tv", "-1"], "'--tv': '-1' must be a finite number >= 0",
     '{"prompt": "a cat", "tv_weight": -1}', "p.jsonl:1: 'tv_weight' must be a finite number >= 0"),
    (["--steps", "0"], "0 is not in the range 1<=x<=1000000",
     '{"prompt": "a cat", "steps": 0}', "p.jsonl:1: 'steps' must be a whole number >= 1"),
])
def test_bad_settings_are_refused_before_any_model_loads(tmp_path, flag, flag_message, line,
                                                        line_message):
    # the checkpoint does not exist: an error about it would mean the model was loaded first
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(line + "\n")
    missing = tmp_path / "missing.safetensors"
    for args, message in ((["a cat", *flag, "-o", tmp_path / "x.png"], flag_message),
                          (["-f", prompts], line_message)):
        result = run("generate", *args, "-c", missing, "-d", tmp_path / "out")
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_prompts_file_batch_and_resume(tmp_path, tiny_checkpoint):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red circle"}\n{"prompt": "two blue squares", "seed": 9}\n')
    outdir = tmp_path / "out"
    result = run("generate", "-f", prompts, "-c", tiny_checkpoint, "-d", outdir,
                 "--samples", 2, "--batch-size", 2, "--save-every", 1, *FAST)
    assert result.exit_code == 0, result.output
    pngs = sorted(p.name for p in outdir.glob("*.png"))
    assert pngs == ["0000-a-red-circle-s0.png", "0000-a-red-circle-s1.png",
                    "0001-two-blue-squares-s10.png", "0001-two-blue-squares-s9.png"]
    assert len(list(outdir.glob("*.gif"))) == 4
    stamp = {p: p.stat().st_mtime_ns for p in outdir.glob("*.png")}
    (outdir / pngs[0]).unlink()  # as if the run had been interrupted before this one
    rerun = CliRunner().invoke(cli, ["generate", "-f", str(prompts), "-c", str(tiny_checkpoint),
                                     "-d", str(outdir), "--samples", "2", "--batch-size", "2",
                                     *FAST[:-1]])
    assert rerun.exit_code == 0 and "skipping 3 finished" in rerun.output
    assert (outdir / pngs[0]).is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items() if p.name != pngs[0])


@pytest.mark.parametrize("args,message", [
    (["generate", "a cat", "-c", "/nonexistent/model.pt"], "checkpoint not found"),
    (["generate", "a cat", "--size", "3"], "3 is not in the range 8<=x<=4096"),
    (["generate", "a cat", "-c", "world-robust"],
     "world-robust is a preset, not a file: use --model world-robust"),
    (["generate", "a cat", "--device", "cuda"], "no CUDA device"),
    (["generate"], "give a PROMPT or --prompts-file"),
    (["generate", "a cat", "--scales", "16,x"], "comma-separated list of sides"),
    (["generate", "a cat", "--scales", "64", "--size", "32"], "--scales must rise"),
    (["generate", "a cat", "--init", "missing.safetensors"], "--init"),
    (["generate", "a cat", "--jitter", "3"], "'3' must be a finite number >= 0 and <= 2"),
    (["generate", "a cat", "--cutout", "1", "--size", "32"], "'1' must be a finite number >= 0 and < 1"),
    (["generate", "a cat", "--tv", "-1", "--size", "32"], "'-1' must be a finite number >= 0"),
    (["generate", "a cat", "--noise", "-1", "--size", "32"], "'-1' must be a finite number >= 0"),
    (["robustify", "d", "-o", "m.safetensors", "--model", "clipag-tiny", "--pretrained", "none",
      "--noise", "-1"], "'-1' must be a finite number >= 0"),
    (["bench", "pag", "--threshold", "1", "--prompts", "1", "-o", "b"], "Invalid value for '--threshold'"),
    (["bench", "init", "--tv", "-1", "--prompts", "1", "-o", "b"], "Invalid value for '--tv'"),
    # settings are checked before any model is loaded: the missing guide is never reached
    (["bench", "init", "--guide", "missing.safetensors", "--tv", "-1", "--prompts", "1", "-o",
      "b"], "Invalid value for '--tv'"),
    (["robustify", "/nonexistent", "-o", "x.safetensors", "--model", "clipag-tiny",
      "--pretrained", "none"], "no dataset"),
    (["robustify", "data", "-o", "x.safetensors"], "name the model"),
    (["robustify", "data", "-o", "x.safetensors", "--model", "clipag-tiny", "--pretrained",
      "none", "--group", "4", "--holdout", "0.1"], "--group cannot be combined with --holdout"),
    (["world", "export", "w", "--n", "4", "--siblings", "0"], "Invalid value for '--siblings'"),
    (["world", "export", "w", "--n", "4", "--digit-fraction", "2"],
     "Invalid value for '--digit-fraction'"),
    (["world", "export", "w", "--n", "4", "--object-scale", "2"],
     "Invalid value for '--object-scale'"),
    (["world", "export", "w", "--n", "4", "--layout", "classes", "--class-by", "colour"],
     "--class-by takes a comma-separated subset of color, shape, background; got colour"),
])
def test_bad_input_one_line_nonzero(tmp_path, tiny_checkpoint, args, message):
    os.chdir(tmp_path)
    args = [str(tiny_checkpoint) if a == "CKPT" else a for a in args]
    if "--size" in args or "--device" in args or "--init" in args:
        args += ["-c", str(tiny_checkpoint)]
    result = run(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_empty_prompts_file_and_corrupt_checkpoint_from_a_real_process(tmp_path, tiny_checkpoint):
    """The console entry point itself: exit code 2, one line on stderr, no traceback."""
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPAG_CACHE": str(tmp_path)}
    for args, message in ([["-f", str(empty)], "holds no prompts"],
                          [["a cat", "-c", str(corrupt)], "corrupt"]):
        proc = subprocess.run([sys.executable, "-m", "clipag", "generate", *args, "-q"],
                              capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error:")


def test_models_lists_presets():
    result = run("models")
    assert result.exit_code == 0
    for name in ("clipag-vitb32", "fare4-vitb32", "openai-vitb32", "world-robust"):
        assert name in result.output.replace("\n", "").replace("│", "").replace(" ", "") or \
            name[:8] in result.output


def test_init_fit_command(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (20, 20), (i * 20, 100, 200 - i * 10)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "mix.safetensors"
    result = run("init", "fit", folder, "-o", out, "--resolution", 4, "--components", 2,
                 "--rank", 2, "--crops-per-image", 2)
    assert result.exit_code == 0, result.output
    assert "1 unreadable skipped" in result.output and out.is_file()
    assert run("init", "fit", folder, "-o", out).exit_code == 2  # no silent overwrite


def test_eval_prints_table_and_saves_json(tmp_path, tiny_checkpoint, world_classes):
    out = tmp_path / "eval.json"
    result = run("eval", world_classes, "-c", tiny_checkpoint, "--norm", "linf", "--eps",
                 "4/255", "--attack-steps", 2, "--limit", 32, "--json", out, "--template",
                 "a {}")
    assert result.exit_code == 0, result.output
    assert "zero-shot accuracy" in result.output
    saved = json.loads(out.read_text())
    assert saved["images"] == 32 and abs(saved["threat"]["eps"] - 4 / 255) < 1e-9
    assert 0 <= saved["robust_accuracy"] <= saved["clean_accuracy"] + 1e-9 <= 1 + 1e-9


def test_robustify_command_writes_a_loadable_checkpoint(tmp_path, world_captions):
    out = tmp_path / "r.safetensors"
    args = ["robustify", world_captions, "-o", out, "--model", "clipag-tiny", "--pretrained",
            "none", "--steps", 2, "--batch-size", 8, "--eps", "0.5", "--attack-steps", 1, "-q"]
    assert run(*args).exit_code == 0
    again = run(*args)
    assert again.exit_code == 2 and "exists" in again.output
    assert run(*args, "--overwrite").exit_code == 0
    gen = run("generate", "a red circle", "-c", out, "-o", tmp_path / "x.png", *FAST)
    assert gen.exit_code == 0, gen.output
