"""The one optimisation loop: views of what a canvas renders, the guide, the loss, the step,
the projection, best-of tracking and frames. It drives any clipag.canvas.Canvas and never asks
which: every canvas renders (B, 3, H, W) in [0, 1] from parameter groups whose first dimension
is the image.

All views of all images in a batch are drawn at once and go through the model as one batch
(or `view_batch` at a time, with the same gradient); the step loop makes no host-device sync
except when logging or saving frames (and where a canvas's render needs one: strokes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import kornia
import torch

from .augment import Views
from .canvas import Canvas, build
from .canvas.pixels import resample
from .models import Guide
from .targets import Targets, floored, similarity, weighted_distance

if TYPE_CHECKING:  # the settings object; only its fields are read here
    from .generate import GenerateConfig

ANCHOR_SIDE = 16  # the trust region's grid side from a start that sets none


@dataclass
class StepInfo:
    step: int
    loss: torch.Tensor  # (B,) global-view loss at this step
    best: torch.Tensor  # (B,)
    render: Callable[[], torch.Tensor] | None = None  # the images now (B, 3, H, W), no grad


def _render_now(canvas: Canvas) -> Callable[[], torch.Tensor]:
    def render() -> torch.Tensor:
        with torch.no_grad():
            return canvas.render().detach()

    return render


@dataclass
class Result:
    images: torch.Tensor  # (B, 3, H, W) the kept images (best seen, or last), on the CPU
    best_loss: list[float]
    score: list[float]  # guide cosine similarity of the kept image to its positive prompts
    frames: list[torch.Tensor]  # (B, 3, H, W) snapshots every `save_every` steps
    canvas: Canvas | None = None  # the canvas holding the kept state (for its extra files)


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


Content = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) -> (B,) a penalty


def penalty(pixels: torch.Tensor, config: "GenerateConfig", anchor: torch.Tensor | None,
            content: Content | None = None) -> torch.Tensor | None:
    """(B,) the image penalties of a step (smoothness, distance from the start's layout, and
    `content`: a caller's own, such as style transfer's content loss), or None when all are
    off."""
    terms = [content(pixels)] if content is not None else []
    if config.tv_weight:
        terms.append(config.tv_weight * smoothness(pixels, config.tv_wrap))
    if config.anchor and anchor is not None:
        terms.append(config.anchor * drift(pixels, anchor))
    return sum(terms) if terms else None


def clip_per_image(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """Each image's gradient (its slice of every group) scaled to norm <= max_norm."""
    norms = [g.flatten(1).norm(dim=1) for g in grads]
    norm = norms[0] if len(norms) == 1 else torch.stack(norms).norm(dim=0)
    factor = (max_norm / (norm + 1e-12)).clamp(max=1.0)
    return [g * factor.view(-1, *[1] * (g.dim() - 1)) for g in grads]


def stage_plan(size: int, scales: tuple[int, ...], steps: int) -> list[tuple[int, int]]:
    """(side, steps) per stage, coarse to fine; the steps split evenly, the last stage takes
    the remainder."""
    sides = (*scales, size)
    each = steps // len(sides)
    return [(side, each) for side in sides[:-1]] + [(size, steps - each * (len(sides) - 1))]


def lr_factor(schedule: tuple[tuple[float, float], ...], step: int, steps: int) -> float:
    """The learning-rate factor at `step` (1-based) of `steps`: the last (fraction, factor)
    whose step int(fraction * steps) has been reached, else 1."""
    factor = 1.0
    for fraction, f in schedule:
        if step - 1 >= int(fraction * steps):
            factor = f
    return factor


def optimise(guide: Guide, targets: Targets, start: torch.Tensor | Canvas,
             config: "GenerateConfig", on_step: Callable[[StepInfo], None] | None = None,
             seeds: list[int] | None = None, content: Content | None = None) -> Result:
    """Optimise a canvas: `start` is one, or start images (B, 3, H, W) in [0, 1] from which
    `config.canvas` is built (`seeds` for the canvases that draw their own start). With
    `config.scales` (canvases that support them), coarse to fine: each stage starts from the
    previous stage's kept state, resampled.

    The smoothness penalty is a mean over pixels, so at side s it charges a shape's outline
    size/s times what it charges at the output side; `tv_by_side` weights it s/size at each
    stage, so an outline costs the same at every stage.

    With `config.anchor`, every stage is also charged for moving the layout (the average over
    an `anchor_side` grid) away from the start's: a trust region around the start image, so
    that the refiner adds detail to a draft's shapes instead of repainting them. (None is
    off here; `generate` first resolves it from the start, see `for_start`.)

    `content`, where given, is one more penalty on every step's render (style transfer's
    content loss: clipag.style)."""
    if isinstance(start, Canvas):
        canvas = start
    else:
        b = start.shape[0]
        canvas = build(config, start, seeds or list(range(b)), start.shape[-1], guide.device)
    with torch.no_grad():
        first = canvas.render().detach()
    size = first.shape[-1]
    anchor = layout(first, config.anchor_side or ANCHOR_SIDE) if config.anchor else None
    if not config.scales:
        return _optimise_stage(guide, targets, canvas, config, on_step, anchor=anchor,
                               total_steps=config.steps, content=content)
    frames, done, result = [], 0, None
    for side, steps in stage_plan(size, config.scales, config.steps):
        canvas = canvas.resized(side)

        def shifted(info: StepInfo, done=done) -> None:
            if on_step:
                on_step(StepInfo(info.step + done, info.loss, info.best, info.render))

        tv = config.tv_weight * side / size if config.tv_by_side else config.tv_weight
        stage = dataclasses.replace(config, steps=steps, scales=(), tv_weight=tv)
        result = _optimise_stage(guide, targets, canvas, stage, shifted, first_step=done,
                                 anchor=anchor, total_steps=config.steps, content=content)
        frames += [resample(f, size) if f.shape[-1] != size else f for f in result.frames]
        done += steps
    return dataclasses.replace(result, frames=frames)


def _optimise_stage(guide: Guide, targets: Targets, canvas: Canvas, config: "GenerateConfig",
                    on_step: Callable[[StepInfo], None] | None = None, first_step: int = 0,
                    anchor: torch.Tensor | None = None, total_steps: int | None = None,
                    content: Content | None = None) -> Result:
    """One stage: `config.steps` steps, the first numbered `first_step` + 1 of the run's
    `total_steps` (learning-rate schedules are fractions of the whole run)."""
    total_steps = total_steps or config.steps
    device = guide.device
    guide.model.requires_grad_(False)
    views = Views(guide.image_size, config.views).to(device)
    groups = canvas.groups
    # fused: one kernel for the update on CUDA, where the step is bound by launches (row G2)
    optimizer = torch.optim.AdamW(
        [{"params": [g.tensor], "lr": g.lr, "weight_decay": g.weight_decay} for g in groups],
        lr=groups[0].lr, fused=device.type == "cuda")
    tensors = canvas.tensors
    b = tensors[0].shape[0]
    kept = [t.detach().clone() for t in tensors]
    best_loss = torch.full((b,), float("inf"), device=device)
    frames = []
    n_global = config.views.global_views
    use_amp = config.amp and device.type == "cuda"
    keep_best = config.keep == "best"
    rows = view_rows(b, config, device)
    # the start's layout at this stage's side, once, where the stage is coarser than the grid
    with torch.no_grad():
        side = canvas.render().shape[-1]
    anchor = layout(anchor.to(device), side) if anchor is not None else None
    for step in range(1, config.steps + 1):
        for group, g in zip(optimizer.param_groups, groups):
            if g.schedule:
                group["lr"] = g.lr * lr_factor(g.schedule, first_step + step, total_steps)
        optimizer.zero_grad(set_to_none=True)
        image = canvas.render()
        loss_g, loss_p = step_gradient(guide, views, image, targets, config, rows, use_amp,
                                       anchor, content)
        # a non-finite gradient (an fp16 overflow, a NaN from the model) moves nothing, rather
        # than turning the parameters into NaN for the rest of the run
        grads = [torch.nan_to_num(t.grad, nan=0.0, posinf=0.0, neginf=0.0)
                 if t.grad is not None else torch.zeros_like(t) for t in tensors]
        if config.grad_clip:
            grads = clip_per_image(grads, config.grad_clip)
        for t, g in zip(tensors, grads):
            t.grad = g
        tracked = (loss_g if n_global else loss_p).detach()
        if keep_best:
            improved = tracked < best_loss  # a NaN step never counts as an improvement
            for k, t in zip(kept, tensors):
                k.copy_(torch.where(improved.view(-1, *[1] * (t.dim() - 1)), t.detach(), k))
            best_loss = torch.fmin(best_loss, tracked)
        else:
            best_loss = tracked
        optimizer.step()
        canvas.project()
        if config.save_every and (first_step + step) % config.save_every == 0:
            with torch.no_grad():
                frames.append(canvas.render().detach().cpu().clone())
        if on_step and ((first_step + step) % config.log_every == 0 or step == config.steps):
            on_step(StepInfo(step, tracked, best_loss, _render_now(canvas)))
    if keep_best:
        canvas.load(kept)
    with torch.no_grad():
        final = canvas.render().detach()
    score = guide_score(guide, final, targets)
    return Result(final.cpu(), best_loss.tolist(), score.tolist(), frames, canvas)


def guide_score(guide: Guide, images: torch.Tensor, targets: Targets) -> torch.Tensor:
    """(B,) the guide's weighted cosine similarity of images (B, 3, H, W) to their prompts."""
    with torch.no_grad():
        x = images.to(guide.device)
        if x.shape[-2:] != (guide.image_size, guide.image_size):
            x = torch.nn.functional.interpolate(x, size=(guide.image_size,) * 2, mode="bicubic",
                                                align_corners=False).clamp(0, 1)
        return similarity(guide.encode_images(x), targets)


def view_rows(b: int, config: "GenerateConfig", device: torch.device
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


def step_gradient(guide: Guide, views: Views, image: torch.Tensor, targets: Targets,
                  config: "GenerateConfig", rows: tuple[torch.Tensor, torch.Tensor] | None = None,
                  use_amp: bool = False, anchor: torch.Tensor | None = None,
                  content: Content | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one step's views of `image` (B, 3, H, W), a canvas's render or a leaf) and
    accumulate the loss's gradient into the leaves it came from; return the per-image global
    and patch losses (B,), detached.

    With `rows` (from `view_rows`), the views go through the model `config.view_batch` at a
    time: all views are still drawn at once (the same randomness as one pass), each chunk's
    loss is its share of the full loss and its gradient is carried back to the views, then
    through the augmentations (and the canvas's render) in one pass, with the image penalties
    (`penalty`: smoothness, the distance from `anchor`, the start's layout, and `content`)
    added once. Directional targets' floor applies to the patch views."""
    device, b = image.device, image.shape[0]
    n_global, n_patch = config.views.global_views, config.views.patch_views
    with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
        global_views, patch_views = views(image)
        batch = torch.cat([global_views, patch_views])
        if rows is None:
            emb = guide.encode_images(batch)
    if rows is None:
        dim = emb.shape[-1]
        emb_g = emb[:b * n_global].view(b, n_global, dim)
        emb_p = emb[b * n_global:].view(b, n_patch, dim)
        loss_g = weighted_distance(emb_g, targets) if n_global else torch.zeros(b, device=device)
        loss_p = weighted_distance(emb_p, targets, targets.floor) if n_patch \
            else torch.zeros(b, device=device)
        loss = (config.global_weight * loss_g + config.patch_weight * loss_p).sum()
        extra = penalty(image, config, anchor, content)
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
        if targets.floor:  # patch rows only
            patch = torch.arange(i, i + len(d), device=device) >= b * n_global
            d = torch.where(patch, floored(d, targets.floor), d)
        (share[part] * d).sum().backward()
        distances.append(d.detach())
    outputs, grads = [batch], [leaf.grad]
    extra = penalty(image, config, anchor, content)
    if extra is not None:
        outputs.append(extra.sum())
        grads.append(None)
    torch.autograd.backward(outputs, grads)
    d = torch.cat(distances)
    loss_g = d[:b * n_global].view(b, n_global).mean(1) if n_global else torch.zeros(b, device=device)
    loss_p = d[b * n_global:].view(b, n_patch).mean(1) if n_patch else torch.zeros(b, device=device)
    return loss_g, loss_p
