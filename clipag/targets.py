"""Text targets: every distinct text encoded once, and the guide's distance and similarity of
image embeddings to them (shared by the start-image choice and the optimiser)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import Guide
from .prompts import WeightedPrompt


@dataclass
class Targets:
    """Per image, K weighted text embeddings (padded with weight 0)."""

    texts: torch.Tensor  # (B, K, D)
    weights: torch.Tensor  # (B, K)

    def select(self, index: torch.Tensor | slice) -> "Targets":
        """The targets of some images (rows may repeat)."""
        return Targets(self.texts[index], self.weights[index])


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
