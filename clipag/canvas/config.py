"""Each canvas's settings (declared with their ranges in clipag.settings). Imports nothing
heavy: the command line reads these defaults before it loads torch."""

from __future__ import annotations

from dataclasses import dataclass, field

CANVAS_NAMES = ("pixels", "pyramid", "fourier", "strokes", "unet")


@dataclass(frozen=True)
class StrokesConfig:
    """N open cubic Bezier strokes of 1..max_segments segments over a background colour
    (CLIPDraw's representation; defaults as the CLIPAG + CLIPDraw notebook)."""

    count: int = 256
    max_segments: int = 3
    width: tuple[float, float] = (1.0, 50.0)  # widths are clamped to this after each step
    start_width: float = 1.0
    reach: float = 0.1  # a start stroke's control points step up to reach/2 of the side
    width_lr: float = 0.1
    color_lr: float = 0.01
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    samples: int = 16  # polyline points per segment when rendering


@dataclass(frozen=True)
class PyramidConfig:
    """A sum of images at many resolutions, (tanh(sum) + 1) / 2 (Direct Ascent Synthesis)."""

    levels: int = 8  # sides size, size/2, ... down to at least 1, at most this many


@dataclass(frozen=True)
class FourierConfig:
    """The image's scaled 2D spectrum with decorrelated colour, through a sigmoid (Lucid)."""

    decay: float = 1.0  # spectrum scale 1 / max(f, 1/side) ** decay


@dataclass(frozen=True)
class UNetConfig:
    """A small U-Net rendering the image from the start (or content) image (CLIPStyler)."""

    channels: int = 16  # at the top level, doubling at each of the 3 levels down
    # the network adds to the input's logits, its last layer starting at zero, so the first
    # render is the input itself; False: CLIPStyler's plain network from a random start
    residual: bool = True


@dataclass(frozen=True)
class CanvasConfig:
    name: str = "pixels"
    strokes: StrokesConfig = field(default_factory=StrokesConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    fourier: FourierConfig = field(default_factory=FourierConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)

    def active(self) -> dict:
        """The settings of the canvas in use (what decides its images), for task keys."""
        import dataclasses

        sub = getattr(self, self.name, None)
        return {"name": self.name, **(dataclasses.asdict(sub) if sub is not None else {})}

# each canvas's main learning rate (pixels, pyramid levels, spectrum, stroke points) when
# --lr is not given: the CLIPAG notebook's 0.0175 for pixels, the CLIPDraw notebook's 1.0
# (pixel units) for stroke points, CLIPStyler's 5e-4 for the U-Net's weights
DEFAULT_LR = {"pixels": 0.0175, "pyramid": 0.03, "fourier": 0.03, "strokes": 1.0, "unet": 5e-4}
