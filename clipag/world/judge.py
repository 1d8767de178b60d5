"""An analytic judge for world prompts: it reads an image and decides each attribute the
prompt names without any neural network.

- background: median colour of the border ring, nearest palette colour;
- foreground mask: pixels far from the background colour; connected components above a
  minimum area (scipy.ndimage);
- colour: median colour of the mask, nearest palette colour;
- count: components at least a third the size of the largest;
- shape: of the largest component, from its extent (area / bounding box) and how much of its
  mass lies in the lower half of its box (a triangle pointing up is bottom-heavy);
- position: the mask's centroid relative to the image centre;
- offset and edge (not attributes a prompt names; they measure where generators put things):
  the centroid's distance from the centre (the larger of |x - 1/2| and |y - 1/2|, 0 at the
  centre, 1/2 at the border) and whether the largest component touches the border ring.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .scenes import COLORS, parse_prompt

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)


def nearest_color(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(1)))]


def _array(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.float32)
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def classify_shape(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    extent = len(ys) / float(h * w)
    lower = ((ys - ys.min()) >= h / 2).mean()
    if extent > 0.88:
        return "square"
    if extent > 0.68:
        return "circle"
    return "triangle" if lower > 0.62 else "cross"


def _background(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The median colour of the border ring, the mask of pixels far from it, the ring's width."""
    h = a.shape[0]
    ring = max(1, h // 32)
    border = np.concatenate([a[:ring].reshape(-1, 3), a[-ring:].reshape(-1, 3),
                             a[:, :ring].reshape(-1, 3), a[:, -ring:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    return bg_rgb, np.sqrt(((a - bg_rgb) ** 2).sum(-1)) > 60, ring


def foreground(image) -> np.ndarray:
    """(H, W) bool: the pixels the judge takes for objects (far from the background colour)."""
    return _background(_array(image))[1]


def read_image(image) -> dict[str, object]:
    """Everything the judge sees in an image (3, H, W) tensor in [0, 1] or PIL image."""
    a = _array(image)
    h, w, _ = a.shape
    bg_rgb, mask, ring = _background(a)
    labels, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, n + 1)) if n else np.array([])
    min_area = 0.008 * h * w
    keep = [i + 1 for i, s in enumerate(sizes) if s >= min_area]
    seen: dict[str, object] = {"background": nearest_color(bg_rgb)}
    if not keep:
        seen.update(count=0)
        return seen
    largest = max(keep, key=lambda i: sizes[i - 1])
    big = [i for i in keep if sizes[i - 1] >= sizes[largest - 1] / 3]
    fg = np.isin(labels, big)
    ys, xs = np.nonzero(fg)
    cx, cy = xs.mean() / w, ys.mean() / h
    position = "center"
    if max(abs(cx - 0.5), abs(cy - 0.5)) > 0.1:
        if abs(cx - 0.5) >= abs(cy - 0.5):
            position = "left" if cx < 0.5 else "right"
        else:
            position = "top" if cy < 0.5 else "bottom"
    touches = labels == largest
    edge = bool(touches[:ring].any() or touches[-ring:].any() or touches[:, :ring].any()
                or touches[:, -ring:].any())
    seen.update(color=nearest_color(np.median(a[fg], axis=0)), count=len(big),
                shape=classify_shape(labels == largest), position=position,
                offset=float(max(abs(cx - 0.5), abs(cy - 0.5))), edge=edge)
    return seen


def judge(image, prompt: str) -> dict[str, bool]:
    """For each attribute the prompt names, whether the image shows it."""
    wanted = parse_prompt(prompt)
    seen = read_image(image)
    return {key: seen.get(key) == value for key, value in wanted.items() if key != "size"}
