"""Several CLIP guides used as one, as pixray and VQGAN-CLIP users combine models.

A mix is written ``A*3+B``: guides A and B with relative weights 3 and 1. The ensemble's
embeddings are the members' unit embeddings, each scaled by the square root of its share of
the weights, concatenated; the cosine between two such embeddings is therefore the weighted
mean of the members' cosines, so the generation loss needs no change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .errors import ClipagError
from .models import Guide


def is_mix(text: str) -> bool:
    """A mix is written with `+` (members) or `*` (a weight): `A*3+B`, or `A*2` alone, which
    is refused with a clear reason rather than read as a model name."""
    return ("+" in text or "*" in text) and not Path(text).exists()


def parse_mix(text: str) -> list[tuple[str, float]]:
    """``"A*3+B"`` -> ``[("A", 3.0), ("B", 1.0)]``; a one-line error on a malformed mix."""
    members = []
    for part in text.split("+"):
        name, _, weight = part.strip().rpartition("*") if "*" in part else (part.strip(), "", "1")
        name = name.strip()
        if not name:
            raise ClipagError(f"guide mix {text!r}: empty member (write A*3+B)")
        try:
            value = float(weight)
        except ValueError:
            raise ClipagError(f"guide mix {text!r}: weight {weight!r} of {name} is not a number"
                              ) from None
        if not value > 0 or math.isinf(value):
            raise ClipagError(f"guide mix {text!r}: weight of {name} must be > 0")
        members.append((name, value))
    if len(members) < 2:
        raise ClipagError(f"guide mix {text!r}: needs at least two members (A*3+B); for one "
                          "model give its name alone")
    return members


@dataclass
class GuideEnsemble(Guide):
    """A `Guide` whose embeddings concatenate its members' (see the module docstring)."""

    members: tuple[Guide, ...] = ()
    shares: tuple[float, ...] = field(default=())

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([math.sqrt(s) * g.encode_images(images)
                          for g, s in zip(self.members, self.shares)], dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return torch.cat([math.sqrt(s) * g.encode_texts(texts)
                          for g, s in zip(self.members, self.shares)], dim=-1)

    def to(self, device: torch.device) -> "GuideEnsemble":
        for g in self.members:
            g.to(device)
        return self


def ensemble(guides: list[Guide], weights: list[float], name: str = "") -> GuideEnsemble:
    """One guide from several that see images at the same size; weights are relative."""
    if len({g.image_size for g in guides}) > 1:
        raise ClipagError("guides in a mix must share an input size; got "
                          + ", ".join(f"{g.name} {g.image_size} px" for g in guides))
    total = sum(weights)
    first = guides[0]
    return GuideEnsemble(
        model=torch.nn.ModuleList([g.model for g in guides]), tokenizer=first.tokenizer,
        image_size=first.image_size, mean=first.mean, std=first.std,
        name=name or "+".join(f"{g.name}*{w:g}" for g, w in zip(guides, weights)),
        info={"members": [g.name for g in guides], "weights": list(weights)},
        members=tuple(guides), shares=tuple(w / total for w in weights))


def load_mix(text: str, load: Callable[[str], Guide]) -> Guide:
    """A single guide, or the ensemble a mix names; `load` turns one name into a Guide."""
    if not is_mix(text):
        return load(text)
    members = parse_mix(text)
    return ensemble([load(name) for name, _ in members], [w for _, w in members], name=text)
