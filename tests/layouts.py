"""Files built the way the published checkpoints are built (random weights, the publishers'
key names, prefixes, containers, pickled extras, configs and cache layouts), so the loaders are
tested on what users will really load, not on clipag's own shape.

- CLIPAG (Zenodo 10446026): an open_clip training checkpoint written with numpy 1.x: a dict
  with epoch/name, ``state_dict`` whose keys carry DataParallel's ``module.`` prefix, the
  optimizer state, and numpy scalars pickled as ``numpy.core.multiarray.scalar``.
- chs20 hub repos (FARE4/TeCoA4 ViT-B/32, the ViT-L/14 ones), OpenAI through open_clip's
  ``timm/...openai`` repo: the Hugging Face cache layout (refs/main, snapshots/REV/FILE linking
  to content-addressed blobs), ``open_clip_config.json`` + ``open_clip_model.safetensors``
  and/or ``open_clip_pytorch_model.bin`` (a bare state dict).
- RobustVLM's ViT-B/32 files: ``model.visual.state_dict()`` saved with torch.save (no
  ``visual.`` prefix), or wrapped as ``{"vision_encoder_state_dict": ...}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

REVISION = "0123456789abcdef0123456789abcdef01234567"


def as_numpy1_pickle(path: Path) -> None:
    """Rewrite a torch.save archive's pickle so its numpy globals carry the numpy 1.x module
    name, byte for byte what numpy 1.x writes (torch pickles with protocol 2: GLOBAL opcodes
    hold the names as text lines)."""
    tmp = path.with_suffix(".rewrite")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            zout.writestr(info, data)
    os.replace(tmp, path)


def clipag_training_checkpoint(model: torch.nn.Module, path: Path, optimizer: bool = True) -> Path:
    """CLIPAG_ViTB32.pt's layout, with `model`'s weights."""
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    ckpt = {"epoch": 10, "name": "clipag-vitb32", "state_dict": state,
            "best_robust_acc": np.float64(0.4123), "lr": np.float32(1e-5), "step": np.int64(9000)}
    if optimizer:
        params = [p for p in model.visual.parameters()]
        opt = torch.optim.AdamW(params, lr=1e-5)
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        for p in params:
            p.grad = None
        ckpt["optimizer"] = opt.state_dict()
    torch.save(ckpt, path)
    as_numpy1_pickle(path)
    return path


def _blob_name(data: bytes, lfs: bool) -> str:
    if lfs:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def hf_cache_repo(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face hub cache entry for `repo` holding `files` (name -> bytes), as
    huggingface_hub lays it out; returns the snapshot folder."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    snapshot = root / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = root / "blobs" / _blob_name(data, lfs=not name.endswith(".json"))
        blob.write_bytes(data)
        link = snapshot / name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def open_clip_config(model_cfg: dict, mean=None, std=None) -> bytes:
    pre = {"mean": list(mean or (0.48145466, 0.4578275, 0.40821073)),
           "std": list(std or (0.26862954, 0.26130258, 0.27577711)),
           "interpolation": "bicubic", "resize_mode": "shortest"}
    return json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pre}, indent=2).encode()


def bin_bytes(state: dict[str, torch.Tensor], tmp: Path) -> bytes:
    path = tmp / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    return path.read_bytes()


def safetensors_bytes(state: dict[str, torch.Tensor], tmp: Path) -> bytes:
    path = tmp / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path.read_bytes()


def vision_only(model: torch.nn.Module, path: Path, wrapped: bool = False) -> Path:
    """RobustVLM's layout: the image tower's own state dict (no `visual.` prefix)."""
    state = model.visual.state_dict()
    torch.save({"vision_encoder_state_dict": state} if wrapped else state, path)
    return path


def embeddings(model: torch.nn.Module, mean=None, std=None, size: int | None = None,
               context: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text embeddings of fixed inputs, the way the publishers' code computes them
    (open_clip's encoders on normalised pixels and tokenised text)."""
    import open_clip

    size = size or int(np.atleast_1d(model.visual.image_size)[0])
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, size, size, generator=g)
    mean = torch.tensor(mean or (0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor(std or (0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    tokens = open_clip.SimpleTokenizer(context_length=context)(["a red chair", "a photo of a dog"])
    model.eval()
    with torch.no_grad():
        return (model.encode_image((images - mean) / std).float(),
                model.encode_text(tokens).float())


def guide_embeddings(guide) -> tuple[torch.Tensor, torch.Tensor]:
    """The same inputs through a loaded clipag Guide (its own normalisation and tokenizer)."""
    g = torch.Generator().manual_seed(0)
    size = guide.image_size
    images = torch.rand(2, 3, size, size, generator=g)
    tokens = guide.tokenizer(["a red chair", "a photo of a dog"])
    with torch.no_grad():
        return (guide.model.encode_image(guide.normalize(images)).float(),
                guide.model.encode_text(tokens).float())
