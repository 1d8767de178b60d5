"""The canvas table: `clipag bench pag` runs per canvas, guide and seed (as
examples/bench_canvases.sh lays them out, FOLDER/CANVAS-GUIDE-sSEED/pag.json) as one markdown
table and one JSON file, means over the seeds with each seed's value in brackets.

    python research/canvas_table.py bench/results/2026-12-07-canvases
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ATTRIBUTES = ("color", "background", "shape", "count")
CANVASES = ("pixels", "pyramid", "fourier", "strokes")


def collect(folder: Path) -> dict[tuple[str, str], list[dict]]:
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for path in sorted(folder.glob("*/pag.json")):
        m = re.fullmatch(r"(?P<canvas>[a-z]+)-(?P<guide>.+)-s(?P<seed>\d+)", path.parent.name)
        if m is None:
            continue
        report = json.loads(path.read_text())["reports"][0]
        runs[(m["canvas"], m["guide"])].append({
            "seed": int(m["seed"]), **{a: report["accuracy"].get(a) for a in ATTRIBUTES},
            "held_out": report["judge_score"], "gap": report["fooling_gap"],
            "s_image": report["seconds_per_image"]})
    return runs


def cell(values: list[float], digits: int) -> str:
    mean = sum(values) / len(values)
    text = f"{mean:.{digits}f}"
    return text + (" (" + "/".join(f"{v:.{digits}f}" for v in values) + ")" if len(values) > 1
                   else "")


def main() -> None:
    folder = Path(sys.argv[1])
    runs = collect(folder)
    keys = sorted(runs, key=lambda k: (CANVASES.index(k[0]) if k[0] in CANVASES else 9, k[1]))
    lines = ["| canvas | guide | seeds | colour | background | shape | count | held-out | "
             "gap (fooling) | s/image |", "|---" * 10 + "|"]
    for canvas, guide in keys:
        rows = sorted(runs[(canvas, guide)], key=lambda r: r["seed"])
        lines.append(f"| {canvas} | {guide} | {len(rows)} | " + " | ".join(
            cell([r[a] for r in rows], 2) for a in ATTRIBUTES) + " | "
            + cell([r["held_out"] for r in rows], 3) + " | " + cell([r["gap"] for r in rows], 3)
            + f" | {sum(r['s_image'] for r in rows) / len(rows):.1f} |")
    table = "\n".join(lines) + "\n"
    (folder / "canvases.md").write_text(table)
    (folder / "canvases.json").write_text(json.dumps(
        {f"{c}/{g}": runs[(c, g)] for c, g in keys}, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
