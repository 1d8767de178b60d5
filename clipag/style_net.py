"""A trained style network as a file: CLIPStyler's U-Net weights (clipag.canvas.unet) with
what made them, saved as safetensors (no pickle), and applied to other images in one pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .batch import RunConfig, WriteError, write_outputs
from .canvas.unet import parameter_count
from .device import resolve_device
from .errors import ClipagError
from .fileio import write_atomic
from .output import companions, slug
from .style import apply_net

FORMAT = "clipag-style-net"


def save_net(path: Path, result, overwrite: bool = False) -> Path:
    """The U-Net of the first image of a style run (a Generation from the unet canvas)."""
    canvas = result.canvas
    if canvas is None or getattr(canvas, "name", None) != "unet":
        raise ClipagError("only a U-Net style run (--recipe clipstyler) has a network to save")
    if path.exists() and not overwrite:
        raise ClipagError(f"{path} exists; pass --overwrite to replace it")
    record = result.records[0]
    meta = {"format": FORMAT, "channels": str(canvas.channels),
            "residual": "true" if canvas.residual else "false", "target": record["target"],
            "source": record["source"], "model": json.dumps(record["model"]),
            "settings": json.dumps(record["settings"])}
    weights = canvas.state(0).contiguous()
    try:
        return write_atomic(path, lambda tmp: save_file({"weights": weights}, str(tmp),
                                                        metadata=meta))
    except OSError as exc:
        raise ClipagError(f"could not write {path}: {exc.strerror or exc}") from None


def load_net(path: Path) -> tuple[torch.Tensor, int, dict[str, Any]]:
    """(weights (P,), channels, metadata) from a file `save_net` wrote; anything else is a
    ClipagError."""
    if not path.is_file():
        raise ClipagError(f"style network not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ClipagError(f"{path} is not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT or set(tensors) != {"weights"}:
        raise ClipagError(f"{path} is not a clipag style network (saved by --save-net)")
    try:
        settings = json.loads(meta.get("settings", "{}"))
    except ValueError:
        settings = None
    if not isinstance(settings, dict):
        raise ClipagError(f"{path}: its settings field is not a JSON object")
    if meta.get("residual", "false") not in ("true", "false"):
        raise ClipagError(f"{path}: its residual field must be true or false, "
                          f"got {meta['residual']!r}")
    try:
        channels = int(meta["channels"])
    except (KeyError, ValueError):
        raise ClipagError(f"{path}: its channels field is missing or not a number") from None
    weights = tensors["weights"]
    if not 1 <= channels <= 256 or weights.dim() != 1 or \
            weights.numel() != parameter_count(channels):
        raise ClipagError(f"{path}: {weights.numel()} weights do not make a U-Net of "
                          f"{channels} channels")
    if weights.dtype not in (torch.float32, torch.float16, torch.bfloat16) or \
            not torch.isfinite(weights).all():
        raise ClipagError(f"{path}: its weights are not finite floating-point numbers")
    return weights.float(), channels, meta


def apply_saved_net(path: Path, contents: list[Path], target: str, run: RunConfig,
                    output: Path | None, device: str, quiet: bool) -> list[Path]:
    """Restyle every content image with a saved network, one forward pass each; written as
    `NAME-TARGET-net.png` (or `output`) with a sidecar. Nothing is replaced without
    `run.overwrite`."""
    weights, channels, meta = load_net(path)
    if meta.get("target") != target:
        raise ClipagError(f"{path} was trained for {meta.get('target')!r}, not {target!r}")
    if output is not None and len(contents) > 1:
        raise ClipagError("--output names one file; use --outdir for several images")
    dev = resolve_device(device)
    written = []
    for content in contents:
        png = output or Path(run.outdir) / f"{slug(content.stem, 40)}-{slug(target)}-net.png"
        if not run.overwrite and any(p.exists() for p in companions(png)):
            raise ClipagError(f"{png} exists; pass --overwrite to replace it")
        image = apply_net(weights, channels, content, 4096, dev,
                          residual=meta.get("residual", "false") == "true")
        record = {"target": target, "source": meta.get("source"), "content": str(content),
                  "net": str(path), "size": [image.shape[-1], image.shape[-2]],
                  "alpha": image.shape[0] == 4, "settings": json.loads(meta["settings"])
                  if "settings" in meta else {}}
        png.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_outputs(png, image, record, {}, [])
        except WriteError as exc:
            raise ClipagError(str(exc)) from None
        written.append(png)
        print(png)
    return written
