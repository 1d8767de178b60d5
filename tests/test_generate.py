import dataclasses

import pytest
import torch

from clipag.augment import ViewConfig, Views
from clipag.errors import ClipagError
from clipag.generate import (GenerateConfig, Targets, dynamic_threshold, encode_targets,
                             generate, smoothness, stage_plan, weighted_distance)
from clipag.init import GaussianMixture, fit, initial_images
from clipag.prompts import parse_prompt

SMALL = GenerateConfig(steps=12, lr=0.05, init="noise", log_every=1,
                       views=ViewConfig(global_views=4, patch_views=4))


def _run(guide, config=SMALL, seeds=(0,), prompt="a red circle"):
    losses = []
    made = generate([prompt] * len(seeds), guide, config, seeds,
                    on_step=lambda i: losses.append(i.loss.clone()))
    return made, losses


def test_loss_goes_down(tiny_guide):
    config = dataclasses.replace(SMALL, steps=30, grad_clip=0.0,
                                 views=ViewConfig(global_views=4, patch_views=4, noise=0.0))
    made, losses = _run(tiny_guide, config)
    first, last = losses[0].item(), min(x.item() for x in losses[-5:])
    assert last < first - 0.01, (first, last)
    assert made.records[0]["best_loss"] <= min(x.item() for x in losses) + 1e-6


def test_smoothness_is_zero_on_flat_images_and_counts_edges():
    flat = torch.full((1, 3, 8, 8), 0.3)
    stripes = flat.clone()
    stripes[..., ::2] = 0.8  # every horizontal neighbour pair differs by 0.5
    assert smoothness(flat).tolist() == [0.0]
    assert smoothness(stripes).item() == pytest.approx(0.5)  # mean |difference| per pair
    assert smoothness(torch.cat([flat, stripes])).shape == (2,)


def test_tv_penalty_gives_a_smoother_image(tiny_guide):
    config = dataclasses.replace(SMALL, steps=20, lr=0.05)
    plain, _ = _run(tiny_guide, config)
    smooth, _ = _run(tiny_guide, dataclasses.replace(config, tv_weight=5.0))
    assert smoothness(smooth.images) < 0.8 * smoothness(plain.images)


def test_same_seed_same_image_bit_for_bit(tiny_guide):
    a, _ = _run(tiny_guide, seeds=(7,))
    b, _ = _run(tiny_guide, seeds=(7,))
    c, _ = _run(tiny_guide, seeds=(8,))
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_output_shape_and_range_at_larger_size(tiny_guide):
    config = dataclasses.replace(SMALL, size=80, steps=3)
    made, _ = _run(tiny_guide, config, seeds=(0, 1))
    assert made.images.shape == (2, 3, 80, 80)
    assert made.images.min() >= 0 and made.images.max() <= 1
    assert [r["size"] for r in made.records] == [80, 80]
    assert all(isinstance(r["score"], float) for r in made.records)


@pytest.mark.parametrize("global_views,patch_views", [(3, 0), (0, 3)])
def test_only_one_kind_of_view(tiny_guide, global_views, patch_views):
    views = ViewConfig(global_views=global_views, patch_views=patch_views)
    made, losses = _run(tiny_guide, dataclasses.replace(SMALL, steps=2, views=views))
    assert made.images.shape == (1, 3, 32, 32) and len(losses) == 2


def test_frames_are_kept_every_n_steps(tiny_guide):
    made, _ = _run(tiny_guide, dataclasses.replace(SMALL, steps=6, save_every=2))
    assert len(made.frames) == 3 and made.frames[0].shape == (1, 3, 32, 32)


def test_stage_plan_splits_steps_coarse_to_fine():
    assert stage_plan(64, (16, 32), 100) == [(16, 33), (32, 33), (64, 34)]
    assert stage_plan(64, (), 10) == [(64, 10)]


def test_multiscale_runs_every_stage_and_ends_at_full_size(tiny_guide):
    config = dataclasses.replace(SMALL, steps=9, scales=(8, 16), save_every=3)
    result, losses = _run(tiny_guide, config, seeds=(0, 1))
    assert len(losses) == 9  # steps are counted across stages
    assert result.images.shape == (2, 3, 32, 32)
    assert [f.shape[-1] for f in result.frames] == [32, 32, 32]
    # the coarse stages leave the image smooth: little energy above the 16px band
    low = torch.nn.functional.interpolate(result.images, size=(16, 16), mode="area")
    flat = dataclasses.replace(config, scales=())
    plain, _ = _run(tiny_guide, flat, seeds=(0, 1))
    def detail(x, low):
        return (x - torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear")).abs().mean()
    plain_low = torch.nn.functional.interpolate(plain.images, size=(16, 16), mode="area")
    assert detail(result.images, low) < detail(plain.images, plain_low)


def test_weighted_distance_matches_definition():
    emb = torch.nn.functional.normalize(torch.randn(2, 5, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(2, 2, 8), dim=-1)
    weights = torch.tensor([[1.0, 0.0], [0.75, -0.25]])
    got = weighted_distance(emb, Targets(texts, weights))
    for b in range(2):
        want = sum(weights[b, k] * (1 - emb[b] @ texts[b, k]).mean() for k in range(2))
        assert torch.isclose(got[b], want, atol=1e-6)


def test_encode_targets_normalises_positive_weights(tiny_guide):
    targets = encode_targets(tiny_guide, [parse_prompt("a:2 | b:2 | c:-1"), parse_prompt("d")])
    assert targets.texts.shape == (2, 3, 32)
    assert torch.allclose(targets.weights[0], torch.tensor([0.5, 0.5, -0.25]))
    assert torch.allclose(targets.weights[1], torch.tensor([1.0, 0.0, 0.0]))


def test_dynamic_threshold_keeps_range():
    x = torch.rand(3, 3, 8, 8) * 3 - 1
    y = dynamic_threshold(x, 0.95)
    assert y.min() >= 0 and y.max() <= 1
    inside = torch.rand(1, 3, 8, 8)
    assert torch.allclose(dynamic_threshold(inside, 0.95), inside)
    assert torch.equal(dynamic_threshold(x, 0), x.clamp(0, 1))


def test_views_batch_shapes_and_gradients():
    views = Views(32, ViewConfig(global_views=3, patch_views=5))
    x = torch.rand(2, 3, 48, 48, requires_grad=True)
    g, p = views(x)
    assert g.shape == (6, 3, 32, 32) and p.shape == (10, 3, 32, 32)
    (g.sum() + p.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_jitter_strength_scales_colour_jitter():
    still = ViewConfig(global_views=4, patch_views=0, noise=0.0, translate=0.0, scale=(1.0, 1.0),
                       cutout=0.0)
    x = torch.rand(1, 3, 16, 16)
    off, _ = Views(16, still.with_jitter(0.0))(x)
    assert torch.allclose(off, x.expand(4, -1, -1, -1), atol=1e-6)  # no jitter: the image
    assert still.with_jitter(1.0).brightness == ViewConfig().brightness
    assert still.with_jitter(1.0).saturation == ViewConfig().saturation
    half = still.with_jitter(0.5)
    assert half.brightness == 0.25 and half.saturation == (0.5, 1.5)
    assert still.with_jitter(2.0).saturation == (0.0, 3.0)  # scales never go negative
    torch.manual_seed(0)
    some, _ = Views(16, half)(x)
    assert not torch.allclose(some, x.expand(4, -1, -1, -1), atol=1e-3)
    with pytest.raises(ClipagError, match="--jitter"):
        still.with_jitter(2.5)


def test_cutout_blanks_a_square_of_the_set_side_and_zero_turns_it_off():
    still = ViewConfig(global_views=64, patch_views=0, noise=0.0, translate=0.0,
                       scale=(1.0, 1.0)).with_jitter(0.0)
    x = torch.rand(1, 3, 32, 32) * 0.5 + 0.5  # never 0, so blanked pixels are exactly 0
    torch.manual_seed(0)
    views, _ = Views(32, dataclasses.replace(still, cutout=0.25))(x)
    blanked = (views == 0).all(dim=1).flatten(1).sum(dim=1)
    assert (blanked == 8 * 8).all()  # a quarter of the side: an 8x8 square in each view
    off, _ = Views(32, dataclasses.replace(still, cutout=0.0))(x)
    assert torch.equal(off, x.expand(64, -1, -1, -1))


def test_best_of_n_init_prefers_what_the_model_likes(tiny_guide):
    mixture = fit(torch.rand(64, 3, 4, 4), components=2, rank=2)
    targets = encode_targets(tiny_guide, [parse_prompt("a red circle")])
    config = dataclasses.replace(SMALL, init="gmm", init_candidates=32)
    one = initial_images(tiny_guide, targets, dataclasses.replace(config, init_candidates=1),
                         32, [0], mixture)
    best = initial_images(tiny_guide, targets, config, 32, [0], mixture)
    with torch.no_grad():
        def score(x):
            return (tiny_guide.encode_images(x) @ targets.texts[0, 0]).item()
    assert score(best) >= score(one)


@pytest.mark.parametrize("change,message", [
    ({"size": 4}, "impossible size"), ({"size": 100000}, "impossible size"),
    ({"steps": 0}, "steps"), ({"lr": 0}, "lr"), ({"threshold": 1.5}, "threshold"),
    ({"scales": (16, 8)}, "--scales must rise"), ({"scales": (32,)}, "below the output side"),
    ({"scales": (4,)}, "--scales"), ({"scales": (8, 16), "steps": 2}, "--steps must be >= 3"),
])
def test_bad_settings(tiny_guide, change, message):
    with pytest.raises(ClipagError, match=message):
        dataclasses.replace(SMALL, **change).validate(tiny_guide)


def test_mixture_roundtrip_and_fit_quality(tmp_path):
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(2, 3 * 4 * 4, generator=g)
    data = torch.cat([c + 0.05 * torch.randn(100, 48, generator=g) for c in centers]).clamp(0, 1)
    mixture = fit(data.view(-1, 3, 4, 4), components=2, rank=4, seed=0)
    path = mixture.save(tmp_path / "m.safetensors")
    loaded = GaussianMixture.load(path)
    assert loaded.resolution == 4 and torch.equal(loaded.factors, mixture.factors)
    samples = loaded.sample(50, torch.Generator().manual_seed(1))
    assert samples.shape == (50, 3, 4, 4) and samples.min() >= 0 and samples.max() <= 1
    assert torch.equal(samples, loaded.sample(50, torch.Generator().manual_seed(1)))
    # the fit explains its own data far better than uniform noise
    assert loaded.log_likelihood(data) > loaded.log_likelihood(torch.rand(200, 48)) + 50
    # samples land near the two centres
    nearest = torch.cdist(samples.view(50, -1), centers).min(dim=1).values
    assert nearest.mean() < torch.cdist(torch.rand(50, 48), centers).min(dim=1).values.mean()


def test_bad_mixture_file(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"nonsense")
    with pytest.raises(ClipagError):
        GaussianMixture.load(tmp_path / "x.safetensors")


RECORD_KEYS = {"prompt", "parsed", "negatives", "seed", "size", "model", "settings", "init",
               "batch", "best_loss", "score", "seconds", "device", "torch"}


def test_generate_records_are_json_ready_and_complete(tiny_guide):
    import json

    config = dataclasses.replace(SMALL, steps=2, scales=())
    made = generate(["a red circle:1 | a square:0.5", "a blue square"], tiny_guide, config,
                    negatives=[["green"], []], negative_weight=0.25)
    assert made.images.shape == (2, 3, 32, 32) and made.images.device.type == "cpu"
    first, second = made.records
    assert set(first) == RECORD_KEYS
    assert [first["seed"], second["seed"]] == [0, 1]  # seeds default to 0..B-1
    assert first["parsed"] == [{"text": "a red circle", "weight": 1.0},
                               {"text": "a square", "weight": 0.5},
                               {"text": "green", "weight": -0.25}]
    assert first["negatives"] == ["green"] and second["negatives"] == []
    assert first["init"] == "noise" and first["size"] == 32 and first["batch"] == 2
    assert first["settings"]["views"]["saturation"] == [0.0, 2.0]  # tuples as lists
    assert first["settings"]["steps"] == 2 and first["device"] == "cpu"
    json.dumps(made.records, allow_nan=False)  # finite numbers only
    again = generate(["a red circle:1 | a square:0.5", "a blue square"], tiny_guide, config,
                     seeds=[0, 1], negatives=[["green"], []], negative_weight=0.25)
    assert torch.equal(again.images, made.images)


def test_generate_one_negative_list_for_all_prompts(tiny_guide):
    config = dataclasses.replace(SMALL, steps=1)
    made = generate(["a", "b"], tiny_guide, config, seeds=[5, 9], negatives=["x", "y"])
    assert [r["negatives"] for r in made.records] == [["x", "y"], ["x", "y"]]
    assert [r["seed"] for r in made.records] == [5, 9]


@pytest.mark.parametrize("kwargs,message", [
    ({"prompts": []}, "no prompts"),
    ({"seeds": [1]}, "1 seeds for 2 prompts"),
    ({"seeds": [1, -2]}, "--seed must be a whole number"),
    ({"negatives": [["x"]]}, "one list per prompt"),
    ({"negative_weight": float("nan")}, "--negative-weight must be a finite number"),
    ({"prompts": ["a", "b:-1"]}, "no positive part"),
])
def test_generate_bad_input(tiny_guide, kwargs, message):
    args = {"prompts": ["a", "b"], "model": tiny_guide, "config": SMALL} | kwargs
    with pytest.raises(ClipagError, match=message):
        generate(**args)


def test_a_nan_step_moves_nothing_and_records_stay_finite(tiny_guide, monkeypatch):
    import json

    real = tiny_guide.encode_images
    calls = []

    def flaky(images):  # the second step's forward pass gives NaN
        calls.append(1)
        out = real(images)
        return out * float("nan") if len(calls) == 2 else out

    monkeypatch.setattr(tiny_guide, "encode_images", flaky)
    losses = []
    config = dataclasses.replace(SMALL, steps=6, save_every=1)
    made = generate(["a red circle"], tiny_guide, config,
                    on_step=lambda i: losses.append(i.loss.item()))
    assert len(losses) == 6 and losses[1] != losses[1]  # step 2 was NaN
    assert torch.isfinite(made.images).all() and all(torch.isfinite(f).all() for f in made.frames)
    assert (made.frames[-1] - made.frames[1]).abs().max() > 1e-3  # it went on moving
    finite = [x for x in losses if x == x]
    assert made.records[0]["best_loss"] == pytest.approx(min(finite), abs=1e-6)
    json.dumps(made.records, allow_nan=False)


def test_a_run_with_no_finite_loss_records_none(tiny_guide, monkeypatch):
    real = tiny_guide.encode_images
    monkeypatch.setattr(tiny_guide, "encode_images", lambda x: real(x) * float("nan"))
    made = generate(["a red circle"], tiny_guide, dataclasses.replace(SMALL, steps=2))
    assert made.records[0]["best_loss"] is None and made.records[0]["score"] is None
    assert torch.isfinite(made.images).all()


def test_weight_decay_pulls_pixels_down(tiny_guide):
    config = dataclasses.replace(SMALL, steps=4, threshold=0.0, save_every=4)
    plain = generate(["a red circle"], tiny_guide, config)
    decayed = generate(["a red circle"], tiny_guide, dataclasses.replace(config, weight_decay=5.0))
    assert decayed.frames[-1].mean() < plain.frames[-1].mean() - 0.05
    assert decayed.records[0]["settings"]["weight_decay"] == 5.0


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("change,message", [
    ({"lr": NAN}, "--lr must be a finite number > 0, got nan"),
    ({"lr": 0.0}, "--lr must be > 0, got 0.0"),
    ({"lr": "0.1"}, "--lr must be a finite number > 0, got '0.1'"),
    ({"weight_decay": INF}, "--weight-decay must be a finite number >= 0, got inf"),
    ({"weight_decay": -1.0}, "--weight-decay must be >= 0, got -1.0"),
    ({"grad_clip": NAN}, "--grad-clip must be a finite number >= 0"),
    ({"global_weight": -INF}, "--global-weight must be a finite number >= 0, got -inf"),
    ({"patch_weight": NAN}, "--patch-weight must be a finite number"),
    ({"threshold": NAN}, "--threshold must be a finite number in [0, 1)"),
    ({"threshold": 1.0}, "--threshold must be in [0, 1), got 1.0"),
    ({"tv_weight": NAN}, "--tv must be a finite number >= 0"),
    ({"tv_weight": -1.0}, "--tv must be >= 0"),
    ({"steps": 0}, "--steps must be >= 1, got 0"),
    ({"steps": 2.5}, "--steps must be a whole number >= 1, got 2.5"),
    ({"steps": True}, "--steps must be a whole number"),
    ({"log_every": 0}, "--log-every must be >= 1"),
    ({"save_every": -1}, "--save-every must be >= 0"),
    ({"init_candidates": 0}, "--init-candidates must be >= 1"),
    ({"view_batch": -1}, "--view-batch must be >= 0"),
    ({"view_batch": 1.5}, "--view-batch must be a whole number"),
    ({"size": 32.0}, "--size must be a whole number"),
    ({"scales": (8.5,)}, "--scales must be a whole number"),
    ({"views": ViewConfig(noise=NAN)}, "--noise must be a finite number >= 0"),
    ({"views": ViewConfig(cutout=INF)}, "--cutout must be a finite number in [0, 1)"),
    ({"views": ViewConfig(patch_fraction=NAN)}, "--patch-fraction must be a finite number"),
    ({"views": ViewConfig(brightness=NAN)}, "--brightness must be a finite number"),
    ({"views": ViewConfig(saturation=(0.0, NAN))}, "--saturation must be a finite number"),
    ({"views": ViewConfig(contrast=(1.5, 0.5))}, "--contrast must be a (low, high) pair"),
    ({"views": ViewConfig(scale=(0.0, 1.0))}, "--scale must be > 0"),
    ({"views": ViewConfig(translate=NAN)}, "--translate must be a finite number"),
    ({"views": ViewConfig(global_views=-1)}, "--views must be >= 0, got -1"),
    ({"views": ViewConfig(patch_views=2.0)}, "--patch-views must be a whole number"),
    ({"views": ViewConfig(global_views=0, patch_views=0)}, "at least one view"),
])
def test_check_refuses_non_finite_and_out_of_range_settings(change, message):
    import re

    with pytest.raises(ClipagError, match=re.escape(message)):
        dataclasses.replace(SMALL, **change).check()


@pytest.mark.parametrize("field,message", [
    ("guidance", "--flow-guidance must be a finite number >= 0, got nan"),
    ("temperature", "--flow-temperature must be a finite number >= 0, got nan"),
])
def test_check_refuses_non_finite_flow_settings(field, message):
    import re

    from clipag.flow.crossflow import SampleConfig

    for init in ("noise", "crossflow"):  # checked whatever the init
        config = dataclasses.replace(SMALL, init=init, flow=SampleConfig(**{field: NAN}))
        with pytest.raises(ClipagError, match=re.escape(message)):
            config.check()


def test_defaults_pass_the_checks():
    GenerateConfig().check()
    SMALL.check()


WORLD = (("scales", (8, 16, 32)), ("patch_views", 0), ("cutout", 0.0), ("tv_weight", 0.3))


def test_with_recommended_applies_what_the_user_did_not_set():
    from clipag.generate import with_recommended

    config, changed = with_recommended(GenerateConfig(), WORLD, set())
    assert config.scales == (8, 16, 32) and config.views.patch_views == 0
    assert config.views.cutout == 0.0 and config.tv_weight == 0.3
    assert changed == {"scales": (8, 16, 32), "patch_views": 0, "cutout": 0.0, "tv_weight": 0.3}
    assert config.views.global_views == GenerateConfig().views.global_views  # untouched

    mine = dataclasses.replace(GenerateConfig(), tv_weight=0.0, scales=(16,))
    config, changed = with_recommended(mine, WORLD, {"tv_weight", "scales"})
    assert config.tv_weight == 0.0 and config.scales == (16,)
    assert set(changed) == {"patch_views", "cutout"}


def test_with_recommended_drops_scales_when_steps_are_too_few():
    from clipag.generate import with_recommended

    few, changed = with_recommended(dataclasses.replace(GenerateConfig(), steps=3), WORLD, set())
    assert few.scales == () and "scales" not in changed and few.tv_weight == 0.3
    enough, changed = with_recommended(dataclasses.replace(GenerateConfig(), steps=4), WORLD,
                                       set())
    assert enough.scales == (8, 16, 32) and changed["scales"] == (8, 16, 32)


def test_with_recommended_jitter_lists_and_no_ops():
    from clipag.generate import with_recommended

    config, changed = with_recommended(GenerateConfig(), [("jitter", 0.0), ("scales", [8])],
                                       set())
    assert config.views.brightness == 0.0 and config.views.saturation == (1.0, 1.0)
    assert config.scales == (8,) and changed == {"jitter": 0.0, "scales": (8,)}
    same, changed = with_recommended(GenerateConfig(), [("jitter", 1.0), ("steps", 100)], set())
    assert same == GenerateConfig() and changed == {}  # already so: nothing changed
    with pytest.raises(ClipagError, match="unknown setting 'colour'"):
        with_recommended(GenerateConfig(), [("colour", 1)], set())


def test_the_shipped_preset_recommendations_are_valid_settings():
    from clipag.generate import with_recommended
    from clipag.models import PRESETS

    for preset in PRESETS.values():
        config, _ = with_recommended(GenerateConfig(), preset.recommended, set())
        config.check()


def test_prepare_reuses_a_given_source(tiny_guide):
    from clipag.generate import prepare

    mixture = fit(torch.rand(64, 3, 4, 4, generator=torch.Generator().manual_seed(0)),
                  components=2, rank=2)
    config = dataclasses.replace(SMALL, init="gmm", init_candidates=8)
    start = prepare(["a red circle", "a blue square"], tiny_guide, config, seeds=[2, 3],
                    source=mixture)
    assert start.source is mixture and start.size == 32
    direct = initial_images(tiny_guide, start.targets, config, 32, [2, 3], mixture)
    assert torch.equal(start.images, direct)
    noisy = prepare(["a red circle", "a blue square"], tiny_guide, config, seeds=[2, 3],
                    source=None)  # None: no mixture, noise starts
    assert not torch.equal(noisy.images, direct)


@pytest.mark.parametrize("change,message", [
    ({"weights": lambda t: t.fill_(float("nan"))}, "NaN or infinite"),
    ({"weights": lambda t: t.zero_()}, "positive sum"),
    ({"diag": lambda t: t.fill_(-1.0)}, "variances"),
    ({"factors": lambda t: t[..., :1, :]}, "shapes do not fit"),
    ({"resolution": "abc"}, "resolution must be a whole number"),
])
def test_bad_mixture_fields_are_one_error(tmp_path, change, message):
    import json as _json

    from safetensors.torch import load_file, save_file

    from clipag.init import DEFAULT_GMM, GaussianMixture

    tensors = {k: v.clone() for k, v in load_file(str(DEFAULT_GMM)).items()}
    meta = {"kind": "gmm", "resolution": 16}
    for key, edit in change.items():
        if key == "resolution":
            meta["resolution"] = edit
        else:
            tensors[key] = edit(tensors[key]).contiguous()
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={"clipag": _json.dumps(meta)})
    with pytest.raises(ClipagError, match=message):
        GaussianMixture.load(path)
