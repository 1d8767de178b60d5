"""The CLIPAG generator: optimise pixels so that many augmented views of the image match the
prompt under a (robust) CLIP.

`generate` is the one entry point: prompts in, best images, frames and JSON-ready records out.
All views of all images in a batch are drawn at once and go through the model as one batch
(or `view_batch` at a time, with the same gradient); text embeddings are computed once; the
step loop makes no host-device sync except when logging or saving frames.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import kornia
import torch

from .augment import VIEW_STYLES, ViewConfig, Views
from .errors import ClipagError
from .flow.crossflow import FlowInit
from .init import (InitSource, check_init, init_name, init_source, initial_images,
                   SampleConfig, upsample)
from .models import Guide
from .prompts import WeightedPrompt, parse_prompt, with_negatives
from .targets import Targets, encode_targets, similarity, weighted_distance

__all__ = ["GenerateConfig", "Generation", "Start", "StepInfo", "Result", "generate", "prepare",
           "optimise", "step_gradient", "view_rows", "guide_score", "with_recommended",
           "with_setting", "for_start", "encode_targets", "similarity",
           "weighted_distance", "Targets", "check_init", "init_source", "initial_images",
           "InitSource"]

# The trust region's weight from a CrossFlow draft (--anchor) and its grid side from other
# starts (--anchor-side). 25 / 50 refiner steps at world-robust's settings, 3 seeds, colour
# and shape. From the embedded (14000-step) flow's drafts: W 100 0.78 / 0.84, 0.73 / 0.73;
# W 10 0.85 / 0.88, 0.69 / 0.65 (rows I86, I87). From the 9000-step flow before it: W 100
# 0.82 / 0.85, 0.58 / 0.53; W 1000 0.80 / 0.81, 0.58 / 0.59; none 0.72 / 0.83, 0.47 / 0.39
# (seeds 0, 1) (rows I73, I80, I82, I83 of docs/experiments.md)
FLOW_ANCHOR = 100.0
ANCHOR_SIDE = 16

# the flag that sets a setting, where it is not `--` + the name with dashes
FLAGS = {"tv_weight": "--tv", "global_views": "--views", "flow.steps": "--flow-steps",
         "flow.guidance": "--flow-guidance", "flow.temperature": "--flow-temperature",
         "flow.candidates": "--flow-candidates",
         "flow.method": "--flow-method"}


@dataclass(frozen=True)
class GenerateConfig:
    size: int | None = None  # output side; default: the model's input size
    steps: int = 100
    lr: float = 0.0175
    weight_decay: float = 0.0  # AdamW's decoupled weight decay on the pixels (0 = off)
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
            if self.steps < len(sides):
                raise ClipagError(f"--steps must be >= {len(sides)} for {len(sides)} scales")
        return size

    def check(self) -> None:
        """The checks that need no model: run them before loading one. Every number must be
        finite and in range, whether it came from a flag, a JSONL line or the API."""
        if self.size is not None:
            _whole("size", self.size, 0)
            check_size(self.size)
        _whole("steps", self.steps, 1)
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


def check_size(size: int) -> None:
    if size < 8 or size > 4096:
        raise ClipagError(f"impossible size {size}: use 8..4096 pixels")


def dynamic_threshold(x: torch.Tensor, p: float) -> torch.Tensor:
    """Imagen's dynamic thresholding on images in [0, 1] (mapped to [-1, 1] and back);
    p = 0 is a plain clamp."""
    if not p:
        return x.clamp(0, 1)
    y = x * 2 - 1
    s = torch.quantile(y.abs().flatten(1), p, dim=1).clamp_min(1.0).view(-1, 1, 1, 1)
    return ((y.clamp(-s, s) / s) + 1) / 2


@dataclass
class StepInfo:
    step: int
    loss: torch.Tensor  # (B,) global-view loss at this step
    best: torch.Tensor  # (B,)


@dataclass
class Result:
    images: torch.Tensor  # (B, 3, H, W) the best images seen, in [0, 1], on the CPU
    best_loss: list[float]
    score: list[float]  # guide cosine similarity of the best image to its positive prompts
    frames: list[torch.Tensor]  # (B, 3, H, W) snapshots every `save_every` steps


def smoothness(pixels: torch.Tensor, wrap: bool = False) -> torch.Tensor:
    """Per-image total variation: mean absolute difference between neighbouring pixels. With
    `wrap` the last row and column neighbour the first (the image as a torus), so a shape's
    outline costs the same wherever it is: without it, a shape in a corner pays for two sides
    of its outline and one in the middle for four."""
    if not wrap:
        return kornia.losses.total_variation(pixels, reduction="mean").mean(dim=1)
    rows = (pixels - pixels.roll(1, dims=-2)).abs().flatten(-2).mean(-1)
    cols = (pixels - pixels.roll(1, dims=-1)).abs().flatten(-2).mean(-1)
    return (rows + cols).mean(dim=1)


def layout(pixels: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C, s, s) the images' averages over a grid of at most `side` x `side` cells: where
    things are and what colour, without their detail."""
    if pixels.shape[-1] <= side:
        return pixels
    return torch.nn.functional.interpolate(pixels, size=(side, side), mode="area")


def drift(pixels: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared difference between the images' layout and `anchor`'s (B, C, s, s),
    compared at the coarser of the two sides."""
    side = min(pixels.shape[-1], anchor.shape[-1])
    return (layout(pixels, side) - layout(anchor, side)).pow(2).flatten(1).mean(1)


def penalty(pixels: torch.Tensor, config: GenerateConfig, anchor: torch.Tensor | None
            ) -> torch.Tensor | None:
    """(B,) the pixel penalties of a step (smoothness, distance from the start's layout), or
    None when both are off."""
    terms = []
    if config.tv_weight:
        terms.append(config.tv_weight * smoothness(pixels, config.tv_wrap))
    if config.anchor and anchor is not None:
        terms.append(config.anchor * drift(pixels, anchor))
    return sum(terms) if terms else None


def _clip_per_image(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    norms = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return grad * (max_norm / (norms + 1e-12)).clamp(max=1.0)


def stage_plan(size: int, scales: tuple[int, ...], steps: int) -> list[tuple[int, int]]:
    """(side, steps) per stage, coarse to fine; the steps split evenly, the last stage takes
    the remainder."""
    sides = (*scales, size)
    each = steps // len(sides)
    return [(side, each) for side in sides[:-1]] + [(size, steps - each * (len(sides) - 1))]


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


def optimise(guide: Guide, targets: Targets, start: torch.Tensor, config: GenerateConfig,
             on_step: Callable[[StepInfo], None] | None = None) -> Result:
    """Run the pixel optimisation from `start` (B, 3, H, W) in [0, 1]; with `config.scales`,
    coarse to fine: each stage starts from the previous stage's best image, upsampled.

    The smoothness penalty is a mean over pixels, so at side s it charges a shape's outline
    size/s times what it charges at the output side; `tv_by_side` weights it s/size at each
    stage, so an outline costs the same at every stage.

    With `config.anchor`, every stage is also charged for moving the layout (the average over
    an `anchor_side` grid) away from `start`'s: a trust region around the start image, so
    that the refiner adds detail to a draft's shapes instead of repainting them. (None is
    off here; `generate` first resolves it from the start, see `for_start`.)"""
    size = start.shape[-1]
    anchor = layout(start, config.anchor_side or ANCHOR_SIDE).detach() if config.anchor else None
    if not config.scales:
        return _optimise_stage(guide, targets, start, config, on_step, anchor=anchor)
    frames, done, result = [], 0, None
    image = start
    for side, steps in stage_plan(size, config.scales, config.steps):
        image = upsample(image, side) if side > image.shape[-1] else \
            torch.nn.functional.interpolate(image, size=(side, side), mode="area")

        def shifted(info: StepInfo, done=done) -> None:
            if on_step:
                on_step(StepInfo(info.step + done, info.loss, info.best))

        tv = config.tv_weight * side / size if config.tv_by_side else config.tv_weight
        stage = dataclasses.replace(config, steps=steps, scales=(), tv_weight=tv)
        result = _optimise_stage(guide, targets, image, stage, shifted, first_step=done,
                                 anchor=anchor)
        frames += [upsample(f, size) if f.shape[-1] != size else f for f in result.frames]
        image, done = result.images, done + steps
    return Result(result.images, result.best_loss, result.score, frames)


def _optimise_stage(guide: Guide, targets: Targets, start: torch.Tensor, config: GenerateConfig,
                    on_step: Callable[[StepInfo], None] | None = None, first_step: int = 0,
                    anchor: torch.Tensor | None = None) -> Result:
    device = guide.device
    guide.model.requires_grad_(False)
    views = Views(guide.image_size, config.views).to(device)
    # contiguous, so that the gradient (and its nan_to_num copy) has the pixels' layout, as
    # the fused AdamW update assumes
    pixels = start.detach().to(device).clone(memory_format=torch.contiguous_format)
    pixels.requires_grad_(True)
    # fused: one kernel for the update on CUDA, where the step is bound by launches (row G2)
    optimizer = torch.optim.AdamW([pixels], lr=config.lr, weight_decay=config.weight_decay,
                                  fused=device.type == "cuda")
    b = pixels.shape[0]
    best = pixels.detach().clone()
    best_loss = torch.full((b,), float("inf"), device=device)
    frames = []
    n_global = config.views.global_views
    use_amp = config.amp and device.type == "cuda"
    rows = view_rows(b, config, device)
    # the start's layout at this stage's side, once, where the stage is coarser than the grid
    anchor = layout(anchor.to(device), start.shape[-1]) if anchor is not None else None
    for step in range(1, config.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        loss_g, loss_p = step_gradient(guide, views, pixels, targets, config, rows, use_amp,
                                       anchor)
        # a non-finite gradient (an fp16 overflow, a NaN from the model) moves nothing, rather
        # than turning the pixels into NaN for the rest of the run
        pixels.grad = torch.nan_to_num(pixels.grad, nan=0.0, posinf=0.0, neginf=0.0)
        if config.grad_clip:
            pixels.grad = _clip_per_image(pixels.grad, config.grad_clip)
        tracked = (loss_g if n_global else loss_p).detach()
        improved = tracked < best_loss  # a NaN step never counts as an improvement
        best = torch.where(improved.view(-1, 1, 1, 1), pixels.detach(), best)
        best_loss = torch.fmin(best_loss, tracked)
        optimizer.step()
        with torch.no_grad():
            pixels.copy_(dynamic_threshold(pixels, config.threshold))
        if config.save_every and (first_step + step) % config.save_every == 0:
            frames.append(pixels.detach().cpu().clone())
        if on_step and ((first_step + step) % config.log_every == 0 or step == config.steps):
            on_step(StepInfo(step, tracked, best_loss))
    score = guide_score(guide, best, targets)
    return Result(best.cpu(), best_loss.tolist(), score.tolist(), frames)


def guide_score(guide: Guide, images: torch.Tensor, targets: Targets) -> torch.Tensor:
    """(B,) the guide's weighted cosine similarity of images (B, 3, H, W) to their prompts."""
    with torch.no_grad():
        x = images.to(guide.device)
        x = upsample(x, guide.image_size) if x.shape[-1] != guide.image_size else x
        return similarity(guide.encode_images(x), targets)


def view_rows(b: int, config: GenerateConfig, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """None when a step's B * (G + P) views go through the model in one pass; else, for each
    row of the view batch (global views image by image, then patch views), the image it shows
    and its share of the loss (global_weight / G or patch_weight / P), so that the sum over
    rows of share * distance is the unchunked loss."""
    n_global, n_patch = config.views.global_views, config.views.patch_views
    if not 0 < config.view_batch < b * (n_global + n_patch):
        return None
    owner = torch.cat([torch.arange(b).repeat_interleave(n_global),
                       torch.arange(b).repeat_interleave(n_patch)])
    share = torch.cat([torch.full((b * n_global,), config.global_weight / max(n_global, 1)),
                       torch.full((b * n_patch,), config.patch_weight / max(n_patch, 1))])
    return owner.to(device), share.to(device)


def step_gradient(guide: Guide, views: Views, pixels: torch.Tensor, targets: Targets,
                  config: GenerateConfig, rows: tuple[torch.Tensor, torch.Tensor] | None = None,
                  use_amp: bool = False, anchor: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one step's views of `pixels` (B, 3, H, W), leaf) and accumulate the loss's
    gradient into `pixels.grad`; return the per-image global and patch losses (B,), detached.

    With `rows` (from `view_rows`), the views go through the model `config.view_batch` at a
    time: all views are still drawn at once (the same randomness as one pass), each chunk's
    loss is its share of the full loss and its gradient is carried back to the views, then
    through the augmentations to the pixels in one pass, with the pixel penalties (`penalty`:
    smoothness, and the distance from `anchor`, the start's layout) added once."""
    device, b = pixels.device, pixels.shape[0]
    n_global, n_patch = config.views.global_views, config.views.patch_views
    with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
        global_views, patch_views = views(pixels)
        batch = torch.cat([global_views, patch_views])
        if rows is None:
            emb = guide.encode_images(batch)
    if rows is None:
        dim = emb.shape[-1]
        emb_g = emb[:b * n_global].view(b, n_global, dim)
        emb_p = emb[b * n_global:].view(b, n_patch, dim)
        loss_g = weighted_distance(emb_g, targets) if n_global else torch.zeros(b, device=device)
        loss_p = weighted_distance(emb_p, targets) if n_patch else torch.zeros(b, device=device)
        loss = (config.global_weight * loss_g + config.patch_weight * loss_p).sum()
        extra = penalty(pixels, config, anchor)
        if extra is not None:
            loss = loss + extra.sum()
        loss.backward()
        return loss_g.detach(), loss_p.detach()
    owner, share = rows
    leaf = batch.detach().requires_grad_(True)
    distances = []
    for i in range(0, len(leaf), config.view_batch):
        part = slice(i, i + config.view_batch)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            emb = guide.encode_images(leaf[part])
        d = weighted_distance(emb[:, None], targets.select(owner[part]))
        (share[part] * d).sum().backward()
        distances.append(d.detach())
    outputs, grads = [batch], [leaf.grad]
    extra = penalty(pixels, config, anchor)
    if extra is not None:
        outputs.append(extra.sum())
        grads.append(None)
    torch.autograd.backward(outputs, grads)
    d = torch.cat(distances)
    loss_g = d[:b * n_global].view(b, n_global).mean(1) if n_global else torch.zeros(b, device=device)
    loss_p = d[b * n_global:].view(b, n_patch).mean(1) if n_patch else torch.zeros(b, device=device)
    return loss_g, loss_p


@dataclass
class Generation:
    images: torch.Tensor  # (B, 3, H, W) the best images in [0, 1], on the CPU
    frames: list[torch.Tensor]  # snapshots every `config.save_every` steps, each (B, 3, H, W)
    records: list[dict]  # per image, JSON-ready: prompt, parsed, negatives, seed, size, ...


@dataclass
class Start:
    """Everything a run needs before its first step: checked, parsed, encoded, started."""

    size: int
    seeds: list[int]
    negatives: list[list[str]]
    parsed: list[list[WeightedPrompt]]  # each prompt's weighted parts, negatives included
    targets: Targets
    source: InitSource
    images: torch.Tensor  # (B, 3, size, size) on the guide's device


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
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
            raise ClipagError(f"--seed must be a whole number in [0, 2^63), got {seed!r}")
    _real("negative_weight", negative_weight, ">= 0", lambda v: v >= 0)
    per_prompt = _negatives_per_prompt(negatives, len(prompts))
    parsed = [with_negatives(parse_prompt(p), n, negative_weight)
              for p, n in zip(prompts, per_prompt)]
    targets = encode_targets(model, parsed)
    source = init_source(config, model) if isinstance(source, str) else source
    images = initial_images(model, targets, config, size, seeds, source, parsed)
    return Start(size, seeds, per_prompt, parsed, targets, source, images)


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
    start = prepare(prompts, model, config, seeds, negatives, negative_weight, source=source)
    config = for_start(config, start.source)
    torch.manual_seed(start.seeds[0])  # the augmentations' randomness
    result = optimise(model, start.targets, start.images, config, on_step)
    seconds = (time.perf_counter() - began) / len(start.seeds)
    settings = _jsonable(dataclasses.asdict(config))
    init = init_name(config, start.source)
    records = []
    for b, prompt in enumerate(prompts if not isinstance(prompts, str) else [prompts]):
        records.append({
            "prompt": prompt, "parsed": [dataclasses.asdict(p) for p in start.parsed[b]],
            "negatives": start.negatives[b], "seed": start.seeds[b], "size": start.size,
            "model": {"name": model.name}, "settings": settings, "init": init,
            "batch": len(start.seeds), "best_loss": _finite(result.best_loss[b]),
            "score": _finite(result.score[b]), "seconds": round(seconds, 3),
            "device": str(model.device), "torch": torch.__version__})
    return Generation(result.images, result.frames, records)


def _finite(value: float) -> float | None:
    """A number for JSON: None where the run produced none (NaN or inf)."""
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


GENERATE_FIELDS = frozenset(f.name for f in dataclasses.fields(GenerateConfig)) - {"views", "flow"}
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
        if key == "scales" and config.steps <= len(value):
            continue
        new = with_setting(config, key, value)
        if new != config:
            config, changed[key] = new, value
    return config, changed
