"""Prompt syntax: `a red chair:1 | wooden floor:0.3`, negatives, and prompts files."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import ClipagError

_WEIGHT = re.compile(r"^(.*?):\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$", re.S)
MAX_WEIGHT = 1e6  # |weight| beyond it is a typo, and overflows float32 losses
MAX_PROMPTS_BYTES = 64 << 20  # a prompts file past it is a mistake (or never ends: /dev/zero)


@dataclass(frozen=True)
class WeightedPrompt:
    text: str
    weight: float = 1.0


def parse_prompt(text: str) -> list[WeightedPrompt]:
    """Split on `|`; a trailing `:number` is the weight (negative = push away)."""
    parts = []
    for raw in text.split("|"):
        raw = raw.strip()
        match = _WEIGHT.match(raw)
        body, weight = (match.group(1).strip(), float(match.group(2))) if match else (raw, 1.0)
        if not body:
            raise ClipagError(f"empty prompt in {text!r}")
        if not (math.isfinite(weight) and abs(weight) <= MAX_WEIGHT):
            raise ClipagError(f"prompt weight {match.group(2)} in {text!r} must be a finite "
                              f"number within +-{MAX_WEIGHT:g}")
        parts.append(WeightedPrompt(body, weight))
    if not any(p.weight > 0 for p in parts):
        raise ClipagError(f"prompt {text!r} has no positive part to move towards")
    return parts


def with_negatives(prompts: list[WeightedPrompt], negatives: list[str],
                   weight: float = 0.5) -> list[WeightedPrompt]:
    """Add `--negative` texts with weight -`weight`."""
    return prompts + [WeightedPrompt(n.strip(), -abs(weight)) for n in negatives if n.strip()]


@dataclass
class Job:
    """One line of work: a prompt and its per-line settings."""

    prompt: str
    settings: dict[str, Any] = field(default_factory=dict)  # checked, keyed by Setting.name
    where: str = "command line"  # FILE:LINE, for messages


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key {repeated[0]!r} given twice")
    return dict(pairs)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _json_row(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line, object_pairs_hook=_strict_object, parse_constant=_no_constant)
    except ValueError as exc:
        reason = str(exc) if not isinstance(exc, json.JSONDecodeError) else exc.msg
        raise ClipagError(f"{where}: not valid JSON ({reason})") from None
    if not isinstance(row, dict) or "prompt" not in row:
        raise ClipagError(f"{where}: each line needs a \"prompt\"")
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        raise ClipagError(f"{where}: \"prompt\" must be a non-empty string")
    return row


def read_prompts_file(path: str | Path) -> list[Job]:
    """One prompt a line (`#` comments and blank lines skipped), or JSONL with a `prompt`
    key and any generate setting per line (`.jsonl` files)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise ClipagError(f"prompts file {path} is a folder, not a file")
        if not stat.S_ISREG(mode):  # /dev/zero, a FIFO: reading would never end, or block
            raise ClipagError(f"prompts file {path} is not a regular file (a device, FIFO or "
                              "socket); save the prompts to a file")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_PROMPTS_BYTES + 1)  # at most the cap, even if it grows meanwhile
        if len(raw) > MAX_PROMPTS_BYTES:
            raise ClipagError(f"prompts file {path} is larger than "
                              f"{MAX_PROMPTS_BYTES >> 20} MiB; split it into several files")
        lines = raw.decode("utf-8-sig").splitlines()  # a BOM is not text
    except FileNotFoundError:
        raise ClipagError(f"prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipagError(f"cannot read prompts file {path}: {exc}") from None
    jobs = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        if path.suffix.lower() == ".jsonl":
            from .settings import line_settings  # settings imports generate, which imports us

            row = _json_row(line, where)
            prompt = row.pop("prompt").strip()
            jobs.append(Job(prompt, line_settings(row, where), where))
        else:
            jobs.append(Job(line, {}, where))
    if not jobs:
        raise ClipagError(f"prompts file {path} holds no prompts")
    for job in jobs:  # fail early, before any model is loaded
        try:
            parse_prompt(job.prompt)
        except ClipagError as exc:
            raise ClipagError(f"{job.where}: {exc}") from None
    return jobs


def words(texts: Iterable[str]) -> list[str]:
    """The lower-case words of `texts` in order of first appearance (weights dropped)."""
    seen: dict[str, None] = {}
    for text in texts:
        for part in text.split("|"):
            match = _WEIGHT.match(part.strip())
            body = match.group(1) if match else part
            for word in re.findall(r"[a-z0-9]+", body.lower()):
                seen.setdefault(word, None)
    return list(seen)


def world_vocabulary() -> frozenset[str]:
    """Every word the procedural world's captions use (clipag/world/scenes.py): its colours,
    shapes (and plurals), sizes, positions, counts, digits and the caption templates' words."""
    from .world import scenes

    templates = scenes.TEMPLATES_ONE + scenes.TEMPLATES_MANY + scenes.TEMPLATES_DIGIT
    fixed = {w for t in templates for w in re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", t))}
    return frozenset(fixed | set(scenes.COLORS) | set(scenes.SHAPES)
                     | {scenes.plural(s) for s in scenes.SHAPES} | set(scenes.SIZES)
                     | set(scenes.POSITIONS) | {"middle", "an"}
                     | set(scenes.COUNT_WORDS.values()) | {str(d) for d in range(10)})


def unknown_words(texts: Iterable[str], vocabulary: frozenset[str]) -> list[str]:
    """The words of `texts` that `vocabulary` lacks, in order of first appearance."""
    return [w for w in words(texts) if w not in vocabulary]
