"""`clipag generate` against a hostile user: every bad input ends in one line and exit code 2
with nothing that existed lost; many processes on one folder make every image once."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

import clipag.batch
from clipag.cli.main import cli
from clipag.settings import JSONL_KEYS, SETTINGS
from bad_input import one_error_line

FAST = ["--steps", "2", "--views", "2", "--patch-views", "2", "--init", "noise", "-q"]


def run(*args):
    return CliRunner().invoke(cli, ["generate", *[str(a) for a in args]])


def strict_json(path: Path):
    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


# --- outputs ----------------------------------------------------------------------------------

def test_output_never_silently_replaces_a_sidecar_or_gif(tmp_path, tiny_checkpoint):
    out = tmp_path / "x.png"
    sidecar, gif = out.with_suffix(".json"), out.with_suffix(".gif")
    sidecar.write_text("mine\n")
    one_error_line(run("a cat", "-c", tiny_checkpoint, "-o", out, *FAST), str(sidecar),
                   "--overwrite")
    assert sidecar.read_text() == "mine\n" and not out.exists()
    sidecar.unlink()
    gif.write_bytes(b"my gif")
    one_error_line(run("a cat", "-c", tiny_checkpoint, "-o", out, "--save-every", 1, *FAST),
                   str(gif))
    assert gif.read_bytes() == b"my gif" and not out.exists()
    result = run("a cat", "-c", tiny_checkpoint, "-o", out, "--save-every", 1, "--overwrite",
                 *FAST)
    assert result.exit_code == 0, result.output
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == 3


@pytest.mark.parametrize("name", ["only.json", "x.gif", "x.txt", "noext"])
def test_output_names_that_are_not_images_are_refused(tmp_path, tiny_checkpoint, name):
    one_error_line(run("a cat", "-c", tiny_checkpoint, "-o", tmp_path / name, *FAST),
                   "name it .png, .jpg, .jpeg or .webp")
    assert list(tmp_path.iterdir()) == [tiny_checkpoint]


@pytest.mark.parametrize("name, fmt", [("x.jpg", "JPEG"), ("x.jpeg", "JPEG"), ("x.webp", "WEBP"),
                                       ("x.png", "PNG")])
def test_output_format_follows_the_suffix(tmp_path, tiny_checkpoint, name, fmt):
    out = tmp_path / name
    result = run("a cat", "-c", tiny_checkpoint, "-o", out, "--seed", 3, *FAST)
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.format == fmt and image.size == (32, 32)
        if fmt == "PNG":
            assert json.loads(image.text["clipag"])["seed"] == 3
    meta = strict_json(out.with_suffix(".json"))
    assert meta["seed"] == 3 and meta["prompt"] == "a cat"


def test_output_folder_must_be_writable_before_any_work(tmp_path, tiny_checkpoint):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_error_line(run("a cat", "-c", tiny_checkpoint, "-d", blocker / "out", *FAST),
                   "cannot write to", "is not a folder")
    one_error_line(run("a cat", "-c", tiny_checkpoint, "-o", blocker / "x.png", *FAST),
                   "cannot write to")


def test_a_late_write_failure_says_what_was_kept(tmp_path, tiny_checkpoint, monkeypatch):
    real = clipag.batch.save_image
    calls = []

    def failing(path, image, meta):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, image, meta)

    monkeypatch.setattr(clipag.batch, "save_image", failing)
    out = tmp_path / "out"
    result = run("a cat", "-c", tiny_checkpoint, "-d", out, "--samples", 2, *FAST)
    one_error_line(result, "No space left on device", "kept 1 finished image(s)", "rerun")
    assert [p.name for p in out.glob("*.png")] == [calls[0].name]
    assert not list(out.glob(".*"))  # no temporaries, no locks
    monkeypatch.setattr(clipag.batch, "save_image", real)
    again = run("a cat", "-c", tiny_checkpoint, "-d", out, "--samples", 2, *FAST[:-1])
    assert again.exit_code == 0 and "skipping 1 finished" in again.output
    assert len(list(out.glob("*.png"))) == 2


def test_ctrl_c_keeps_what_was_finished_and_releases_its_claims(tmp_path, tiny_checkpoint,
                                                               monkeypatch):
    real = clipag.batch.generate
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(clipag.batch, "generate", interrupted)
    out = tmp_path / "out"
    result = run("a cat", "-c", tiny_checkpoint, "-d", out, "--samples", 3, *FAST)
    assert result.exit_code == 130 and "finished outputs were kept" in result.output
    assert len(pngs(out)) == 1 and leftovers(out) == []


# --- resume trusts the sidecar, not the name --------------------------------------------------

def pngs(folder):
    return sorted(p.name for p in Path(folder).glob("*.png"))


def test_resume_skips_only_the_same_task(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    base = ["-c", tiny_checkpoint, "-d", out, *FAST[:-1]]
    assert run("a red circle on a green background", *base).exit_code == 0
    first = pngs(out)
    assert first == ["0000-a-red-circle-on-a-green-background-s0.png"]
    for variant in (["A red circle, on a green background!"],
                    ["a red circle on a green background", "--steps", 3],
                    ["a red circle on a green background", "--negative", "blue"]):
        result = run(*base, *variant)
        assert result.exit_code == 0 and "skipping" not in result.output, result.output
    names = pngs(out)
    assert len(names) == 4 and first[0] in names
    for variant in (["A red circle, on a green background!"],
                    ["a red circle on a green background", "--steps", 3]):
        result = run(*base, *variant)  # reruns find their own files
        assert result.exit_code == 0 and "skipping 1 finished" in result.output, result.output
    assert pngs(out) == names
    for name in names:
        meta = strict_json(out / name.replace(".png", ".json"))
        assert meta["task"] and (name == first[0] or meta["task"][:8] in name)


def test_emoji_prompts_and_another_checkpoint_get_their_own_files(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    other = tmp_path / "other.safetensors"
    data = bytearray(tiny_checkpoint.read_bytes())
    data[-4:] = bytes(4)  # another model: its last weights differ
    other.write_bytes(bytes(data))
    for prompt, ckpt in (("🎨🎨", tiny_checkpoint), ("🌅", tiny_checkpoint), ("🌅", other)):
        result = run(prompt, "-c", ckpt, "-d", out, *FAST[:-1])
        assert result.exit_code == 0 and "skipping" not in result.output, result.output
    assert len(pngs(out)) == 3
    assert "skipping 1" in run("🌅", "-c", other, "-d", out, *FAST[:-1]).output


# --- input checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("line, key", [
    ('"steps": "ten"', "'steps' must be a whole number"), ('"lr": "fast"', "'lr' must be"),
    ('"seed": "abc"', "'seed'"), ('"negative": [1, 2]', "'negative'"),
    ('"steps": null', "'steps' must not be null"), ('"size": 64.5', "'size'"),
    ('"scales": "8,16"', "'scales'"), ('"log_every": 0', "'log_every'"),
    ('"seed": 1.5', "'seed'"), ('"lr": NaN', "NaN"),
])
def test_bad_jsonl_settings_stop_before_the_model_loads(tmp_path, line, key):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a cat", ' + line + "}\n")
    result = run("-f", prompts, "-c", tmp_path / "missing.safetensors", "-d", tmp_path / "o")
    one_error_line(result, f"{prompts}:1", key)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["a:1e999"], "finite"), (["--seed", str(2**70)], "--seed"), (["--lr", "nan"], "--lr"),
    (["--negative-weight", "inf"], "--negative-weight"), (["--samples", "0"], "--samples"),
])
def test_bad_flags_and_weights(tmp_path, args, message):
    result = run(*(["a cat"] if args[0].startswith("--") else []), *args,
                 "-c", tmp_path / "missing.safetensors", "-d", tmp_path / "o")
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_unknown_words_on_the_world_model_get_a_one_line_notice(tmp_path, tiny_checkpoint):
    args = ["-d", tmp_path, "--steps", 1, "--views", 1, "--patch-views", 0, "--init", "noise",
            "--size", 32, "-q"]
    result = run("a red chair:1 | wooden floor", *args)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "chair, wooden, floor" in notes[0]
    assert "world-robust" in notes[0] and "--model clipag-vitb32" in notes[0]
    for prompt, more in (("a small red circle on the left, blue background", []),
                         ("a red chair", ["-c", tiny_checkpoint])):
        result = run(prompt, *args, *more, "--seed", 1)
        assert result.exit_code == 0 and "note:" not in result.output, result.output


# --- many processes ---------------------------------------------------------------------------

def cli_process(args, tmp_path, **env):
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPAG_CACHE": str(tmp_path / "cache"),
            "OMP_NUM_THREADS": "1", "COLUMNS": "200", **env}
    return subprocess.Popen([sys.executable, "-m", "clipag", "generate", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full,
                            cwd=tmp_path)


def finish_all(procs, timeout=240):
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out
        outs.append(out)
    return outs


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


def pixels(folder):
    return {name: np.asarray(Image.open(Path(folder) / name)) for name in pngs(folder)}


def made(output):
    return [line.split()[0] for line in output.splitlines() if ".png  score" in line]


def wait_for_lock(folder, proc, timeout=180):
    deadline = time.time() + timeout
    while not list(Path(folder).glob(".*.lock")) and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.05)


def test_ranks_make_the_same_files_and_pixels_as_one_process(tmp_path, tiny_checkpoint,
                                                             monkeypatch):
    """Rank 1 in a second process, rank 0 and the one-process reference in this one (so the
    test starts one interpreter, not three)."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green cross\n")
    args = ["-f", prompts, "-c", tiny_checkpoint, "--samples", 2, "--batch-size", 2,
            "--steps", 3, "--views", 2, "--patch-views", 2, "--init", "noise", "--device", "cpu"]
    rank1 = cli_process([*args, "-d", tmp_path / "two"], tmp_path, RANK="1", WORLD_SIZE="2",
                        LOCAL_RANK="1")
    one = run(*args, "-d", tmp_path / "one")
    assert one.exit_code == 0, one.output
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    rank0 = run(*args, "-d", tmp_path / "two")
    assert rank0.exit_code == 0, rank0.output
    rank1_out = finish_all([rank1])[0]
    assert len(pngs(tmp_path / "one")) == 6
    a, b = pixels(tmp_path / "one"), pixels(tmp_path / "two")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # batches 0 and 2 on rank 0, batch 1 on rank 1
    assert [len(made(rank0.output)), len(made(rank1_out))] == [4, 2]
    assert leftovers(tmp_path / "two") == []


def test_two_runs_on_one_folder_make_each_image_once(tmp_path, tiny_checkpoint):
    """A second process and this one, started while the other holds its first claim."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"a red circle number {i}\n" for i in range(6)))
    out = tmp_path / "out"
    args = ["-f", prompts, "-c", tiny_checkpoint, "-d", out, "--steps", 30, "--views", 2,
            "--patch-views", 2, "--init", "noise", "--device", "cpu"]
    other = cli_process(args, tmp_path)
    wait_for_lock(out, other)
    here = run(*args)
    assert here.exit_code == 0, here.output
    lines = made(finish_all([other])[0]) + made(here.output)
    assert len(lines) == 6 and len(set(lines)) == 6, lines
    assert len(pngs(out)) == 6 and leftovers(out) == []


def test_a_killed_run_leaves_a_state_the_next_run_completes_and_cleans(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green cross\n")
    args = ["-f", prompts, "-c", tiny_checkpoint, "-d", out, "--steps", 100, "--views", 2,
            "--patch-views", 2, "--init", "noise", "--device", "cpu"]
    proc = cli_process(args, tmp_path)
    wait_for_lock(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert list(out.glob(".*.lock")), "the run ended before it could be killed mid-image"
    old = time.time() - 60
    part = out / ".0001-two-blue-squares-s0.json.a1b2c3d4.part"  # as if killed mid-write
    part.write_text("{")
    os.utime(part, (old, old))
    before = len(pngs(out))
    rerun = run(*args)  # the same tasks: the killed one's stale claim is taken over
    assert rerun.exit_code == 0, rerun.output
    assert len(made(rerun.output)) == 3 - before
    assert len(pngs(out)) == 3 and leftovers(out) == []


# --- property: any value to any numeric option or JSONL key -----------------------------------

NUMERIC_FLAGS = sorted(s.name for s in SETTINGS.values()
                       if s.flag and s.kind in ("int", "real", "sides"))
# settings whose large valid values cost time: drawn small when valid
COSTLY = {"steps": 4, "views": 4, "patch_views": 4, "size": 48, "init_candidates": 8,
          "samples": 2, "batch_size": 4, "flow_steps": 4, "save_every": 8, "log_every": 8,
          "view_batch": 8}

junk = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "-0", "4/255", "1/0", "", "x", "3,4", "8,x"]),
    st.text(max_size=4))


def in_range(name):
    """Valid values of a numeric setting (small ones for the costly)."""
    s = SETTINGS[name]
    if s.kind == "int":
        return st.integers(int(s.low), min(int(s.high), COSTLY.get(name, 100)))
    if s.kind == "real":
        return st.floats(s.low, s.high, exclude_min=s.low_open, exclude_max=s.high_open)
    if s.kind == "sides":
        return st.lists(st.integers(8, 40), max_size=3).map(sorted)
    if s.kind == "bool":
        return st.booleans()
    return st.nothing()


def past_range(name):
    s = SETTINGS[name]
    above = st.integers(int(s.high) + 1, 2**70) if s.high is not None else st.nothing()
    below = st.integers(-2**70, int(s.low) - 1) if s.low is not None else st.nothing()
    return st.one_of(above, below)


def mostly(valid, invalid):
    """Valid values 3 times in 5, so that both outcomes are common."""
    return st.integers(0, 4).flatmap(lambda i: valid if i < 3 else invalid)


def as_flag(value):
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


@st.composite
def flag_case(draw):
    name = draw(st.sampled_from(NUMERIC_FLAGS))
    value = draw(mostly(in_range(name), st.one_of(past_range(name), junk)))
    return "--" + name.replace("_", "-"), as_flag(value)


json_junk = st.one_of(st.none(), st.booleans(), junk, st.lists(st.integers(-2, 40), max_size=3),
                      st.lists(st.floats(), max_size=2))


@st.composite
def line_case(draw):
    key = draw(st.sampled_from(sorted(JSONL_KEYS)))
    name = JSONL_KEYS[key].name
    value = draw(mostly(in_range(name), st.one_of(past_range(name), json_junk)))
    return key, value


weights = mostly(st.floats(0.01, 10), junk)


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(flag=flag_case(), line=line_case(), weight=weights)
def test_any_value_ends_in_an_image_or_one_error(tmp_path_factory, tiny_checkpoint, flag, line,
                                                 weight):
    folder = tmp_path_factory.mktemp("p")
    key, value = line
    prompts = folder / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": f"a red circle:{weight}", key: value},
                                  allow_nan=True) + "\n")
    base = ["-c", tiny_checkpoint, "-d", folder / "out", "--steps", "2", "--views", "2",
            "--patch-views", "1", "--init", "noise", "--size", "16", "-q"]
    for args in ([f"a cat:{weight}", *base, *flag], ["-f", prompts, *base]):
        result = run(*args)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            args, result.output, result.exception)
        assert result.exit_code in (0, 2), (args, result.output)
        assert "Traceback" not in result.output
    for sidecar in (folder / "out").glob("*.json"):
        meta = strict_json(sidecar)
        numbers = [v for v in _leaves(meta) if isinstance(v, float)]
        assert all(math.isfinite(v) for v in numbers)


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value
