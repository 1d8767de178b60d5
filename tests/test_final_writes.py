"""Outputs that cannot be written (issue 35, class 3): `robustify`, `crossflow train`,
`init fit` and `crossflow sample` refuse a folder they cannot write before any work, and a
final write that fails (a full disk, simulated with RLIMIT_FSIZE so the real writers fail
in their own ways: safetensors' SafetensorError, torch.save's "unexpected pos") ends in one
`error:` line, exit 2, saying what was kept: the training state when there is one, so that
a rerun only writes the output."""

import contextlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from clipag.cli import crossflow_cmd
from clipag.cli.main import cli
from clipag.flow import train as flow_train
from clipag.flow.train import FlowTrainConfig, train_flow
from clipag.init import GaussianMixture
from clipag.load import ModelSpec
from clipag.train import robustify as robustify_module
from clipag.train.common import part_files

ROOT = Path(__file__).resolve().parents[1]
FLOW = ["--resolution", "8", "--width", "16", "--depth", "1", "--batch-size", "8", "--warmup",
        "0"]


def _command(name, data, out, checkpoint):
    """The tiniest run of each command, writing `out` (a file; a folder for sample)."""
    return {
        "robustify": ["robustify", str(data), "-o", str(out), "-m", "clipag-tiny",
                      "--pretrained", "none", "--steps", "3", "--batch-size", "8", "--eps", "0",
                      "--save-every", "0", "-q"],
        "crossflow train": ["crossflow", "train", str(data), "-o", str(out), "-c",
                            str(checkpoint), *FLOW, "--steps", "3", "--save-every", "0", "-q"],
        "init fit": ["init", "fit", str(data), "-o", str(out), "--resolution", "8",
                     "--components", "2", "--rank", "2"],
        "crossflow sample": ["crossflow", "sample", "a red circle", "--flow", str(checkpoint),
                             "--samples", "2", "--steps", "2", "-d", str(out)],
    }[name]


def _one_error(output, *words):
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@contextlib.contextmanager
def file_size_limit(nbytes):
    """A disk that fills up after `nbytes` of any one file, for the writers called meanwhile:
    write() then fails with EFBIG (SIGXFSZ, which would kill the process, is ignored)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _full_disk(monkeypatch, owner, name, nbytes=4096, from_call=1):
    """Make `owner.name` (a writer) run on a full disk from its `from_call`-th call on."""
    real = getattr(owner, name)
    calls = []

    def full(*args, **kwargs):
        calls.append(1)
        if len(calls) < from_call:
            return real(*args, **kwargs)
        with file_size_limit(nbytes):
            return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, full)


@pytest.fixture
def tiny_flow(tmp_path, world_captions, tiny_checkpoint):
    config = FlowTrainConfig(data=str(world_captions), out=str(tmp_path / "tiny-flow.safetensors"),
                             resolution=8, width=16, depth=1, batch_size=8, steps=1, warmup=0)
    return train_flow(config, ModelSpec(checkpoint=str(tiny_checkpoint)), torch.device("cpu"))


# a folder that cannot be written: refused before any work (a missing dataset or flow would
# be the error otherwise)

COMMANDS = ["robustify", "crossflow train", "init fit", "crossflow sample"]


def _unwritable(tmp_path, how):
    if how == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    return blocker / "sub"


@pytest.mark.parametrize("how", ["read-only", "under a file"])
@pytest.mark.parametrize("name", COMMANDS)
def test_an_unwritable_folder_is_refused_before_any_work(tmp_path, name, how):
    folder = _unwritable(tmp_path, how)
    try:
        out = folder if name == "crossflow sample" else folder / "out.safetensors"
        args = _command(name, tmp_path / "missing-data", out, tmp_path / "missing.safetensors")
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        _one_error(result.output, "cannot write", str(folder))
        assert not folder.exists() or list(folder.iterdir()) == []
    finally:
        if how == "read-only":
            folder.chmod(0o755)


# a full disk at the final write: the finished training is kept, and a rerun only writes

@pytest.mark.parametrize("name,owner,writer", [
    ("robustify", robustify_module, "save_checkpoint"),
    ("crossflow train", flow_train, "save_flow")])
def test_a_full_disk_at_the_final_write_keeps_the_training_and_a_rerun_only_writes(
        tmp_path, world_captions, tiny_checkpoint, monkeypatch, name, owner, writer):
    out = tmp_path / "out.safetensors"
    state = tmp_path / "out.safetensors.state.pt"
    args = _command(name, world_captions, out, tiny_checkpoint)
    _full_disk(monkeypatch, owner, writer)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    _one_error(result.output, f"could not write {out}: File too large; kept: the training "
                              f"state of step 3 in {state}; make room and rerun the same "
                              "command to resume from it")
    assert not out.exists() and part_files(out) == [] and part_files(state) == []
    assert torch.load(state, weights_only=True)["step"] == 3
    monkeypatch.undo()
    result = CliRunner().invoke(cli, [a for a in args if a != "-q"])
    assert result.exit_code == 0, result.output
    said = "".join(result.output.split())  # rich wraps lines at 80 columns
    assert f"resuming{state}atstep3" in said and "step1" not in said.replace("step3", "")
    assert out.is_file() and not state.exists()


def test_a_full_disk_at_init_fit_is_one_line_and_keeps_the_old_file(tmp_path, world_captions,
                                                                   monkeypatch):
    out = tmp_path / "gmm.safetensors"
    out.write_bytes(b"the user's mixture")
    _full_disk(monkeypatch, GaussianMixture, "save", nbytes=1024)
    result = CliRunner().invoke(cli, [*_command("init fit", world_captions, out, None),
                                      "--overwrite"])
    assert result.exit_code == 2
    _one_error(result.output, f"could not write {out}: File too large",
               "anything already there is unchanged")
    assert out.read_bytes() == b"the user's mixture" and part_files(out) == []


def test_a_full_disk_while_sampling_says_which_images_were_written(tmp_path, tiny_flow,
                                                                   monkeypatch):
    folder = tmp_path / "drafts"
    _full_disk(monkeypatch, crossflow_cmd, "save_png", nbytes=64, from_call=2)
    result = CliRunner().invoke(cli, _command("crossflow sample", None, folder, tiny_flow))
    assert result.exit_code == 2
    first, second = folder / "a-red-circle-crossflow-s0.png", folder / "a-red-circle-crossflow-s1.png"
    lines = result.output.splitlines()
    assert lines[0] == str(first)  # stdout: the image written
    _one_error("\n".join(lines[1:]), f"could not write {second}: File too large; kept: the 1 "
                                     "image before it")
    assert sorted(folder.iterdir()) == [first]


# the whole process on a full disk, through the real entry point: the resumable state
# (torch.save's "unexpected pos") and the final file (SafetensorError) fail alike

@pytest.mark.parametrize("name,save_every,said", [
    ("robustify", "2", "could not save the training state of step 2 to {state} (File too "
                       "large); kept: no training state"),
    ("crossflow train", "0", "could not write {out}: File too large; kept: no training state")])
def test_a_process_on_a_full_disk_ends_in_one_line(tmp_path, world_captions, tiny_checkpoint,
                                                   name, save_every, said):
    folder = tmp_path / "run"
    out = folder / "out.safetensors"
    args = _command(name, world_captions, out, tiny_checkpoint)
    args[args.index("--save-every") + 1] = save_every

    def full_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))

    env = {**os.environ, "CLIPAG_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-m", "clipag", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, preexec_fn=full_disk, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    _one_error(done.stderr, said.format(out=out, state=f"{out}.state.pt"))
    assert list(folder.iterdir()) == []  # no output, no state, no temporary parts
