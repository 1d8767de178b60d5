"""Hostile use of robustify / eval / world export / bench: every case ends in correct
behaviour or one error line with exit code 2, and nothing that existed before is lost."""

import csv
import dataclasses
import errno
import json
import os
import shutil
import time

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from clipag.errors import ClipagError
from clipag.load import ModelSpec
from clipag.train import common as train_common, robustify as robustify_module
from clipag.train.attacks import ThreatModel
from clipag.train.common import clean_stale_parts, part_files
from clipag.train.data import BatchStream, DEFAULT_TEMPLATE, open_dataset
from clipag.train.robustify import TrainConfig, robustify

CPU = torch.device("cpu")
TINY = ModelSpec(model="clipag-tiny", pretrained="none")
FAST = dict(steps=6, batch_size=16, lr=2e-3, seed=0, save_every=2, log_every=100,
            threat=ThreatModel("l2", 0.5, 1))


def _config(tmp_path, data, name="m", **kw):
    return TrainConfig(data=str(data), out=str(tmp_path / f"{name}.safetensors"),
                       **{**FAST, **kw})


def _crash_at(n):
    def on_step(step):
        if step == n:
            raise KeyboardInterrupt
    return on_step


def _cli(args):
    from cli.robustify_cmd import robustify_cmd
    return CliRunner().invoke(robustify_cmd, args, prog_name="clipag robustify")


def _one_error_line(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    return result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")


def _same(a, b):
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# 1. --overwrite never deletes before the new output is complete

@pytest.mark.parametrize("bad", [["MISSING"], ["DATA", "--group", "5"],
                                 ["DATA", "--objective", "tecoa"],
                                 ["DATA", "--template", "no slot"]])
def test_overwrite_keeps_the_old_output_when_the_run_fails_up_front(tmp_path, world_captions,
                                                                     bad):
    keep = tmp_path / "keep.safetensors"
    keep.write_bytes(b"the user's finished model")
    args = [str(world_captions) if a == "DATA" else str(tmp_path / a) if a == "MISSING" else a
            for a in bad]
    result = _cli([*args, "-o", str(keep), "--overwrite", "-m", "clipag-tiny",
                   "--pretrained", "none", "--steps", "2", "--batch-size", "16", "-q"])
    assert _one_error_line(result), result.output
    assert keep.read_bytes() == b"the user's finished model"


def test_steps_zero_is_refused_and_keeps_the_old_output(tmp_path, world_captions):
    keep = tmp_path / "keep.safetensors"
    keep.write_bytes(b"old")
    result = _cli([str(world_captions), "-o", str(keep), "--overwrite", "--steps", "0",
                   "-m", "clipag-tiny", "--pretrained", "none"])
    assert result.exit_code == 2 and "--steps" in result.output
    assert keep.read_bytes() == b"old"


def test_overwrite_replaces_the_output_once_the_new_one_is_complete(tmp_path, world_captions):
    first = robustify(_config(tmp_path, world_captions, steps=2), TINY, CPU)
    before = first.read_bytes()
    config = _config(tmp_path, world_captions, steps=4, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        robustify(config, TINY, CPU, on_step=_crash_at(3))
    assert first.read_bytes() == before  # interrupted: the old output is untouched
    with pytest.raises(ClipagError, match="exists"):
        robustify(_config(tmp_path, world_captions, steps=4), TINY, CPU)
    robustify(config, TINY, CPU)
    assert first.read_bytes() != before
    assert not (tmp_path / "m.safetensors.state.pt").exists()


# 2. resumable states: a plain rerun resumes; a state of another run is refused

def test_plain_rerun_resumes_and_equals_an_uninterrupted_run(tmp_path, world_captions):
    straight = robustify(_config(tmp_path, world_captions, "straight"), TINY, CPU)
    config = _config(tmp_path, world_captions, "cut")
    with pytest.raises(KeyboardInterrupt):
        robustify(config, TINY, CPU, on_step=_crash_at(5))
    state = tmp_path / "cut.safetensors.state.pt"
    assert torch.load(state, weights_only=True)["step"] == 4
    heard = []
    resumed = robustify(config, TINY, CPU, on_state=lambda s, p: heard.append(s))
    assert heard[0] == 4  # it resumed at step 4 (not step 1)
    assert _same(straight, resumed) and not state.exists()


@pytest.mark.parametrize("change,field", [
    ({"batch_size": 8}, "batch_size"), ({"objective": "fare"}, "objective"),
    ({"threat": ThreatModel("l2", 0.25, 1)}, "eps"), ({"steps": 8}, "steps"),
    ({"seed": 1}, "seed")])
def test_a_state_of_another_run_is_refused_naming_the_fields(tmp_path, world_captions, change,
                                                             field):
    config = _config(tmp_path, world_captions)
    with pytest.raises(KeyboardInterrupt):
        robustify(config, TINY, CPU, on_step=_crash_at(3))
    state = tmp_path / "m.safetensors.state.pt"
    saved = state.read_bytes()
    for resume in (False, True):
        other = dataclasses.replace(config, resume=resume, **change)
        with pytest.raises(ClipagError) as info:
            robustify(other, TINY, CPU)
        message = str(info.value)
        assert "belongs to another run" in message and field in message
        assert "\n" not in message and len(message) < 600
    assert state.read_bytes() == saved


def test_a_state_of_another_model_or_dataset_is_refused(tmp_path, world_captions, world_classes):
    config = _config(tmp_path, world_captions)
    with pytest.raises(KeyboardInterrupt):
        robustify(config, TINY, CPU, on_step=_crash_at(3))
    rn = ModelSpec(model="clipag-tiny-rn", pretrained="none")
    with pytest.raises(ClipagError, match=r"belongs to another run: model \(saved 'clipag-tiny'"):
        robustify(config, rn, CPU)
    with pytest.raises(ClipagError, match=r"belongs to another run: data "):
        robustify(dataclasses.replace(config, data=str(world_classes)), TINY, CPU)


def test_a_state_without_a_run_record_or_unreadable_is_refused(tmp_path, world_captions):
    config = _config(tmp_path, world_captions)
    state = tmp_path / "m.safetensors.state.pt"
    torch.save({"model": {}, "step": 2, "position": 32}, state)
    with pytest.raises(ClipagError, match="does not record which run.*--overwrite"):
        robustify(config, TINY, CPU)
    state.write_bytes(b"garbage")
    with pytest.raises(ClipagError, match="cannot resume from .*--overwrite"):
        robustify(config, TINY, CPU)
    assert state.read_bytes() == b"garbage"
    path = robustify(dataclasses.replace(config, overwrite=True, steps=2), TINY, CPU)
    assert path.is_file() and not state.exists()


def test_resume_with_nothing_saved_says_so(tmp_path, world_captions):
    with pytest.raises(ClipagError, match="nothing to resume"):
        robustify(_config(tmp_path, world_captions, resume=True), TINY, CPU)
    with pytest.raises(ClipagError, match="contradict"):
        _config(tmp_path, world_captions, resume=True, overwrite=True).validate()


def test_cli_interrupt_names_the_kept_state_and_a_rerun_resumes(tmp_path, world_captions,
                                                                monkeypatch):
    real = robustify_module.robustify
    out = tmp_path / "m.safetensors"
    args = [str(world_captions), "-o", str(out), "-m", "clipag-tiny", "--pretrained", "none",
            "--steps", "6", "--batch-size", "16", "--save-every", "2", "--eps", "0.5",
            "--attack-steps", "1", "--lr", "2e-3", "-q"]

    def interrupted(config, spec, device, on_step=None, **kw):
        def step(s):
            on_step(s)
            if s == 3:
                raise KeyboardInterrupt
        return real(config, spec, device, on_step=step, **kw)

    monkeypatch.setattr("cli.robustify_cmd.robustify", interrupted)
    result = _cli(args)
    assert result.exit_code == 130
    assert "training state of step 2 is kept" in result.output and "rerun" in result.output
    monkeypatch.setattr("cli.robustify_cmd.robustify", real)
    result = _cli(args)
    assert result.exit_code == 0, result.output
    straight = robustify(_config(tmp_path, world_captions, "straight"), TINY, CPU)
    assert _same(out, straight)


# 3. stale temporary parts of killed writes are cleaned at the next run

def test_stale_parts_are_cleaned_and_fresh_or_foreign_ones_kept(tmp_path, world_captions):
    out = tmp_path / "m.safetensors"
    old = [tmp_path / ".m.safetensors.k1l2m3n4.part",
           tmp_path / ".m.safetensors.state.pt.abcd_123.part"]
    foreign = [tmp_path / ".other.safetensors.k1l2m3n4.part", tmp_path / "m.safetensors.part"]
    for path in old + foreign:
        path.write_bytes(b"x" * 100)
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    fresh = tmp_path / ".m.safetensors.zzzz9999.part"
    fresh.write_bytes(b"y")
    os.utime(fresh, (time.time() + 3600, time.time() + 3600))  # written after the run started
    robustify(_config(tmp_path, world_captions, steps=2), TINY, CPU)
    assert out.is_file()
    assert not any(p.exists() for p in old)
    assert all(p.exists() for p in foreign) and fresh.exists()


def test_clean_stale_parts_matches_only_the_atomic_pattern(tmp_path):
    import tempfile
    target = tmp_path / "a.bin"
    # what atomic_path leaves when its writer is killed before the rename
    fd, killed = tempfile.mkstemp(prefix=".a.bin.", suffix=".part", dir=tmp_path)
    os.close(fd)
    for name in (".a.binx.1234abcd.part", "a.bin", ".a.bin.part", ".b.bin.1234abcd.part"):
        (tmp_path / name).write_bytes(b"keep")
    assert part_files(target) == [tmp_path / os.path.basename(killed)]
    assert clean_stale_parts([target], time.time() - 3600) == []  # newer than "the start"
    assert clean_stale_parts([target], time.time() + 1) == [tmp_path / os.path.basename(killed)]
    assert part_files(target) == [] and len(list(tmp_path.iterdir())) == 4
    assert clean_stale_parts([tmp_path / "missing" / "b.bin"], time.time()) == []


# 4. data that cannot train: unreadable images, manifests leaving the folder, bad lines

def _copy_items(world, dest, n):
    dest.mkdir(exist_ok=True)
    names = sorted(p.name for p in world.glob("*.png"))[:n]
    for name in names:
        shutil.copy(world / name, dest / name)
    return names


def test_all_unreadable_images_stop_with_an_error(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(b"not a png")
        (tmp_path / f"{i}.txt").write_text(f"caption {i}")
    stream = BatchStream(open_dataset(tmp_path), 2, 32)
    with pytest.raises(ClipagError, match="a whole pass over its 5 items found no readable"):
        next(iter(stream))
    assert stream.stats.skipped <= 10


def test_all_unreadable_shards_stop_with_an_error(tmp_path):
    import io
    import tarfile
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for i in range(4):
            for ext, data in ((".png", b"broken"), (".txt", b"a caption")):
                info = tarfile.TarInfo(f"{i}{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ClipagError, match="found no readable image"):
        next(iter(BatchStream(open_dataset(tmp_path), 3, 32)))


def test_a_few_readable_images_still_train(tmp_path, world_captions):
    names = _copy_items(world_captions, tmp_path, 1)
    for i in range(20):
        (tmp_path / f"bad{i}.png").write_bytes(b"x")
        (tmp_path / f"bad{i}.txt").write_text("bad")
    shutil.copy(world_captions / names[0].replace(".png", ".txt"), tmp_path)
    stream = iter(BatchStream(open_dataset(tmp_path), 4, 32, seed=2))
    for _ in range(30):  # one readable item in 21: batches keep coming, never an error
        images, _, _ = next(stream)
        assert len(images) >= 1


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "sub/../../x.png"])
def test_manifest_paths_stay_inside_the_dataset(tmp_path, world_captions, name):
    names = _copy_items(world_captions, tmp_path, 2)
    with open(tmp_path / "captions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "caption"])
        writer.writerow([names[0], "fine"])
        writer.writerow([name, "escape"])
    with pytest.raises(ClipagError, match=r"captions.csv:3: .* is outside the dataset folder"):
        open_dataset(tmp_path)
    (tmp_path / "captions.csv").unlink()
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"file": names[0], "caption": "a"}) + "\n\n"
        + json.dumps({"file": name, "caption": "b"}) + "\n")
    with pytest.raises(ClipagError, match=r"captions.jsonl:3: .* is outside"):
        open_dataset(tmp_path)


def test_manifest_paths_inside_subfolders_are_fine(tmp_path, world_captions):
    names = _copy_items(world_captions, tmp_path / "sub", 2)
    (tmp_path / "captions.jsonl").write_text("".join(
        json.dumps({"file": f"sub/./{n}", "caption": n}) + "\n" for n in names))
    ds = open_dataset(tmp_path)
    assert [r.path for r in ds.records] == [tmp_path / "sub" / n for n in names]


@pytest.mark.parametrize("line,message", [
    ("[1, 2]", "captions.jsonl:2: expected an object with file and caption, got list"),
    ('"text"', "captions.jsonl:2: expected an object"),
    ('{"file": 5, "caption": "x"}', "captions.jsonl:2: a row needs a file name and a caption"),
    ('{"file": "a.png"}', "captions.jsonl:2: a row needs"),
    ("{not json", "captions.jsonl:2: not valid JSON")])
def test_bad_jsonl_lines_name_the_line(tmp_path, line, message):
    (tmp_path / "captions.jsonl").write_text('{"file": "a.png", "caption": "a"}\n' + line + "\n")
    with pytest.raises(ClipagError, match=message):
        open_dataset(tmp_path)


def test_undecodable_caption_files_are_one_line_errors(tmp_path):
    (tmp_path / "captions.csv").write_bytes(b"file,caption\na.png,\xff\xfe\n")
    with pytest.raises(ClipagError, match="captions.csv: not UTF-8"):
        open_dataset(tmp_path)


def test_templates_without_a_slot_are_refused(world_classes):
    for template in ("a photo", "a {0} {1}", "a {name}", "{"):
        with pytest.raises(ClipagError, match="must hold one"):
            open_dataset(world_classes, template)
    assert open_dataset(world_classes, DEFAULT_TEMPLATE).class_prompts()[0] == "a photo of a circle"


# 5. numbers: declared ranges in the CLI, finite checks in the library

@pytest.mark.parametrize("option,value", [
    ("--eps", "nan"), ("--eps", "-1"), ("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"),
    ("--save-every", "-1"), ("--noise", "nan"), ("--holdout", "1.5"), ("--holdout", "1"),
    ("--steps", "0"), ("--batch-size", "0"), ("--attack-steps", "-1"), ("--seed", "-3"),
    ("--clean-weight", "inf"), ("--pag-weight", "-1"), ("--weight-decay", "nan"),
    ("--grad-clip", "-0.5"), ("--attack-step-size", "0"), ("--log-every", "0"),
    ("--group", "0"), ("--accum", "0"), ("--warmup", "-1")])
def test_robustify_numbers_are_range_checked(tmp_path, world_captions, option, value):
    result = _cli([str(world_captions), "-o", str(tmp_path / "m.safetensors"), "-m",
                   "clipag-tiny", "--pretrained", "none", option, value])
    assert result.exit_code == 2 and option in result.output, result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


@pytest.mark.parametrize("change", [
    {"lr": float("nan")}, {"lr": float("inf")}, {"lr": 0.0}, {"weight_decay": float("nan")},
    {"grad_clip": float("-inf")}, {"holdout": float("nan")}, {"holdout": 1.0},
    {"clean_weight": float("nan")}, {"noise": float("inf")}, {"pag_weight": float("nan")},
    {"save_every": -1}, {"log_every": 0}, {"warmup": -2}, {"seed": -1}, {"steps": 2.5},
    {"batch_size": True}, {"template": "no slot"}])
def test_train_config_refuses_non_finite_and_out_of_range_values(change):
    with pytest.raises(ClipagError):
        dataclasses.replace(TrainConfig(data="d", out="o"), **change).validate()


@pytest.mark.parametrize("args", [
    dict(eps=float("nan")), dict(eps=float("inf")), dict(eps=-0.1),
    dict(norm="linf", eps=2.0), dict(eps=0.5, steps=-1), dict(eps=0.5, step_size=float("nan")),
    dict(eps=0.5, step_size=0.0)])
def test_threat_model_refuses_non_finite_values(args):
    with pytest.raises(ClipagError):
        ThreatModel(**args)


def test_cli_defaults_are_the_library_defaults():
    from cli.robustify_cmd import robustify_cmd
    train = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    threat = {f.name: f.default for f in dataclasses.fields(ThreatModel)}
    defaults = {p.name: p.default for p in robustify_cmd.params}
    for name, value in defaults.items():
        if name in train and name not in ("data", "out", "resume", "overwrite", "half",
                                           "train_text"):
            assert value == train[name], name
    assert defaults["eps"] == threat["eps"] and defaults["norm"] == threat["norm"]
    assert defaults["attack_steps"] == threat["steps"]
    assert train["save_every"] == 100 and train["template"] == DEFAULT_TEMPLATE
    text = CliRunner().invoke(robustify_cmd, ["--help"]).output
    assert "[default: world-robust]" not in text and "required" in text


def test_world_export_numbers_are_range_checked(tmp_path):
    from cli.world_cmd import world
    for args in (["--size", "0"], ["--n", "0"], ["--siblings", "0"], ["--digit-fraction", "nan"],
                 ["--object-scale", "inf"], ["--seed", "-1"], ["--n", "10", "--siblings", "4"]):
        result = CliRunner().invoke(world, ["export", str(tmp_path / "w"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert not (tmp_path / "w").exists(), args


# 6. an output location that cannot be written: refused before training; late failures say
#    what was kept

def test_an_unwritable_output_is_refused_before_any_training(tmp_path, world_captions):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    steps = []
    config = TrainConfig(data=str(world_captions), out=str(blocker / "m.safetensors"), **FAST)
    with pytest.raises(ClipagError, match="cannot write"):
        robustify(config, TINY, CPU, on_step=steps.append)
    assert steps == []


def test_a_full_disk_at_the_end_keeps_the_training_and_a_rerun_finishes(
        tmp_path, world_captions, monkeypatch):
    config = _config(tmp_path, world_captions, steps=3, save_every=0)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(robustify_module, "save_checkpoint", full)
    with pytest.raises(ClipagError) as info:
        robustify(config, TINY, CPU)
    message = str(info.value)
    assert "No space left on device" in message and "training state of step 3" in message
    state = tmp_path / "m.safetensors.state.pt"
    assert torch.load(state, weights_only=True)["step"] == 3
    monkeypatch.undo()
    steps = []
    path = robustify(config, TINY, CPU, on_step=steps.append)
    assert steps == [] and path.is_file() and not state.exists()  # nothing trained twice
    straight = robustify(_config(tmp_path, world_captions, "straight", steps=3, save_every=0),
                         TINY, CPU)
    assert _same(path, straight)


def test_a_state_that_cannot_be_saved_stops_with_what_was_kept(tmp_path, world_captions,
                                                               monkeypatch):
    real = train_common.save_state  # TrainingState's writer, shared with crossflow train
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_common, "save_state", flaky)
    with pytest.raises(ClipagError, match=r"could not save the training state of step 4 .*"
                                          r"kept: the training state of step 2"):
        robustify(_config(tmp_path, world_captions), TINY, CPU)


# eval, bench, init fit: ranges, empty lists, unwritable outputs refused before the work

def _main(args):
    from cli.main import cli
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("args", [
    ["bench", "pag", "--prompts", "0"], ["bench", "pag", "--guides", ","],
    ["bench", "pag", "--guides", " , "], ["bench", "pag", "--batch-size", "0"],
    ["bench", "pag", "--lr", "nan"], ["bench", "pag", "--threshold", "1"],
    ["bench", "pag", "--steps", "0"], ["bench", "pag", "--init-candidates", "0"],
    ["bench", "pag", "--noise", "nan"], ["bench", "init", "--inits", ","],
    ["bench", "init", "--prompts", "0"], ["bench", "init", "--flow-guidance", "inf"],
    ["bench", "init", "--flow-steps", "0"], ["bench", "init", "--seed", "-1"],
    ["bench", "init", "--lr", "0"], ["bench", "init", "--lr", "nan"],
    ["eval", "DATA", "--holdout", "1.5"], ["eval", "DATA", "--eps", "nan"],
    ["eval", "DATA", "--attack-steps", "-1"], ["eval", "DATA", "--limit", "0"],
    ["eval", "DATA", "--attack-step-size", "inf"], ["eval", "DATA", "--batch-size", "0"],
    ["init", "fit", "DATA", "-o", "OUT", "--resolution", "1"],
    ["init", "fit", "DATA", "-o", "OUT", "--components", "0"],
    ["init", "fit", "DATA", "-o", "OUT", "--rank", "0"],
    ["init", "fit", "DATA", "-o", "OUT", "--crops-per-image", "0"]])
def test_eval_bench_and_init_numbers_are_range_checked(tmp_path, world_classes, args):
    args = [str(world_classes) if a == "DATA" else str(tmp_path / "o.st") if a == "OUT" else a
            for a in args]
    result = _main([*args, "--out", str(tmp_path / "res")] if args[0] == "bench" else args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


def test_eval_refuses_an_unwritable_json_before_loading_and_writes_a_good_one(
        tmp_path, world_classes, tiny_checkpoint):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    base = ["eval", str(world_classes), "-c", str(tiny_checkpoint), "--eps", "0", "--limit", "8"]
    result = _main([*base, "--json", str(blocker / "r.json")])
    assert result.exit_code == 2 and "cannot write" in result.output
    result = _main([*base, "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images"] == 8 and report["robust_accuracy"] is None


def test_eval_on_unlabelled_data_is_one_line(world_captions, tiny_checkpoint):
    result = _main(["eval", str(world_captions), "-c", str(tiny_checkpoint)])
    assert result.exit_code == 2 and "class-folder" in result.output


def test_bench_refuses_an_unwritable_out_before_loading(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for command in ("pag", "init"):
        result = _main(["bench", command, "--out", str(blocker / "res"), "--judge-model",
                        str(tmp_path / "missing.safetensors")])
        assert result.exit_code == 2 and "cannot write" in result.output, result.output
