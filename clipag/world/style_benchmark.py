"""Style transfer measured in the procedural world: content images drawn by the scene renderer
("a red circle on a blue background"), targets that change one attribute ("... on a green
background", "a yellow circle ..."), outputs read by the analytic judge (clipag.world.judge).

Per case: the target attribute changed (the judge reads the new value), the content kept (the
object's mask IoU with the content's) and the untouched colour kept (the other of object and
background colour still reads as before)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np
import torch

from .judge import foreground, read_image
from .scenes import COLORS, SIZE_FRACTION, Scene, _place, full_caption, render

ATTRIBUTES = ("background", "color")  # what a case changes, alternately


@dataclass(frozen=True)
class StyleCase:
    scene: Scene  # the content
    attribute: str  # "background" or "color": what the target changes
    new: str  # its new value
    source: str  # the content's caption
    target: str  # the caption with the attribute changed

    def other(self) -> tuple[str, str]:
        """The colour attribute the target leaves alone and its value."""
        key = "color" if self.attribute == "background" else "background"
        return key, getattr(self.scene, key)


def style_cases(n: int, seed: int = 2024) -> list[StyleCase]:
    """`n` fixed cases: one large object in a random place, shape and colours; the odd ones
    change the background colour, the even ones the object's; the new colour differs from
    both present."""
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        shape = rng.choice(("circle", "square", "triangle", "cross"))
        color = rng.choice(list(COLORS))
        background = rng.choice([c for c in COLORS if c != color])
        position = rng.choice(("left", "right", "top", "bottom", "center"))
        extent = SIZE_FRACTION["large"] * rng.uniform(0.9, 1.1)
        scene = Scene(shape, color, background, "large", 1, position,
                      _place(rng, 1, extent, position))
        attribute = ATTRIBUTES[i % 2]
        new = rng.choice([c for c in COLORS if c not in (color, background)])
        changed = dataclasses.replace(scene, **{attribute: new})
        cases.append(StyleCase(scene, attribute, new, full_caption(scene), full_caption(changed)))
    return cases


def content_image(case: StyleCase, size: int = 64) -> torch.Tensor:
    """(3, size, size) the case's content in [0, 1]."""
    array = np.asarray(render(case.scene, size), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def judge_style(output: torch.Tensor, case: StyleCase, size: int = 64) -> dict[str, float]:
    """changed: the target attribute reads as the new value; kept: the other colour reads as
    before; iou: the object's mask against the content's."""
    seen = read_image(output[:3])
    key, value = case.other()
    content_mask = foreground(render(case.scene, output.shape[-1]))
    return {"changed": float(seen.get(case.attribute) == case.new),
            "kept": float(seen.get(key) == value),
            "iou": iou(foreground(output[:3]), content_mask)}


def summary(reads: list[dict[str, float]]) -> dict[str, float]:
    """Means over cases, and the share of cases with IoU >= 0.7."""
    out = {k: float(np.mean([r[k] for r in reads])) for k in ("changed", "kept", "iou")}
    out["iou_ok"] = float(np.mean([r["iou"] >= 0.7 for r in reads]))
    return out


@dataclass
class StyleReport:
    guide: str
    per_seed: list[dict[str, float]]  # summary per seed

    def mean(self) -> dict[str, float]:
        return {k: float(np.mean([s[k] for s in self.per_seed])) for k in self.per_seed[0]}


def run_guide(guide, cases: list[StyleCase], config, seed: int, size: int = 64
              ) -> tuple[list[dict[str, float]], torch.Tensor]:
    """Every case restyled under `guide` as one batch: the judge's reads and the images."""
    from ..style import style

    contents = [content_image(c, size) for c in cases]
    result = style(contents, [c.target for c in cases], guide, config, [seed] * len(cases),
                   sources=[c.source for c in cases])
    return [judge_style(im, c) for im, c in zip(result.images, cases)], result.images


def markdown(reports: list[StyleReport], n: int, seeds: list[int], command: str) -> str:
    lines = ["# Style transfer in the world", "", f"Command: `{command}`", "",
             f"{n} cases (half change the background colour, half the object's), seeds "
             f"{', '.join(map(str, seeds))}. changed: the target colour is read; kept: the "
             "other colour still reads as before; IoU: the object's mask against the "
             "content's (mean, and the share of cases >= 0.7). Targets: changed >= 0.8, "
             "IoU >= 0.7, kept >= 0.8.", "",
             "| guide | changed | kept | IoU | IoU >= 0.7 | per seed (changed / kept / IoU) |",
             "|---|---|---|---|---|---|"]
    for r in reports:
        m = r.mean()
        seeds_text = "; ".join(f"{s['changed']:.2f} / {s['kept']:.2f} / {s['iou']:.2f}"
                               for s in r.per_seed)
        lines.append(f"| {r.guide} | {m['changed']:.2f} | {m['kept']:.2f} | {m['iou']:.2f} | "
                     f"{m['iou_ok']:.2f} | {seeds_text} |")
    return "\n".join(lines) + "\n"


def run(guides: list, n: int, seeds: list[int], config, out, command: str,
        grid_cases: int = 12):
    """Each guide (name, Guide) over the cases and seeds; writes OUT/style.md, style.json and
    style-grid.png (rows: the contents, then each guide's results; columns: the first
    `grid_cases` cases, seed 0)."""
    import json

    from ..fileio import write_text_atomic
    from ..output import save_grid

    cases = style_cases(n)
    reports, shown = [], [torch.stack([content_image(c) for c in cases[:grid_cases]])]
    for name, guide in guides:
        per_seed = []
        for i, seed in enumerate(seeds):
            reads, images = run_guide(guide, cases, config, seed)
            per_seed.append(summary(reads))
            if i == 0:
                shown.append(images[:grid_cases, :3])
        reports.append(StyleReport(name, per_seed))
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(reports, n, seeds, command)
    write_text_atomic(out / "style.md", table)
    write_text_atomic(out / "style.json", json.dumps(
        {"command": command, "cases": n, "seeds": seeds,
         "reports": [{"guide": r.guide, "mean": r.mean(), "per_seed": r.per_seed}
                     for r in reports]}, indent=2) + "\n")
    # a row each: the contents, then each guide's results; a column per case
    save_grid(out / "style-grid.png", [im for row in shown for im in row], len(shown[0]),
              scale=2)
    return reports, table
