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

from ..fileio import write_text_atomic
from ..generate import ANCHOR_SIDE, FLOW_ANCHOR, GenerateConfig, generate, guide_score, prepare
from ..init import init_source, upsample
from .judge import judge, read_image
from ..load import load_model
from ..models import Guide
from ..output import save_grid
from .scenes import WorldConfig, full_caption, sample
from .scenes import parse_prompt as prompt_attributes

ATTRIBUTES = ("color", "background", "shape", "count")
JUDGE_SIDE = 64  # the world's image side, where the analytic judge was validated


def tv_form(config: GenerateConfig) -> str:
    """How the pixel penalties were computed (smoothness form, trust region), for a report's
    settings line."""
    forms = [name for name, on in (("wrapped", config.tv_wrap), ("by side", config.tv_by_side))
             if on]
    form = f" ({', '.join(forms)})" if forms and config.tv_weight else ""
    if config.anchor is None:
        side = f"{config.anchor_side} px" if config.anchor_side is not None else "its side"
        form += f", anchor {FLOW_ANCHOR:g} at {side} from a CrossFlow draft, else off"
    elif config.anchor:
        side = (f"{config.anchor_side} px" if config.anchor_side is not None
                else f"a draft's side ({ANCHOR_SIDE} px from other starts)")
        form += f", anchor {config.anchor:g} at {side}"
    return form


def canvas_label(config: GenerateConfig) -> str:
    """The canvas as a report names it: `strokes (256)`, `pixels`."""
    if config.canvas.name == "strokes":
        return f"strokes ({config.canvas.strokes.count})"
    return config.canvas.name


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
    reads: list[dict] = dataclasses.field(default_factory=list)  # what the judge saw, per image

    @property
    def fooling_gap(self) -> float:
        return self.guide_score - self.judge_score


def make_images(guide: Guide, prompts: list[str], config: GenerateConfig, batch_size: int,
                seed: int) -> tuple[torch.Tensor, list[float]]:
    """Images of the prompts (the start images alone when `config.steps` is 0) and the
    guide's own scores of them; prompt k uses seed `seed + k`."""
    images, scores = [], []
    source = init_source(config, guide)  # loaded once (a CrossFlow takes a while)
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        seeds = [seed + i + j for j in range(len(chunk))]
        if config.steps:
            made = generate(chunk, guide, config, seeds, source=source)
            images.append(made.images)
            scores += [float("nan") if r["score"] is None else r["score"] for r in made.records]
        else:  # no refiner steps: the scales plan nothing, start as a one-step run would
            start = prepare(chunk, guide, dataclasses.replace(config, steps=1, scales=()), seeds,
                            source=source)
            scores += guide_score(guide, start.images, start.targets).tolist()
            images.append(start.images.cpu())
    return torch.cat(images), scores


def score_images(images: torch.Tensor, prompts: list[str], held_out: Guide
                 ) -> tuple[dict[str, float], float, list[dict]]:
    """(analytic judge accuracy per attribute, mean held-out CLIP cosine to the prompt, what
    the judge read in each image)."""
    hits, totals = defaultdict(int), defaultdict(int)
    with torch.no_grad():
        size = held_out.image_size
        x = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                            antialias=True).to(held_out.device)
        judge_scores = (held_out.encode_images(x) * held_out.encode_texts(prompts)).sum(-1)
    if images.shape[-1] != JUDGE_SIDE:  # the analytic judge reads at the world's resolution
        images = torch.nn.functional.interpolate(images, size=(JUDGE_SIDE, JUDGE_SIDE),
                                                 mode="bilinear", antialias=True).clamp(0, 1)
    reads = []
    for image, prompt in zip(images, prompts):
        for attribute, ok in judge(image, prompt).items():
            if attribute in ATTRIBUTES:
                hits[attribute] += ok
                totals[attribute] += 1
        reads.append({k: v for k, v in read_image(image).items() if k in ATTRIBUTES})
    accuracy = {a: hits[a] / totals[a] for a in ATTRIBUTES if totals[a]}
    return accuracy, judge_scores.mean().item(), reads


def confusion(prompts: list[str], reads: list[dict], attribute: str = "shape"
              ) -> dict[str, dict[str, int]]:
    """For each value the prompts ask for, how often the judge read each value: tells a guide
    that draws one shape everywhere from one that draws none."""
    table: dict[str, dict[str, int]] = {}
    for prompt, seen in zip(prompts, reads):
        wanted = prompt_attributes(prompt).get(attribute)
        if wanted is not None:
            row = table.setdefault(wanted, {})
            got = str(seen.get(attribute))
            row[got] = row.get(got, 0) + 1
    return table


def run_guide(guide: Guide, held_out: Guide, prompts: list[str], config: GenerateConfig,
              batch_size: int, seed: int) -> tuple[GuideReport, torch.Tensor]:
    start = time.perf_counter()
    images, guide_scores = make_images(guide, prompts, config, batch_size, seed)
    seconds = (time.perf_counter() - start) / len(prompts)
    accuracy, judge_score, reads = score_images(images, prompts, held_out)
    report = GuideReport(guide.name, accuracy, judge_score,
                         sum(guide_scores) / len(prompts), seconds, reads)
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
             config: GenerateConfig, command: str, texts: tuple[str, ...] = ()) -> str:
    lines = [f"# PAG benchmark ({prompts} world prompts)", "",
             f"Command: `{command}`", "",
             f"Settings: canvas {canvas_label(config)}, keep {config.keep}, "
             f"steps {config.steps}, lr {config.learning_rate:g}, views "
             f"{config.views.global_views}+{config.views.patch_views} (patch weight "
             f"{config.patch_weight}), colour jitter brightness {config.views.brightness:g}, "
             f"cutout {config.views.cutout:g}, noise {config.views.noise:g}, "
             f"scales {','.join(map(str, config.scales)) or 'none'}, "
             f"size {config.size or 'the guide input'}, "
             f"init {config.init} (best of {config.init_candidates}), threshold "
             f"{config.threshold}, tv {config.tv_weight:g}{tv_form(config)}.", "",
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
    if texts and any(r.reads for r in reports):
        lines += _confusion_table("guide", [r.guide for r in reports],
                                  [r.reads for r in reports], list(texts))
    return "\n".join(lines)


def _confusion_table(column: str, labels: list[str], reads: list[list[dict]],
                     texts: list[str]) -> list[str]:
    tables = [confusion(texts, r) for r in reads]
    asked = sorted({shape for t in tables for shape in t})
    lines = ["Shapes as the judge read them (prompted shape: read shape x images):", "",
             f"| {column} | " + " | ".join(asked) + " |", "|---" * (len(asked) + 1) + "|"]
    for label, table in zip(labels, tables):
        cells = [", ".join(f"{got} {n}" for got, n in sorted(table.get(shape, {}).items(),
                                                              key=lambda kv: (-kv[1], kv[0])))
                 for shape in asked]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def run(guides: list[str], judge_model: str, prompts: int, config: GenerateConfig,
        out: Path, device: torch.device, batch_size: int = 8, seed: int = 0,
        command: str = "") -> tuple[list[GuideReport], Path]:
    out.mkdir(parents=True, exist_ok=True)
    texts = suite(prompts)
    held_out = load_model(judge_model, device=device, quiet=False)
    reports, rows = [], []
    for name in guides:
        guide = load_model(name, device=device, quiet=False)
        report, images = run_guide(guide, held_out, texts, config, batch_size, seed)
        reports.append(report)
        rows.extend(images)
    truth = validate_judge()
    table = markdown(reports, truth, prompts, config, command, tuple(texts))
    write_text_atomic(out / "pag.md", table)
    write_text_atomic(out / "pag.json", json.dumps({
        "prompts": texts, "settings": dataclasses.asdict(config), "judge_truth": truth,
        "reports": [dict(dataclasses.asdict(r), fooling_gap=r.fooling_gap) for r in reports]},
        indent=2, default=list) + "\n")
    save_grid(out / "pag-grid.png", rows, columns=len(texts), scale=2)
    return reports, out / "pag.md"




@dataclass
class InitReport:
    init: str
    refiner_steps: int
    accuracy: dict[str, float]
    judge_score: float
    seconds_per_image: float
    reads: list[dict] = dataclasses.field(default_factory=list)  # what the judge saw, per image
    # with several sampler seeds, each seed's {"seed", "accuracy", "judge_score"}; the fields
    # above are then their means (reads: every seed's images)
    per_seed: list[dict] = dataclasses.field(default_factory=list)


def _mean_report(init: str, steps: int, runs: list[tuple[int, dict, float, float, list]]
                 ) -> InitReport:
    """One report from (seed, accuracy, held-out score, s/image, reads) per seed."""
    seeds, accuracies, scores, seconds, reads = zip(*runs)
    n = len(runs)
    accuracy = {a: sum(acc[a] for acc in accuracies) / n for a in accuracies[0]}
    per_seed = [{"seed": s, "accuracy": acc, "judge_score": score}
                for s, acc, score in zip(seeds, accuracies, scores)] if n > 1 else []
    return InitReport(init, steps, accuracy, sum(scores) / n, sum(seconds) / n,
                      [read for one in reads for read in one], per_seed)


def _cell(report: InitReport, attribute: str | None) -> str:
    """A table cell: the value, and with several seeds each seed's in brackets."""
    def value(accuracy: dict, score: float) -> float:
        return score if attribute is None else accuracy.get(attribute, float("nan"))

    digits = 3 if attribute is None else 2
    text = f"{value(report.accuracy, report.judge_score):.{digits}f}"
    if report.per_seed:
        text += " (" + "/".join(f"{value(s['accuracy'], s['judge_score']):.{digits}f}"
                                for s in report.per_seed) + ")"
    return text


def init_label(init: str) -> str:
    """An init as a report names it: `crossflow:work/a/flow.safetensors` -> `crossflow:flow`,
    so that two flows in one run can be told apart without their folders."""
    kind, _, path = init.partition(":")
    return f"{kind}:{Path(path).stem}" if path else Path(kind).stem if "/" in kind else kind


def run_inits(guide_name: str, judge_model: str, prompts: int, inits: list[str],
              refiner_steps: list[int], config: GenerateConfig, out: Path,
              device: torch.device, batch_size: int = 8, seeds: tuple[int, ...] = (0,),
              command: str = "") -> tuple[list[InitReport], Path]:
    """The same prompts from each init (a GMM best-of-N, a CrossFlow draft), refined for each
    number of steps (0: the start image alone), under one guide and one judge; with several
    sampler seeds every figure is their mean (one seed of 32 prompts moved a flow's colour
    from 0.31 to 0.66: rows I49-I50 of docs/experiments.md). The grid shows the first seed."""
    out.mkdir(parents=True, exist_ok=True)
    texts = suite(prompts)
    held_out = load_model(judge_model, device=device, quiet=False)
    guide = load_model(guide_name, device=device, quiet=False)
    reports, rows = [], []
    for init in inits:
        for steps in refiner_steps:
            run, runs = dataclasses.replace(config, init=init, steps=steps), []
            for k, seed in enumerate(seeds):
                start = time.perf_counter()
                images, _ = make_images(guide, texts, run, batch_size, seed)
                seconds = (time.perf_counter() - start) / len(texts)
                accuracy, judge_score, reads = score_images(images, texts, held_out)
                runs.append((seed, accuracy, judge_score, seconds, reads))
                if k == 0:
                    rows.extend(images)
            reports.append(_mean_report(init_label(init), steps, runs))
    lines = [f"# Initializer benchmark ({len(texts)} world prompts, guide {guide.name})", "",
             f"Command: `{command}`", "",
             f"Refiner: lr {config.learning_rate:g}, views {config.views.global_views}+"
             f"{config.views.patch_views}, cutout {config.views.cutout:g}, noise "
             f"{config.views.noise:g}, tv {config.tv_weight:g}{tv_form(config)}, "
             f"scales {','.join(map(str, config.scales)) or 'none'}; "
             f"GMM best of {config.init_candidates}; CrossFlow {config.flow.steps} "
             f"{config.flow.method} steps, guidance {config.flow.guidance}, temperature "
             f"{config.flow.temperature:g}"
             + (f", the guide's best of {config.flow.candidates} drafts"
                if config.flow.candidates > 1 else "") + ".", "",
             "| init | refiner steps | " + " | ".join(f"judge {a}" for a in ATTRIBUTES)
             + " | held-out CLIP score | s/image |",
             "|---" * (len(ATTRIBUTES) + 4) + "|"]
    if len(seeds) > 1:
        lines[2:2] = [f"Sampler seeds {', '.join(map(str, seeds))}: each figure is their mean, "
                      "each seed's in brackets.", ""]
    for r in reports:
        lines.append(f"| {r.init} | {r.refiner_steps} | "
                     + " | ".join(_cell(r, a) for a in ATTRIBUTES)
                     + f" | {_cell(r, None)} | {r.seconds_per_image:.2f} |")
    lines += ["", *_confusion_table("init, refiner steps",
                                    [f"{r.init}, {r.refiner_steps}" for r in reports],
                                    [r.reads for r in reports], texts * len(seeds))]
    write_text_atomic(out / "init.md", "\n".join(lines))
    write_text_atomic(out / "init.json", json.dumps({
        "prompts": texts, "settings": dataclasses.asdict(config),
        "reports": [dataclasses.asdict(r) for r in reports]}, indent=2, default=list) + "\n")
    size = max(r.shape[-1] for r in rows)
    rows = [upsample(r[None], size)[0] if r.shape[-1] != size else r for r in rows]
    save_grid(out / "init-grid.png", rows, columns=len(texts), scale=2)
    return reports, out / "init.md"


__all__ = ["run", "run_inits", "suite", "judge", "read_image", "validate_judge"]
