"""Text targets: every distinct text encoded once, and the guide's distance and similarity of
image embeddings to them (shared by the start-image choice and the optimiser).

Two kinds. Plain targets (generation) ask each view's embedding to point at the texts'.
Directional targets (style transfer, CLIPStyler's loss) ask the *change* of the embedding from
an origin image (the content) to point the way the text changes from a source text to the
target: the texts are the unit directions T(target) - T(source) and `origin` holds each image's
content embedding; views whose distance is below `floor` count as 0 (CLIPStyler's patch
threshold, applied to the patch views)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .models import Guide
from .prompts import WeightedPrompt


@dataclass
class Targets:
    """Per image, K weighted text embeddings (padded with weight 0); for directional targets
    also each image's origin embedding and the patch views' floor."""

    texts: torch.Tensor  # (B, K, D) unit vectors
    weights: torch.Tensor  # (B, K)
    origin: torch.Tensor | None = None  # (B, D): directional targets' content embeddings
    floor: float = 0.0  # patch views with a distance below it count as 0

    def select(self, index: torch.Tensor | slice) -> "Targets":
        """The targets of some images (rows may repeat)."""
        origin = self.origin[index] if self.origin is not None else None
        return Targets(self.texts[index], self.weights[index], origin, self.floor)


def _table(guide: Guide, prompts: list[list[WeightedPrompt]], extra: tuple[str, ...] = ()
           ) -> dict[str, torch.Tensor]:
    """Every distinct text of `prompts` (and `extra`) encoded once, in one batch."""
    unique = sorted({p.text for image in prompts for p in image} | set(extra))
    with torch.no_grad():
        table = guide.encode_texts(unique)
    return {t: table[i] for i, t in enumerate(unique)}


def _stack(prompts: list[list[WeightedPrompt]], vector, dim: int, device
           ) -> tuple[torch.Tensor, torch.Tensor]:
    k = max(len(image) for image in prompts)
    texts = torch.zeros(len(prompts), k, dim, device=device)
    weights = torch.zeros(len(prompts), k, device=device)
    for b, image in enumerate(prompts):
        positive = sum(p.weight for p in image if p.weight > 0)
        for j, p in enumerate(image):
            texts[b, j] = vector(p.text)
            weights[b, j] = p.weight / positive
    return texts, weights


def encode_targets(guide: Guide, prompts: list[list[WeightedPrompt]]) -> Targets:
    """Encode every distinct text once, in one batch."""
    table = _table(guide, prompts)
    first = next(iter(table.values()))
    return Targets(*_stack(prompts, table.__getitem__, first.shape[0], first.device))


def encode_directions(guide: Guide, prompts: list[list[WeightedPrompt]], sources: list[str],
                      origin: torch.Tensor, floor: float = 0.0) -> Targets:
    """Directional targets: for each image's weighted texts, the unit directions from its
    source text's embedding to theirs; `origin` (B, D) the images' content embeddings (unit)."""
    table = _table(guide, prompts, tuple(sources))
    first = table[sources[0]]
    texts = torch.zeros(len(prompts), max(len(p) for p in prompts), first.shape[0],
                        device=first.device)
    weights = torch.zeros(texts.shape[:2], device=first.device)
    for b, (image, source) in enumerate(zip(prompts, sources)):
        one, w = _stack([image], lambda text, base=table[source]: F.normalize(
            table[text] - base, dim=0), first.shape[0], first.device)
        texts[b, :len(image)], weights[b, :len(image)] = one[0], w[0]
    return Targets(texts, weights, origin.to(first.device), floor)


def view_distances(embeddings: torch.Tensor, targets: Targets) -> torch.Tensor:
    """(B, V, D) unit embeddings -> (B, V) sum_k w_k * (1 - cos(view_v, text_k)); for
    directional targets the view's direction from its image's origin stands for the view."""
    if targets.origin is not None:
        embeddings = F.normalize(embeddings - targets.origin[:, None], dim=-1)
    cos = torch.einsum("bvd,bkd->bvk", embeddings, targets.texts)
    return ((1 - cos) * targets.weights[:, None]).sum(dim=2)


def floored(distances: torch.Tensor, floor: float) -> torch.Tensor:
    """Distances below `floor` set to 0 (no gradient from views already close enough)."""
    return torch.where(distances < floor, torch.zeros_like(distances), distances) if floor \
        else distances


def weighted_distance(embeddings: torch.Tensor, targets: Targets, floor: float = 0.0
                      ) -> torch.Tensor:
    """(B, V, D) unit embeddings -> (B,) the mean over views of `view_distances`, each view's
    distance below `floor` counted as 0."""
    if floor:
        return floored(view_distances(embeddings, targets), floor).mean(dim=1)
    if targets.origin is not None:
        embeddings = F.normalize(embeddings - targets.origin[:, None], dim=-1)
    cos = torch.einsum("bvd,bkd->bvk", embeddings, targets.texts)
    return ((1 - cos).mean(dim=1) * targets.weights).sum(dim=1)  # (the order pins pixel runs)


def similarity(embeddings: torch.Tensor, targets: Targets) -> torch.Tensor:
    """(B, D) -> (B,) weighted cosine similarity to the positive prompts (for directional
    targets: of the embeddings' directions from their origins)."""
    if targets.origin is not None:
        embeddings = F.normalize(embeddings - targets.origin, dim=-1)
    cos = torch.einsum("bd,bkd->bk", embeddings, targets.texts)
    positive = targets.weights.clamp_min(0)
    return (cos * positive).sum(1) / positive.sum(1)
