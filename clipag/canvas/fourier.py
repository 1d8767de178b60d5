"""The image's 2D spectrum as the parameter, each frequency scaled by 1 / max(f, 1/side) **
decay, with decorrelated colour and a sigmoid: Lucid's parameterisation (Mordvintsev et al.,
Distill 2018). Low frequencies dominate a step, so the gradient paints smooth regions before
edges. A start image is mapped through the inverse of each step."""

from __future__ import annotations

import torch

from .base import Canvas, ParamGroup

# Colour correlation square root of ImageNet (Lucid's published constants), columns scaled to
# unit max norm: the three parameter channels are uncorrelated colour directions.
_CORRELATION = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR = _CORRELATION / _CORRELATION.norm(dim=0).max()


def spectrum_scale(size: int, decay: float) -> torch.Tensor:
    """(size, size // 2 + 1) 1 / max(f, 1/size) ** decay, normalised to unit RMS."""
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    scale = 1 / torch.sqrt(fx ** 2 + fy ** 2).clamp_min(1 / size) ** decay
    return scale / scale.pow(2).mean().sqrt()


class Fourier(Canvas):
    name = "fourier"

    def __init__(self, images: torch.Tensor, decay: float, lr: float, weight_decay: float = 0.0):
        self.size = images.shape[-1]
        self.scale = spectrum_scale(self.size, decay).to(images.device)
        self.color = COLOR.to(images.device)
        logits = torch.logit(images.detach().clamp(0.01, 0.99))
        decorrelated = torch.einsum("dc,bdhw->bchw", torch.linalg.inv(self.color).T.contiguous(),
                                    logits)
        spectrum = torch.fft.rfft2(decorrelated, norm="ortho") / self.scale
        value = torch.view_as_real(spectrum).contiguous().requires_grad_(True)
        self.groups = [ParamGroup("spectrum", value, lr, weight_decay)]

    @classmethod
    def create(cls, config, images: torch.Tensor, seeds, size: int, device=None) -> "Fourier":
        return cls(images.to(device), config.canvas.fourier.decay, config.learning_rate, config.weight_decay)

    def render(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.groups[0].tensor) * self.scale
        image = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")
        return torch.sigmoid(torch.einsum("cd,bdhw->bchw", self.color, image))
