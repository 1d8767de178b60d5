"""PGD attacks on images in [0, 1].

Losses of the shape torchattacks expects (cross-entropy over logits with integer labels: the
contrastive image-to-text loss and TeCoA's class-prompt loss) use torchattacks' PGD/PGDL2.
Losses of another shape (FARE's embedding distance) use `pgd` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import math

import torch
import torchattacks

from ..errors import ClipagError


@dataclass(frozen=True)
class ThreatModel:
    norm: str = "l2"  # "l2" or "linf"
    eps: float = 1.0
    steps: int = 3
    step_size: float | None = None  # default: 2.5 * eps / steps
    random_start: bool = True

    def __post_init__(self):
        if self.norm not in ("l2", "linf"):
            raise ClipagError(f"unknown norm {self.norm!r}: use l2 or linf")
        if not math.isfinite(self.eps) or self.eps < 0:
            raise ClipagError(f"--eps must be a finite number >= 0, got {self.eps}")
        if self.norm == "linf" and self.eps > 1:
            raise ClipagError(f"--eps {self.eps:g} is beyond the [0, 1] pixel range of an "
                              "linf ball (fractions like 4/255 work)")
        if self.steps < 0 or (self.eps > 0 and self.steps < 1):
            raise ClipagError(f"--attack-steps must be >= 1 with eps > 0, got {self.steps}")
        if self.step_size is not None and not (math.isfinite(self.step_size)
                                               and self.step_size > 0):
            raise ClipagError(f"--attack-step-size must be a finite number > 0, got "
                              f"{self.step_size}")

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / max(self.steps, 1)

    @property
    def active(self) -> bool:
        return self.eps > 0 and self.steps > 0


class CosineLogits(torch.nn.Module):
    """images in [0, 1] -> scaled cosine logits against fixed text embeddings."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], texts: torch.Tensor,
                 scale: float | torch.Tensor, owner: torch.nn.Module):
        super().__init__()
        self.owner = owner  # registered so torchattacks can find parameters and set eval mode
        self._encode = encode
        self.register_buffer("texts", texts.detach())
        # kept as a tensor on its device: no host sync per training step
        self.register_buffer("scale", torch.as_tensor(scale).detach().float())
        # torchattacks puts the module in eval mode for the attack and afterwards back into
        # the mode the module had, recursively: start in the owner's mode so that restoring
        # does not switch a model that is being fine-tuned in eval mode back to train mode.
        self.train(owner.training)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scale * self._encode(images) @ self.texts.t()


def attack_logits(module: CosineLogits, images: torch.Tensor, labels: torch.Tensor,
                  threat: ThreatModel) -> torch.Tensor:
    """Adversarial images maximising cross-entropy of `module`'s logits (torchattacks)."""
    if not threat.active:
        return images
    cls = torchattacks.PGD if threat.norm == "linf" else torchattacks.PGDL2
    attack = cls(module, eps=threat.eps, alpha=threat.alpha, steps=threat.steps,
                 random_start=threat.random_start)
    attack.set_device(images.device)
    return attack(images.detach(), labels).detach()


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))


def project(delta: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project perturbations onto the threat model's eps-ball."""
    if threat.norm == "linf":
        return delta.clamp(-threat.eps, threat.eps)
    return delta * (threat.eps / _per_sample_norm(delta)).clamp(max=1.0)


def pgd(loss_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
        threat: ThreatModel) -> torch.Tensor:
    """Maximise `loss_fn(x)` (per-sample losses, summed) within the eps-ball and [0, 1]."""
    if not threat.active:
        return images
    images = images.detach()
    delta = torch.zeros_like(images)
    if threat.random_start:
        if threat.norm == "linf":
            delta.uniform_(-threat.eps, threat.eps)
        else:
            noise = torch.randn_like(images)
            radius = torch.rand(images.shape[0], device=images.device).view(-1, 1, 1, 1)
            delta = noise / _per_sample_norm(noise) * radius * threat.eps
        delta = (images + delta).clamp(0, 1) - images
    for _ in range(threat.steps):
        delta.requires_grad_(True)
        loss = loss_fn(images + delta).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if threat.norm == "linf":
                step = threat.alpha * grad.sign()
            else:
                step = threat.alpha * grad / _per_sample_norm(grad)
            delta = project(delta + step, threat)
            delta = (images + delta).clamp(0, 1) - images
    return (images + delta).detach()
