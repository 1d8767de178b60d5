"""Style transfer's speed per representation: seconds a step and an image at a content size.

    python bench/style_speed.py [--models world-robust,ViT-B-32] [--side 512] [--steps 4]
                                [--recipes clipag,clipstyler] [--device auto] [--out PATH]

Each recipe runs with its own settings (`clipag style --recipe R`: clipag's pixels with 32
global views, CLIPStyler's U-Net with 1 + 64 views), on a side x side content image, through
clipag.style.style itself; `ViT-B-32` is open_clip's architecture with random weights (time
does not depend on them). s/step: the median interval between steps after the first; s/image:
the time to the first step (loading the content, encoding, the first step) plus the recipe's
steps at s/step. Results: a table, OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from clipag.device import resolve_device
from clipag.recipes import STYLE_RECIPES, style_recipe_config
from clipag.style import style

from canvas_speed import guide_for, sync, write_report


def bench(model: str, recipe: str, side: int, steps: int, device: torch.device) -> dict:
    guide = guide_for(model, device)
    base = style_recipe_config(recipe)
    config = dataclasses.replace(base, steps=steps, log_every=1,
                                 style=dataclasses.replace(base.style, max_side=side))
    content = torch.rand(3, side, side, generator=torch.Generator().manual_seed(0))
    marks = []

    def on_step(info) -> None:
        sync(device)
        marks.append(time.perf_counter())

    sync(device)
    start = time.perf_counter()
    style(content, "a watercolor painting", guide, config, [0], on_step)
    per_step = statistics.median(b - a for a, b in zip(marks, marks[1:]))
    setup = marks[0] - start - per_step
    return {"model": guide.name, "recipe": recipe, "canvas": config.canvas.name, "side": side,
            "views": config.views.global_views + config.views.patch_views,
            "s_step": per_step, "s_setup": setup, "recipe_steps": base.steps,
            "s_image": setup + base.steps * per_step}


def markdown(rows: list[dict], command: str, device: str) -> str:
    lines = [f"# Style transfer speed ({device})", "", f"Command: `{command}`", "",
             "| model | recipe | canvas | side | views a step | s/step | s/image (steps) |",
             "|---" * 7 + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['recipe']} | {r['canvas']} | {r['side']} | "
                     f"{r['views']} | {r['s_step']:.3f} | {r['s_image']:.0f} "
                     f"({r['recipe_steps']}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="world-robust,ViT-B-32")
    parser.add_argument("--recipes", default=",".join(STYLE_RECIPES))
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    for model in args.models.split(","):
        for recipe in args.recipes.split(","):
            row = bench(model, recipe, args.side, args.steps, device)
            rows.append(row)
            print(f"{row['model']:28s} {recipe:10s} {row['s_step']:.3f} s/step, "
                  f"{row['s_image']:.0f} s/image", flush=True)
    write_report(args, "style_speed", "style-speed", rows, markdown, device)

if __name__ == "__main__":
    main()
