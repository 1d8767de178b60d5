"""Prompt syntax: `a red chair:1 | wooden floor:0.3`, negatives, and prompts files."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ClipagError

_WEIGHT = re.compile(r"^(.*?):\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$", re.S)


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
    settings: dict[str, Any] = field(default_factory=dict)


def read_prompts_file(path: str | Path) -> list[Job]:
    """One prompt a line (`#` comments and blank lines skipped), or JSONL with a `prompt`
    key and any generate setting per line (`.jsonl` files)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ClipagError(f"prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipagError(f"cannot read prompts file {path}: {exc}") from None
    jobs = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except ValueError:
                raise ClipagError(f"{path}:{n}: not valid JSON") from None
            if not isinstance(row, dict) or not str(row.get("prompt", "")).strip():
                raise ClipagError(f"{path}:{n}: each line needs a \"prompt\"")
            prompt = str(row.pop("prompt")).strip()
            jobs.append(Job(prompt, row))
        else:
            jobs.append(Job(line))
    if not jobs:
        raise ClipagError(f"prompts file {path} holds no prompts")
    for job in jobs:
        parse_prompt(job.prompt)  # fail early, before any model is loaded
    return jobs
