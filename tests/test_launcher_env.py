"""A launcher environment that cannot work is one error line, exit 2, in every command that
reads it (issue 35, class 10)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from clipag.cli.main import cli


@pytest.mark.parametrize("env,message", [
    ({"WORLD_SIZE": "abc"}, "must be whole numbers"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR"),
])
@pytest.mark.parametrize("command", ["robustify", "crossflow"])
def test_a_broken_launcher_environment_is_one_error(tmp_path, world_captions, monkeypatch,
                                                   env, message, command):
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = {"robustify": ["robustify", str(world_captions), "--model", "clipag-tiny",
                          "--pretrained", "none", "--steps", "1", "--batch-size", "4",
                          "-o", str(tmp_path / "r.safetensors"), "-q"],
            "crossflow": ["crossflow", "train", str(world_captions), "--model", "world-vanilla",
                          "--steps", "1", "--batch-size", "4", "-o",
                          str(tmp_path / "f.safetensors")]}[command]
    result = CliRunner().invoke(cli, args, standalone_mode=True)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    assert not any(p.suffix == ".safetensors" for p in tmp_path.iterdir())


def test_robustify_refuses_a_guide_mix_by_name(tmp_path, world_captions):
    result = CliRunner().invoke(cli, ["robustify", str(world_captions), "-m",
                                      "world-robust*1+world-vanilla", "--steps", "1", "-o",
                                      str(tmp_path / "r.safetensors")], standalone_mode=True)
    assert result.exit_code == 2 and "is a mix of guides" in result.output, result.output
