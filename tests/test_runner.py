"""The batch runner without a model: settings checks, task identity and names, claims, the
folder sweep and the rank split."""

import json
import os
import subprocess
import sys
import time

import click
import pytest
import torch

from clipag.batch import (HOST, RunConfig, batches, check_writable, claim, claim_batch,
                          file_fingerprint,
                          finished, lock_path, model_identity, plan, rank_and_world, release,
                          share, state, sweep, try_lock)
from clipag.cli.generate_cmd import generate_cmd
from clipag.errors import ClipagError
from clipag.generate import GenerateConfig
from clipag.load import ModelSpec
from clipag.output import finite_json, image_format, to_json
from clipag.prompts import Job, parse_prompt, read_prompts_file
from clipag.settings import JSONL_KEYS, SETTINGS, config_default

from clipag.cli.params import Count, Real, Sides

MODEL = {"model": "m", "pretrained": None, "files": {}}


def tasks_for(prompts, tmp_path, model=MODEL, config=None, **run):
    config = config or GenerateConfig()
    jobs = [p if isinstance(p, Job) else Job(p) for p in prompts]
    tasks, _ = plan(jobs, config, RunConfig(outdir=str(tmp_path), **run), model)
    return tasks


def finish(task, png=None):
    """Write what a finished run leaves: the sidecar recording the task, then the image."""
    png = png or task.png
    png.parent.mkdir(parents=True, exist_ok=True)
    png.with_suffix(".json").write_text(json.dumps({"task": task.key, "prompt": task.prompt}))
    png.write_bytes(b"png")


# --- settings: one declaration for flags and JSONL keys ---------------------------------------

def test_every_numeric_option_has_a_declared_range_and_its_default_from_the_dataclasses():
    run = RunConfig()
    seen = set()
    for param in generate_cmd.params:
        if param.name in SETTINGS and param.name not in ("negative", "init_image"):
            setting = SETTINGS[param.name]
            seen.add(param.name)
            default = config_default(setting) if setting.path else getattr(run, param.name)
            got = param.type.convert(param.default, param, None) if param.default is not None \
                else None
            assert got == default, param.name
        if isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)):
            assert isinstance(param.type, (Count, Real, Sides)), param.name
    assert {"jitter", "negative_weight", "batch_size", "samples", "save_every", "seed",
            "view_batch", "weight_decay"} <= seen


@pytest.mark.parametrize("line, key", [
    ('"steps": "ten"', "steps"), ('"lr": "fast"', "lr"), ('"seed": "abc"', "seed"),
    ('"negative": [1, 2]', "negative"), ('"steps": null', "steps"), ('"size": 64.5', "size"),
    ('"scales": "8,16"', "scales"), ('"log_every": 0', "log_every"), ('"seed": 1.5', "seed"),
    ('"seed": true', "seed"), ('"seed": 36893488147419103232', "seed"), ('"lr": NaN', "NaN"),
    ('"lr": Infinity', "Infinity"), ('"steps": 1e999', "steps"), ('"lr": 1e999', "lr"),
    ('"amp": "yes"', "amp"), ('"samples": 0', "samples"), ('"jitter": 3', "jitter"),
    ('"saturation": [2, 1]', "saturation"), ('"flavour": 1', "flavour"),
    ('"steps": 2, "steps": 3', "steps"), ('"tv": 1, "tv_weight": 2', "tv_weight"),
    ('"cutout": 1', "cutout"), ('"negative_weight": -1', "negative_weight"),
])
def test_bad_jsonl_values_name_their_line_and_key(tmp_path, line, key):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "a cat", ' + line + "}\n")
    with pytest.raises(ClipagError) as err:
        read_prompts_file(path)
    assert f"{path}:2" in str(err.value) and key in str(err.value)


def test_good_jsonl_values_are_kept_and_applied(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a cat", "steps": 5, "size": null, "scales": [8, 16], '
                    '"tv_weight": 0.5, "views": 3, "negative": "blur", "jitter": 0, '
                    '"flow_steps": 4}\n')
    job = read_prompts_file(path)[0]
    assert job.settings == {"steps": 5, "size": None, "scales": (8, 16), "tv": 0.5, "views": 3,
                            "negative": ("blur",), "jitter": 0.0, "flow_steps": 4}
    task = tasks_for([job], tmp_path)[0]
    c = task.config
    assert (c.steps, c.scales, c.tv_weight, c.views.global_views, c.flow.steps) == (
        5, (8, 16), 0.5, 3, 4)
    assert c.views.brightness == 0 and task.negatives == ("blur",)
    assert set(JSONL_KEYS) >= {"global_views", "tv_weight", "seed", "samples", "negative"}


@pytest.mark.parametrize("text", ["a:1e999", "a:-1e999 | b", "a:1e7", "a | b:nan"])
def test_prompt_weights_must_be_finite(text):
    if "nan" in text:  # not a number: stays part of the text
        assert parse_prompt(text)[1].text == "b:nan"
        return
    with pytest.raises(ClipagError, match="finite"):
        parse_prompt(text)


def test_a_prompt_line_error_names_its_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n# c\nx:1e999\n")
    with pytest.raises(ClipagError, match=r"p\.txt:3: .*finite"):
        read_prompts_file(path)


def test_seeds_past_the_largest_are_refused_before_work(tmp_path):
    with pytest.raises(ClipagError, match="largest seed"):
        tasks_for(["a"], tmp_path, seed=2**63 - 1, samples=2)


# --- identity and names ---------------------------------------------------------------------

def test_same_slug_other_prompt_gets_its_own_stable_name(tmp_path):
    first = tasks_for(["a red circle on a green background"], tmp_path)[0]
    finish(first)
    other = tasks_for(["A red circle, on a green background!"], tmp_path)[0]
    assert other.png == first.png and other.key != first.key
    assert finished(other) is None and state(other.png, other.key) == "taken"
    c, why = claim(other)
    assert why == "claimed" and c.png == other.names[1] and other.key[:8] in c.png.name
    finish(other, c.png)
    c.lock.release()
    # reruns: both are done, each at its own name
    assert finished(tasks_for(["a red circle on a green background"], tmp_path)[0]) == first.png
    again = tasks_for(["A red circle, on a green background!"], tmp_path)[0]
    assert finished(again) == other.names[1] and claim(again) == (None, "done")


@pytest.mark.parametrize("change", [
    dict(prompts=["🎨🎨"]), dict(config=GenerateConfig(steps=7)), dict(seed_negative=True),
    dict(model={"model": "m", "pretrained": None, "files": {"x": {"bytes": 1}}}),
])
def test_anything_that_changes_the_pixels_changes_the_key(tmp_path, change):
    base = tasks_for(["🌅"], tmp_path)[0]
    if change.pop("seed_negative", False):
        other = tasks_for([Job("🌅", {"negative": ("dark",)})], tmp_path)[0]
    else:
        other = tasks_for(change.pop("prompts", ["🌅"]), tmp_path, **change)[0]
    assert base.png == other.png and base.key != other.key  # both slug to "image"
    # what changes no pixel keeps the key: the view batch, log interval, frames
    same = tasks_for(["🌅"], tmp_path, config=GenerateConfig(view_batch=4, log_every=1,
                                                              save_every=2))[0]
    assert same.key == base.key


def test_prompts_sharing_their_first_60_slug_characters(tmp_path):
    long = "a red circle " * 10
    a, b = tasks_for([long + "left", long + "right"], tmp_path)
    assert a.png.name[5:] == b.png.name[5:] and a.png != b.png  # the line number differs
    finish(a)
    rerun = tasks_for([long + "right"], tmp_path)[0]  # now line 0 of another file
    assert rerun.png == a.png and finished(rerun) is None
    assert claim(rerun)[0].png == rerun.names[1]


def test_checkpoint_fingerprint_tells_files_apart(tmp_path):
    one, two = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    one.write_bytes(b"x" * (3 << 20))
    two.write_bytes(b"x" * (3 << 20 - 1) + b"y")
    assert file_fingerprint(one) != file_fingerprint(two)
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes(one.read_bytes())
    assert file_fingerprint(moved) == file_fingerprint(one)
    ids = [model_identity(ModelSpec(checkpoint=str(p))) for p in (one, two)]
    assert ids[0] != ids[1]
    default = model_identity(ModelSpec())
    assert default["model"] == "world-robust"
    assert "world-robust.safetensors" in default["files"]  # a rebuilt embedded model: new key


# --- claims -----------------------------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(png, **info):
    lock = lock_path(png)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": HOST, "time": 0, "task": "k",
                                **info}))
    return lock


def test_a_claim_is_exclusive_and_released(tmp_path):
    task = tasks_for(["a cat"], tmp_path)[0]
    c, why = claim(task)
    assert why == "claimed" and lock_path(c.png).is_file()
    assert claim(task) == (None, "busy")
    c.lock.release()
    assert not lock_path(c.png).exists()
    again, _ = claim(task)
    assert again is not None
    again.lock.release()


def test_a_dead_processes_lock_is_reclaimed_a_live_or_foreign_one_is_not(tmp_path):
    task = tasks_for(["a cat"], tmp_path)[0]
    write_lock(task.png, pid=dead_pid(), task=task.key)
    c, why = claim(task)
    assert why == "claimed" and json.loads(lock_path(task.png).read_text())["pid"] == os.getpid()
    c.lock.release()
    write_lock(task.png, host=HOST + "-elsewhere", pid=dead_pid(), task=task.key)
    assert claim(task) == (None, "busy")
    write_lock(task.png, task=task.key)  # this live process
    assert claim(task) == (None, "busy")
    garbled = lock_path(task.png)
    garbled.write_text("")
    assert claim(task) == (None, "busy")  # maybe being written right now
    os.utime(garbled, (time.time() - 3600, time.time() - 3600))
    c, why = claim(task)
    assert why == "claimed"
    c.lock.release()


def test_a_name_locked_by_another_task_sends_this_one_to_its_own_name(tmp_path):
    task = tasks_for(["a cat"], tmp_path)[0]
    write_lock(task.png, task="some-other-task")
    c, why = claim(task)
    assert why == "claimed" and c.png == task.names[1]
    c.lock.release()


def test_a_lock_is_not_released_by_someone_else(tmp_path):
    png = tmp_path / "x.png"
    mine, _ = try_lock(png, "k")
    lock_path(png).unlink()  # e.g. swept by hand, then claimed by another process
    theirs, _ = try_lock(png, "k")
    mine.release()
    assert lock_path(png).read_bytes() == theirs.raw
    theirs.release()
    assert not lock_path(png).exists()


def test_claim_batch_counts_done_and_busy(tmp_path):
    a, b, c = tasks_for(["a", "b", "c"], tmp_path)
    finish(a)
    held, _ = claim(b)
    claims, counts = claim_batch([a, b, c])
    assert [x.task for x in claims] == [c] and counts == {"done": 1, "busy": 1}
    release(claims + [held])
    assert not list(tmp_path.glob(".*.lock"))


def test_sweep_removes_what_killed_runs_left_and_nothing_else(tmp_path):
    start = time.time()
    old = start - 100
    stale_part = tmp_path / ".0000-a-s0.png.ab12cd34.part"
    fresh_part = tmp_path / ".0001-b-s0.json.ab12cd34.part"
    live_part = tmp_path / ".0002-c-s0.gif.zz12cd34.part"
    other = tmp_path / ".bashrc.part"
    for p in (stale_part, fresh_part, live_part, other):
        p.write_text("x")
    for p in (stale_part, live_part, other):
        os.utime(p, (old, old))
    os.utime(fresh_part, (start + 5, start + 5))
    live = write_lock(tmp_path / "0002-c-s0.png")
    stale = write_lock(tmp_path / "0003-d-s0.png", pid=dead_pid())
    assert sweep(tmp_path, start) == 2
    assert not stale_part.exists() and not stale.exists()
    assert fresh_part.exists() and live_part.exists() and other.exists() and live.exists()
    # limited to named outputs: another output's stale files stay
    stale = write_lock(tmp_path / "0004-e-s0.png", pid=dead_pid())
    assert sweep(tmp_path, start, {"x.png"}) == 0 and stale.exists()


# --- ranks ------------------------------------------------------------------------------------

def test_ranks_split_the_planned_batches_whole(tmp_path):
    tasks = tasks_for([Job("a"), Job("b", {"steps": 5}), Job("c")], tmp_path, samples=3)
    groups = batches(tasks, 2)
    assert [len(g) for g in groups] == [2, 1, 2, 1, 2, 1]
    parts = [share(groups, r, 4) for r in range(4)]
    assert sorted(id(g) for p in parts for g in p) == sorted(id(g) for g in groups)
    assert share(groups, 0, 1) == groups


@pytest.mark.parametrize("env, ok", [
    ({}, (0, 1, 0)), ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, (1, 2, 1)),
    ({"RANK": "2", "WORLD_SIZE": "2"}, None), ({"RANK": "x", "WORLD_SIZE": "2"}, None),
    ({"RANK": "0", "WORLD_SIZE": "0"}, None),
])
def test_rank_and_world_from_the_environment(env, ok):
    if ok is None:
        with pytest.raises(ClipagError, match="RANK"):
            rank_and_world(env)
    else:
        assert rank_and_world(env) == ok


# --- outputs ----------------------------------------------------------------------------------

def test_sidecars_are_strict_json():
    meta = {"score": float("nan"), "x": [1.0, float("inf")], "ok": 0.5, "n": {"v": -float("inf")}}
    clean, bad = finite_json(meta)
    assert clean == {"score": None, "x": [1.0, None], "ok": 0.5, "n": {"v": None}}
    assert bad == ["score", "x[1]", "n.v"]
    json.loads(to_json(meta), parse_constant=lambda c: pytest.fail(c))


@pytest.mark.parametrize("name, fmt", [("a.png", "PNG"), ("a.JPG", "JPEG"), ("a.jpeg", "JPEG"),
                                       ("a.webp", "WEBP"), ("a.json", None), ("a.gif", None),
                                       ("a", None), ("a.tiff", None)])
def test_output_formats_come_from_the_suffix(name, fmt, tmp_path):
    if fmt:
        assert image_format(tmp_path / name) == fmt
    else:
        with pytest.raises(ClipagError, match="name it .png, .jpg, .jpeg or .webp"):
            image_format(tmp_path / name)


def test_a_failed_overwrite_keeps_the_old_image_and_sidecar_together(tmp_path, monkeypatch):
    """The image write fails after the new sidecar was written: the old image and the old
    sidecar come back, nothing new stays, so no rerun takes an old image as the new task's."""
    from clipag import batch

    png = tmp_path / "x.png"
    png.write_bytes(b"old image")
    png.with_suffix(".json").write_text('{"task": "old"}')
    png.with_suffix(".gif").write_bytes(b"old gif")

    def full_disk(path, image, meta):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(batch, "save_image", full_disk)
    frames = [torch.zeros(3, 8, 8)] * 2
    with pytest.raises(batch.WriteError, match="No space left"):
        batch.write_outputs(png, torch.zeros(3, 8, 8), {"task": "new"}, {".svg": "<svg/>"},
                            frames)
    assert png.read_bytes() == b"old image"
    assert png.with_suffix(".json").read_text() == '{"task": "old"}'
    assert png.with_suffix(".gif").read_bytes() == b"old gif"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gif", "x.json", "x.png"]
    monkeypatch.undo()
    batch.write_outputs(png, torch.zeros(3, 8, 8), {"task": "new"}, {}, [])
    assert '"task": "new"' in png.with_suffix(".json").read_text()
    assert png.read_bytes() != b"old image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.png"]  # old GIF gone


@pytest.mark.parametrize("odd", ["folder", "fifo", "dangling"])
def test_an_odd_entry_under_a_lock_name_is_one_error_and_never_touched(tmp_path, odd):
    from clipag.errors import ClipagError

    png = tmp_path / "x.png"
    lock = lock_path(png)
    if odd == "folder":
        lock.mkdir()
    elif odd == "fifo":
        os.mkfifo(lock)
    else:
        lock.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ClipagError, match="not a lock clipag wrote"):
        try_lock(png, "k")
    assert os.path.lexists(lock)
    assert sweep(tmp_path, time.time() + 60) == 0  # clean-up passes it by, no crash
    assert os.path.lexists(lock)


def test_a_lock_without_clipag_fields_is_reclaimed_once_old(tmp_path):
    png = tmp_path / "x.png"
    lock = lock_path(png)
    lock.write_text("{}")
    old = time.time() - 120
    os.utime(lock, (old, old))
    claimed, holder = try_lock(png, "k")
    assert claimed is not None and holder is None


def test_a_dangling_output_folder_link_is_one_error(tmp_path):
    from clipag.errors import ClipagError

    (tmp_path / "out").symlink_to(tmp_path / "missing")
    with pytest.raises(ClipagError, match="leads nowhere"):
        check_writable(tmp_path / "out")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ClipagError, match="leads nowhere"):
        check_writable(tmp_path / "loop" / "deeper")
