"""The one way to get a guide model: `load_model` (CLI, benchmarks, examples and tests all
come through here).

A model is named by one of:
- a preset (`clipag models` lists them): the paper's robust ViT-B/32, FARE/TeCoA (hub repos
  and vision-only files), OpenAI ViT-B/32, and the small world models embedded in this package;
- an open_clip architecture (`ViT-B-32`, `ViT-B-32-quickgelu`, or one of clipag's small ones
  such as `world-vit`) with `pretrained` = an open_clip tag, a URL, a local file or `none`;
- an `hf-hub:org/repo` id (open_clip's hub layout);
- a mix of those, ``A*3+B`` (see `clipag.ensemble`);
- a checkpoint file: clipag's own format names its architecture; any other file needs the
  architecture (`model`), since a state dict does not say which activation it was trained with.
  A vision-encoder-only file (RobustVLM's layout) is laid over the image tower of the base model
  that `model`/`pretrained` name, keeping its text tower.

Every path ends in a model whose every weight came from a file: never random weights unless
the user asked for them (`pretrained="none"`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import (check_compatible, file_kind, file_problem, header_shapes,
                         is_torchscript_object, read_meta, read_object, save_checkpoint, unwrap, what_else)
from .device import resolve_device
from .ensemble import is_mix, load_mix
from .errors import ClipagError
from .hub import (cache_dir, check_digest, fetch, hub_files, record_digest, recorded_digest,
                  tag_source, tag_weights, url_filename)
from .models import (ARCH_CONFIGS, ASSETS, DEFAULT_PRESET, OPENAI_MEAN, OPENAI_STD, PRESETS,
                     Guide, Preset, _guide, activation, arch_config, build_model, check_arch,
                     model_from_config, tokenizer_for)


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for; see the module docstring."""

    model: str | None = None
    pretrained: str | None = None
    checkpoint: str | None = None
    trust: bool = False


def spec_for(name: str, trust: bool = False) -> ModelSpec:
    """A checkpoint file if `name` is one, else a model, preset or mix name."""
    if Path(name).is_file():
        return ModelSpec(checkpoint=name, trust=trust)
    return ModelSpec(model=name, trust=trust)


def load_model(model: str | None = None, *, pretrained: str | None = None,
               checkpoint: str | None = None, trust: bool = False,
               device: str | torch.device = "cpu", quiet: bool = True) -> Guide:
    """A guide model in eval mode on `device`. `model` may also be a checkpoint path.

    >>> guide = load_model("world-robust")                       # embedded, offline
    >>> guide = load_model("clipag-vitb32", device="cuda")       # downloads once, then cached
    >>> guide = load_model("ViT-B-32", pretrained="laion2b_s34b_b79k", checkpoint="fare.pt")
    """
    if isinstance(device, str):
        device = resolve_device(device)
    if model is not None and checkpoint is None and pretrained is None:
        spec = spec_for(model, trust)
    else:
        spec = ModelSpec(model, pretrained, checkpoint, trust)
    return load_spec(spec, device, quiet=quiet)


def load_spec(spec: ModelSpec, device: torch.device, quiet: bool = False) -> Guide:
    """`load_model` for a parsed spec (what the CLI's model options make)."""
    say = _sayer(quiet)
    if spec.model is not None and is_mix(spec.model):
        if spec.pretrained or spec.checkpoint:
            raise ClipagError("a guide mix (--model A*3+B) names its members itself; drop "
                              "--pretrained/--checkpoint")
        return load_mix(spec.model, lambda name: _resolve(spec_for(name, spec.trust), say)
                        ).to(device)
    return _resolve(spec, say).to(device)


def preset_of(spec: ModelSpec) -> Preset | None:
    """The preset a spec loads as-is (no checkpoint or pretrained override), or None; the
    embedded default when nothing is named."""
    if spec.checkpoint or spec.pretrained:
        return None
    return PRESETS.get(spec.model or DEFAULT_PRESET)


def _sayer(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda text: None
    return lambda text: print(f"note: {text}", file=sys.stderr)


# --- resolution ---------------------------------------------------------------------------------

def _resolve(spec: ModelSpec, say: Callable[[str], None]) -> Guide:
    if spec.checkpoint:
        return _from_checkpoint(spec, say)
    name = spec.model or DEFAULT_PRESET
    if name in PRESETS:
        if spec.pretrained:
            raise ClipagError(f"{name} is a preset and brings its own weights; drop --pretrained "
                              "(or name an architecture instead)")
        guide = _preset(PRESETS[name], spec.trust, say)
        guide.name = name
        return guide
    if name.startswith("hf-hub:"):
        if spec.pretrained:
            raise ClipagError(f"{name} brings its own weights; drop --pretrained")
        return _hub(name[len("hf-hub:"):])
    if Path(name).suffix in (".pt", ".pth", ".bin", ".safetensors") and not Path(name).exists():
        raise ClipagError(f"checkpoint not found: {name}")
    return _arch_with(name, spec.pretrained, spec.trust, say)


def _arch_with(arch: str, pretrained: str | None, trust: bool, say) -> Guide:
    """An architecture with weights from a tag, URL or file (or none, if asked for)."""
    config = arch_config(arch)  # an unknown name fails here, in one line
    if pretrained in (None, "", "none"):
        model, tokenizer = build_model(arch)
        return _guide(model, tokenizer, f"{arch} (random init)", {"arch": arch})
    if "://" in pretrained:
        path = fetch(pretrained, quiet=False)
        return _full_file(path, arch, read_object(path, trust), say)
    if Path(pretrained).exists():
        _guide_meta(Path(pretrained))
        return _full_file(Path(pretrained), arch, read_object(pretrained, trust), say)
    if arch in ARCH_CONFIGS:
        raise ClipagError(f"{arch} has no pretrained tag {pretrained!r}: give a file, a URL or none")
    return _tag(arch, pretrained, config, trust, say)


def _tag(arch: str, tag: str, config: dict[str, Any], trust: bool, say) -> Guide:
    import open_clip

    source = tag_source(arch, tag)
    if source is None:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ClipagError(f"{arch} has no pretrained tag {tag!r}"
                          + (f" (known: {', '.join(tags)})" if tags else "")
                          + "; or give a file or URL")
    quick = source.quick_gelu and not config.get("quick_gelu", False)
    if quick:
        say(f"the {tag} weights were trained with QuickGELU: building {arch} with QuickGELU "
            f"(the same as {arch}-quickgelu)")
    path = tag_weights(arch, tag, source)
    obj = read_object(path, trust)
    model, tokenizer = build_model(arch, quick_gelu=quick)
    _load_into(model, unwrap(obj, path), str(path))
    guide = _guide(model, tokenizer, f"{arch} ({tag})",
                   {"arch": arch, "pretrained": tag, "source": str(path),
                    "activation": activation(model)})
    return _with_normalization(guide, source.mean, source.std)


def _hub(repo: str) -> Guide:
    import json
    import re

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", repo) or ".." in repo:
        raise ClipagError(f"hf-hub:{repo!s} is not a hub repo id: write hf-hub:org/name")

    files = hub_files(repo)
    try:
        hub_config = json.loads(files.config.read_text())
        config = hub_config["model_cfg"]
    except (ValueError, KeyError, OSError) as exc:
        raise ClipagError(f"hf-hub:{repo}: unreadable open_clip_config.json ({exc})") from None
    model = model_from_config(config)
    _load_into(model, unwrap(read_object(files.weights), files.weights), f"hf-hub:{repo}")
    pre = hub_config.get("preprocess_cfg", {})
    guide = _guide(model, tokenizer_for(config), f"hf-hub:{repo}",
                   {"source": f"hf-hub:{repo}", "weights": str(files.weights),
                    "activation": activation(model)})
    return _with_normalization(guide, pre.get("mean"), pre.get("std"))


def _preset(preset: Preset, trust: bool, say) -> Guide:
    if preset.kind == "embedded":
        path = ASSETS / preset.source.split(":", 1)[1]
        if not path.is_file():
            raise ClipagError(f"embedded model {preset.name} is missing from this install ({path});"
                              " rebuild it with examples/train_world_models.sh")
        return load_clipag_file(path)
    if preset.kind == "hf-hub":
        return _hub(preset.source[len("hf-hub:"):])
    if preset.kind == "open_clip tag":
        return _tag(preset.arch, preset.source, arch_config(preset.arch), trust, say)
    if preset.base is not None:  # a vision-encoder-only file over a base model
        base = _tag(preset.arch, preset.base, arch_config(preset.arch), trust, say)
        path = fetch(preset.source, quiet=False)
        return _overlay(base, unwrap(read_object(path, trust), path), str(path))
    return _converted(preset, trust, say)


def _converted(preset: Preset, trust: bool, say) -> Guide:
    """A URL preset whose file is a training checkpoint (CLIPAG's): the first load reads it
    weights-only and keeps a safetensors copy in the cache; later loads read only the copy."""
    copy = cache_dir() / (Path(url_filename(preset.source)).stem + ".safetensors")
    if copy.is_file() and read_meta(copy) is not None:
        check_digest(copy)
        return load_clipag_file(copy)
    path = fetch(preset.source, quiet=False)
    guide = _full_file(path, preset.arch, read_object(path, trust), say)
    save_checkpoint(copy, guide.model.state_dict(),
                    {"arch": preset.arch, "name": preset.name, "source": preset.source,
                     "source_sha256": recorded_digest(path) or ""})
    record_digest(copy)
    say(f"kept a safetensors copy of {path.name} as {copy} (later loads read only that)")
    return guide


# --- checkpoint files -----------------------------------------------------------------------------

def load_clipag_file(path: Path) -> Guide:
    """One of clipag's own checkpoints: the file alone says the architecture."""
    meta = read_meta(path)
    if meta is None or "arch" not in meta:
        raise ClipagError(f"{path} is not a clipag checkpoint")
    arch = check_arch(meta["arch"], str(path))
    name = meta.get("name", path.stem)
    if not isinstance(name, str):
        raise ClipagError(f"{path}: metadata field 'name' must be a string, got {name!r}"[:200])
    _check_arch_fits(path, arch)
    model, tokenizer = build_model(arch)
    _load_into(model, unwrap(read_object(path), path), str(path))
    return _guide(model, tokenizer, name, meta)


def _check_arch_fits(path: Path, arch: str | dict[str, Any]) -> None:
    """The model a file's 'arch' asks for, built without memory (the meta device), against the
    tensors its header records: an architecture that does not build, or does not describe the
    weights, is refused before a real model (perhaps far larger than the file) is allocated."""
    try:
        with torch.device("meta"):
            own = model_from_config(arch_config(arch)).state_dict()
    except ClipagError as exc:
        raise ClipagError(f"{path}: metadata field 'arch': {exc}") from None
    except Exception as exc:  # noqa: BLE001 - open_clip raises many types for a bad config
        raise ClipagError(f"{path}: metadata field 'arch' does not build a model "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
    shapes = header_shapes(path)
    if shapes is None:
        return  # read_object says what is wrong with the file
    if all(k.startswith("module.") for k in shapes):
        shapes = {k[len("module."):]: v for k, v in shapes.items()}
    for key in ("input_resolution", "context_length", "vocab_size"):
        shapes.pop(key, None)
    for key in ("logit_scale", "logit_bias"):  # stored 0-d or 1-d: _load_into reshapes them
        if key in shapes and key in own and math.prod(shapes[key]) == own[key].numel():
            shapes[key] = tuple(own[key].shape)
    try:
        check_compatible(_Shapes(own), {k: torch.empty(v, device="meta")
                                        for k, v in shapes.items()}, str(path))
    except ClipagError as exc:
        raise ClipagError(f"{exc} (the model its metadata field 'arch' describes)") from None


class _Shapes(torch.nn.Module):
    """A stand-in model whose state dict is `state` (for check_compatible)."""

    def __init__(self, state):
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs):
        return self._state


def _from_checkpoint(spec: ModelSpec, say) -> Guide:
    path = Path(spec.checkpoint)
    if spec.checkpoint in PRESETS and not path.exists():
        raise ClipagError(f"{spec.checkpoint} is a preset, not a file: use --model "
                          f"{spec.checkpoint}")
    meta = _guide_meta(path)
    if meta is not None and "arch" in meta:
        _check_same_arch(path, check_arch(meta["arch"], str(path)), spec.model)
        if spec.pretrained:
            raise ClipagError(f"{path} is a whole clipag model; drop --pretrained")
        return load_clipag_file(path)
    obj = read_object(path, spec.trust)
    tensors = unwrap(obj, path)
    layout = state_layout(tensors)
    if layout == "vision":
        return _overlay(_base_for_vision(path, spec, say), _strip_visual(tensors), str(path))
    if spec.pretrained:
        raise ClipagError(f"{path} holds a whole model (image and text towers); drop --pretrained")
    name = spec.model
    if name is None:
        if is_torchscript_object(obj):
            return _openai_archive(path, tensors, say)
        raise ClipagError(_which_arch_message(path, tensors))
    if name.startswith("hf-hub:"):
        raise ClipagError(f"{path} holds a whole model; --model hf-hub:… brings its own weights")
    arch = PRESETS[name].arch if name in PRESETS else name
    return _full_file(path, arch, obj, say)


def _guide_meta(path: Path) -> dict[str, Any] | None:
    """A weights file's clipag metadata (None for a foreign file), refusing what cannot be a
    guide's weights: a file that cannot be read (a folder, no permission: said as such), and
    clipag's other files (a CrossFlow or Gaussian-mixture start), named with the flag that
    takes them."""
    if not path.exists() and not path.is_symlink():
        return None  # read_object says "not found"
    problem = file_problem(path)
    if problem is not None:
        raise ClipagError(f"checkpoint {path} {problem}")
    meta = read_meta(path)
    if file_kind(meta) in ("crossflow", "gmm"):
        raise ClipagError(what_else(path, meta, "guide"))
    return meta


def _check_same_arch(path: Path, file_arch: Any, asked: str | None) -> None:
    if asked is None:
        return
    asked_arch = PRESETS[asked].arch if asked in PRESETS else asked
    if asked_arch != file_arch and arch_config(asked_arch) != arch_config(file_arch):
        shown = file_arch if isinstance(file_arch, str) else "a custom config"
        raise ClipagError(f"{path} is a clipag checkpoint of {shown}, not {asked}: drop --model "
                          "(the file names its own architecture)")


def _full_file(path: Path, arch: str, obj: Any, say) -> Guide:
    """A whole-model file loaded into `arch` (exact key and shape match required)."""
    tensors = unwrap(obj, path)
    if state_layout(tensors) == "vision":
        raise ClipagError(f"{path} holds only an image tower (vision-encoder-only); lay it over "
                          f"a base model: --model {arch} --pretrained TAG_OR_FILE --checkpoint {path}")
    model, tokenizer = build_model(arch)
    _load_into(model, tensors, str(path))
    return _guide(model, tokenizer, f"{arch}:{path.name}",
                  {"arch": arch, "source": str(path), "activation": activation(model)})


def _openai_archive(path: Path, tensors: dict[str, torch.Tensor], say) -> Guide:
    """OpenAI's TorchScript release: the architecture is read from the shapes, and OpenAI
    trained with QuickGELU."""
    from open_clip.model import build_model_from_openai_state_dict

    try:
        model = build_model_from_openai_state_dict(dict(tensors), quick_gelu=True)
    except Exception:  # noqa: BLE001 - the builder fails in many ways on foreign layouts
        raise ClipagError(_which_arch_message(path, tensors)) from None
    model = model.float()
    _load_into(model, tensors, str(path))  # the builder rounds through fp16: reload exactly
    say(f"{path.name} is an OpenAI TorchScript archive: built with QuickGELU, the activation "
        "OpenAI trained with")
    tokenizer = tokenizer_for({"text_cfg": {"context_length": int(model.context_length)}})
    return _guide(model, tokenizer, path.stem, {"source": str(path), "activation": "QuickGELU"})


def _which_arch_message(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    candidates = matching_archs(tensors)
    hint = (" — its shapes fit " + " or ".join(candidates) +
            " (GELU: LAION/open_clip/CLIPAG weights; -quickgelu: OpenAI weights)") if candidates else ""
    return (f"cannot tell which architecture and activation {path} needs{hint}; pass --model ARCH")


def matching_archs(tensors: dict[str, torch.Tensor]) -> list[str]:
    """open_clip architecture names whose weights have exactly these keys and shapes."""
    import open_clip

    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    found = []
    for name in open_clip.list_models():
        config = open_clip.get_model_config(name) or {}
        vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
        if "timm_model_name" in vision or "hf_model_name" in text or "multimodal_cfg" in config:
            continue
        if not _cheap_match(config, shapes):
            continue
        with torch.device("meta"):
            try:
                model = model_from_config(config)
            except Exception:  # noqa: BLE001 - exotic configs
                continue
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if own.keys() == shapes.keys() and all(own[k] == shapes[k] for k in own):
            found.append(name)
    return found


def _cheap_match(config: dict[str, Any], shapes: dict[str, tuple]) -> bool:
    width = config.get("vision_cfg", {}).get("width")
    conv = shapes.get("visual.conv1.weight")
    proj = shapes.get("text_projection")
    return (conv is not None and conv[0] == width and proj is not None
            and proj[-1] == config.get("embed_dim"))


# --- vision-encoder-only files ---------------------------------------------------------------------

VISION_MARKERS = ("conv1.weight", "class_embedding", "ln_post.weight", "proj", "trunk.",
                  "attnpool.", "stem.", "layer1.")


def state_layout(tensors: dict[str, torch.Tensor]) -> str:
    """'vision' for an image tower alone (keys with or without `visual.`), else 'full'."""
    keys = list(tensors)
    # an image tower has its own transformer.resblocks; only a text tower has these
    has_text = any(k.startswith(("token_embedding", "text.", "text_projection", "ln_final"))
                   for k in keys)
    if all(k.startswith("visual.") for k in keys):
        return "vision"
    if not has_text and any(k.startswith(VISION_MARKERS) for k in keys):
        return "vision"
    return "full"


def _strip_visual(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if all(k.startswith("visual.") for k in tensors):
        return {k[len("visual."):]: v for k, v in tensors.items()}
    return tensors


def _base_for_vision(path: Path, spec: ModelSpec, say) -> Guide:
    usage = ("--model ViT-B-32 --pretrained laion2b_s34b_b79k --checkpoint FILE for LAION starts, "
             "--model ViT-B-32-quickgelu --pretrained openai --checkpoint FILE for OpenAI starts")
    if spec.model is None:
        raise ClipagError(f"{path} holds only an image tower (a vision-encoder-only file); name "
                          f"the base model it was fine-tuned from, e.g. {usage}")
    name = spec.model
    if name in PRESETS or name.startswith("hf-hub:"):
        if spec.pretrained:
            raise ClipagError(f"{name} brings its own weights; drop --pretrained")
        return _resolve(ModelSpec(name, trust=spec.trust), say)
    if spec.pretrained in (None, "", "none"):
        raise ClipagError(f"{path} holds only an image tower; --model {name} alone would leave the "
                          f"text tower random: add --pretrained TAG_OR_FILE ({usage})")
    return _arch_with(name, spec.pretrained, spec.trust, say)


def _overlay(base: Guide, vision: dict[str, torch.Tensor], source: str) -> Guide:
    """`base` with its image tower replaced by `vision` (every key and shape must match)."""
    visual = base.model.visual
    check_compatible(visual, vision, source)
    visual.load_state_dict({k: v.float() if v.is_floating_point() else v
                            for k, v in vision.items()})
    base.name = f"{base.name}+{Path(source).name}"
    base.info = {**base.info, "vision": source}
    return base


# --- small pieces ------------------------------------------------------------------------------------

def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k not in ("input_resolution", "context_length",
                                                         "vocab_size")}
    for key in ("logit_scale", "logit_bias"):
        if key in state and key in own:
            state[key] = state[key].reshape(own[key].shape)
    check_compatible(model, state, source)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in state.items()})


def _with_normalization(guide: Guide, mean, std) -> Guide:
    guide.mean = torch.tensor(mean or OPENAI_MEAN, dtype=torch.float32)
    guide.std = torch.tensor(std or OPENAI_STD, dtype=torch.float32)
    return guide


# --- what is cached (for `clipag models`) ----------------------------------------------------------

@dataclass(frozen=True)
class CacheStatus:
    state: str  # "embedded", "cached", "not downloaded", "missing", "partial"
    size: int | None  # bytes on disk, each file counted once
    problems: tuple[str, ...] = ()  # with verify: files whose content does not match


def _preset_paths(preset: Preset) -> list[Path]:
    """The cache files a URL preset uses: the download and, for converted ones, the copy."""
    download = cache_dir() / url_filename(preset.source)
    copy = download.with_suffix(".safetensors")
    return [p for p in (download, copy) if p.is_file()]


def _hub_repo_of(preset: Preset) -> str | None:
    if preset.kind == "hf-hub":
        return preset.source[len("hf-hub:"):]
    if preset.kind == "open_clip tag":
        source = tag_source(preset.arch, preset.source)
        return source.hf_repo if source else None
    return None


def cache_status(preset: Preset, verify: bool = False) -> CacheStatus:
    """Where a preset stands locally; `verify` re-hashes every cached file."""
    from .hub import hub_cache, partial_path, sha256_of, verify_hub

    if preset.kind == "embedded":
        path = ASSETS / preset.source.split(":", 1)[1]
        return CacheStatus("embedded", path.stat().st_size) if path.is_file() \
            else CacheStatus("missing", None)
    size, problems, found = 0, [], False
    repos = [r for r in (_hub_repo_of(preset),) if r]
    if preset.base is not None:
        base = tag_source(preset.arch, preset.base)
        repos += [base.hf_repo] if base and base.hf_repo else []
    for repo in repos:
        repo_size, blobs = hub_cache(repo)
        size, found = size + repo_size, found or bool(blobs)
        if verify:
            problems += [f"hf-hub:{repo} blob {name}" for name in verify_hub(repo)]
    if preset.kind == "url":
        for path in _preset_paths(preset):
            size, found = size + path.stat().st_size, True
            expected = recorded_digest(path)
            if verify and expected and sha256_of(path) != expected:
                problems.append(str(path))
        part = partial_path(cache_dir() / url_filename(preset.source))
        if not found and part.is_file():
            return CacheStatus("partial", part.stat().st_size)
    if not found:
        return CacheStatus("not downloaded", None)
    return CacheStatus("cached", size, tuple(problems))
