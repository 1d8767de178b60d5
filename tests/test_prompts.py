import pytest

from clipag.errors import ClipagError
from clipag.prompts import WeightedPrompt, parse_prompt, read_prompts_file, with_negatives


def test_weighted_prompt_syntax():
    assert parse_prompt("a red chair:1 | wooden floor:0.3") == [
        WeightedPrompt("a red chair", 1.0), WeightedPrompt("wooden floor", 0.3)]
    assert parse_prompt("a cat") == [WeightedPrompt("a cat", 1.0)]
    assert parse_prompt("sky | clouds:-0.5")[1] == WeightedPrompt("clouds", -0.5)
    # a colon that is not followed by a number stays part of the text
    assert parse_prompt("time: 12 o'clock") == [WeightedPrompt("time: 12 o'clock", 1.0)]


@pytest.mark.parametrize("bad", ["", " | a", "dark:-1"])
def test_bad_prompts_are_errors(bad):
    with pytest.raises(ClipagError):
        parse_prompt(bad)


def test_negatives_get_negative_weight():
    parts = with_negatives(parse_prompt("a dog"), ["blurry", " "], weight=0.7)
    assert parts == [WeightedPrompt("a dog", 1.0), WeightedPrompt("blurry", -0.7)]


def test_prompts_file_skips_comments_and_blanks(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# title\n\na red circle\n  two blue squares  \n# end\n")
    assert [j.prompt for j in read_prompts_file(path)] == ["a red circle", "two blue squares"]


def test_jsonl_prompts_carry_settings(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a cat", "steps": 5, "seed": 3}\n\n{"prompt": "a dog"}\n')
    jobs = read_prompts_file(path)
    assert [j.prompt for j in jobs] == ["a cat", "a dog"]
    assert jobs[0].settings == {"steps": 5, "seed": 3}


@pytest.mark.parametrize("content,message", [
    ("# only a comment\n\n", "holds no prompts"),
    ('{"steps": 3}\n', "needs a \"prompt\""),
    ("{not json\n", "not valid JSON"),
])
def test_bad_prompts_files(tmp_path, content, message):
    path = tmp_path / ("p.jsonl" if content.startswith("{") else "p.txt")
    path.write_text(content)
    with pytest.raises(ClipagError, match=message):
        read_prompts_file(path)


def test_missing_prompts_file(tmp_path):
    with pytest.raises(ClipagError, match="not found"):
        read_prompts_file(tmp_path / "nope.txt")


def test_a_byte_order_mark_does_not_make_the_first_comment_a_prompt(tmp_path):
    for name in ("p.txt", "p.jsonl"):
        path = tmp_path / name
        body = "# prompts\n" + ("a red circle\n" if name.endswith(".txt")
                                else '{"prompt": "a red circle"}\n')
        path.write_bytes(b"\xef\xbb\xbf" + body.encode())
        jobs = read_prompts_file(path)
        assert [j.prompt for j in jobs] == ["a red circle"]
