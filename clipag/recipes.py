"""Named starting points for `generate`. Explicit settings are applied over a recipe.

- `clipag`: clipag's defaults (GenerateConfig()), and a preset's recommended settings where
  the user sets none.
- `reference`: the CLIPAG notebook as published (royg27/CLIPAG, CLIPAG_T2I.ipynb): 32 global
  + 32 patch views, its view geometry (ViewConfig style "reference"), AdamW with torch's
  default weight decay 0.01, no smoothness penalty, one scale; a preset's recommended
  settings are not applied.
"""

from __future__ import annotations

import dataclasses

from .augment import ViewConfig
from .errors import ClipagError
from .generate import GenerateConfig

RECIPES = ("clipag", "reference")


def recipe_config(name: str) -> GenerateConfig:
    """The settings a recipe starts from."""
    if name == "clipag":
        return GenerateConfig()
    if name == "reference":
        return dataclasses.replace(GenerateConfig(), weight_decay=0.01, tv_weight=0.0,
                                   scales=(), views=ViewConfig(style="reference"))
    raise ClipagError(f"unknown recipe {name!r}: use one of {', '.join(RECIPES)}")


def uses_recommended(name: str) -> bool:
    """Whether a preset's recommended settings apply under this recipe."""
    return name != "reference"
