"""A step on each canvas, in parts: render, views, the guide's forward and backward of the
views, the backward through the views and the render, and the update (AdamW + projection).

    python bench/canvas_speed.py [--models world-robust,ViT-B-32] [--size 224] [--views 4]
                                 [--strokes 256] [--reps 5] [--device auto]
                                 [--out bench/results/canvas-speed-DATE]

Each canvas runs at the same side and views (CLIPDraw's: 224 px, 4 views a step, its
perspective + crop views); `ViT-B-32` is open_clip's architecture with random weights (the
time does not depend on them). The render's share is (render + its backward) / the step; the
issue's bar: on the CPU at 256 strokes, 224 px and 4 views, the render and its backward take
no longer than the guide's forward and backward of those views. Results: a table, OUT.json
and OUT.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from clipag.augment import ViewConfig, Views
from clipag.canvas import CANVASES, CanvasConfig, StrokesConfig, build
from clipag.device import resolve_device
from clipag.fileio import write_text_atomic
from clipag.generate import GenerateConfig, encode_targets, resolved
from clipag.load import load_model
from clipag.models import PRESETS, _guide, build_model
from clipag.prompts import parse_prompt
from clipag.targets import weighted_distance

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle on a blue background"
PARTS = ("render", "views", "model", "back", "update")


def guide_for(name: str, device: torch.device):
    if name in PRESETS:
        return load_model(name, device=device, quiet=True)
    model, tokenizer = build_model(name, seed=0)
    return _guide(model.to(device).eval(), tokenizer, f"{name} (random weights)", {"arch": name})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(guide, canvas, views: Views, targets, optimizer) -> dict[str, float]:
    """Seconds of each part of one step."""
    device = guide.device
    marks = [time.perf_counter()]

    def mark() -> None:
        sync(device)
        marks.append(time.perf_counter())

    optimizer.zero_grad(set_to_none=True)
    image = canvas.render()
    mark()
    global_views, _ = views(image)
    mark()
    leaf = global_views.detach().requires_grad_(True)
    emb = guide.encode_images(leaf)
    loss = weighted_distance(emb[None], targets).sum()
    loss.backward()
    mark()
    global_views.backward(leaf.grad)
    mark()
    optimizer.step()
    canvas.project()
    mark()
    return dict(zip(PARTS, (b - a for a, b in zip(marks, marks[1:]))))


def time_render_backward(canvas, reps: int) -> float:
    """The render's own backward (a random gradient on the image), fastest of `reps`."""
    best = float("inf")
    for _ in range(reps):
        image = canvas.render()
        grad = torch.randn_like(image)
        sync(image.device)
        start = time.perf_counter()
        image.backward(grad)
        sync(image.device)
        best = min(best, time.perf_counter() - start)
    return best


def bench(model: str, canvas_name: str, size: int, n_views: int, strokes: int, reps: int,
          device: torch.device) -> dict:
    guide = guide_for(model, device)
    guide.model.requires_grad_(False)
    config = resolved(GenerateConfig(
        size=size, canvas=CanvasConfig(name=canvas_name, strokes=StrokesConfig(count=strokes)),
        views=ViewConfig(global_views=n_views, patch_views=0, style="clipdraw")))
    targets = encode_targets(guide, [parse_prompt(PROMPT)])
    start = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    canvas = build(config, start, [0], size, device)
    views = Views(guide.image_size, config.views).to(device)
    optimizer = torch.optim.AdamW([{"params": [g.tensor], "lr": g.lr} for g in canvas.groups],
                                  lr=canvas.groups[0].lr)
    torch.manual_seed(0)
    time_step(guide, canvas, views, targets, optimizer)  # warm-up
    steps = [time_step(guide, canvas, views, targets, optimizer) for _ in range(reps)]
    parts = {p: statistics.median(s[p] for s in steps) for p in PARTS}
    render_back = time_render_backward(canvas, reps)
    step = sum(parts.values())
    render_total = parts["render"] + render_back
    return {"model": guide.name, "canvas": canvas_name, "size": size, "views": n_views,
            "strokes": strokes if canvas_name == "strokes" else None,
            "s_step": step, **{f"s_{p}": v for p, v in parts.items()},
            "s_render_backward": render_back, "render_share": render_total / step,
            "render_vs_model": render_total / parts["model"]}


def markdown(rows: list[dict], command: str, device: str) -> str:
    lines = [f"# Canvas step speed ({device})", "", f"Command: `{command}`", "",
             "Median of the timed steps, seconds. `back`: the backward through the views and "
             "the render; `render bwd`: the render's own part of it; `render / model`: (render "
             "+ render bwd) / the guide's forward + backward of the views.", "",
             "| model | canvas | side | views | s/step | render | render bwd | views | model "
             "fwd+bwd | back | update | render share | render / model |",
             "|---" * 13 + "|"]
    for r in rows:
        name = r["canvas"] + (f" ({r['strokes']})" if r["strokes"] else "")
        lines.append(f"| {r['model']} | {name} | {r['size']} | {r['views']} | {r['s_step']:.3f} "
                     f"| {r['s_render']:.3f} | {r['s_render_backward']:.3f} | {r['s_views']:.3f} "
                     f"| {r['s_model']:.3f} | {r['s_back']:.3f} | {r['s_update']:.3f} "
                     f"| {r['render_share']:.0%} | {r['render_vs_model']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="world-robust,ViT-B-32")
    parser.add_argument("--canvases", default=",".join(CANVASES))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--strokes", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    for model in args.models.split(","):
        for canvas in args.canvases.split(","):
            row = bench(model, canvas, args.size, args.views, args.strokes, args.reps, device)
            rows.append(row)
            print(f"{row['model']:28s} {canvas:8s} step {row['s_step']:.3f}s render+bwd "
                  f"{row['s_render'] + row['s_render_backward']:.3f}s model {row['s_model']:.3f}s"
                  f" share {row['render_share']:.0%}", flush=True)
    write_report(args, "canvas_speed", "canvas-speed", rows, markdown, device)


def write_report(args: argparse.Namespace, script: str, stem: str, rows: list[dict],
                 markdown, device: torch.device) -> None:
    """OUT.json and OUT.md (OUT: --out, else bench/results/STEM-DATE) with the device, the
    command that reproduces the run and its rows; the table printed."""
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({platform.processor() or platform.machine()}, "
                 f"{torch.get_num_threads()} threads)")
    out = Path(args.out or ROOT / "bench" / "results" / f"{stem}-{datetime.date.today().isoformat()}")
    command = f"python bench/{script}.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)
    write_text_atomic(out.with_suffix(".json"), json.dumps(
        {"device": name, "torch": torch.__version__, "command": command, "rows": rows},
        indent=2) + "\n")
    table = markdown(rows, command, name)
    write_text_atomic(out.with_suffix(".md"), table)
    print(table)

if __name__ == "__main__":
    main()
