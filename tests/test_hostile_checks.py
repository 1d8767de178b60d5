"""Issue 35, classes 9, 11 and 7 (in part): every bad input is found before any work and
said as what it is, in one `error:` line with exit code 2, no traceback and nothing written.

- class 9 (checked too late): a prompts-file line whose settings do not fit the model is
  refused, naming its FILE:LINE, before the lines above it are generated;
- class 11 (misleading words): a bad --device, an unreadable CrossFlow file, a guide mix
  given to robustify, clipag's other files given as a guide, the scales a CrossFlow start
  drops, an empty class folder and unreadable images in `eval`;
- class 7 (memory): a prompts file that never ends or is huge, and an init image of
  1 x 1,000,000 pixels."""

import pytest
from click.testing import CliRunner

from clipag.cli.main import cli

FAST = ["--steps", "2", "--views", "2", "--patch-views", "0", "--init-candidates", "4",
        "--device", "cpu", "-q"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], result.output


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
