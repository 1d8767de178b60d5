"""The documented Python API (README, clipag/__init__.py) works as written."""


import clipag


def test_load_generate_as_documented(tiny_checkpoint):
    guide = clipag.load_model(str(tiny_checkpoint))  # a file path works as the model name
    assert isinstance(guide, clipag.Guide) and guide.image_size == 32
    config = clipag.GenerateConfig(steps=2, views=clipag.ViewConfig(global_views=2,
                                                                     patch_views=2))
    a = clipag.generate(["a red circle", "a blue square"], guide, config, seeds=[3, 4])
    b = clipag.generate(["a red circle", "a blue square"], guide, config, seeds=[3, 4])
    assert a.images.shape == (2, 3, 32, 32)
    assert (a.images - b.images).abs().max() < 1e-4  # same seeds: same images (to rounding)
    assert [r["prompt"] for r in a.records] == ["a red circle", "a blue square"]
    assert [r["seed"] for r in a.records] == [3, 4]


def test_the_default_model_is_embedded():
    guide = clipag.load_model()
    assert guide.name == "world-robust" and guide.image_size == 64


def test_errors_are_clipag_errors(tmp_path):
    try:
        clipag.load_model(checkpoint=str(tmp_path / "missing.pt"))
    except clipag.ClipagError as exc:
        assert "not found" in str(exc)
    else:
        raise AssertionError("no error")


def test_a_16_bit_png_init_image_is_scaled_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from clipag.init import from_image

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    image = from_image(tmp_path / "g16.png", 32)
    assert image.shape == (3, 32, 32)
    assert abs(image.mean().item() - 0.5) < 0.02  # a ramp: mean grey, not white (1.0)
    assert image.min() < 0.01 and image.max() > 0.99


def test_style_is_callable_from_the_package(tiny_checkpoint):
    import torch

    guide = clipag.load_model(str(tiny_checkpoint))
    config = clipag.style_recipe_config("clipag")
    assert config.style == clipag.StyleConfig() and config.canvas.name == "pixels"
    small = clipag.GenerateConfig(steps=2, views=clipag.ViewConfig(global_views=2, patch_views=0),
                                  style=clipag.StyleConfig())
    out = clipag.style(torch.rand(3, 20, 30), "a red painting", guide, small, [0])
    assert out.images.shape == (1, 3, 20, 30) and out.records[0]["target"] == "a red painting"
