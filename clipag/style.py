"""Text-guided style transfer (CLIPStyler, Kwon & Ye 2022) under any guide: restyle a content
image so that its embedding moves the way the text moves from a source ("a photo") to the
target, while a content metric keeps what the image shows. `style` is the one entry point.

The same loop as generation (clipag.optimise) drives it; what differs is the start (the content
image at its own size and aspect), the targets (directional: clipag.targets.encode_directions)
and one more penalty (the content distance: clipag.content). The canvas is the content's own
pixels, or CLIPStyler's U-Net rendering from the content (`--recipe clipstyler`), whose trained
weights restyle other images in one pass (`apply_net`)."""

from __future__ import annotations

import dataclasses
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .canvas import CANVASES, build
from .canvas.unet import forward as unet_forward
from .content import CONTENT_METRICS, content_penalty
from .errors import ClipagError
from .generate import Generation, GenerateConfig, _finite, _jsonable, check_seeds, resolved
from .images import read_content
from .models import Guide
from .optimise import StepInfo, optimise
from .prompts import parse_prompt
from .targets import encode_directions


@dataclass(frozen=True)
class StyleConfig:
    """What style transfer adds to the image settings (declared in clipag.settings)."""

    content: str | None = None  # the content image's path (the API may pass a tensor instead)
    source: str = "a photo"  # the text the content image is, the start of the direction
    metric: str = "guide"  # the content metric: "guide" (its tokens' self-similarity) or "vgg"
    content_weight: float = 1.0  # weight of the content distance in the loss
    floor: float = 0.7  # patch views whose directional distance is below it count as 0
    content_crops: int = 4  # windows compared at full resolution when the image is larger
    max_side: int = 2048  # a larger content image is scaled down to fit (aspect kept)


def check_style(config: GenerateConfig) -> None:
    """The checks style transfer adds to GenerateConfig.check (which covers the ranges)."""
    s = config.style
    if not isinstance(s, StyleConfig):
        raise ClipagError(f"style settings must be a StyleConfig, got {s!r}")
    if not isinstance(s.source, str) or not s.source.strip():
        raise ClipagError("--source must be a non-empty text")
    if s.metric not in CONTENT_METRICS:
        raise ClipagError(f"--content must be one of {', '.join(CONTENT_METRICS)}, "
                          f"got {s.metric!r}")
    if config.scales:
        raise ClipagError("--scales (coarse-to-fine stages) do not apply to style transfer: the "
                          "image keeps its own size")
    if not CANVASES[config.canvas.name].from_images:
        raise ClipagError(f"the {config.canvas.name} canvas cannot start from the content image; "
                          "style transfer uses pixels or unet")


def content_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """The side lengths a content image of h x w is styled at: its own, scaled down to fit
    `max_side` with its aspect kept."""
    if max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def load_content(content: str | Path | torch.Tensor, max_side: int
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The content as RGB (3, h, w) in [0, 1] and its alpha (1, h, w) or None, at most
    `max_side` on a side."""
    if isinstance(content, torch.Tensor):
        if content.dim() != 3 or content.shape[0] not in (3, 4):
            raise ClipagError(f"a content tensor must be (3 or 4, H, W), got "
                              f"{tuple(content.shape)}")
        if not torch.isfinite(content).all():
            raise ClipagError("the content tensor holds non-finite values")
        content = content.float().clamp(0, 1)
        rgb, alpha = content[:3], content[3:] if content.shape[0] == 4 else None
        h, w = content_size(*rgb.shape[-2:], max_side)
        if (h, w) != tuple(rgb.shape[-2:]):
            rgb = F.interpolate(rgb[None], size=(h, w), mode="bicubic", antialias=True,
                                align_corners=False)[0].clamp(0, 1)
            if alpha is not None:
                alpha = F.interpolate(alpha[None], size=(h, w), mode="bilinear",
                                      antialias=True, align_corners=False)[0].clamp(0, 1)
    else:
        rgb, alpha = read_content(Path(content), lambda h, w: content_size(h, w, max_side))
    check_content_size(*rgb.shape[-2:])
    return rgb, alpha


def check_content_size(h: int, w: int) -> None:
    if min(h, w) < 8:
        raise ClipagError(f"the content image is {w} x {h}: style transfer needs at least 8 "
                          "pixels on each side")


Content = str | Path | torch.Tensor


def style(content: Content | Sequence[Content] | None, targets: str | Sequence[str],
          model: Guide, config: GenerateConfig | None = None,
          seeds: Sequence[int] | None = None, on_step: Callable[[StepInfo], None] | None = None,
          *, sources: Sequence[str] | None = None) -> Generation:
    """Restyle content images, optimised together as one batch: one content image once per
    target text (B = len(targets), or one target for every seed), or a list of B content
    images of one size, one target each. A content image is a path, a (3 or 4, H, W) tensor in
    [0, 1] (an alpha channel is carried through unchanged), or None for `config.style.content`.
    `sources`: each image's source text (default: `config.style.source` for all). The output
    keeps the content's size and aspect (scaled down to fit `max_side`)."""
    began = time.perf_counter()
    config = resolved(config or default_config())
    if config.style is None:
        config = dataclasses.replace(config, style=StyleConfig())
    config.check()
    check_style(config)
    targets = [targets] if isinstance(targets, str) else list(targets)
    seeds = list(range(len(targets))) if seeds is None else list(seeds)
    if len(targets) == 1 and len(seeds) > 1:
        targets = targets * len(seeds)
    if not targets or len(targets) != len(seeds):
        raise ClipagError(f"{len(seeds)} seeds for {len(targets)} targets: give one seed each")
    check_seeds(seeds)
    s = config.style
    content = s.content if content is None else content
    if content is None:
        raise ClipagError("no content image to restyle")
    contents = list(content) if isinstance(content, (list, tuple)) else [content] * len(targets)
    if len(contents) != len(targets):
        raise ClipagError(f"{len(contents)} content images for {len(targets)} targets: give one "
                          "target each")
    sources = [s.source] * len(targets) if sources is None else list(sources)
    if len(sources) != len(targets) or not all(isinstance(t, str) and t.strip() for t in sources):
        raise ClipagError("give one non-empty source text for each target")
    once: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}  # one content, read once
    for c in contents:
        if id(c) not in once:
            once[id(c)] = load_content(c, s.max_side)
    loaded = [once[id(c)] for c in contents]
    if len({tuple(rgb.shape) for rgb, _ in loaded}) > 1:
        raise ClipagError("content images styled together must have one size: "
                          + ", ".join(f"{r.shape[-1]} x {r.shape[-2]}" for r, _ in loaded))
    h, w = loaded[0][0].shape[-2:]
    if config.views.patch_views and min(h, w) * config.views.patch_fraction < 4:
        raise ClipagError(f"the content image ({w} x {h}) is too small for patch views of "
                          f"{config.views.patch_fraction:g} of its side")
    parsed = [parse_prompt(t) for t in targets]
    for t, p in zip(targets, parsed):
        if any(part.weight < 0 for part in p):
            raise ClipagError(f"style targets take no negative weights: {t!r}")
    device = model.device
    model.model.requires_grad_(False)  # a guide, never trained here (as the loop sets it)
    b = len(targets)
    images = torch.stack([rgb for rgb, _ in loaded]).to(device)
    alphas = [a for _, a in loaded]
    origin = content_embedding(model, images)
    directions = encode_directions(model, parsed, sources, origin, s.floor)
    keep = content_penalty(s.metric, model, images, s.content_weight, s.content_crops) \
        if s.content_weight else None
    canvas = build(config, images, seeds, max(h, w), device)
    torch.manual_seed(seeds[0])  # the views' randomness
    result = optimise(model, directions, canvas, config, on_step, content=keep)
    with torch.no_grad():
        kept = keep(result.images.to(device)) / s.content_weight if keep else None
    out = result.images
    if any(a is not None for a in alphas):  # opaque images among them get alpha 1
        alpha = torch.stack([a if a is not None else torch.ones(1, h, w) for a in alphas])
        out = torch.cat([out, alpha.to(out)], dim=1)
    seconds = (time.perf_counter() - began) / b
    settings = _jsonable(dataclasses.asdict(config))
    records = []
    for i, target in enumerate(targets):
        records.append({
            "target": target, "source": sources[i],
            "content": str(contents[i]) if not isinstance(contents[i], torch.Tensor)
            else "(tensor)",
            "parsed": [dataclasses.asdict(p) for p in parsed[i]], "seed": seeds[i],
            "size": [int(w), int(h)], "alpha": alphas[i] is not None,
            "model": {"name": model.name},
            "settings": settings, "canvas": config.canvas.name, "batch": b,
            "best_loss": _finite(result.best_loss[i]),
            "score": _finite(result.score[i]),  # cosine of the image's change to the text's
            "content_distance": _finite(float(kept[i])) if kept is not None else None,
            "seconds": round(seconds, 3), "device": str(device), "torch": torch.__version__})
    return Generation(out, result.frames, records, [{} for _ in targets], result.canvas)


def content_embedding(model: Guide, content: torch.Tensor) -> torch.Tensor:
    """(B, D) the contents' embeddings, where the directions start: each whole image at the
    model's input side. (Starting from the mean of 64 of the run's own augmented views instead
    kept less content in the world: row ST4 of docs/experiments.md.)"""
    with torch.no_grad():
        return model.encode_images(F.interpolate(
            content, size=(model.image_size,) * 2, mode="bilinear", antialias=True,
            align_corners=False))


def default_config() -> GenerateConfig:
    """`clipag style`'s own defaults (the "clipag" style recipe; clipag.recipes)."""
    from .recipes import style_recipe_config

    return style_recipe_config("clipag")


def apply_net(weights: torch.Tensor, channels: int, content: str | Path | torch.Tensor,
              max_side: int = 2048, device: torch.device | str = "cpu", residual: bool = True
              ) -> torch.Tensor:
    """A trained style network (flat weights (P,), see clipag.canvas.unet) applied to a content
    image in one forward pass: (3 or 4, h, w) in [0, 1], its alpha carried through."""
    rgb, alpha = load_content(content, max_side)
    with torch.no_grad():
        out = unet_forward(weights[None].to(device), rgb[None].to(device), channels,
                           residual)[0].cpu()
    return torch.cat([out, alpha]) if alpha is not None else out


class _CallableModule(types.ModuleType):
    """This module, callable as `style` (as clipag.generate is as `generate`): `clipag.style(...)`
    is the function whether or not the submodule has been imported."""

    def __call__(self, *args, **kwargs) -> Generation:
        return style(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
