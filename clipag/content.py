"""Content metrics for style transfer: how far an image's content has moved from the content
image's, as a differentiable (B,) penalty.

- `guide`: the guide's own intermediate features (the tokens after the middle and the last
  block of a ViT image tower, after layer3 and layer4 of a ResNet one). A robust CLIP's features
  change with what a person sees (they make good perceptual metrics), so the guide that styles
  the image also keeps its content, and nothing is downloaded.
- `vgg`: CLIPStyler's metric, VGG19 features conv4_2 and conv5_2 on ImageNet-normalised
  images, from torchvision's published weights where they are already on disk (never
  downloaded here).

Both compare the whole image at the network's input side, and, when the image is larger than
that, `crops` windows of that side at the image's own resolution, the same windows in both
images, drawn anew each step. The distance is the mean squared feature difference relative to
the content's mean squared feature, averaged over the layers: comparable across models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import ClipagError
from .models import Guide

CONTENT_METRICS = ("guide", "vgg")
VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's published VGG19 weights
VGG19_LAYERS = (21, 30)  # conv4_2, conv5_2 in torchvision's vgg19().features
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Features = Callable[[torch.Tensor], list[torch.Tensor]]  # images in [0, 1] -> feature maps


def guide_layers(guide: Guide) -> list[torch.nn.Module]:
    """The modules whose outputs are the guide's content features."""
    visual = guide.model.visual
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is not None and len(blocks):
        return [blocks[max(len(blocks) // 2 - 1, 0)], blocks[-1]]
    if all(hasattr(visual, name) for name in ("layer3", "layer4")):
        return [visual.layer3, visual.layer4]
    raise ClipagError(f"{guide.name}: its image tower has no transformer blocks or ResNet "
                      "layers to read content features from; use --content vgg")


def guide_features(guide: Guide) -> tuple[Features, int]:
    """The guide's content features and the side its input takes."""
    layers = guide_layers(guide)

    def features(images: torch.Tensor) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda m, i, out: seen.append(out)) for m in layers]
        try:
            guide.model.encode_image(guide.normalize(images))
        finally:
            for h in hooks:
                h.remove()
        return [s.float() for s in seen]

    return features, guide.image_size


def vgg_weights_path() -> Path:
    """Where torchvision keeps its VGG19 weights (under TORCH_HOME, as torch.hub does)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints" / VGG19_FILE


def load_vgg(device: torch.device) -> torch.nn.Module:
    """torchvision's VGG19 feature layers up to conv5_2 with the published weights from disk
    (weights_only: the file is a plain state dict)."""
    path = vgg_weights_path()
    if not path.is_file():
        raise ClipagError(f"--content vgg needs torchvision's VGG19 weights at {path} (clipag "
                          "never downloads them); use --content guide, the default")
    from torchvision.models import vgg19

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: torch raises many kinds
        raise ClipagError(f"{path} is not a readable VGG19 weights file ({exc})") from None
    net = vgg19()
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ClipagError(f"{path} does not hold torchvision's VGG19 weights: "
                          f"{str(exc).splitlines()[0]}") from None
    return net.features[:VGG19_LAYERS[-1] + 1].eval().requires_grad_(False).to(device)


def vgg_features(device: torch.device) -> tuple[Features, int]:
    net = load_vgg(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def features(images: torch.Tensor) -> list[torch.Tensor]:
        x, out = (images - mean) / std, []
        for i, layer in enumerate(net):
            x = layer(x)
            if i in VGG19_LAYERS:
                out.append(x)
        return out

    return features, 512


def _fit(images: torch.Tensor, side: int) -> torch.Tensor:
    if images.shape[-2:] == (side, side):
        return images
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False,
                         antialias=True)


def tokens(x: torch.Tensor, n: int) -> torch.Tensor:
    """A layer's output as (n, tokens, channels): ViT blocks give (n, L, D) or, without
    batch_first, (L, n, D); convolutional maps (n, C, H, W)."""
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2)
    return x if x.shape[0] == n else x.transpose(0, 1)


def self_similarity(x: torch.Tensor) -> torch.Tensor:
    """(n, L, L) cosine similarity between every two tokens of each image: where things are and
    what goes with what, whatever their colours and textures."""
    x = F.normalize(x - x.mean(dim=1, keepdim=True), dim=-1)
    return x @ x.transpose(1, 2)


def _distance(a: list[torch.Tensor], b: list[torch.Tensor], n: int) -> torch.Tensor:
    """(n,) mean over layers of the mean squared difference of the token self-similarities."""
    total = 0
    for x, y in zip(a, b):
        sx, sy = self_similarity(tokens(x, n)), self_similarity(tokens(y, n))
        total = total + (sx - sy).pow(2).flatten(1).mean(1)
    return total / len(a)


def windows(h: int, w: int, side: int, n: int, generator: torch.Generator | None = None
            ) -> list[tuple[int, int]]:
    """n random top-left corners of side x side windows inside an h x w image."""
    ys = torch.randint(0, h - side + 1, (n,), generator=generator)
    xs = torch.randint(0, w - side + 1, (n,), generator=generator)
    return list(zip(ys.tolist(), xs.tolist()))


def content_penalty(metric: str, guide: Guide, content: torch.Tensor, weight: float,
                    crops: int = 4) -> Callable[[torch.Tensor], torch.Tensor]:
    """images (B, 3, H, W) -> (B,) `weight` x their content distance from `content` (the same
    shape) under `metric`. The whole images' content features are computed once."""
    if metric not in CONTENT_METRICS:
        raise ClipagError(f"--content must be one of {', '.join(CONTENT_METRICS)}, got {metric!r}")
    features, side = guide_features(guide) if metric == "guide" else vgg_features(guide.device)
    content = content.to(guide.device)
    b, _, h, w = content.shape
    with torch.no_grad():
        whole = features(_fit(content, side))
    tiles = crops if min(h, w) > side else 0

    def penalty(images: torch.Tensor) -> torch.Tensor:
        d = _distance(features(_fit(images, side)), whole, b)
        if tiles:
            corners = windows(h, w, side, tiles)
            cut = torch.cat([images[..., y:y + side, x:x + side] for y, x in corners])
            with torch.no_grad():
                ref = features(torch.cat([content[..., y:y + side, x:x + side]
                                          for y, x in corners]))
            d_tiles = _distance(features(cut), ref, b * tiles).view(tiles, b).mean(0)
            d = (d + d_tiles) / 2
        return weight * d

    return penalty
