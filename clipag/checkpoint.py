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
import re
import stat
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
# the longest safetensors header read (safetensors' own limit): a longer claim is refused
MAX_HEADER = 100_000_000


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
            # refused from the length alone, before a byte is allocated: a header longer
            # than the file holds (or than any real one) is not read (`header_problem` says why)
            if size <= 0 or size > min(MAX_HEADER, os.fstat(fh.fileno()).st_size - 8):
                return None
            header = json.loads(fh.read(size))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    extra = header.get("__metadata__") if isinstance(header, dict) else None
    raw = extra.get(META_KEY) if isinstance(extra, dict) else None
    if raw is None:
        return None
    try:
        meta = json.loads(raw) if isinstance(raw, str) else None
    except ValueError as exc:
        raise ClipagError(f"{path}: clipag metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ClipagError(f"{path}: clipag metadata must be a JSON object, got "
                          f"{str(raw)[:60]!r}")
    return meta


def file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as a file, as the end of a sentence starting with its name
    ("is a folder, not a file", "cannot be read: Permission denied"); None when it can."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    return None


def header_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a readable file's safetensors header (a truncated or corrupt file,
    or another format), as the end of a sentence starting with its name; None where the
    header reads whole."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(9)
            length = int.from_bytes(head[:8], "little")
            if len(head) < 9 or head[8:9] != b"{":
                return (f"is not a safetensors file ({size} bytes): corrupt, truncated or "
                        "another format")
            if length > MAX_HEADER and length <= size - 8:
                return (f"is corrupt: its safetensors header claims {length} bytes, more than "
                        f"any real one ({MAX_HEADER})")
            if length > size - 8:
                return (f"is truncated: its safetensors header is {length} bytes long, but "
                        f"only {size - 8} follow its length (an interrupted download or copy?)")
            header = head[8:] + fh.read(length - 1)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    try:
        json.loads(header)
    except (ValueError, UnicodeDecodeError):
        return "is corrupt: its safetensors header is not valid JSON"
    return None


def header_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]] | None:
    """The name and shape of each tensor a safetensors file holds, read from its header alone
    (nothing allocated for the weights); None where the header does not read."""
    if header_problem(path) is not None:
        return None
    try:
        with open(path, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        return {key: tuple(int(n) for n in value["shape"]) for key, value in header.items()
                if key != "__metadata__"}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


# clipag's own files by the kind their header records: what each is and the flag it goes to
FILE_KINDS = {
    "crossflow": ("a clipag CrossFlow checkpoint (a learned start)",
                  "--init crossflow:FILE (or crossflow sample's --flow FILE)"),
    "gmm": ("a clipag Gaussian-mixture start", "--init FILE"),
    "guide": ("a clipag guide model", "--checkpoint FILE")}


def file_kind(meta: dict[str, Any] | None) -> str | None:
    """Which of clipag's own files a header's metadata marks: "crossflow", "gmm", "guide" (a
    model that names its architecture) or None."""
    if not isinstance(meta, dict):
        return None
    if meta.get("kind") in ("crossflow", "gmm"):
        return meta["kind"]
    return "guide" if "arch" in meta else None


def what_else(path: str | os.PathLike, meta: dict[str, Any] | None, wanted: str) -> str | None:
    """Why a file is not the `wanted` kind of clipag file (FILE_KINDS), as a message: what it
    really is and the flag that takes it, or why it cannot be read at all (a folder, no
    permission, truncated); None where nothing more is known than that it is not one."""
    what, _ = FILE_KINDS[wanted]
    kind = file_kind(meta)
    if kind is not None and kind != wanted:
        other, flag = FILE_KINDS[kind]
        return f"{path} is {other}, not {what}: pass it as {flag}"
    problem = file_problem(path) or (header_problem(path) if meta is None else None)
    return f"{path} {problem}" if problem else None


def sniff(path: Path) -> str:
    """'safetensors', 'zip' (torch.save's archive, TorchScript too) or 'pickle' (legacy
    torch.save); a one-line error for anything else, e.g. a truncated download."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if len(head) >= 8 and read_meta(path) is not None:
        return "safetensors"
    if zipfile.is_zipfile(path):
        return "zip"
    if head[:2] == b"PK":
        raise ClipagError(f"{path} is a truncated or corrupt archive (no central directory: an "
                          "interrupted download?); fetch it again")
    if head[:1] == b"\x80" and len(head) >= 2 and head[1] in (2, 3, 4, 5):
        return "pickle"
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        return "safetensors"
    raise ClipagError(f"{path} is not a checkpoint clipag can read (neither safetensors nor a "
                      "torch.save file): corrupt, truncated or another format")


def _looks_like_safetensors(head: bytes) -> bool:
    return len(head) > 9 and head[8:9] == b"{"


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("constants.pkl") or "/code/" in name
                       for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def numpy_globals() -> list:
    """Exactly the numpy globals that pickled numpy scalars need (a scalar's reconstructor
    and its dtype), under numpy 2.x names and the numpy 1.x name
    (``numpy.core.multiarray.scalar``) that files written with numpy 1.x carry. Nothing else:
    these rebuild plain numbers and run no user code."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    dtypes = [t for t in vars(getattr(np, "dtypes", object)).values()
              if isinstance(t, type) and issubclass(t, np.dtype)]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"),
            (scalar, "numpy._core.multiarray.scalar"), np.dtype, *dtypes]


_GLOBAL_WORDINGS = (  # how torch's weights-only unpickler names a refused global, by version
    re.compile(r"Unsupported global: GLOBAL (\S+)"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
)


def _unsafe_global(message: str) -> str | None:
    """The global a refused pickle asked for, from torch's weights-only error text (any of the
    wordings torch has used)."""
    for wording in _GLOBAL_WORDINGS:
        found = wording.search(message)
        if found:
            return found.group(1)
    return None


def _refusal(message: str) -> str | None:
    """Why torch's weights-only unpickler refused a file, without its advice to re-run unsafe
    (None where the error is not such a refusal)."""
    if "Weights only load failed" not in message:
        return None
    text = " ".join(message.split())
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    return (found.group(1) if found else "an instruction the safe loader does not run").strip()


def read_object(path: str | os.PathLike, trust: bool = False) -> Any:
    """What a checkpoint file holds (a dict of tensors and plain values), read without running
    code: safetensors, or torch.load(weights_only=True) with the numpy scalar globals allowed.
    A pickle that needs anything else is refused unless `trust`; TorchScript needs `trust`."""
    path = Path(path)
    if not path.is_file():
        raise ClipagError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ClipagError(f"checkpoint is empty: {path}")
    kind = sniff(path)
    if kind == "safetensors":
        problem = header_problem(path)  # an absurd header length: refused before reading
        if problem is not None:
            raise ClipagError(f"corrupt safetensors checkpoint {path}: it {problem}")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ClipagError(f"corrupt safetensors checkpoint {path}: {exc}") from None
    if kind == "zip" and _is_torchscript(path):
        if not trust:
            raise ClipagError(f"{path} is a TorchScript archive, which runs code when loaded; "
                              "pass --trust-checkpoint if you trust its source")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - torch.jit raises many types
            raise ClipagError(f"corrupt TorchScript archive {path}: "
                              f"{' '.join(str(exc).split())[:300]}") from None
        state = dict(module.state_dict())
        for key in ("input_resolution", "context_length", "vocab_size"):
            state.pop(key, None)
        return {"__torchscript__": True, "state_dict": state}
    try:
        with torch.serialization.safe_globals(numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad or unsafe pickles
        text = " ".join(str(exc).split())
        wanted, refused = _unsafe_global(str(exc)), _refusal(str(exc))
        if wanted is None and refused is None:
            raise ClipagError(f"corrupt or truncated checkpoint {path}: "
                              f"{text[:300] or type(exc).__name__}") from None
        if not trust:
            what = (f"pickles {wanted}, which runs code when loaded" if wanted else
                    f"needs more than the safe loader reads ({refused[:120]})")
            raise ClipagError(f"{path} is refused as unsafe: it {what}, not only tensors and "
                              "plain values; pass --trust-checkpoint only if you trust its "
                              "source") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - an arbitrary pickle can raise anything
        raise ClipagError(f"could not load {path} even with --trust-checkpoint: "
                          f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None


# Containers the published checkpoints wrap their weights in: open_clip training checkpoints
# (CLIPAG's) use "state_dict"; RobustVLM's CLIP_benchmark loader reads
# "vision_encoder_state_dict"; others save the bare dict.
CONTAINER_KEYS = ("state_dict", "vision_encoder_state_dict", "model")


def unwrap(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint object: the state dict out of its container, with a
    DataParallel/DDP ``module.`` prefix removed."""
    if isinstance(obj, dict):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), dict) and any(
                    isinstance(v, torch.Tensor) for v in obj[key].values()):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ClipagError(f"{path}: not a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ClipagError(f"{path}: holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # a model with NaN weights makes black images that look finished
        raise ClipagError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite numbers "
                          f"({', '.join(sorted(bad)[:3])}{', ...' if len(bad) > 3 else ''})")
    return tensors


def load_state_dict(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from any supported file without running code unless `trust`."""
    return unwrap(read_object(path, trust=trust), path)


def is_torchscript_object(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("__torchscript__") is True


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
