"""Guide models: the `Guide` wrapper, clipag's small architectures, how a model is built from
an architecture name or config, and the preset table. Loading weights is `clipag.load`'s job.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F

from .errors import ClipagError

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
    """A named model. `arch` is the exact open_clip config its weights need (QuickGELU for
    OpenAI's); `source` says where the weights come from; `base` (an open_clip tag of `arch`)
    marks a vision-encoder-only file that is laid over that base model's image tower."""

    name: str
    arch: str
    source: str  # "embedded:FILE", a URL, "hf-hub:ID", or an open_clip pretrained tag
    robust: bool
    about: str
    # generate settings measured to work best with this model (used where the user sets none)
    recommended: tuple[tuple[str, Any], ...] = ()
    base: str | None = None
    # how the loading of this preset is checked offline (README's preset table)
    checked: str = ""

    @property
    def kind(self) -> str:
        if self.source.startswith("embedded:"):
            return "embedded"
        if self.source.startswith("hf-hub:"):
            return "hf-hub"
        if "://" in self.source:
            return "url"
        return "open_clip tag"


_TUEBINGEN = "https://nc.mlcloud.uni-tuebingen.de/index.php/s"
_VISION_ONLY = "vision-only .pt (RobustVLM layout) over the base's image tower, emulated in tests"
_HUB = "open_clip hub layout (config + safetensors or .bin), emulated in tests"

def _robustvlm(objective: str, eps: int, share: str) -> Preset:
    """One of RobustVLM's ViT-B/32 image towers, fine-tuned from OpenAI's ViT-B/32."""
    label = {"fare": "FARE", "tecoa": "TeCoA"}[objective]
    return Preset(f"{objective}{eps}-vitb32-openai", "ViT-B-32-quickgelu",
                  f"{_TUEBINGEN}/{share}/download/vitb32_{objective}_eps_{eps}.pt", True,
                  f"{label}, L-inf {eps}/255, from OpenAI ViT-B/32 (image tower; text tower "
                  "OpenAI's)", base="openai", checked=_VISION_ONLY)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("clipag-vitb32", "ViT-B-32",
           "https://zenodo.org/records/10446026/files/CLIPAG_ViTB32.pt?download=1", True,
           "CLIPAG paper's robust ViT-B/32 (Ganz & Elad, Zenodo record 10446026)",
           checked="training checkpoint (module. keys, numpy 1.x scalars), emulated in tests "
                   "at ViT-B-32 shapes"),
    Preset("fare4-vitb32", "ViT-B-32", "hf-hub:chs20/FARE4-ViT-B-32-laion2B-s34B-b79K", True,
           "FARE, L-inf 4/255, from LAION-2B ViT-B/32 (Schlarmann et al. 2024)", checked=_HUB),
    Preset("tecoa4-vitb32", "ViT-B-32", "hf-hub:chs20/TeCoA4-ViT-B-32-laion2B-s34B-b79K", True,
           "TeCoA, L-inf 4/255, from LAION-2B ViT-B/32 (Mao et al. 2023, by chs20)",
           checked=_HUB),
    *[_robustvlm(objective, eps, share) for objective, eps, share in (
        ("fare", 1, "cCgQAS8QW9arj9d"), ("fare", 4, "3nMxBKEwbWnDymT"),
        ("tecoa", 1, "LHgi84RskrtYCiX"), ("tecoa", 4, "RiWGQzBrqYNCaDk"))],
    Preset("fare2-vitl14", "ViT-L-14", "hf-hub:chs20/fare2-clip", True,
           "FARE, L-inf 2/255, from OpenAI ViT-L/14 (Schlarmann et al. 2024)", checked=_HUB),
    Preset("fare4-vitl14", "ViT-L-14", "hf-hub:chs20/fare4-clip", True,
           "FARE, L-inf 4/255, from OpenAI ViT-L/14 (Schlarmann et al. 2024)", checked=_HUB),
    Preset("tecoa2-vitl14", "ViT-L-14", "hf-hub:chs20/tecoa2-clip", True,
           "TeCoA, L-inf 2/255, from OpenAI ViT-L/14 (Mao et al. 2023, by chs20)", checked=_HUB),
    Preset("tecoa4-vitl14", "ViT-L-14", "hf-hub:chs20/tecoa4-clip", True,
           "TeCoA, L-inf 4/255, from OpenAI ViT-L/14 (Mao et al. 2023, by chs20)", checked=_HUB),
    Preset("openai-vitb32", "ViT-B-32-quickgelu", "openai", False,
           "OpenAI CLIP ViT-B/32, the non-robust baseline (QuickGELU, as OpenAI trained it)",
           checked="open_clip tag on the hub (timm/vit_base_patch32_clip_224.openai), emulated "
                   "in tests at ViT-B-32 shapes"),
    Preset("world-robust", "world-vit", "embedded:world-robust.safetensors", True,
           "procedural-world ViT, adversarially fine-tuned (the offline default)",
           (("scales", (8, 16, 32)), ("patch_views", 0), ("cutout", 0.0),
            ("tv_weight", 0.3)), checked="shipped in the package; loads in every test run"),
    Preset("world-vanilla", "world-vit", "embedded:world-vanilla.safetensors", False,
           "procedural-world ViT, plain contrastive training (non-robust baseline)",
           checked="shipped in the package"),
    Preset("world-judge", "world-rn", "embedded:world-judge.safetensors", False,
           "independent world model (ResNet); a held-out judge, never a guide",
           checked="shipped in the package"),
]}
DEFAULT_PRESET = "world-robust"


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

    def encode_text_tokens(self, texts: list[str]) -> torch.Tensor:
        """(B, L, W): the text tower's last hidden states (its final layer norm's output, before
        pooling and projection), one per token of the context, zero after the end-of-text
        token that the tower pools."""
        tower = self.model.text if hasattr(self.model, "text") else self.model
        pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", None))
        if not isinstance(getattr(tower, "ln_final", None), torch.nn.Module) \
                or getattr(tower, "cls_emb", None) is not None or pool != "argmax":
            raise ClipagError(f"{self.name}: reading the token sequence needs an open_clip text "
                              "transformer that pools at its end-of-text token (a Hugging Face "
                              "or CoCa text tower has none)")
        tokens = self.tokenizer(texts).to(self.device)
        seen = []
        hook = tower.ln_final.register_forward_hook(lambda m, i, out: seen.append(out))
        try:
            self.model.encode_text(tokens)
        finally:
            hook.remove()
        states = seen[-1].float()
        end = tokens.argmax(-1, keepdim=True)  # the end-of-text token has the highest id
        valid = torch.arange(tokens.shape[1], device=tokens.device)[None] <= end
        return states * valid.unsqueeze(-1)

    def to(self, device: torch.device) -> "Guide":
        self.model.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self


def _image_size(model: torch.nn.Module) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _guide(model: torch.nn.Module, tokenizer, name: str, info: dict[str, Any]) -> Guide:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", OPENAI_MEAN), dtype=torch.float32)
    std = torch.tensor(cfg.get("std", OPENAI_STD), dtype=torch.float32)
    model.eval().float()
    return Guide(model, tokenizer, _image_size(model), mean, std, name, info)


def arch_config(arch: str | dict[str, Any]) -> dict[str, Any]:
    """The open_clip config of an architecture name (clipag's or open_clip's) or a config dict."""
    if isinstance(arch, dict):
        return copy.deepcopy(arch)
    if arch in ARCH_CONFIGS:
        return copy.deepcopy(ARCH_CONFIGS[arch])
    config = open_clip.get_model_config(arch)
    if config is None:
        raise ClipagError(f"unknown model architecture {arch!r} (see `clipag models`, or "
                          "open_clip.list_models())")
    return config


# the whole-number fields of an open_clip config that a clipag file's metadata 'arch' may
# set, with their ranges (a list of them where open_clip takes one: a ResNet's layers, a
# non-square image): checked like flags before anything is built
CONFIG_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "": {"embed_dim": (1, 16384)},
    "vision_cfg": {"image_size": (1, 4096), "layers": (1, 256), "width": (1, 16384),
                   "patch_size": (1, 1024), "head_width": (1, 16384)},
    "text_cfg": {"context_length": (1, 4096), "vocab_size": (1, 1_000_000),
                 "width": (1, 16384), "heads": (1, 1024), "layers": (1, 256)}}


def _shown(value: Any) -> str:
    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):
        return repr(value)[:60]


def check_arch(arch: Any, source: str) -> str | dict[str, Any]:
    """A file's recorded architecture (metadata 'arch': a name, or an open_clip config) checked
    field by field against CONFIG_RANGES; a ClipagError naming `source` and the field otherwise."""
    if isinstance(arch, str):
        if not arch:
            raise ClipagError(f"{source}: metadata field 'arch' is an empty name")
        if arch.startswith("hf-hub:"):  # a file's architecture is read here, never fetched
            raise ClipagError(f"{source}: metadata field 'arch' must name a local architecture "
                              f"(`clipag models`, or open_clip.list_models()), got {arch!r}")
        try:
            arch_config(arch)
        except ClipagError as exc:
            raise ClipagError(f"{source}: metadata field 'arch': {exc}") from None
        except Exception as exc:  # noqa: BLE001 - open_clip's lookup of an odd name
            raise ClipagError(f"{source}: metadata field 'arch' {arch[:60]!r} is not an "
                              f"architecture ({type(exc).__name__})") from None
        return arch
    if not isinstance(arch, dict) or not arch:
        raise ClipagError(f"{source}: metadata field 'arch' must be an architecture name or a "
                          f"non-empty open_clip config, got {_shown(arch)}")
    for part, ranges in CONFIG_RANGES.items():
        where = arch.get(part, {}) if part else arch
        if not isinstance(where, dict):
            raise ClipagError(f"{source}: metadata field 'arch.{part}' must be a JSON object, got "
                              f"{_shown(where)}")
        for name, (low, high) in ranges.items():
            if name not in where:
                continue
            value = where[name]
            items = value if isinstance(value, list) and name in ("layers", "image_size") \
                else [value]
            if not items or not all(isinstance(v, int) and not isinstance(v, bool)
                                    and low <= v <= high for v in items):
                field = f"{part}.{name}" if part else name
                raise ClipagError(f"{source}: metadata field 'arch.{field}' must be a whole "
                                  f"number in {low}..{high}, got {_shown(value)}")
    if "embed_dim" not in arch or "vision_cfg" not in arch or "text_cfg" not in arch:
        lacking = next(k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in arch)
        raise ClipagError(f"{source}: metadata field 'arch' (an open_clip config) lacks "
                          f"{lacking!r}")
    return arch


def model_from_config(config: dict[str, Any]) -> torch.nn.Module:
    """A randomly initialised open_clip model from a config dict, built the way open_clip's
    factory builds it (CLIP, or CustomTextCLIP for custom or Hugging Face text towers)."""
    config = copy.deepcopy(config)
    custom = config.pop("custom_text", False) or "hf_model_name" in config.get("text_cfg", {})
    if "multimodal_cfg" in config:
        raise ClipagError("CoCa models (a multimodal decoder) are not supported as guides")
    if "hf_model_name" in config.get("text_cfg", {}):
        config["text_cfg"]["hf_model_pretrained"] = False
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    return cls(**config)


def tokenizer_for(config: dict[str, Any]):
    """The tokenizer an open_clip config asks for."""
    text = config.get("text_cfg", {})
    context = text.get("context_length", 77)
    if text.get("hf_tokenizer_name"):
        return open_clip.HFTokenizer(text["hf_tokenizer_name"], context_length=context)
    return open_clip.SimpleTokenizer(context_length=context)


def build_model(arch: str | dict[str, Any], seed: int | None = None, quick_gelu: bool = False
                ) -> tuple[torch.nn.Module, Any]:
    """A randomly initialised model of `arch` and its tokenizer (no download); `quick_gelu`
    forces QuickGELU activations (what OpenAI's weights need)."""
    if seed is not None:
        torch.manual_seed(seed)
    config = arch_config(arch)
    if quick_gelu:
        config["quick_gelu"] = True
    if isinstance(arch, str) and arch not in ARCH_CONFIGS:
        return model_from_config(config), open_clip.get_tokenizer(arch)
    return model_from_config(config), tokenizer_for(config)


def activation(model: torch.nn.Module) -> str:
    """'QuickGELU' or 'GELU': what the model's transformer blocks use."""
    for module in model.modules():
        if type(module).__name__ == "QuickGELU":
            return "QuickGELU"
    return "GELU"
