"""The PAG benchmark: the same world prompts, generated under identical settings with each
guide, scored by the analytic judge and by a held-out CLIP judge."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from .fileio import write_text_atomic
from .generate import GenerateConfig, encode_targets, init_source, initial_images, optimise
from .judge import judge, read_image
from .models import Guide, ModelSpec, load_guide
from .output import save_grid
from .prompts import parse_prompt
from .world import WorldConfig, full_caption, sample

ATTRIBUTES = ("color", "background", "shape", "count")


def suite(n: int, seed: int = 1234) -> list[str]:
    """`n` fixed world prompts naming colour, shape, background (and count)."""
    prompts, i = [], 0
    config = WorldConfig(seed=seed, digit_fraction=0.0)
    while len(prompts) < n:
        scene = sample(i, config)[2]
        i += 1
        if scene.count <= 2:
            prompts.append(full_caption(scene))
    return prompts


@dataclass
class GuideReport:
    guide: str
    accuracy: dict[str, float]
    judge_score: float  # held-out CLIP cosine(image, prompt)
    guide_score: float  # the guide's own cosine(image, prompt)
    seconds_per_image: float

    @property
    def fooling_gap(self) -> float:
        return self.guide_score - self.judge_score


def run_guide(guide: Guide, held_out: Guide, prompts: list[str], config: GenerateConfig,
              batch_size: int, seed: int) -> tuple[GuideReport, torch.Tensor]:
    hits, totals = defaultdict(int), defaultdict(int)
    images, guide_scores, judge_scores = [], [], []
    start = time.perf_counter()
    source = init_source(config, guide)
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        parsed = [parse_prompt(p) for p in chunk]
        targets = encode_targets(guide, parsed)
        seeds = [seed + i + j for j in range(len(chunk))]
        size = config.validate(guide)
        init = initial_images(guide, targets, config, size, seeds, source, parsed)
        torch.manual_seed(seeds[0])
        result = optimise(guide, targets, init, config)
        images.append(result.images)
        guide_scores += result.score
    seconds = (time.perf_counter() - start) / len(prompts)
    images = torch.cat(images)
    with torch.no_grad():
        size = held_out.image_size
        x = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                            antialias=True).to(held_out.device)
        emb = held_out.encode_images(x)
        txt = held_out.encode_texts(prompts)
        judge_scores = (emb * txt).sum(-1).tolist()
    for image, prompt in zip(images, prompts):
        for attribute, ok in judge(image, prompt).items():
            if attribute in ATTRIBUTES:
                hits[attribute] += ok
                totals[attribute] += 1
    accuracy = {a: hits[a] / totals[a] for a in ATTRIBUTES if totals[a]}
    report = GuideReport(guide.name, accuracy, sum(judge_scores) / len(prompts),
                         sum(guide_scores) / len(prompts), seconds)
    return report, images


def validate_judge(n: int = 400) -> dict[str, float]:
    """The analytic judge's accuracy on ground-truth world images."""
    hits, totals = defaultdict(int), defaultdict(int)
    config = WorldConfig(seed=99, digit_fraction=0.0)
    for i in range(n):
        image, _, scene = sample(i, config)
        for attribute, ok in judge(image, full_caption(scene)).items():
            hits[attribute] += ok
            totals[attribute] += 1
    return {a: hits[a] / totals[a] for a in totals}


def markdown(reports: list[GuideReport], judge_truth: dict[str, float], prompts: int,
             config: GenerateConfig, command: str) -> str:
    lines = [f"# PAG benchmark ({prompts} world prompts)", "",
             f"Command: `{command}`", "",
             f"Settings: steps {config.steps}, lr {config.lr}, views "
             f"{config.views.global_views}+{config.views.patch_views} (patch weight "
             f"{config.patch_weight}), scales {','.join(map(str, config.scales)) or 'none'}, "
             f"init {config.init} (best of {config.init_candidates}), threshold "
             f"{config.threshold}.", "",
             "| guide | " + " | ".join(f"judge {a}" for a in ATTRIBUTES)
             + " | held-out CLIP score | guide score | gap (fooling) | s/image |",
             "|---" * (len(ATTRIBUTES) + 5) + "|"]
    for r in reports:
        lines.append(f"| {r.guide} | " + " | ".join(f"{r.accuracy.get(a, float('nan')):.2f}"
                                                   for a in ATTRIBUTES)
                     + f" | {r.judge_score:.3f} | {r.guide_score:.3f} | {r.fooling_gap:.3f}"
                     f" | {r.seconds_per_image:.1f} |")
    lines += ["", "Analytic judge on ground-truth world images: "
              + ", ".join(f"{k} {v:.3f}" for k, v in judge_truth.items()), ""]
    return "\n".join(lines)


def run(guides: list[str], judge_model: str, prompts: int, config: GenerateConfig,
        out: Path, device: torch.device, batch_size: int = 8, seed: int = 0,
        command: str = "") -> tuple[list[GuideReport], Path]:
    out.mkdir(parents=True, exist_ok=True)
    texts = suite(prompts)
    held_out = load_guide(ModelSpec(model=judge_model), device)
    reports, rows = [], []
    for name in guides:
        spec = ModelSpec(checkpoint=name) if Path(name).is_file() else ModelSpec(model=name)
        guide = load_guide(spec, device)
        report, images = run_guide(guide, held_out, texts, config, batch_size, seed)
        reports.append(report)
        rows.extend(images)
    truth = validate_judge()
    table = markdown(reports, truth, prompts, config, command)
    write_text_atomic(out / "pag.md", table)
    write_text_atomic(out / "pag.json", json.dumps({
        "prompts": texts, "settings": dataclasses.asdict(config), "judge_truth": truth,
        "reports": [dict(dataclasses.asdict(r), fooling_gap=r.fooling_gap) for r in reports]},
        indent=2, default=list) + "\n")
    save_grid(out / "pag-grid.png", rows, columns=len(texts), scale=2)
    return reports, out / "pag.md"


__all__ = ["run", "suite", "judge", "read_image", "validate_judge"]
