"""A deterministic procedural world of captioned images, where "does the image match the
prompt?" can be measured without any neural network (see `judge.py`).

Scenes: 1-3 copies of one shape (circle, square, triangle, cross) in one of 10 colours, small
or large, on a plain background of another colour; single objects have a position (left,
right, top, bottom, centre). Captions come from varied templates that mention different
subsets of the attributes. A second domain is real data shipped inside scikit-learn: its
8x8 handwritten digits, upscaled and captioned "the digit 7".
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw

from ..errors import ClipagError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (40, 70, 220),
    "yellow": (240, 225, 40), "orange": (245, 140, 20), "purple": (135, 45, 175),
    "cyan": (40, 210, 220), "pink": (245, 135, 195), "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
SIZE_FRACTION = {"small": 0.22, "large": 0.42}  # object extent as a fraction of the side
SUPERSAMPLE = 4
MAX_OBJECT_SCALE = 1.6  # beyond it three small objects rarely fit side by side


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    background: str
    size: str
    count: int
    position: str | None  # only for count == 1
    boxes: tuple[tuple[float, float, float], ...]  # (cx, cy, extent) in [0, 1] units
    digit: int | None = None  # the digits domain


def _place(rng: random.Random, count: int, extent: float, position: str | None
           ) -> tuple[tuple[float, float, float], ...]:
    half = extent / 2
    if count == 1:
        anchors = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27),
                   "bottom": (0.5, 0.73), "center": (0.5, 0.5)}
        cx, cy = anchors[position]
        cx += rng.uniform(-0.04, 0.04)
        cy += rng.uniform(-0.04, 0.04)
        lo, hi = half + 0.02, 1 - half - 0.02
        return ((min(max(cx, lo), hi), min(max(cy, lo), hi), extent),)
    for _ in range(5000):
        boxes = [(rng.uniform(half + 0.03, 1 - half - 0.03), rng.uniform(half + 0.03, 1 - half - 0.03))
                 for _ in range(count)]
        if all(max(abs(a[0] - b[0]), abs(a[1] - b[1])) > extent + 0.04
               for i, a in enumerate(boxes) for b in boxes[i + 1:]):
            return tuple((x, y, extent) for x, y in boxes)
    raise RuntimeError("could not place objects")  # pragma: no cover - MAX_OBJECT_SCALE keeps it unreachable


def sample_scene(rng: random.Random, object_scale: float = 1.0) -> Scene:
    """A random scene; `object_scale` multiplies every object's extent (1 = the standard world)."""
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    background = rng.choice([c for c in COLORS if c != color])
    count = rng.choice((1, 1, 2, 3))
    size = "small" if count > 1 else rng.choice(SIZES)  # two large ones do not fit
    position = rng.choice(POSITIONS) if count == 1 else None
    extent = SIZE_FRACTION[size] * rng.uniform(0.9, 1.1) * object_scale
    return Scene(shape, color, background, size, count, position, _place(rng, count, extent, position))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float],
                side: int, fill: tuple[int, int, int]) -> None:
    cx, cy, extent = (v * side for v in box)
    h = extent / 2
    if shape == "circle":
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    elif shape == "cross":
        t = extent / 6
        draw.rectangle((cx - t, cy - h, cx + t, cy + h), fill=fill)
        draw.rectangle((cx - h, cy - t, cx + h, cy + t), fill=fill)
    else:
        raise ValueError(shape)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as an RGB image, drawn supersampled and downscaled for smooth edges."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLORS[scene.background])
    if scene.digit is not None:
        return _render_digit(scene, size)
    draw = ImageDraw.Draw(image)
    for box in scene.boxes:
        _draw_shape(draw, scene.shape, box, big, COLORS[scene.color])
    return image.resize((size, size), Image.LANCZOS)


_DIGITS = None


def _digits():
    global _DIGITS  # a read-only cache of scikit-learn's bundled data set
    if _DIGITS is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ClipagError("the digits domain needs scikit-learn (pip install "
                              "'clipag[data]')") from None
        _DIGITS = load_digits()
    return _DIGITS


def _render_digit(scene: Scene, size: int) -> Image.Image:
    digits = _digits()
    pixels = digits.images[scene.count]  # `count` holds the sample index for digits
    fg, bg = COLORS[scene.color], COLORS[scene.background]
    small = Image.fromarray((pixels / 16.0 * 255).astype("uint8"), "L").resize(
        (size, size), Image.BICUBIC)
    return Image.composite(Image.new("RGB", (size, size), fg),
                           Image.new("RGB", (size, size), bg), small)


def sample_digit(rng: random.Random) -> Scene:
    digits = _digits()
    index = rng.randrange(len(digits.target))
    return Scene("digit", "white", "black", "large", index, None, (), int(digits.target[index]))


TEMPLATES_ONE = [
    "a {size} {color} {shape} on a {background} background",
    "a {color} {shape} on a {background} background",
    "a {color} {shape} on the {position}",
    "a {size} {color} {shape} on the {position}, {background} background",
    "a {color} {shape}",
    "a {shape} coloured {color}",
    "one {color} {shape} on {background}",
    "a picture of a {color} {shape} on a {background} background",
]
TEMPLATES_MANY = [
    "{count} {color} {shapes} on a {background} background",
    "{count} {size} {color} {shapes}",
    "{count} {color} {shapes}",
    "a {background} background with {count} {color} {shapes}",
]
TEMPLATES_DIGIT = ["the digit {digit}", "a handwritten {digit}", "the number {digit}"]


def plural(shape: str) -> str:
    return shape + "es" if shape.endswith("s") else shape + "s"


def _articles(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def caption(scene: Scene, rng: random.Random) -> str:
    if scene.digit is not None:
        return rng.choice(TEMPLATES_DIGIT).format(digit=scene.digit)
    templates = TEMPLATES_ONE if scene.count == 1 else TEMPLATES_MANY
    return _articles(rng.choice(templates).format(
        size=scene.size, color=scene.color, shape=scene.shape, shapes=plural(scene.shape),
        background=scene.background,
        position="middle" if scene.position == "center" else scene.position,
        count=COUNT_WORDS[scene.count]))


def full_caption(scene: Scene) -> str:
    """The caption naming every attribute the judge checks (used by the benchmark)."""
    if scene.count == 1:
        text = f"a {scene.color} {scene.shape} on a {scene.background} background"
    else:
        text = (f"{COUNT_WORDS[scene.count]} {scene.color} {plural(scene.shape)} on a "
                f"{scene.background} background")
    return _articles(text)


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    size: int = 64
    digit_fraction: float = 0.1
    siblings: int = 1  # items per group of hard negatives (see `sample`)
    object_scale: float = 1.0  # multiplies object extents; three small objects fit up to 1.6

    def validate(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 8 <= self.size <= 4096:
            raise ClipagError(f"--size must be a whole number of pixels in 8..4096, got "
                              f"{self.size!r}")
        if not 0.5 <= self.object_scale <= MAX_OBJECT_SCALE:
            raise ClipagError(f"--object-scale must be in [0.5, {MAX_OBJECT_SCALE}], "
                              f"got {self.object_scale}")
        if self.siblings < 1:
            raise ClipagError(f"--siblings must be >= 1, got {self.siblings}")
        if not 0 <= self.digit_fraction <= 1:
            raise ClipagError(f"--digit-fraction must be in [0, 1], got {self.digit_fraction}")


def sample(index: int, config: WorldConfig) -> tuple[Image.Image, str, Scene]:
    """Item `index` of the world: the same (image, caption, scene) for the same seed.

    With `siblings` = K > 1, items come in groups of K consecutive indices that share
    colours, background, size, count, positions and caption template and differ only in
    the shape (each shape once per 4 siblings): hard negatives that make a contrastive batch
    holding the whole group tell shapes apart. A digit group holds K independent digits."""
    if config.siblings == 1:
        rng = random.Random(f"{config.seed}:{index}")
        scene = (sample_digit(rng) if config.digit_fraction and rng.random() < config.digit_fraction
                 else sample_scene(rng, config.object_scale))
        return render(scene, config.size), caption(scene, rng), scene
    group, member = divmod(index, config.siblings)
    rng = random.Random(f"{config.seed}:g{group}")
    if config.digit_fraction and rng.random() < config.digit_fraction:
        scene = sample_digit(random.Random(f"{config.seed}:g{group}:{member}"))
    else:
        base = sample_scene(rng, config.object_scale)
        first = rng.randrange(len(SHAPES))
        scene = dataclasses.replace(base, shape=SHAPES[(first + member) % len(SHAPES)])
    text = caption(scene, random.Random(f"{config.seed}:g{group}:caption"))
    return render(scene, config.size), text, scene


def items(n: int, config: WorldConfig) -> Iterator[tuple[str, Image.Image, str, Scene]]:
    for i in range(n):
        image, text, scene = sample(i, config)
        yield f"{i:07d}", image, text, scene


CLASS_ATTRIBUTES = ("color", "shape", "background")


def class_label(scene: Scene, by: tuple[str, ...] = ("shape",)) -> str:
    """The class name of a scene for the `classes` layout, from the attributes `by` (any of
    color, shape, background; always in that order): "circle", "red circle",
    "red circle on a blue background". Digits are "digit 7" whatever `by` is."""
    unknown = sorted(set(by) - set(CLASS_ATTRIBUTES))
    if unknown or not by:
        raise ClipagError(f"--class-by takes a comma-separated subset of "
                          f"{', '.join(CLASS_ATTRIBUTES)}; got {','.join(by) or 'nothing'}")
    if scene.digit is not None:
        return f"digit {scene.digit}"
    words = [scene.color] if "color" in by else []
    words.append(scene.shape if "shape" in by else "shape")
    if "background" in by:
        words.append(f"on a {scene.background} background")
    return " ".join(words)


def export(out: Path, n: int, config: WorldConfig, layout: str = "captions",
           shard_size: int = 5000, class_by: tuple[str, ...] = ("shape",)) -> Path:
    """Write `n` items in a layout `clipag robustify` reads; also `scenes.jsonl` with the
    ground truth of every item. The `classes` layout names each folder by `class_label`.
    The dataset is written into a hidden folder beside `out` and renamed to `out` when
    complete, so `out` is either absent or whole; an existing non-empty `out` is refused
    (nothing is mixed into or replaced in it)."""
    started = time.time()
    config.validate()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ClipagError(f"--n must be a whole number >= 1, got {n!r}")
    if n % config.siblings:
        raise ClipagError(f"--n {n} does not split into groups of --siblings "
                          f"{config.siblings}: use a multiple of it")
    if layout not in ("captions", "classes", "shards"):
        raise ClipagError(f"unknown layout {layout!r}: captions, classes or shards")
    if shard_size < 1:
        raise ClipagError(f"shard size must be >= 1, got {shard_size}")
    class_label(sample_scene(random.Random(0)), class_by)  # refuse a bad `class_by` up front
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ClipagError(f"{out} exists and is not empty: export into a new folder (an "
                          "export never mixes into or replaces an existing one)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale_exports(out, started)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    except OSError as exc:
        raise ClipagError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        _write_world(tmp, n, config, layout, shard_size, class_by)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700
        os.replace(tmp, out)  # onto an absent or empty folder: one rename
    except OSError as exc:
        raise ClipagError(f"cannot write {out}: {exc.strerror or exc} (nothing was "
                          "written there)") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _clean_stale_exports(out: Path, before: float) -> None:
    """Remove the hidden folders of exports to `out` killed before they finished (older than
    this export's start)."""
    prefix = f".{out.name}."
    for path in out.parent.iterdir():
        if (path.name.startswith(prefix) and path.name.endswith(".part") and path.is_dir()
                and not path.is_symlink() and path.stat().st_mtime < before):
            shutil.rmtree(path, ignore_errors=True)


def _write_world(out: Path, n: int, config: WorldConfig, layout: str, shard_size: int,
                 class_by: tuple[str, ...]) -> None:
    truth = []
    if layout == "captions":
        for key, image, text, scene in items(n, config):
            image.save(out / f"{key}.png")
            (out / f"{key}.txt").write_text(text + "\n", encoding="utf-8")
            truth.append({"key": key, "caption": text, **asdict(scene)})
    elif layout == "classes":
        for key, image, text, scene in items(n, config):
            label = class_label(scene, class_by)
            folder = out / label.replace(" ", "_")
            folder.mkdir(exist_ok=True)
            image.save(folder / f"{key}.png")
            truth.append({"key": key, "caption": text, **asdict(scene)})
    else:
        tar = None
        try:
            for i, (key, image, text, scene) in enumerate(items(n, config)):
                if i % shard_size == 0:
                    if tar is not None:
                        tar.close()
                    tar = tarfile.open(out / f"world-{i // shard_size:05d}.tar", "w")
                for ext, data in ((".png", _png_bytes(image)), (".txt", text.encode())):
                    info = tarfile.TarInfo(key + ext)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                truth.append({"key": key, "caption": text, **asdict(scene)})
        finally:
            if tar is not None:
                tar.close()
    with open(out / "scenes.jsonl", "w", encoding="utf-8") as fh:
        for row in truth:
            fh.write(json.dumps(row) + "\n")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def parse_prompt(prompt: str) -> dict[str, object]:
    """The attributes a world prompt names (for the judge): colour, shape, background,
    count, position, size; absent ones are left out."""
    words = prompt.lower().replace(",", " ").split()
    found: dict[str, object] = {}
    if "background" in words:
        i = words.index("background")
        if i > 0 and words[i - 1] in COLORS:
            found["background"] = words[i - 1]
    for i, w in enumerate(words):
        stem = next((s for s in SHAPES if w in (s, plural(s))), w)
        if stem in SHAPES:
            found["shape"] = stem
            j = i - 1
            while j >= 0 and words[j] not in COLORS:
                j -= 1
            if j >= 0 and not (j + 1 < len(words) and words[j + 1] == "background"):
                found["color"] = words[j]
            elif "coloured" in words[i:] and words[-1] in COLORS:
                found["color"] = words[-1]
            break
    counts = [n for n, word in COUNT_WORDS.items() if word in words]
    if counts:
        found["count"] = counts[0]
    elif words and words[0] in ("a", "an") and "shape" in found:
        found["count"] = 1
    for word in ("left", "right", "top", "bottom", "middle"):
        if word in words:
            found["position"] = "center" if word == "middle" else word
    for size in SIZES:
        if size in words:
            found["size"] = size
    return found
