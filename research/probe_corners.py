"""Where a guide puts the object, under variants of the generation settings: the same held-out
world prompts and the same start images (seed per prompt) for every variant, read by the
analytic judge (colour, background, shape) and by where the object's centroid lies (offset:
0 at the centre, 0.5 at the border) and whether it touches the border (edge).

    python research/probe_corners.py --out work/corners                 # every variant
    python research/probe_corners.py --variants recommended,wrap --prompts 4 --steps 20

The world's own renders of the same kind of prompt are read the same way as a yardstick
("world renders"). Writes corners.md and corners.json (a later run into the same folder adds
its variants to the table) and corners-grid.png (one row a variant of this run)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import clipag.init as init_module

from clipag.generate import GenerateConfig, with_recommended, with_setting
from clipag.load import load_model
from clipag.models import PRESETS
from clipag.recipes import recipe_config
from clipag.output import save_grid
from clipag.world.benchmark import make_images, score_images, suite
from clipag.world.judge import read_image
from clipag.world.scenes import WorldConfig, sample

SUITE_SEED = 4321  # not the benchmark's 1234: prompts no setting was tuned on


def recommended(guide: str) -> GenerateConfig:
    config, _ = with_recommended(GenerateConfig(), PRESETS[guide].recommended, set())
    return config


def variants(guide: str) -> dict[str, GenerateConfig]:
    rec = recommended(guide)

    def edit(config: GenerateConfig, **changes) -> GenerateConfig:
        for key, value in changes.items():
            config = with_setting(config, key, value)
        return config

    return {
        "defaults": GenerateConfig(),
        "reference recipe": recipe_config("reference"),
        "recommended": rec,
        "no tv": edit(rec, tv_weight=0.0),
        "no scales": edit(rec, scales=()),
        "cutout 0.5": edit(rec, cutout=0.5),
        "wrap": edit(rec, tv_wrap=True),
        "wrap + no scales": edit(rec, tv_wrap=True, scales=()),
        "tv by side": edit(rec, tv_by_side=True),
        "wrap + tv by side": edit(rec, tv_wrap=True, tv_by_side=True),
        "wrap + tv by side + reference views": edit(rec, tv_wrap=True, tv_by_side=True,
                                                    style="reference", weight_decay=0.01),
        CENTRE_SCORED: rec,
    }


CENTRE_SCORED = "centre-scored start"  # research only: the start chosen by its centre


@contextlib.contextmanager
def centre_scored_start():
    """The best-of-N start chosen by the guide's score of each candidate's central half (zoomed
    to the candidate's side) instead of the whole candidate: the winning candidate's
    prompt-like blob then tends to lie at the centre, where the world puts objects."""
    plain = init_module.best_of

    def by_centre(candidates: torch.Tensor, score, chunk: int = 256) -> torch.Tensor:
        side = candidates.shape[-1]
        q = side // 4
        centres = F.interpolate(candidates[..., q:side - q, q:side - q], size=(side, side),
                                mode="bilinear", align_corners=False)
        scores = torch.cat([score(centres[i:i + chunk]) for i in range(0, len(centres), chunk)])
        return candidates[int(scores.argmax().item())]

    init_module.best_of = by_centre
    try:
        yield
    finally:
        init_module.best_of = plain


def placement(reads: list[dict]) -> dict[str, float]:
    found = [r for r in reads if r.get("count", 0)]
    n = max(len(found), 1)
    return {"found": len(found) / max(len(reads), 1),
            "offset": sum(r["offset"] for r in found) / n,
            "edge": sum(r["edge"] for r in found) / n}


def world_placement(prompts: int, seed: int) -> dict[str, float]:
    config = WorldConfig(seed=seed, digit_fraction=0.0)
    reads = []
    for i in range(prompts * 20):
        image, _, scene = sample(i, config)
        if scene.count <= 2:
            reads.append(read_image(image))
    return placement(reads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guide", default="world-robust")
    parser.add_argument("--judge", default="world-judge")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--variants", default="", help="comma-separated names (default: all)")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--out", default="work/corners")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    guide = load_model(args.guide)
    judge = load_model(args.judge)
    texts = suite(args.prompts, seed=SUITE_SEED)
    table = variants(args.guide)
    names = [n.strip() for n in args.variants.split(",") if n.strip()] or list(table)
    rows, results = [], {}
    saved = out / "corners.json"
    if saved.exists():  # an earlier run's variants stay in the table
        earlier = json.loads(saved.read_text())
        if earlier["prompts"] != texts or earlier.get("steps", args.steps) != args.steps:
            raise SystemExit(f"{saved} holds another run (prompts or steps differ): use --out")
        results = earlier["results"]
    for name in names:
        config = dataclasses.replace(table[name], steps=args.steps)
        began = time.perf_counter()
        with centre_scored_start() if name == CENTRE_SCORED else contextlib.nullcontext():
            images, _ = make_images(guide, texts, config, args.batch_size, seed=0)
        seconds = (time.perf_counter() - began) / len(texts)
        accuracy, judge_score, _ = score_images(images, texts, judge)
        reads = [read_image(image) for image in images]
        results[name] = {"accuracy": accuracy, "judge_score": judge_score,
                         **placement(reads), "seconds_per_image": seconds,
                         "settings": dataclasses.asdict(config)}
        rows.extend(images)
        print(name, {k: v for k, v in results[name].items() if k != "settings"}, flush=True)
    world = world_placement(args.prompts, SUITE_SEED)
    command = "python research/probe_corners.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v != "")
    lines = [f"# Where the object goes ({args.prompts} held-out prompts, guide {args.guide}, "
             f"{args.steps} steps)", "", f"Command: `{command}`", "",
             "| variant | colour | background | shape | held-out score | object found | "
             "offset | touches border | s/image |", "|---" * 9 + "|"]
    for name, r in results.items():
        a = r["accuracy"]
        lines.append(f"| {name} | {a.get('color', 0):.2f} | {a.get('background', 0):.2f} | "
                     f"{a.get('shape', 0):.2f} | {r['judge_score']:.3f} | {r['found']:.2f} | "
                     f"{r['offset']:.3f} | {r['edge']:.2f} | {r['seconds_per_image']:.1f} |")
    lines.append(f"| world renders | | | | | {world['found']:.2f} | {world['offset']:.3f} | "
                 f"{world['edge']:.2f} | |")
    (out / "corners.md").write_text("\n".join(lines) + "\n")
    (out / "corners.json").write_text(json.dumps(
        {"prompts": texts, "steps": args.steps, "results": results, "world": world},
        indent=2, default=list) + "\n")
    save_grid(out / "corners-grid.png", rows, columns=len(texts), scale=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
