"""Every `generate` setting declared once: its name, where it lives in GenerateConfig, its kind
and its range. The CLI builds its option types from these declarations and a prompts file's
JSONL keys are checked against the same ones, so a flag and a JSONL key accept exactly the
same values; the defaults are read from the dataclasses, never written here."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .augment import ViewConfig
from .generate import GenerateConfig

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


@dataclass(frozen=True)
class Setting:
    """One setting. `path` is where the value lives in GenerateConfig (() for the run-level
    settings, which live in batch.RunConfig; ("views", "*jitter") is applied through
    ViewConfig.with_jitter)."""

    name: str  # the flag without its dashes, with underscores: "patch_views", "tv"
    path: tuple[str, ...]
    kind: str  # "int", "real", "sides", "text", "bool", "pair", "triple", "texts"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False  # null (None) means "the model's default"
    aliases: tuple[str, ...] = ()  # other JSONL keys for it (GenerateConfig field names)
    flag: bool = True  # False: a prompts-file key only

    def bounds(self) -> str:
        left = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        right = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(p for p in (left, right) if p)

    def in_range(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.low is not None and not (x > self.low if self.low_open else x >= self.low):
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)


def _s(name, path, kind, low=None, high=None, **kw) -> Setting:
    return Setting(name, tuple(path), kind, low, high, **kw)


SETTINGS: dict[str, Setting] = {s.name: s for s in [
    _s("size", ["size"], "int", 8, 4096, optional=True),
    _s("steps", ["steps"], "int", 1, 1_000_000),
    _s("lr", ["lr"], "real", 0, 10, low_open=True, optional=True),
    _s("weight_decay", ["weight_decay"], "real", 0, 100),
    _s("grad_clip", ["grad_clip"], "real", 0, 1000),
    _s("global_weight", ["global_weight"], "real", 0, 1000),
    _s("patch_weight", ["patch_weight"], "real", 0, 1000),
    _s("threshold", ["threshold"], "real", 0, 1, high_open=True),
    _s("tv", ["tv_weight"], "real", 0, 1000, aliases=("tv_weight",)),
    _s("tv_wrap", ["tv_wrap"], "bool"),
    _s("tv_by_side", ["tv_by_side"], "bool"),
    _s("anchor", ["anchor"], "real", 0, 1000, optional=True),
    _s("anchor_side", ["anchor_side"], "int", 1, 4096, optional=True),
    _s("views", ["views", "global_views"], "int", 0, 4096, aliases=("global_views",)),
    _s("patch_views", ["views", "patch_views"], "int", 0, 4096),
    _s("patch_fraction", ["views", "patch_fraction"], "real", 0, 1, low_open=True),
    _s("noise", ["views", "noise"], "real", 0, 10),
    _s("cutout", ["views", "cutout"], "real", 0, 1, high_open=True),
    _s("jitter", ["views", "*jitter"], "real", 0, 2),
    _s("brightness", ["views", "brightness"], "real", 0, 10, flag=False),
    _s("saturation", ["views", "saturation"], "pair", 0, 10, flag=False),
    _s("contrast", ["views", "contrast"], "pair", 0, 10, flag=False),
    _s("translate", ["views", "translate"], "real", 0, 1, flag=False),
    _s("scale", ["views", "scale"], "pair", 0.01, 10, flag=False),
    _s("init", ["init"], "text"),
    _s("init_image", ["init_image"], "text", optional=True),
    _s("init_candidates", ["init_candidates"], "int", 1, 100_000),
    _s("flow_steps", ["flow", "steps"], "int", 1, 1000),
    _s("flow_guidance", ["flow", "guidance"], "real", 0, 100),
    _s("flow_method", ["flow", "method"], "text", flag=False),
    _s("flow_temperature", ["flow", "temperature"], "real", 0, 10),
    _s("flow_candidates", ["flow", "candidates"], "int", 1, 1000),
    _s("scales", ["scales"], "sides", 8, 4096),
    _s("save_every", ["save_every"], "int", 0, 1_000_000),
    _s("log_every", ["log_every"], "int", 1, 1_000_000, flag=False),
    _s("amp", ["amp"], "bool", flag=False),
    _s("view_batch", ["view_batch"], "int", 0, 65536),
    _s("keep", ["keep"], "text"),
    # the canvas and each canvas's own settings (clipag.canvas.config)
    _s("canvas", ["canvas", "name"], "text"),
    _s("strokes", ["canvas", "strokes", "count"], "int", 1, 100_000),
    _s("segments", ["canvas", "strokes", "max_segments"], "int", 1, 16),
    _s("stroke_width", ["canvas", "strokes", "width"], "pair", 0, 1000, low_open=True),
    _s("start_width", ["canvas", "strokes", "start_width"], "real", 0, 1000, low_open=True),
    _s("reach", ["canvas", "strokes", "reach"], "real", 0, 1),
    _s("width_lr", ["canvas", "strokes", "width_lr"], "real", 0, 100),
    _s("color_lr", ["canvas", "strokes", "color_lr"], "real", 0, 100),
    _s("background", ["canvas", "strokes", "background"], "triple", 0, 1),
    _s("curve_samples", ["canvas", "strokes", "samples"], "int", 2, 256),
    _s("levels", ["canvas", "pyramid", "levels"], "int", 1, 16),
    _s("decay", ["canvas", "fourier", "decay"], "real", 0, 4),
    _s("channels", ["canvas", "unet", "channels"], "int", 1, 256),
    _s("residual", ["canvas", "unet", "residual"], "bool"),
    # style transfer (clipag.style.StyleConfig): `clipag style` only
    _s("source", ["style", "source"], "text"),
    _s("content", ["style", "metric"], "text"),
    _s("content_weight", ["style", "content_weight"], "real", 0, 1e6),
    _s("floor", ["style", "floor"], "real", 0, 2),
    _s("content_crops", ["style", "content_crops"], "int", 0, 256),
    _s("max_side", ["style", "max_side"], "int", 8, 4096),
    # run level (batch.RunConfig); a prompts-file line may set seed, samples and negative
    _s("seed", [], "int", 0, SEED_MAX),
    _s("samples", [], "int", 1, 100_000),
    _s("negative", [], "texts"),
    _s("negative_weight", [], "real", 0, 1000),
    _s("batch_size", [], "int", 1, 1024),
]}
LINE_RUN_KEYS = ("seed", "samples", "negative", "negative_weight")  # run settings a line may set
JSONL_KEYS: dict[str, Setting] = {
    key: s for s in SETTINGS.values()
    if (s.path and s.path[0] != "style") or s.name in LINE_RUN_KEYS
    for key in (s.name, *s.aliases)}


def jitter_strength(views: ViewConfig) -> float:
    """The --jitter strength a ViewConfig's colour jitter corresponds to (inverse of
    ViewConfig.with_jitter, read from its brightness)."""
    return views.brightness / ViewConfig().with_jitter(1.0).brightness


def config_default(setting: Setting, config: GenerateConfig | None = None) -> Any:
    """The value `config` (default: GenerateConfig()) holds for a GenerateConfig setting."""
    value: Any = config or GenerateConfig()
    for part in setting.path:
        if part == "*jitter":
            return jitter_strength(value)
        value = getattr(value, part)
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def coerce(setting: Setting, value: Any) -> Any:
    """A JSON value checked against the setting's kind and range; ValueError says why."""
    kind = setting.kind
    if value is None:
        if setting.optional:
            return None
        raise ValueError("must not be null")
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"must be a whole number {setting.bounds()}, got {value!r}")
        if not setting.in_range(value):
            raise ValueError(f"must be a whole number {setting.bounds()}, got {value!r}")
        return value
    if kind == "real":
        if not _is_number(value) or not setting.in_range(float(value)):
            raise ValueError(f"must be a finite number {setting.bounds()}, got {value!r}")
        return float(value)
    if kind == "pair":
        if (not isinstance(value, list) or len(value) != 2
                or not all(_is_number(v) and setting.in_range(float(v)) for v in value)
                or value[0] > value[1]):
            raise ValueError(f"must be [low, high], two finite numbers {setting.bounds()} "
                             f"with low <= high, got {value!r}")
        return (float(value[0]), float(value[1]))
    if kind == "triple":
        if (not isinstance(value, list) or len(value) != 3
                or not all(_is_number(v) and setting.in_range(float(v)) for v in value)):
            raise ValueError(f"must be [r, g, b], three finite numbers {setting.bounds()}, "
                             f"got {value!r}")
        return tuple(float(v) for v in value)
    if kind == "sides":
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and setting.in_range(v)
                for v in value):
            raise ValueError(f"must be a list of whole numbers {setting.bounds()} like "
                             f"[16, 32], got {value!r}")
        return tuple(value)
    if kind == "text":
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {value!r}")
        return value
    if kind == "texts":
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"must be a string or a list of strings, got {value!r}")
        return tuple(values)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    raise AssertionError(kind)  # pragma: no cover - every kind above


def apply(config: GenerateConfig, values: dict[str, Any]) -> GenerateConfig:
    """`config` with checked settings (keyed by Setting.name) applied; jitter first, so that
    explicit brightness/saturation/contrast values override it."""
    if "jitter" in values:
        config = dataclasses.replace(config, views=config.views.with_jitter(values["jitter"]))
    for name, value in values.items():
        path = SETTINGS[name].path
        if path and path[-1] != "*jitter":
            config = _replace_at(config, path, value)
    return config


def _replace_at(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    """A frozen dataclass with the field at `path` (nested) replaced."""
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    inner = _replace_at(getattr(obj, path[0]), path[1:], value)
    return dataclasses.replace(obj, **{path[0]: inner})


def line_settings(row: dict[str, Any], where: str) -> dict[str, Any]:
    """A prompts-file line's settings checked and keyed by Setting.name; a bad key or value is
    a ClipagError naming `where` (file:line) and the key."""
    from .errors import ClipagError

    out = {}
    for key, value in row.items():
        setting = JSONL_KEYS.get(key)
        if setting is None:
            raise ClipagError(f"{where}: unknown setting {key!r} (known: "
                              f"{', '.join(sorted(JSONL_KEYS))})")
        if setting.name in out:
            raise ClipagError(f"{where}: {key!r} repeats a setting given by another key")
        try:
            out[setting.name] = coerce(setting, value)
        except ValueError as exc:
            raise ClipagError(f"{where}: {key!r} {exc}") from None
    return out
