"""Finding, downloading and building guide models (any open_clip model, plus clipag's own).

A model is named by one of:
- a preset (`clipag models` lists them): the paper's robust ViT-B/32, FARE/TeCoA, OpenAI
  ViT-B/32, and the small world models embedded in this package;
- an open_clip architecture (`ViT-B-32`, or one of clipag's small ones such as `world-vit`)
  with `pretrained` = an open_clip tag, a URL, a local file or `none`;
- an `hf-hub:org/repo` id;
- a checkpoint file alone: clipag's own format says its architecture; an OpenAI-style state
  dict has it inferred.
"""

from __future__ import annotations

import copy
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import open_clip
from open_clip.model import build_model_from_openai_state_dict
import torch
import torch.nn.functional as F

from .checkpoint import check_compatible, load_state_dict, read_meta
from .errors import ClipagError
from .fileio import atomic_path

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ASSETS = Path(__file__).parent / "assets"

# Small architectures of clipag's own, buildable offline from these configs alone.
ARCH_CONFIGS: dict[str, dict[str, Any]] = {
    # For tests: builds in milliseconds.
    "clipag-tiny": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                       "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1},
    },
    # For tests of BatchNorm models (open_clip's modified ResNet): builds in milliseconds.
    "clipag-tiny-rn": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1},
    },
    # The procedural world's guide: 64 px ViT, 4 layers, width 128.
    "world-vit": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8,
                       "head_width": 32},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2},
    },
    # The world's held-out judge: a different family (modified ResNet) and seed.
    "world-rn": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2},
    },
}


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str
    source: str  # "embedded:FILE", a URL, "hf-hub:ID", or an open_clip pretrained tag
    robust: bool
    about: str
    # generate settings measured to work best with this model (used where the user sets none)
    recommended: tuple[tuple[str, Any], ...] = ()

    @property
    def kind(self) -> str:
        if self.source.startswith("embedded:"):
            return "embedded"
        if self.source.startswith("hf-hub:"):
            return "hf-hub"
        if "://" in self.source:
            return "url"
        return "open_clip tag"


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("clipag-vitb32", "ViT-B-32",
           "https://zenodo.org/records/10446026/files/CLIPAG_ViTB32.pt?download=1", True,
           "CLIPAG paper's robust ViT-B/32 (Ganz & Elad, Zenodo record 10446026)"),
    Preset("fare4-vitb32", "ViT-B-32", "hf-hub:chs20/FARE4-ViT-B-32-laion2B-s34B-b79K", True,
           "FARE, L-inf 4/255, from LAION-2B ViT-B/32 (Schlarmann et al. 2024)"),
    Preset("fare2-vitb32", "ViT-B-32", "hf-hub:chs20/FARE2-ViT-B-32-laion2B-s34B-b79K", True,
           "FARE, L-inf 2/255, from LAION-2B ViT-B/32 (Schlarmann et al. 2024)"),
    Preset("tecoa4-vitb32", "ViT-B-32", "hf-hub:chs20/TeCoA4-ViT-B-32-laion2B-s34B-b79K", True,
           "TeCoA, L-inf 4/255, ViT-B/32 (Mao et al. 2023, as published by chs20)"),
    Preset("openai-vitb32", "ViT-B-32", "openai", False,
           "OpenAI CLIP ViT-B/32, the non-robust baseline"),
    Preset("world-robust", "world-vit", "embedded:world-robust.safetensors", True,
           "procedural-world ViT, adversarially fine-tuned (the offline default)",
           (("scales", (8, 16, 32)), ("patch_views", 0), ("cutout", 0.0),
            ("tv_weight", 0.3))),
    Preset("world-vanilla", "world-vit", "embedded:world-vanilla.safetensors", False,
           "procedural-world ViT, plain contrastive training (non-robust baseline)"),
    Preset("world-judge", "world-rn", "embedded:world-judge.safetensors", False,
           "independent world model (ResNet); a held-out judge, never a guide"),
]}
DEFAULT_PRESET = "world-robust"


def cache_dir() -> Path:
    """Where downloads go: $CLIPAG_CACHE, else ~/.cache/clipag."""
    return Path(os.environ.get("CLIPAG_CACHE") or Path.home() / ".cache" / "clipag")


@dataclass
class Guide:
    """A CLIP model with its tokenizer and pixel normalization; images are in [0, 1]."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    mean: torch.Tensor
    std: torch.Tensor
    name: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings of images in [0, 1] at the model's input size."""
        return F.normalize(self.model.encode_image(self.normalize(images)).float(), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def to(self, device: torch.device) -> "Guide":
        self.model.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self


def _image_size(model: torch.nn.Module) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _context_length(model: torch.nn.Module) -> int:
    return int(getattr(model, "context_length", 77))


def _guide(model: torch.nn.Module, tokenizer, name: str, info: dict[str, Any]) -> Guide:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", OPENAI_MEAN), dtype=torch.float32)
    std = torch.tensor(cfg.get("std", OPENAI_STD), dtype=torch.float32)
    model.eval().float()
    return Guide(model, tokenizer, _image_size(model), mean, std, name, info)


def arch_config(arch: str | dict[str, Any]) -> dict[str, Any]:
    """The open_clip config of a clipag architecture name or an explicit config dict."""
    if isinstance(arch, dict):
        return copy.deepcopy(arch)
    if arch in ARCH_CONFIGS:
        return copy.deepcopy(ARCH_CONFIGS[arch])
    config = open_clip.get_model_config(arch)
    if config is None:
        raise ClipagError(f"unknown model architecture {arch!r} (see `clipag models`, or "
                          "open_clip.list_models())")
    return config


def build_model(arch: str | dict[str, Any], seed: int | None = None) -> tuple[torch.nn.Module, Any]:
    """A randomly initialised model of `arch` and its tokenizer (no download)."""
    if seed is not None:
        torch.manual_seed(seed)
    if isinstance(arch, str) and arch not in ARCH_CONFIGS:
        if open_clip.get_model_config(arch) is None:
            arch_config(arch)  # raises the unknown-architecture error
        model = open_clip.create_model(arch, pretrained=None)
        return model, open_clip.get_tokenizer(arch)
    config = arch_config(arch)
    model = open_clip.CLIP(**config)
    context = config["text_cfg"].get("context_length", 77)
    return model, open_clip.SimpleTokenizer(context_length=context)


def download(url: str, dest: Path, quiet: bool = False) -> Path:
    """Fetch `url` to `dest` atomically with a progress bar; a clear error when offline."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TransferSpeedColumn)

    try:
        with urllib.request.urlopen(url, timeout=30) as response, atomic_path(dest) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), disable=quiet, transient=True) as bar:
                task = bar.add_task(f"downloading {dest.name}", total=total)
                with open(tmp, "wb") as fh:
                    while chunk := response.read(1 << 20):
                        fh.write(chunk)
                        bar.advance(task, len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClipagError(f"could not download {url} ({reason}); fetch it yourself and save it "
                          f"as {dest}, or pass --checkpoint PATH") from None
    return dest


def _url_filename(url: str) -> str:
    return Path(urllib.request.urlparse(url).path).name or "download.bin"


def fetch(url: str, quiet: bool = False) -> Path:
    """The cached copy of `url`, downloading it first when absent."""
    dest = cache_dir() / _url_filename(url)
    return dest if dest.is_file() else download(url, dest, quiet=quiet)


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    if "logit_scale" in state and "logit_scale" in own:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    state = {k: v for k, v in state.items() if k not in ("input_resolution", "context_length",
                                                         "vocab_size")}
    check_compatible(model, state, source)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in state.items()})


def load_clipag_file(path: Path) -> Guide:
    """Load one of clipag's own checkpoints: the file alone says the architecture."""
    meta = read_meta(path)
    if meta is None or "arch" not in meta:
        raise ClipagError(f"{path} is not a clipag checkpoint")
    model, tokenizer = build_model(meta["arch"])
    _load_into(model, load_state_dict(path), str(path))
    return _guide(model, tokenizer, meta.get("name", path.stem), meta)


def load_file(path: Path, arch: str | None, trust: bool) -> Guide:
    """Load a local checkpoint of any supported kind."""
    if read_meta(path) is not None:
        return load_clipag_file(path)
    state = load_state_dict(path, trust=trust)
    if arch is None:
        try:
            model = build_model_from_openai_state_dict(dict(state))
        except Exception:
            raise ClipagError(f"cannot tell the architecture of {path}; pass --model NAME "
                              "(e.g. ViT-B-32)") from None
        # the builder rounds weights through fp16; reload them at full precision
        _load_into(model.float(), state, str(path))
        tokenizer = open_clip.SimpleTokenizer(context_length=_context_length(model))
        return _guide(model, tokenizer, path.stem, {"source": str(path)})
    model, tokenizer = build_model(arch)
    _load_into(model, state, str(path))
    return _guide(model, tokenizer, f"{arch}:{path.name}", {"arch": arch, "source": str(path)})


def _open_clip_remote(name: str, pretrained: str | None) -> Guide:
    """open_clip's own download path (hf-hub ids, pretrained tags) with a clear offline error."""
    label = name if pretrained is None else f"{name} (pretrained={pretrained})"
    try:
        model = open_clip.create_model(name, pretrained=pretrained, cache_dir=str(cache_dir()))
        tokenizer = open_clip.get_tokenizer(name, cache_dir=str(cache_dir()))
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        where = name[len("hf-hub:"):] if name.startswith("hf-hub:") else None
        hint = (f"download open_clip_config.json and the weights from huggingface.co/{where}, "
                if where else "download the weights yourself, ")
        raise ClipagError(f"could not load {label}: {first}; {hint}then pass --model ARCH "
                          "--checkpoint FILE") from None
    return _guide(model, tokenizer, label, {"source": label})


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for; see the module docstring."""

    model: str | None = None
    pretrained: str | None = None
    checkpoint: str | None = None
    trust: bool = False


def spec_for(name: str, trust: bool = False) -> ModelSpec:
    """A checkpoint file if `name` is one, else a model or preset name."""
    if Path(name).is_file():
        return ModelSpec(checkpoint=name, trust=trust)
    return ModelSpec(model=name, trust=trust)


def load_guide(spec: ModelSpec, device: torch.device, quiet: bool = False) -> Guide:
    """Resolve `spec` to a loaded model on `device`, in eval mode."""
    return _resolve(spec, quiet).to(device)


def _resolve(spec: ModelSpec, quiet: bool) -> Guide:
    if spec.checkpoint:
        if spec.checkpoint in PRESETS and not Path(spec.checkpoint).exists():
            raise ClipagError(f"{spec.checkpoint} is a preset, not a file: use --model "
                              f"{spec.checkpoint}")
        arch = spec.model
        if arch in PRESETS:
            arch = PRESETS[arch].arch
        return load_file(Path(spec.checkpoint), arch, spec.trust)
    name = spec.model or DEFAULT_PRESET
    if name in PRESETS:
        preset = PRESETS[name]
        if preset.kind == "embedded":
            path = ASSETS / preset.source.split(":", 1)[1]
            if not path.is_file():
                raise ClipagError(f"embedded model {name} is missing from this install ({path}); "
                                  "rebuild it with examples/train_world_models.sh")
            guide = load_clipag_file(path)
        elif preset.kind == "url":
            guide = load_file(fetch(preset.source, quiet=quiet), preset.arch, spec.trust)
        elif preset.kind == "hf-hub":
            guide = _open_clip_remote(preset.source, None)
        else:
            guide = _open_clip_remote(preset.arch, preset.source)
        guide.name = name
        return guide
    if name.startswith("hf-hub:"):
        return _open_clip_remote(name, None)
    pretrained = spec.pretrained
    if pretrained in (None, "", "none"):
        model, tokenizer = build_model(name)
        return _guide(model, tokenizer, f"{name} (random init)", {"arch": name})
    if "://" in pretrained:
        return load_file(fetch(pretrained, quiet=quiet), name, spec.trust)
    if Path(pretrained).exists():
        return load_file(Path(pretrained), name, spec.trust)
    if name in ARCH_CONFIGS:
        raise ClipagError(f"{name} has no pretrained tag {pretrained!r}: give a file, a URL or none")
    return _open_clip_remote(name, pretrained)


def preset_status(preset: Preset) -> tuple[str, int | None]:
    """('embedded'|'cached'|'not downloaded', size in bytes or None) for `clipag models`."""
    if preset.kind == "embedded":
        path = ASSETS / preset.source.split(":", 1)[1]
        return ("embedded", path.stat().st_size) if path.is_file() else ("missing", None)
    if preset.kind == "url":
        path = cache_dir() / _url_filename(preset.source)
        return ("cached", path.stat().st_size) if path.is_file() else ("not downloaded", None)
    root = cache_dir()
    repo = preset.source[len("hf-hub:"):] if preset.kind == "hf-hub" else None
    if repo and root.is_dir():
        hits = list(root.glob(f"models--{repo.replace('/', '--')}/**/*"))
        size = sum(p.stat().st_size for p in hits if p.is_file())
        if size:
            return "cached", size
    return "not downloaded", None
