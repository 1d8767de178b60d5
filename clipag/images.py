"""Reading images into tensors: RGB floats in [0, 1], shorter side resized, centre crop."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": None,
              "F": None}  # more than 8 bits a channel: PIL's convert("RGB") clips these


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit and 32-bit single-channel images are scaled to the 8-bit range, not
    clipped (convert("RGB") turns every value above 255 white)."""
    if image.mode not in WIDE_MODES:
        return image.convert("RGB")
    array = np.asarray(image, dtype=np.float64)
    top = WIDE_MODES[image.mode] or (65535.0 if array.max(initial=0) > 255 else 255.0)
    scaled = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB float tensor (3, size, size) in [0, 1]: shorter side resized, centre crop."""
    image = to_rgb(image)
    w, h = image.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                             Image.BICUBIC)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def decode_image(data: bytes | str | Path, size: int) -> torch.Tensor | None:
    """Decode bytes or a path; None when the image is corrupt or unreadable."""
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        with Image.open(source) as image:
            image.load()
            return image_to_tensor(image, size)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
