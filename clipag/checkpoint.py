"""Reading and writing weights safely.

clipag's own format is a `.safetensors` file whose header metadata holds one JSON document
under the key ``clipag``: the open_clip architecture config and how the weights were made.
Foreign files (open_clip ``.pt``/``.bin`` state dicts, ``.safetensors``, OpenAI's TorchScript
archives) are untrusted: they are read with ``torch.load(weights_only=True)``, and anything
that needs code execution (arbitrary pickles, TorchScript) is refused unless ``trust`` is set.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ClipagError
from .fileio import write_atomic

META_KEY = "clipag"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor],
                    meta: dict[str, Any], dtype: torch.dtype | None = None) -> Path:
    """Write weights plus JSON metadata atomically; `dtype` optionally casts float tensors."""
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    header = {META_KEY: json.dumps({"format_version": FORMAT_VERSION, **meta}, sort_keys=True)}
    return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def read_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """clipag metadata of a safetensors file, or None when the file is not clipag's."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if size <= 0 or size > 100_000_000:
                return None
            header = json.loads(fh.read(size))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    raw = header.get("__metadata__", {}).get(META_KEY) if isinstance(header, dict) else None
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ClipagError(f"{path}: clipag metadata is not valid JSON ({exc})") from None


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("constants.pkl") or "/code/" in name
                       for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ClipagError(f"{path}: not a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ClipagError(f"{path}: holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_state_dict(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from any supported file without running code unless `trust`."""
    path = Path(path)
    if not path.is_file():
        raise ClipagError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ClipagError(f"checkpoint is empty: {path}")
    if path.suffix == ".safetensors" or read_meta(path) is not None:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ClipagError(f"corrupt safetensors checkpoint {path}: {exc}") from None
    if _is_torchscript(path):
        if not trust:
            raise ClipagError(f"{path} is a TorchScript archive, which runs code when loaded; "
                              "pass --trust-checkpoint if you trust its source")
        module = torch.jit.load(str(path), map_location="cpu")
        state = module.state_dict()
        for key in ("input_resolution", "context_length", "vocab_size"):
            state.pop(key, None)
        return _unwrap(dict(state), path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad or unsafe pickles
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        unsafe = "weights_only" in str(exc) or "Unsupported global" in str(exc)
        if unsafe and trust:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        elif unsafe:
            raise ClipagError(f"{path} needs code execution to load (pickled objects beyond "
                              "tensors); pass --trust-checkpoint if you trust its source") from None
        else:
            raise ClipagError(f"corrupt or unreadable checkpoint {path}: {message}") from None
    return _unwrap(obj, path)


def check_compatible(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a one-line error naming the keys that do not fit `model`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if not (missing or unexpected or shapes):
        return

    def show(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"shape mismatch in {show(shapes)} (e.g. {k}: checkpoint "
                     f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
    if missing:
        parts.append(f"missing {show(missing)}")
    if unexpected:
        parts.append(f"unexpected {show(unexpected)}")
    raise ClipagError(f"checkpoint {source} does not match the model: " + "; ".join(parts))
