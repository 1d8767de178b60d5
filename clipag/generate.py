"""The CLIPAG generator: optimise pixels so that many augmented views of the image match the
prompt under a (robust) CLIP.

All views of all images in a batch go through the model as one batch; text embeddings are
computed once; the step loop makes no host-device sync except when logging or saving frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from pathlib import Path

import kornia
import torch

from .augment import ViewConfig, Views
from .flow.crossflow import FlowInit, SampleConfig, load_flow_init
from .device import autocast
from .errors import ClipagError
from .init import DEFAULT_GMM, GaussianMixture, best_of, from_image, noise, upsample
from .models import Guide
from .prompts import WeightedPrompt


@dataclass(frozen=True)
class GenerateConfig:
    size: int | None = None  # output side; default: the model's input size
    steps: int = 100
    lr: float = 0.0175
    weight_decay: float = 0.0
    grad_clip: float = 0.001  # per-image gradient-norm clip (0 = off)
    global_weight: float = 1.0
    patch_weight: float = 5.0
    threshold: float = 0.95  # dynamic-thresholding percentile; 0 = plain clamp to [0, 1]
    tv_weight: float = 0.0  # total-variation penalty on the pixels (0 = off, as the reference)
    views: ViewConfig = field(default_factory=ViewConfig)
    init: str = "gmm"  # "gmm", "noise", a mixture .safetensors, "crossflow[:FILE]"
    init_image: str | None = None
    init_candidates: int = 1000
    flow: SampleConfig = field(default_factory=SampleConfig)  # with init "crossflow"
    scales: tuple[int, ...] = ()  # coarse-to-fine: optimise first at these sides, then at `size`
    save_every: int = 0
    log_every: int = 10
    amp: bool = True

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
        """The checks that need no model: run them before loading one."""
        if self.size is not None:
            check_size(self.size)
        if self.steps < 1:
            raise ClipagError("--steps must be >= 1")
        if self.lr <= 0:
            raise ClipagError("--lr must be > 0")
        if self.views.global_views + self.views.patch_views < 1:
            raise ClipagError("at least one view is needed (--views or --patch-views)")
        if self.tv_weight < 0:
            raise ClipagError(f"--tv must be >= 0, got {self.tv_weight}")
        if self.views.noise < 0:
            raise ClipagError(f"--noise must be >= 0, got {self.views.noise}")
        if not 0 <= self.views.cutout < 1:
            raise ClipagError(f"--cutout must be in [0, 1), got {self.views.cutout}")
        if not 0 <= self.threshold < 1:
            raise ClipagError("--threshold must be in [0, 1)")
        if self.init_candidates < 1:
            raise ClipagError("--init-candidates must be >= 1")
        check_init(self.init)
        if self.init.startswith("crossflow"):
            self.flow.validate()


def check_size(size: int) -> None:
    if size < 8 or size > 4096:
        raise ClipagError(f"impossible size {size}: use 8..4096 pixels")


def check_init(init: str) -> None:
    """A clear error for an init that names nothing usable."""
    if init in ("gmm", "noise", "crossflow"):
        return
    if init.startswith("crossflow:"):
        if not Path(init.split(":", 1)[1]).is_file():
            raise ClipagError(f"--init {init}: CrossFlow checkpoint not found")
        return
    if not Path(init).is_file():
        raise ClipagError(f"--init must be gmm, noise, crossflow[:FILE] or a mixture file; "
                          f"{init!r} not found")


@dataclass
class Targets:
    """Per image, K weighted text embeddings (padded with weight 0)."""

    texts: torch.Tensor  # (B, K, D)
    weights: torch.Tensor  # (B, K)


def encode_targets(guide: Guide, prompts: list[list[WeightedPrompt]]) -> Targets:
    """Encode every distinct text once, in one batch."""
    unique = sorted({p.text for image in prompts for p in image})
    with torch.no_grad():
        table = guide.encode_texts(unique)
    index = {t: i for i, t in enumerate(unique)}
    k = max(len(image) for image in prompts)
    texts = torch.zeros(len(prompts), k, table.shape[1], device=table.device)
    weights = torch.zeros(len(prompts), k, device=table.device)
    for b, image in enumerate(prompts):
        positive = sum(p.weight for p in image if p.weight > 0)
        for j, p in enumerate(image):
            texts[b, j] = table[index[p.text]]
            weights[b, j] = p.weight / positive
    return Targets(texts, weights)


def weighted_distance(embeddings: torch.Tensor, targets: Targets) -> torch.Tensor:
    """(B, V, D) unit embeddings -> (B,) sum_k w_k * mean_v (1 - cos(view_v, text_k))."""
    cos = torch.einsum("bvd,bkd->bvk", embeddings, targets.texts)
    return ((1 - cos).mean(dim=1) * targets.weights).sum(dim=1)


def similarity(embeddings: torch.Tensor, targets: Targets) -> torch.Tensor:
    """(B, D) -> (B,) weighted cosine similarity to the positive prompts."""
    cos = torch.einsum("bd,bkd->bk", embeddings, targets.texts)
    positive = targets.weights.clamp_min(0)
    return (cos * positive).sum(1) / positive.sum(1)


def dynamic_threshold(x: torch.Tensor, p: float) -> torch.Tensor:
    """Imagen's dynamic thresholding on images in [0, 1] (mapped to [-1, 1] and back);
    p = 0 is a plain clamp."""
    if not p:
        return x.clamp(0, 1)
    y = x * 2 - 1
    s = torch.quantile(y.abs().flatten(1), p, dim=1).clamp_min(1.0).view(-1, 1, 1, 1)
    return ((y.clamp(-s, s) / s) + 1) / 2


InitSource = GaussianMixture | FlowInit | None


def init_source(config: GenerateConfig, guide: Guide) -> InitSource:
    """What starting images are drawn from: a Gaussian mixture, a CrossFlow, or nothing
    (noise or an init image)."""
    if config.init_image or config.init == "noise":
        return None
    if config.init.startswith("crossflow"):
        return load_flow_init(config.init, guide.device, guide, config.flow)
    path = DEFAULT_GMM if config.init == "gmm" else Path(config.init)
    if config.init == "gmm" and not path.is_file():
        return None
    return GaussianMixture.load(path)


def initial_images(guide: Guide, targets: Targets, config: GenerateConfig, size: int,
                   seeds: list[int], source: InitSource,
                   prompts: list[list[WeightedPrompt]] | None = None) -> torch.Tensor:
    """One starting image per seed, each drawn from its own seeded generator: a CrossFlow
    draft of the prompt, the best of N mixture samples, noise, or the init image."""
    out = []
    for b, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        if config.init_image:
            image = from_image(config.init_image, size)
        elif isinstance(source, FlowInit):
            if prompts is None:
                raise ValueError("a CrossFlow init needs the prompts")
            image = upsample(source.draft(prompts[b], seed)[None].cpu(), size)[0]
        elif config.init == "noise" or source is None:
            image = noise(size, g)
        else:
            candidates = source.sample(config.init_candidates, g)
            one = Targets(targets.texts[b:b + 1], targets.weights[b:b + 1])

            def score(chunk: torch.Tensor, one=one) -> torch.Tensor:
                with torch.no_grad(), autocast(guide.device):
                    emb = guide.encode_images(upsample(chunk.to(guide.device), guide.image_size))
                return similarity(emb, Targets(one.texts.expand(len(chunk), -1, -1),
                                               one.weights.expand(len(chunk), -1)))

            image = upsample(best_of(candidates, score)[None], size)[0]
        out.append(image)
    return torch.stack(out).to(guide.device)


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


def smoothness(pixels: torch.Tensor) -> torch.Tensor:
    """Per-image total variation: mean absolute difference between neighbouring pixels."""
    return kornia.losses.total_variation(pixels, reduction="mean").mean(dim=1)


def _clip_per_image(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    norms = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return grad * (max_norm / (norms + 1e-12)).clamp(max=1.0)


def stage_plan(size: int, scales: tuple[int, ...], steps: int) -> list[tuple[int, int]]:
    """(side, steps) per stage, coarse to fine; the steps split evenly, the last stage takes
    the remainder."""
    sides = (*scales, size)
    each = steps // len(sides)
    return [(side, each) for side in sides[:-1]] + [(size, steps - each * (len(sides) - 1))]


def optimise(guide: Guide, targets: Targets, start: torch.Tensor, config: GenerateConfig,
             on_step: Callable[[StepInfo], None] | None = None) -> Result:
    """Run the pixel optimisation from `start` (B, 3, H, W) in [0, 1]; with `config.scales`,
    coarse to fine: each stage starts from the previous stage's best image, upsampled."""
    size = start.shape[-1]
    if not config.scales:
        return _optimise_stage(guide, targets, start, config, on_step)
    frames, done, result = [], 0, None
    image = start
    for side, steps in stage_plan(size, config.scales, config.steps):
        image = upsample(image, side) if side > image.shape[-1] else \
            torch.nn.functional.interpolate(image, size=(side, side), mode="area")

        def shifted(info: StepInfo, done=done) -> None:
            if on_step:
                on_step(StepInfo(info.step + done, info.loss, info.best))

        stage = dataclasses.replace(config, steps=steps, scales=())
        result = _optimise_stage(guide, targets, image, stage, shifted, first_step=done)
        frames += [upsample(f, size) if f.shape[-1] != size else f for f in result.frames]
        image, done = result.images, done + steps
    return Result(result.images, result.best_loss, result.score, frames)


def _optimise_stage(guide: Guide, targets: Targets, start: torch.Tensor, config: GenerateConfig,
                    on_step: Callable[[StepInfo], None] | None = None, first_step: int = 0
                    ) -> Result:
    device = guide.device
    guide.model.requires_grad_(False)
    views = Views(guide.image_size, config.views).to(device)
    pixels = start.detach().clone().to(device).requires_grad_(True)
    optimizer = torch.optim.AdamW([pixels], lr=config.lr, weight_decay=config.weight_decay)
    b = pixels.shape[0]
    best = pixels.detach().clone()
    best_loss = torch.full((b,), float("inf"), device=device)
    frames = []
    n_global, n_patch = config.views.global_views, config.views.patch_views
    use_amp = config.amp and device.type == "cuda"
    for step in range(1, config.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            global_views, patch_views = views(pixels)
            emb = guide.encode_images(torch.cat([global_views, patch_views]))
        dim = emb.shape[-1]
        emb_g = emb[:b * n_global].view(b, n_global, dim)
        emb_p = emb[b * n_global:].view(b, n_patch, dim)
        loss_g = weighted_distance(emb_g, targets) if n_global else torch.zeros(b, device=device)
        loss_p = weighted_distance(emb_p, targets) if n_patch else torch.zeros(b, device=device)
        loss = (config.global_weight * loss_g + config.patch_weight * loss_p).sum()
        if config.tv_weight:
            loss = loss + config.tv_weight * smoothness(pixels).sum()
        loss.backward()
        if config.grad_clip:
            pixels.grad = _clip_per_image(pixels.grad, config.grad_clip)
        tracked = (loss_g if n_global else loss_p).detach()
        improved = tracked < best_loss
        best = torch.where(improved.view(-1, 1, 1, 1), pixels.detach(), best)
        best_loss = torch.minimum(best_loss, tracked)
        optimizer.step()
        with torch.no_grad():
            pixels.copy_(dynamic_threshold(pixels, config.threshold))
        if config.save_every and (first_step + step) % config.save_every == 0:
            frames.append(pixels.detach().cpu().clone())
        if on_step and ((first_step + step) % config.log_every == 0 or step == config.steps):
            on_step(StepInfo(step, tracked, best_loss))
    with torch.no_grad():
        final = upsample(best, guide.image_size) if best.shape[-1] != guide.image_size else best
        score = similarity(guide.encode_images(final), targets)
    return Result(best.cpu(), best_loss.tolist(), score.tolist(), frames)
