"""Many prompts, many samples: plan the outputs, skip finished ones, batch the rest."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .augment import ViewConfig
from .errors import ClipagError
from .flow.crossflow import FlowInit
from .generate import (GenerateConfig, Result, StepInfo, encode_targets, init_source,
                       initial_images, optimise)
from .models import Guide
from .output import save_gif, save_png, save_sidecar, slug
from .prompts import Job, parse_prompt, with_negatives


@dataclass(frozen=True)
class Task:
    """One image to make."""

    prompt: str
    negatives: tuple[str, ...]
    seed: int
    config: GenerateConfig
    png: Path

    @property
    def sidecar(self) -> Path:
        return self.png.with_suffix(".json")

    @property
    def gif(self) -> Path:
        return self.png.with_suffix(".gif")

    def done(self) -> bool:
        return self.png.is_file()


GENERATE_FIELDS = {f.name for f in dataclasses.fields(GenerateConfig)} - {"views"}
VIEW_FIELDS = {f.name for f in dataclasses.fields(ViewConfig)}


def apply_settings(config: GenerateConfig, settings: dict[str, Any]) -> GenerateConfig:
    """A config with per-line JSONL settings applied; unknown keys are an error."""
    views, top = {}, {}
    for key, value in settings.items():
        if key in ("seed", "negative", "samples"):
            continue
        if key in VIEW_FIELDS:
            views[key] = tuple(value) if isinstance(value, list) else value
        elif key in GENERATE_FIELDS:
            top[key] = value
        else:
            raise ClipagError(f"unknown setting {key!r} in prompts file")
    return dataclasses.replace(config, views=dataclasses.replace(config.views, **views), **top)


def plan(jobs: list[Job], config: GenerateConfig, outdir: Path, samples: int, seed: int,
         negatives: tuple[str, ...] = (), output: Path | None = None) -> list[Task]:
    """Every image to make, with a stable output name per (prompt, seed)."""
    tasks = []
    for j, job in enumerate(jobs):
        job_config = apply_settings(config, job.settings)
        job_negatives = negatives + tuple(
            [job.settings["negative"]] if isinstance(job.settings.get("negative"), str)
            else job.settings.get("negative", ()))
        base_seed = int(job.settings.get("seed", seed))
        for s in range(int(job.settings.get("samples", samples))):
            task_seed = base_seed + s
            if output is not None and len(jobs) == 1 and samples == 1:
                png = output
            else:
                png = outdir / f"{j:04d}-{slug(job.prompt)}-s{task_seed}.png"
            tasks.append(Task(job.prompt, job_negatives, task_seed, job_config, png))
    names = [t.png for t in tasks]
    if len(set(names)) != len(names):
        raise ClipagError("two outputs would share one file name; vary --seed or the prompts")
    return tasks


def batches(tasks: list[Task], batch_size: int) -> Iterator[list[Task]]:
    """Consecutive tasks with identical settings, at most `batch_size` at a time."""
    group: list[Task] = []
    for task in tasks:
        if group and (len(group) == batch_size or task.config != group[0].config):
            yield group
            group = []
        group.append(task)
    if group:
        yield group


def run_batch(guide: Guide, group: list[Task], model_info: dict[str, Any],
              on_step: Callable[[StepInfo], None] | None = None,
              negative_weight: float = 0.5) -> Result:
    """Make and save one batch of images with the same settings."""
    config = group[0].config
    size = config.validate(guide)
    prompts = [with_negatives(parse_prompt(t.prompt), list(t.negatives), negative_weight)
               for t in group]
    targets = encode_targets(guide, prompts)
    start = time.perf_counter()
    seeds = [t.seed for t in group]
    source = init_source(config, guide)
    init = initial_images(guide, targets, config, size, seeds, source, prompts)
    torch.manual_seed(seeds[0])  # the augmentations' randomness
    result = optimise(guide, targets, init, config, on_step)
    seconds = (time.perf_counter() - start) / len(group)
    for b, task in enumerate(group):
        meta = {"prompt": task.prompt, "parsed": [dataclasses.asdict(p) for p in prompts[b]],
                "negatives": list(task.negatives), "seed": task.seed, "size": size,
                "model": model_info, "settings": _jsonable(dataclasses.asdict(config)),
                "init": init_name(config, source),
                "batch": len(group), "best_loss": result.best_loss[b],
                "score": result.score[b], "seconds": round(seconds, 3),
                "device": str(guide.device), "torch": torch.__version__}
        if result.frames:
            save_gif(task.gif, [f[b] for f in result.frames] + [result.images[b]])
        save_sidecar(task.sidecar, meta)
        save_png(task.png, result.images[b], meta)
    return result


def init_name(config: GenerateConfig, source) -> str:
    if config.init_image:
        return "image"
    if isinstance(source, FlowInit):
        return "crossflow"
    return "gmm" if source is not None else "noise"


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value
