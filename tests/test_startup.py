"""The command line answers --help, --version and a mistyped command without loading torch
(the commands are imported only when one runs or its help is asked for)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from clipag.cli.main import cli
try:
    cli(args=sys.argv[1:], prog_name="clipag")
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "open_clip", "kornia") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["bogus"], []])
def test_top_level_answers_without_torch(args):
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         timeout=120)
    assert "HEAVY:\n" in out.stdout, out.stdout + out.stderr
    if args == ["--help"]:
        for name in ("generate", "draw", "robustify", "bench"):
            assert f"  {name} " in out.stdout


def test_every_listed_command_loads():
    from clipag.cli.main import COMMANDS, cli

    for name in COMMANDS:
        assert cli.get_command(None, name) is not None, name
