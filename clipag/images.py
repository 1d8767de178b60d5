"""Reading images into tensors: RGB floats in [0, 1], shorter side resized, centre crop."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB float tensor (3, size, size) in [0, 1]: shorter side resized, centre crop."""
    image = image.convert("RGB")
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
