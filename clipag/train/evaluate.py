"""Zero-shot accuracy, clean and under a PGD attack, on a labelled class-folder dataset."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attacks import CosineLogits, ThreatModel, attack_logits
from .data import Dataset, load_all
from ..errors import ClipagError
from ..models import Guide


@dataclass
class EvalResult:
    images: int
    skipped: int
    clean_accuracy: float
    robust_accuracy: float | None
    threat: dict


def zero_shot(guide: Guide, dataset: Dataset, threat: ThreatModel, batch_size: int = 64,
              limit: int | None = None) -> EvalResult:
    if not dataset.classes:
        raise ClipagError("eval needs a labelled class-folder dataset (class_name/*.jpg)")
    images, _, labels, skipped = load_all(dataset, guide.image_size, limit)
    device = guide.device
    with torch.no_grad():
        texts = guide.encode_texts(dataset.class_prompts())
    scale = float(guide.model.logit_scale.detach().exp().clamp(max=100))
    module = CosineLogits(guide.encode_images, texts, scale, guide.model)
    clean = robust = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        y = labels[i:i + batch_size].to(device)
        with torch.no_grad():
            clean += (module(x).argmax(1) == y).sum().item()
        if threat.active:
            adv = attack_logits(module, x, y, threat)
            with torch.no_grad():
                robust += (module(adv).argmax(1) == y).sum().item()
    n = len(images)
    return EvalResult(n, skipped, clean / n, robust / n if threat.active else None,
                      {"norm": threat.norm, "eps": threat.eps, "steps": threat.steps})
