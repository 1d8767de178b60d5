"""Named starting points for `generate`. Explicit settings are applied over a recipe.

- `clipag`: clipag's defaults (GenerateConfig()), and a preset's recommended settings where
  the user sets none.
- `reference`: the CLIPAG notebook as published (royg27/CLIPAG, CLIPAG_T2I.ipynb): 32 global
  + 32 patch views, its view geometry (ViewConfig style "reference"), AdamW with torch's
  default weight decay 0.01, no smoothness penalty, one scale; a preset's recommended
  settings are not applied.
- `clipdraw`: the CLIPAG + CLIPDraw notebook (royg27/CLIPAG, kvfrans/clipdraw): the strokes
  canvas (256 strokes of 1-3 segments, widths clamped to [1, 50]), 224 px, 1000 steps, Adam on
  points (lr 1.0, 0.4 from half the run, 0.1 from three quarters), widths (0.1) and colours
  (0.01), 4 views a step (perspective, then a 70-90% resized crop), no gradient clipping, the
  last image kept, negatives at weight 0.3; a preset's recommended settings are not applied.
  One difference, on purpose: the views are normalised with the model's mean and std, as every
  clipag guide is (the original code feeds CLIP unnormalised images unless told otherwise).

`clipag style` has its own two (`style_recipe_config`):
- `clipag`: the content's own pixels as the canvas, clipag's views, the guide's features as
  the content metric.
- `clipstyler`: CLIPStyler as published (cyclomon/CLIPstyler): its U-Net (16 channels, 3 levels)
  trained on the content for 200 steps, Adam 5e-4 halved after 100, at most 512 px; one global
  view (the whole output) weighted 500 and 64 patch views (128 px of 512, a perspective warp)
  weighted 9000 with the 0.7 threshold; content weight 150; smoothness 2e-3 (clipag's total
  variation, a mean absolute difference, where CLIPStyler sums squared ones). One difference:
  the content metric is the guide's own features unless `--content vgg` (VGG19 weights are not
  downloaded).
"""

from __future__ import annotations

import dataclasses

from .augment import ViewConfig
from .canvas.config import CanvasConfig, UNetConfig
from .errors import ClipagError
from .generate import GenerateConfig

RECIPES = ("clipag", "reference", "clipdraw")
STYLE_RECIPES = ("clipag", "clipstyler")


def recipe_config(name: str) -> GenerateConfig:
    """The settings a recipe starts from."""
    if name == "clipag":
        return GenerateConfig()
    if name == "reference":
        return dataclasses.replace(GenerateConfig(), weight_decay=0.01, tv_weight=0.0,
                                   scales=(), views=ViewConfig(style="reference"))
    if name == "clipdraw":
        return GenerateConfig(size=224, steps=1000, grad_clip=0.0, patch_weight=0.0,
                              keep="last", canvas=CanvasConfig(name="strokes"),
                              views=ViewConfig(global_views=4, patch_views=0, style="clipdraw"))
    raise ClipagError(f"unknown recipe {name!r}: use one of {', '.join(RECIPES)}")


def style_recipe_config(name: str) -> GenerateConfig:
    """The settings `clipag style` starts from (see clipag.style)."""
    from .style import StyleConfig

    if name == "clipag":
        return GenerateConfig(steps=100, tv_weight=0.3, canvas=CanvasConfig(name="pixels"),
                              views=ViewConfig(global_views=16, patch_views=0, cutout=0.0),
                              style=StyleConfig())
    if name == "clipstyler":
        return GenerateConfig(steps=200, grad_clip=0.0, global_weight=500.0, patch_weight=9000.0,
                              tv_weight=2e-3, keep="last",
                              canvas=CanvasConfig(name="unet", unet=UNetConfig(residual=False)),
                              views=ViewConfig(global_views=1, patch_views=64,
                                               patch_fraction=128 / 512, style="clipstyler"),
                              style=StyleConfig(content_weight=150.0, floor=0.7, max_side=512))
    raise ClipagError(f"unknown style recipe {name!r}: use one of {', '.join(STYLE_RECIPES)}")


def recipe_run(name: str):
    """The run-level settings a recipe starts from (clipdraw weighs negatives 0.3)."""
    from .batch import RunConfig

    return RunConfig(negative_weight=0.3) if name == "clipdraw" else RunConfig()


def uses_recommended(name: str) -> bool:
    """Whether a preset's recommended settings apply under this recipe."""
    return name == "clipag"
