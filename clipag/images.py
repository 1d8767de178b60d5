"""Reading images into tensors: RGB floats in [0, 1], shorter side resized, centre crop."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

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


MAX_RESIZED_ASPECT = 4  # past it an image is cropped to the square before it is resized


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB float tensor (3, size, size) in [0, 1]: shorter side resized, centre crop. An image
    far from square (long side over MAX_RESIZED_ASPECT times the short) has the square cut
    out of the source and only that resized: resizing it whole first would make a 3 KB
    1 x 1,000,000 PNG a size x (size * 1,000,000) image in memory."""
    image = to_rgb(image)
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        rw, rh = max(size, round(w * scale)), max(size, round(h * scale))  # resized whole
        left, top = (rw - size) // 2, (rh - size) // 2
        if max(rw, rh) <= MAX_RESIZED_ASPECT * size:
            image = image.resize((rw, rh), Image.BICUBIC)
            image = image.crop((left, top, left + size, top + size))
        else:  # the same square, as the part of the source it comes from
            box = (left * w / rw, top * h / rh, (left + size) * w / rw, (top + size) * h / rh)
            image = image.resize((size, size), Image.BICUBIC, box=box)
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


def _open_content(path: Path) -> Image.Image:
    """The image file opened (its header read, no pixels yet); ClipagError where it is missing
    or not an image."""
    from .errors import ClipagError

    if not path.is_file():
        raise ClipagError(f"content image not found: {path}")
    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ClipagError(f"cannot read {path} as an image: {exc}") from None


def _content_header(image: Image.Image, path: Path, fit: Callable[[int, int], tuple[int, int]]
                    ) -> tuple[int, int]:
    """The size `fit` gives an opened still image, refusing animated and too small ones."""
    from .errors import ClipagError

    if getattr(image, "n_frames", 1) > 1:
        raise ClipagError(f"{path} is animated ({image.n_frames} frames): style a still image "
                          "(save the frame you want as a PNG)")
    w, h = image.size
    th, tw = fit(h, w)
    if min(th, tw) < 8:
        raise ClipagError(f"{path} is {w} x {h} pixels: style transfer needs at least 8 pixels "
                          "on each side")
    return th, tw


def probe_content(path: Path, fit: Callable[[int, int], tuple[int, int]]) -> tuple[int, int]:
    """What `read_content` would refuse from the file's header alone (missing, not an image,
    animated, too small), without decoding pixels: (h, w) it would be styled at."""
    with _open_content(path) as image:
        return _content_header(image, path, fit)


def read_content(path: Path, fit: Callable[[int, int], tuple[int, int]]
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A still image file as RGB (3, h, w) floats in [0, 1] and its alpha (1, h, w) or None,
    at the size `fit(height, width)` gives (resized before anything else is done with it, so a
    huge image never stands in memory twice). 16-bit, CMYK, palette and greyscale images are
    converted; a missing, unreadable, truncated or animated file is a ClipagError."""
    from .errors import ClipagError

    try:
        with _open_content(path) as image:
            th, tw = _content_header(image, path, fit)
            image.draft("RGB", (tw, th))  # a JPEG decodes at a reduced scale where it can
            image.load()
            alpha = None
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P"
                                                      and "transparency" in image.info):
                alpha = image.convert("RGBA").getchannel("A")
            rgb = to_rgb(image)
    except ClipagError:
        raise
    except Image.DecompressionBombError:
        raise ClipagError(f"{path} is too large to decode safely (over "
                          f"{Image.MAX_IMAGE_PIXELS} pixels)") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ClipagError(f"cannot read {path} as an image: {exc}") from None
    if rgb.size != (tw, th):
        rgb = rgb.resize((tw, th), Image.BICUBIC, reducing_gap=3.0)
        alpha = alpha.resize((tw, th), Image.BILINEAR) if alpha is not None else None
    tensor = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
    a = (torch.from_numpy(np.asarray(alpha, dtype=np.uint8).copy())[None].float() / 255
         if alpha is not None else None)
    return tensor.float() / 255, a
