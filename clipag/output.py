"""Writing results: an image (PNG with the settings in its metadata, or JPEG/WebP), a strict
JSON sidecar, a GIF of frames. Every file is written atomically; the image is written last,
so its presence means done."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image, PngImagePlugin

from .errors import ClipagError
from .fileio import write_atomic, write_text_atomic

PNG_KEY = "clipag"
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def image_format(path: Path) -> str:
    """The Pillow format an output name asks for, from its suffix; others are refused."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ClipagError(f"cannot write an image to {path}: name it .png, .jpg, .jpeg or .webp")
    return fmt


def companions(path: Path, frames: bool = True, extra: tuple[str, ...] = (".svg",),
               video: bool = False) -> list[Path]:
    """The files an output writes: its sidecar, its GIF (with frames) or MP4 (`video`), its
    canvas's extra files (`extra` suffixes: an SVG for strokes) and the image itself, in the
    order they are written."""
    path = Path(path)
    movie = [path.with_suffix(".mp4" if video else ".gif")] if frames or video else []
    return [path.with_suffix(".json"), *movie, *(path.with_suffix(s) for s in extra), path]


def finite_json(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """`value` with every non-finite float replaced by None, and the keys that were replaced:
    what a strict JSON writer can take."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [where or "value"]
    if isinstance(value, dict):
        out, bad = {}, []
        for k, v in value.items():
            out[k], b = finite_json(v, f"{where}.{k}" if where else str(k))
            bad += b
        return out, bad
    if isinstance(value, (list, tuple)):
        pairs = [finite_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return [v for v, _ in pairs], [b for _, bs in pairs for b in bs]
    return value, []


def to_json(meta: dict[str, Any], **kwargs) -> str:
    """Strict JSON (no NaN or Infinity: non-finite numbers become null)."""
    return json.dumps(finite_json(meta)[0], allow_nan=False, sort_keys=True, **kwargs)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL RGB; (4, H, W) -> RGBA."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), "RGBA" if len(array) == 4 else "RGB")


def slug(text: str, limit: int = 60) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (words[:limit].rstrip("-")) or "image"


def save_png(path: Path, image: torch.Tensor, meta: dict[str, Any]) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, to_json(meta))
    pil = to_pil(image)
    return write_atomic(path, lambda tmp: pil.save(tmp, format="PNG", pnginfo=info))


def save_image(path: Path, image: torch.Tensor, meta: dict[str, Any]) -> Path:
    """The image in the format its suffix names; a PNG carries `meta` in its metadata."""
    fmt = image_format(path)
    if fmt == "PNG":
        return save_png(path, image, meta)
    pil = to_pil(image)
    if fmt == "JPEG" and pil.mode == "RGBA":  # JPEG has no alpha channel
        pil = pil.convert("RGB")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    return write_atomic(path, lambda tmp: pil.save(tmp, format=fmt, **options))


def read_png_meta(path: Path) -> dict[str, Any]:
    """The settings a clipag PNG carries."""
    try:
        with Image.open(path) as image:
            raw = image.text.get(PNG_KEY)  # type: ignore[attr-defined]
    except OSError as exc:
        raise ClipagError(f"cannot read {path}: {exc}") from None
    if raw is None:
        raise ClipagError(f"{path} carries no clipag metadata")
    try:
        return json.loads(raw)
    except ValueError:
        raise ClipagError(f"{path}: its clipag metadata is not valid JSON") from None


def save_sidecar(path: Path, meta: dict[str, Any]) -> Path:
    """`meta` as strict JSON (non-finite numbers written as null)."""
    return write_text_atomic(path, to_json(meta, indent=2) + "\n")


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """A sidecar's settings, or None where it is missing, unreadable or not a JSON object."""
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def save_gif(path: Path, frames: list[torch.Tensor], ms_per_frame: int = 100) -> Path:
    """Frames (3, H, W) as a looping GIF."""
    images = [to_pil(f) for f in frames]
    return write_atomic(path, lambda tmp: images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0))


def save_video(path: Path, frames: list[torch.Tensor], fps: int = 10, min_side: int = 256
                ) -> Path:
    """Frames (3, H, W) as an H.264 MP4 (yuv420p, even sides) through the ffmpeg binary that
    imageio-ffmpeg ships: no system ffmpeg needed. Small frames are enlarged (nearest) to at
    least `min_side`, so that players show them at a watchable size."""
    import imageio_ffmpeg
    import numpy as np

    h, w = frames[0].shape[-2:]
    scale = max(1, -(-min_side // min(h, w)))
    size = (w * scale + (w * scale) % 2, h * scale + (h * scale) % 2)

    def array(frame: torch.Tensor) -> np.ndarray:
        image = to_pil(frame).resize((w * scale, h * scale), Image.NEAREST)
        canvas = Image.new("RGB", size)
        canvas.paste(image)
        return np.ascontiguousarray(np.asarray(canvas))

    def write(tmp: Path) -> None:
        writer = imageio_ffmpeg.write_frames(str(tmp), size, fps=fps, codec="libx264",
                                             pix_fmt_out="yuv420p", macro_block_size=1,
                                             output_params=["-f", "mp4"])
        writer.send(None)
        for frame in frames:
            writer.send(array(frame))
        writer.close()

    return write_atomic(path, write)


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
