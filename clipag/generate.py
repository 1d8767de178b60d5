"""The CLIPAG generator: prompts in, images out. `generate` is the one entry point: it checks
the settings, parses and encodes the prompts once, draws the start, builds the canvas the
settings name (pixels, pyramid, fourier, strokes: clipag.canvas) and hands it to the one loop
(clipag.optimise), then returns the kept images, frames, each canvas's extra files (an SVG for
strokes) and JSON-ready records.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from .augment import VIEW_STYLES, ViewConfig
from .canvas import CANVASES, CanvasConfig, build, dynamic_threshold
from .canvas.config import CANVAS_NAMES, DEFAULT_LR
from .errors import ClipagError
from .flow.crossflow import FlowInit, draft_side
from .init import (InitSource, check_init, init_name, init_source, initial_images,
                   SampleConfig)
from .models import Guide
from .optimise import (ANCHOR_SIDE, Result, StepInfo, drift, guide_score, layout, optimise,
                       penalty, smoothness, stage_plan, step_gradient, view_rows)
from .prompts import WeightedPrompt, parse_prompt, with_negatives
from .targets import Targets, encode_targets, similarity, weighted_distance

__all__ = ["GenerateConfig", "Generation", "Start", "StepInfo", "Result", "generate", "prepare",
           "optimise", "step_gradient", "view_rows", "guide_score", "with_recommended",
           "with_setting", "for_start", "encode_targets", "similarity",
           "weighted_distance", "Targets", "check_init", "init_source", "initial_images",
           "InitSource", "dynamic_threshold", "smoothness", "layout", "drift", "penalty",
           "stage_plan", "resolved"]

# The trust region's weight from a CrossFlow draft (--anchor) and its grid side from other
# starts (--anchor-side). 25 / 50 refiner steps at world-robust's settings, 3 seeds, colour
# and shape. From the embedded (14000-step) flow's drafts: W 100 0.78 / 0.84, 0.73 / 0.73;
# W 10 0.85 / 0.88, 0.69 / 0.65 (rows I86, I87). From the 9000-step flow before it: W 100
# 0.82 / 0.85, 0.58 / 0.53; W 1000 0.80 / 0.81, 0.58 / 0.59; none 0.72 / 0.83, 0.47 / 0.39
# (seeds 0, 1) (rows I73, I80, I82, I83 of docs/experiments.md)
FLOW_ANCHOR = 100.0

# the flag that sets a setting, where it is not `--` + the name with dashes
FLAGS = {"tv_weight": "--tv", "global_views": "--views", "flow.steps": "--flow-steps",
         "flow.guidance": "--flow-guidance", "flow.temperature": "--flow-temperature",
         "flow.candidates": "--flow-candidates",
         "flow.method": "--flow-method"}


@dataclass(frozen=True)
class GenerateConfig:
    size: int | None = None  # output side; default: the model's input size
    steps: int = 100
    lr: float | None = None  # the canvas's main learning rate; None: its default (DEFAULT_LR)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay on that group (0 = off)
    grad_clip: float = 0.001  # per-image gradient-norm clip (0 = off)
    global_weight: float = 1.0
    patch_weight: float = 5.0
    threshold: float = 0.95  # dynamic-thresholding percentile; 0 = plain clamp to [0, 1]
    tv_weight: float = 0.0  # total-variation penalty on the pixels (0 = off, as the reference)
    tv_wrap: bool = False  # the penalty treats the image as a torus: the same cost everywhere
    tv_by_side: bool = False  # with scales: weight side/size at a coarse stage of side `side`
    # trust region: a penalty on moving the layout away from the start image's (0 = off);
    # None: FLOW_ANCHOR from a CrossFlow draft, else off (`for_start` resolves it)
    anchor: float | None = None
    anchor_side: int | None = None  # side at which layouts are compared; None: the draft's, or 16
    views: ViewConfig = field(default_factory=ViewConfig)
    init: str = "gmm"  # "gmm", "noise", a mixture .safetensors, "crossflow[:FILE]"
    init_image: str | None = None
    init_candidates: int = 1000
    flow: SampleConfig = field(default_factory=SampleConfig)  # with init "crossflow"
    scales: tuple[int, ...] = ()  # coarse-to-fine: optimise first at these sides, then at `size`
    save_every: int = 0
    log_every: int = 10
    amp: bool = True
    view_batch: int = 0  # views per model pass (0 = all views of a step in one pass)
    canvas: CanvasConfig = field(default_factory=CanvasConfig)  # what represents the image
    keep: str = "best"  # the image kept: "best" (lowest loss seen) or "last"
    # style transfer's settings (clipag.style.StyleConfig); None for generation
    style: Any = None

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.canvas.name] if self.lr is None else self.lr

    def validate(self, guide: Guide) -> int:
        """Check the settings against the model; return the output side."""
        self.check()
        size = self.size or guide.image_size
        check_size(size)
        if self.views.patch_views and size * self.views.patch_fraction < 4:
            raise ClipagError(f"size {size} is too small for patch views")
        if self.scales:
            sides = (*self.scales, size)
            if min(self.scales) < 8 or any(a >= b for a, b in zip(sides, sides[1:])):
                raise ClipagError(f"--scales must rise from >= 8 to below the output side {size}: "
                                  f"got {','.join(map(str, self.scales))}")
            side = start_side(self)  # a CrossFlow start skips the stages below its draft
            run = tuple(s for s in sides if side is None or s >= side or s == size)
            if self.steps < len(run):
                skipped = (f" (the CrossFlow start skips the scales below its {side} px draft: "
                           f"{','.join(str(s) for s in sides if s not in run)})"
                           if len(run) < len(sides) else "")
                raise ClipagError(f"--steps must be >= {len(run)} for {len(run)} scales{skipped}")
        return size

    def check(self) -> None:
        """The checks that need no model: run them before loading one. Every number must be
        finite and in range, whether it came from a flag, a JSONL line or the API."""
        if self.size is not None:
            _whole("size", self.size, 0)
            check_size(self.size)
        _whole("steps", self.steps, 1)
        if self.lr is not None:
            _real("lr", self.lr, "> 0", lambda v: v > 0)
        for name in ("weight_decay", "grad_clip", "global_weight", "patch_weight", "tv_weight"):
            _real(name, getattr(self, name), ">= 0", lambda v: v >= 0)
        if self.anchor is not None:
            _real("anchor", self.anchor, ">= 0", lambda v: v >= 0)
        _real("threshold", self.threshold, "in [0, 1)", lambda v: 0 <= v < 1)
        _check_views(self.views)
        if not isinstance(self.init, str):
            raise ClipagError(f"--init must be text, got {self.init!r}")
        if self.init_image is not None and not isinstance(self.init_image, str):
            raise ClipagError(f"--init-image must be a file name, got {self.init_image!r}")
        _whole("init_candidates", self.init_candidates, 1)
        if not isinstance(self.scales, (tuple, list)):
            raise ClipagError(f"--scales must be a list of sides, got {self.scales!r}")
        for side in self.scales:
            _whole("scales", side, 1)
        _whole("save_every", self.save_every, 0)
        _whole("log_every", self.log_every, 1)
        _whole("view_batch", self.view_batch, 0)
        if self.anchor_side is not None:
            _whole("anchor_side", self.anchor_side, 1)
        for name in ("amp", "tv_wrap", "tv_by_side"):
            if not isinstance(getattr(self, name), bool):
                raise ClipagError(f"{_flag(name)} must be true or false, "
                                  f"got {getattr(self, name)!r}")
        _whole("flow.steps", self.flow.steps, 1)
        _real("flow.guidance", self.flow.guidance, ">= 0", lambda v: v >= 0)
        _real("flow.temperature", self.flow.temperature, ">= 0", lambda v: v >= 0)
        _whole("flow.candidates", self.flow.candidates, 1)
        if self.keep not in ("best", "last"):
            raise ClipagError(f"--keep must be best or last, got {self.keep!r}")
        _check_canvas(self)
        if self.style is not None:
            _check_declared(self, ("style",))
        check_init(self.init)
        if self.init.startswith("crossflow"):
            self.flow.validate()


def _flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.split(".")[-1].replace("_", "-"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _real(name: str, value: Any, rule: str, ok: Callable[[float], bool]) -> None:
    """A finite number obeying `rule`, or a one-line error naming the flag."""
    if not _is_number(value) or not math.isfinite(value):
        raise ClipagError(f"{_flag(name)} must be a finite number {rule}, got {value!r}")
    if not ok(value):
        raise ClipagError(f"{_flag(name)} must be {rule}, got {value!r}")


def _whole(name: str, value: Any, low: int) -> None:
    """A whole number >= `low`."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ClipagError(f"{_flag(name)} must be a whole number >= {low}, got {value!r}")
    if value < low:
        raise ClipagError(f"{_flag(name)} must be >= {low}, got {value!r}")


def _pair(name: str, value: Any, rule: str, ok: Callable[[float], bool]) -> None:
    """(low, high), both finite, obeying `rule`, low <= high."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ClipagError(f"{_flag(name)} must be a (low, high) pair, got {value!r}")
    for v in value:
        _real(name, v, rule, ok)
    if value[0] > value[1]:
        raise ClipagError(f"{_flag(name)} must be a (low, high) pair with low <= high, "
                          f"got {value!r}")


def _check_views(views: ViewConfig) -> None:
    _whole("global_views", views.global_views, 0)
    _whole("patch_views", views.patch_views, 0)
    if views.global_views + views.patch_views < 1:
        raise ClipagError("at least one view is needed (--views or --patch-views)")
    _real("patch_fraction", views.patch_fraction, "in (0, 1]", lambda v: 0 < v <= 1)
    _real("noise", views.noise, ">= 0", lambda v: v >= 0)
    _real("brightness", views.brightness, ">= 0", lambda v: v >= 0)
    _pair("saturation", views.saturation, ">= 0", lambda v: v >= 0)
    _pair("contrast", views.contrast, ">= 0", lambda v: v >= 0)
    _real("translate", views.translate, "in [0, 1]", lambda v: 0 <= v <= 1)
    _pair("scale", views.scale, "> 0", lambda v: v > 0)
    _real("cutout", views.cutout, "in [0, 1)", lambda v: 0 <= v < 1)
    if views.style not in VIEW_STYLES:
        raise ClipagError(f"view style must be one of {', '.join(VIEW_STYLES)}, "
                          f"got {views.style!r}")


def _check_canvas(config: "GenerateConfig") -> None:
    canvas = config.canvas
    if not isinstance(canvas, CanvasConfig) or canvas.name not in CANVAS_NAMES:
        name = getattr(canvas, "name", canvas)
        raise ClipagError(f"unknown canvas {name!r}: use one of {', '.join(CANVAS_NAMES)}")
    kind = CANVASES[canvas.name]
    if config.scales and not kind.multiscale:
        raise ClipagError(f"--scales (coarse-to-fine stages) work on the pixels canvas only, "
                          f"not {canvas.name}")
    if config.init_image and not kind.from_images:
        raise ClipagError(f"the {canvas.name} canvas cannot start from an image "
                          "(--init-image); it draws its own start from the seed")
    _check_declared(config, ("canvas", canvas.name))


def _check_declared(config: "GenerateConfig", prefix: tuple[str, ...]) -> None:
    """Every setting declared under `prefix` (clipag.settings, where its range is written
    once) checked against its declaration."""
    from .settings import SETTINGS, coerce  # the declarations read this module's defaults

    for setting in SETTINGS.values():
        if setting.path[:len(prefix)] != prefix:
            continue
        value: Any = config
        for part in setting.path:
            value = getattr(value, part)
        try:
            coerce(setting, list(value) if isinstance(value, tuple) else value)
        except ValueError as exc:
            raise ClipagError(f"--{setting.name.replace('_', '-')} {exc}") from None


def check_size(size: int) -> None:
    if size < 8 or size > 4096:
        raise ClipagError(f"impossible size {size}: use 8..4096 pixels")


def start_side(config: GenerateConfig) -> int | None:
    """The side of the CrossFlow draft `config` starts from, read from the flow file's header
    before anything is loaded (None: another start, or a file that does not say). `for_start`
    drops the coarse stages below it."""
    if (config.init_image or not config.init.startswith("crossflow")
            or not CANVASES[config.canvas.name].from_images):
        return None
    return draft_side(config.init)


def for_start(config: GenerateConfig, source: InitSource) -> GenerateConfig:
    """`config` as it runs from this start. From a CrossFlow draft: without the coarse
    stages below the draft's side (the draft holds its object at that side; a stage below it
    averages the object away before the refiner starts: docs/experiments.md, rows I39-I42,
    from a 16 px draft 25 steps over sides 8, 16, 32 read colour 0.41 and over 16, 32 0.62),
    and with the trust region around the draft on unless set (`FLOW_ANCHOR`, at the draft's
    side). From any other start the trust region is off unless set."""
    flow = isinstance(source, FlowInit)
    side = source.model.cfg.resolution if flow else ANCHOR_SIDE
    changes: dict[str, Any] = {}
    if config.anchor is None:
        changes["anchor"] = FLOW_ANCHOR if flow else 0.0
    if config.anchor_side is None:
        changes["anchor_side"] = side
    if flow:
        kept = tuple(s for s in config.scales if s >= side)
        if kept != tuple(config.scales):
            changes["scales"] = kept
    return dataclasses.replace(config, **changes) if changes else config


@dataclass
class Generation:
    images: torch.Tensor  # (B, 3, H, W) the kept images in [0, 1], on the CPU
    frames: list[torch.Tensor]  # snapshots every `config.save_every` steps, each (B, 3, H, W)
    records: list[dict]  # per image, JSON-ready: prompt, parsed, negatives, seed, size, ...
    files: list[dict[str, str]] = field(default_factory=list)  # per image, the canvas's extra
    # files by suffix ({".svg": text} for strokes)
    canvas: Any = None  # the canvas holding the kept state (a style U-Net's weights)


@dataclass
class Start:
    """Everything a run needs before its first step: checked, parsed, encoded, started."""

    size: int
    seeds: list[int]
    negatives: list[list[str]]
    parsed: list[list[WeightedPrompt]]  # each prompt's weighted parts, negatives included
    targets: Targets
    source: InitSource
    images: torch.Tensor | None  # (B, 3, size, size) on the guide's device; None for a
    # canvas that draws its own start (strokes)


def prepare(prompts: Sequence[str], model: Guide, config: GenerateConfig = GenerateConfig(),
            seeds: Sequence[int] | None = None,
            negatives: Sequence[Sequence[str]] | Sequence[str] = (),
            negative_weight: float = 0.5, *, source: InitSource | str = "config") -> Start:
    """Check the settings against the model, parse the prompts, encode their texts once and
    pick the start images (one per seed). `source` is what they are drawn from: "config"
    loads it as `config.init` says; pass one from `init_source` to reuse it across calls."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ClipagError("no prompts to generate")
    size = config.validate(model)
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ClipagError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed each")
    check_seeds(seeds)
    _real("negative_weight", negative_weight, ">= 0", lambda v: v >= 0)
    per_prompt = _negatives_per_prompt(negatives, len(prompts))
    parsed = [with_negatives(parse_prompt(p), n, negative_weight)
              for p, n in zip(prompts, per_prompt)]
    targets = encode_targets(model, parsed)
    if not CANVASES[config.canvas.name].from_images:
        return Start(size, seeds, per_prompt, parsed, targets, None, None)
    source = init_source(config, model) if isinstance(source, str) else source
    images = initial_images(model, targets, config, size, seeds, source, parsed)
    return Start(size, seeds, per_prompt, parsed, targets, source, images)


def check_seeds(seeds: Sequence[int]) -> None:
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
            raise ClipagError(f"--seed must be a whole number in [0, 2^63), got {seed!r}")


def _negatives_per_prompt(negatives: Sequence[Sequence[str]] | Sequence[str] | str,
                          n: int) -> list[list[str]]:
    """One list of negative texts for every prompt, or one list per prompt."""
    if isinstance(negatives, str):
        negatives = [negatives]
    negatives = list(negatives)
    if all(isinstance(x, str) for x in negatives):
        return [list(negatives) for _ in range(n)]
    if any(isinstance(x, str) for x in negatives) or len(negatives) != n:
        raise ClipagError(f"negatives must be one list of texts for all prompts or one list per "
                          f"prompt ({n}), got {negatives!r}")
    out = []
    for x in negatives:
        x = [x] if isinstance(x, str) else list(x)
        if not all(isinstance(t, str) for t in x):
            raise ClipagError(f"negatives must be texts, got {x!r}")
        out.append(x)
    return out


def generate(prompts: Sequence[str], model: Guide, config: GenerateConfig = GenerateConfig(),
             seeds: Sequence[int] | None = None,
             negatives: Sequence[Sequence[str]] | Sequence[str] = (),
             negative_weight: float = 0.5,
             on_step: Callable[[StepInfo], None] | None = None, *,
             source: InitSource | str = "config") -> Generation:
    """Make one image per prompt, optimised together as one batch with the same settings.

    Seeds default to 0..B-1; each start image comes from its own seed, and the views'
    randomness from the first seed, so the same prompts, seeds and batch give the same images
    (bit for bit on the CPU). `negatives` is one list for all prompts or one per prompt, each
    text pushed away with weight -`negative_weight`. `source`: see `prepare`."""
    began = time.perf_counter()
    config = resolved(config)
    start = prepare(prompts, model, config, seeds, negatives, negative_weight, source=source)
    config = for_start(config, start.source)
    canvas = build(config, start.images, start.seeds, start.size, model.device)
    torch.manual_seed(start.seeds[0])  # the augmentations' randomness
    result = optimise(model, start.targets, canvas, config, on_step)
    seconds = (time.perf_counter() - began) / len(start.seeds)
    settings = _jsonable(dataclasses.asdict(config))
    canvas = result.canvas  # the kept state (a staged run resizes the canvas it was given)
    init = init_name(config, start.source) if canvas.from_images else f"{canvas.name} (from the seed)"
    records, files = [], []
    for b, prompt in enumerate(prompts if not isinstance(prompts, str) else [prompts]):
        files.append(canvas.files(b, prompt))
        records.append({
            "prompt": prompt, "parsed": [dataclasses.asdict(p) for p in start.parsed[b]],
            "negatives": start.negatives[b], "seed": start.seeds[b], "size": start.size,
            "model": {"name": model.name}, "settings": settings, "init": init,
            "batch": len(start.seeds), "best_loss": _finite(result.best_loss[b]),
            "score": _finite(result.score[b]), "seconds": round(seconds, 3),
            "device": str(model.device), "torch": torch.__version__})
    return Generation(result.images, result.frames, records, files, canvas)


def resolved(config: GenerateConfig) -> GenerateConfig:
    """`config` with what its canvas decides filled in: the learning rate."""
    if config.lr is None:
        return dataclasses.replace(config, lr=config.learning_rate)
    return config


def _finite(value: float) -> float | None:
    """A number for JSON: None where the run produced none (NaN or inf)."""
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


GENERATE_FIELDS = frozenset(f.name for f in dataclasses.fields(GenerateConfig)) - {
    "views", "flow", "canvas", "style"}
VIEW_FIELDS = frozenset(f.name for f in dataclasses.fields(ViewConfig))


def with_setting(config: GenerateConfig, key: str, value: Any) -> GenerateConfig:
    """`config` with one setting changed: a GenerateConfig or ViewConfig field by name, or
    `jitter` (the views' colour-jitter strength, see ViewConfig.with_jitter)."""
    value = tuple(value) if isinstance(value, list) else value
    if key == "jitter":
        return dataclasses.replace(config, views=config.views.with_jitter(value))
    if key in VIEW_FIELDS:
        return dataclasses.replace(config, views=dataclasses.replace(config.views, **{key: value}))
    if key in GENERATE_FIELDS:
        return dataclasses.replace(config, **{key: value})
    raise ClipagError(f"unknown setting {key!r}")


def with_recommended(config: GenerateConfig, recommended: Iterable[tuple[str, Any]],
                     explicit: set[str]) -> tuple[GenerateConfig, dict[str, Any]]:
    """`config` with a preset's recommended settings applied, except those the user set
    (`explicit`, by setting name), and what that changed. Recommended scales are dropped when
    there are too few steps to split over them (steps <= len(scales))."""
    changed = {}
    for key, value in recommended:
        if key in explicit:
            continue
        value = tuple(value) if isinstance(value, list) else value
        if key == "scales" and (config.steps <= len(value)
                                or not CANVASES[config.canvas.name].multiscale):
            continue
        new = with_setting(config, key, value)
        if new != config:
            config, changed[key] = new, value
    return config, changed


class _CallableModule(types.ModuleType):
    """This module, callable as `generate`: `clipag.generate(...)` is the function whether or
    not the submodule has been imported (which binds the name `generate` on the package)."""

    def __call__(self, *args, **kwargs) -> Generation:
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
