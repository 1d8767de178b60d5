"""clipag: generator-free text-to-image synthesis with a robust CLIP's gradients.

The Python API, one entry point per job (the CLI, the benchmarks and the tests call the same):

    import clipag
    guide = clipag.load_model("world-robust")                 # load a model (any preset, arch,
                                                               # hub id, file or mix)
    out = clipag.generate(["a red circle on a blue background"], guide,
                          clipag.GenerateConfig(steps=50))     # -> images, frames, records
    out = clipag.style("photo.png", "a watercolor painting", guide)  # restyle an image
    clipag.robustify(clipag.TrainConfig(data="folder/", out="robust.safetensors", steps=100),
                     clipag.ModelSpec("world-vanilla"), device)  # adversarial fine-tuning
"""

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "clipag.load", "ModelSpec": "clipag.load", "Guide": "clipag.models",
    "PRESETS": "clipag.models", "GenerateConfig": "clipag.generate", "Generation": "clipag.generate",
    "ViewConfig": "clipag.augment", "recipe_config": "clipag.recipes", "robustify": "clipag.train.robustify",
    "TrainConfig": "clipag.train.robustify", "ClipagError": "clipag.errors",
    "StyleConfig": "clipag.style", "style_recipe_config": "clipag.recipes",
    "apply_net": "clipag.style",
}
CALLABLE_MODULES = ("generate", "style")  # modules callable as their one function
__all__ = ["__version__", *CALLABLE_MODULES, *_EXPORTS]


def __getattr__(name: str):
    """Import on first use, so `import clipag` (and the CLI's start) stays light. `generate`
    is the module clipag/generate.py, which is callable as its function `generate` (importing
    a submodule binds its name on the package, so the two must be one object); `style` too."""
    if name in CALLABLE_MODULES:
        import importlib

        return importlib.import_module(f"clipag.{name}")
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clipag' has no attribute {name!r}")
