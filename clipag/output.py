"""Writing results: PNG with the settings in its metadata, a JSON sidecar, GIF of frames.
Every file is written atomically; the PNG is written last, so its presence means done."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image, PngImagePlugin

from .errors import ClipagError
from .fileio import write_atomic, write_text_atomic

PNG_KEY = "clipag"


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL RGB."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), "RGB")


def slug(text: str, limit: int = 60) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (words[:limit].rstrip("-")) or "image"


def save_png(path: Path, image: torch.Tensor, meta: dict[str, Any]) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, json.dumps(meta, sort_keys=True))
    pil = to_pil(image)
    return write_atomic(path, lambda tmp: pil.save(tmp, format="PNG", pnginfo=info))


def read_png_meta(path: Path) -> dict[str, Any]:
    """The settings a clipag PNG carries."""
    try:
        with Image.open(path) as image:
            raw = image.text.get(PNG_KEY)  # type: ignore[attr-defined]
    except OSError as exc:
        raise ClipagError(f"cannot read {path}: {exc}") from None
    if raw is None:
        raise ClipagError(f"{path} carries no clipag metadata")
    return json.loads(raw)


def save_sidecar(path: Path, meta: dict[str, Any]) -> Path:
    return write_text_atomic(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def save_gif(path: Path, frames: list[torch.Tensor], ms_per_frame: int = 100) -> Path:
    """Frames (3, H, W) as a looping GIF."""
    images = [to_pil(f) for f in frames]
    return write_atomic(path, lambda tmp: images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0))


def save_grid(path: Path, images: list[torch.Tensor], columns: int, scale: int = 1) -> Path:
    """Images (3, H, W) of one size tiled into a grid PNG."""
    h, w = images[0].shape[-2:]
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(to_pil(image), ((i % columns) * w, (i // columns) * h))
    if scale != 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    return write_atomic(path, lambda tmp: grid.save(tmp, format="PNG"))
