"""Guide mixes: parsing, the weighted-cosine identity, size checks, and the benchmark path."""

import pytest
import torch
from click.testing import CliRunner

from clipag.cli.main import cli
from clipag.augment import ViewConfig
from clipag.world.benchmark import run, suite
from clipag.world.scenes import parse_prompt as parse_world
from clipag.ensemble import ensemble, load_mix, parse_mix
from clipag.errors import ClipagError
from clipag.generate import GenerateConfig
from clipag.models import _guide, build_model
from clipag.output import read_png_meta

CPU = torch.device("cpu")


def tiny(seed: int, name: str):
    model, tokenizer = build_model("clipag-tiny", seed=seed)
    return _guide(model, tokenizer, name, {"arch": "clipag-tiny"})


def test_parse_mix_reads_weights_and_defaults_to_one():
    assert parse_mix("a*3+b") == [("a", 3.0), ("b", 1.0)]
    assert parse_mix(" work/x.safetensors*0.25 + world-robust*0.75 ") == [
        ("work/x.safetensors", 0.25), ("world-robust", 0.75)]


@pytest.mark.parametrize("text, message", [
    ("a+", "empty member"), ("a*x+b", "is not a number"), ("a*0+b", "must be > 0"),
    ("a*-1+b", "must be > 0"), ("a*inf+b", "must be > 0")])
def test_parse_mix_rejects_malformed_mixes(text, message):
    with pytest.raises(ClipagError, match=message):
        parse_mix(text)


def test_ensemble_cosine_is_the_weighted_mean_of_member_cosines():
    a, b = tiny(0, "a"), tiny(1, "b")
    mix = ensemble([a, b], [3.0, 1.0])
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = ["a red circle", "two green squares"]
    with torch.no_grad():
        got = mix.encode_images(images) @ mix.encode_texts(texts).t()
        ca = a.encode_images(images) @ a.encode_texts(texts).t()
        cb = b.encode_images(images) @ b.encode_texts(texts).t()
        norms = mix.encode_images(images).norm(dim=-1)
    assert torch.allclose(got, 0.75 * ca + 0.25 * cb, atol=1e-5)
    assert torch.allclose(norms, torch.ones(4), atol=1e-5)  # still unit embeddings
    assert mix.image_size == 32 and mix.name == "a*3+b*1"


def test_ensemble_gradient_is_the_weighted_sum_of_member_gradients():
    a, b = tiny(0, "a"), tiny(1, "b")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def grad(guide):
        x = images.clone().requires_grad_(True)
        text = guide.encode_texts(["a red circle"]).detach()
        (guide.encode_images(x) @ text.t()).sum().backward()
        return x.grad

    mixed, ga, gb = grad(ensemble([a, b], [1.0, 3.0])), grad(a), grad(b)
    assert ga.abs().sum() > 0 and gb.abs().sum() > 0
    assert torch.allclose(mixed, 0.25 * ga + 0.75 * gb, atol=1e-6)


def test_ensemble_refuses_members_of_different_input_sizes():
    world, tokenizer = build_model("world-vit", seed=0)
    with pytest.raises(ClipagError, match="share an input size"):
        ensemble([tiny(0, "a"), _guide(world, tokenizer, "w", {"arch": "world-vit"})], [1, 1])


def test_load_mix_passes_single_names_through():
    seen = []
    guide = load_mix("a", lambda name: seen.append(name) or tiny(0, name))
    assert seen == ["a"] and guide.name == "a"
    mix = load_mix("a*2+b", lambda name: tiny(len(name), name))
    assert mix.info["members"] == ["a", "b"] and mix.shares == (2 / 3, 1 / 3)


def test_benchmark_runs_a_mix_of_checkpoint_files(tmp_path, tiny_checkpoint):
    config = GenerateConfig(steps=2, init_candidates=4,
                            views=ViewConfig(global_views=2, patch_views=0))
    mix = f"{tiny_checkpoint}*3+{tiny_checkpoint}"
    reports, table = run([mix], str(tiny_checkpoint), 1, config, tmp_path, CPU)
    assert reports[0].guide == mix and mix in table.read_text()
    read, wanted = reports[0].reads[0].get("color"), parse_world(suite(1)[0]).get("color")
    assert reports[0].accuracy["color"] == float(read == wanted)  # one prompt: right or wrong


def test_generate_with_a_mix_records_its_members(tmp_path, tiny_checkpoint):
    out = tmp_path / "mix.png"
    mix = f"{tiny_checkpoint}*3+{tiny_checkpoint}"
    fast = ["--steps", "2", "--views", "2", "--patch-views", "0", "--init-candidates", "4"]
    result = CliRunner().invoke(cli, ["generate", "a red circle", "-m", mix, "-o", str(out),
                                      *fast])
    assert result.exit_code == 0, result.output
    model = read_png_meta(out)["model"]
    assert model["name"] == mix and model["weights"] == [3.0, 1.0]
    bad = CliRunner().invoke(cli, ["generate", "x", "-m", mix, "-c", str(tiny_checkpoint),
                                   "-o", str(tmp_path / "b.png"), *fast])
    assert bad.exit_code != 0 and "names its members itself" in bad.output
    bad = CliRunner().invoke(cli, ["generate", "x", "-m", "world-robust*0+world-vanilla",
                                   "-o", str(tmp_path / "c.png"), *fast])
    assert bad.exit_code != 0 and "must be > 0" in bad.output
    assert "Traceback" not in bad.output
