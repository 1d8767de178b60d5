"""Every preset and documented loading command gives exactly the source model's embeddings on
files built like the published ones (tests/layouts.py), offline, with no trust flag."""

from __future__ import annotations

import dataclasses
import zipfile

import open_clip
import pytest
import torch
from click.testing import CliRunner

import layouts
from clipag.cli.main import cli
from clipag.errors import ClipagError
from clipag.hub import cache_dir
from clipag.load import load_model
from clipag.models import ARCH_CONFIGS, PRESETS, activation, build_model

TOL = 1e-5
TINY = "clipag-tiny"


def same(guide, source, mean=None, std=None):
    a_img, a_txt = layouts.guide_embeddings(guide)
    b_img, b_txt = layouts.embeddings(source, mean, std, size=guide.image_size,
                                      context=source.context_length)
    assert (a_img - b_img).abs().max() < TOL
    assert (a_txt - b_txt).abs().max() < TOL


def tiny(seed: int) -> torch.nn.Module:
    return build_model(TINY, seed=seed)[0].eval()


def use_preset(monkeypatch, name: str, **changes):
    monkeypatch.setitem(PRESETS, name, dataclasses.replace(PRESETS[name], **changes))


# --- CLIPAG's training checkpoint ------------------------------------------------------------------

def test_clipag_checkpoint_has_numpy1_globals_and_loads_without_trust(tmp_path):
    source = tiny(1)
    path = layouts.clipag_training_checkpoint(source, tmp_path / "CLIPAG_ViTB32.pt")
    pickle = next(zipfile.ZipFile(path).read(n) for n in zipfile.ZipFile(path).namelist()
                  if n.endswith("data.pkl"))
    assert b"cnumpy.core.multiarray\nscalar" in pickle  # the numpy 1.x name, as published
    with pytest.raises(Exception, match="numpy.core.multiarray.scalar"):
        torch.load(path, weights_only=True)  # what open_clip's default load refuses
    same(load_model(TINY, checkpoint=str(path)), source)


def test_clipag_preset_keeps_a_safetensors_copy_and_never_unpickles_again(tmp_path, monkeypatch):
    use_preset(monkeypatch, "clipag-vitb32", arch=TINY)
    source = tiny(2)
    cache_dir().mkdir(parents=True)
    layouts.clipag_training_checkpoint(source, cache_dir() / "CLIPAG_ViTB32.pt")
    same(load_model("clipag-vitb32"), source)
    copy = cache_dir() / "CLIPAG_ViTB32.safetensors"
    assert copy.is_file() and (cache_dir() / "CLIPAG_ViTB32.safetensors.sha256").is_file()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    same(load_model("clipag-vitb32"), source)


def test_a_changed_cached_file_is_refused(tmp_path, monkeypatch):
    use_preset(monkeypatch, "clipag-vitb32", arch=TINY)
    cache_dir().mkdir(parents=True)
    layouts.clipag_training_checkpoint(tiny(3), cache_dir() / "CLIPAG_ViTB32.pt")
    load_model("clipag-vitb32")
    copy = cache_dir() / "CLIPAG_ViTB32.safetensors"
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ClipagError, match="does not match the sha256"):
        load_model("clipag-vitb32")


@pytest.mark.slow
def test_clipag_vitb32_real_shapes_match_open_clips_own_loader(tmp_path):
    """The publisher's line: open_clip.create_model_and_transforms('ViT-B-32', pretrained=PATH)
    (which needs weights_only=False for this file) against `clipag --model clipag-vitb32`."""
    source = build_model("ViT-B-32", seed=0)[0]
    cache_dir().mkdir(parents=True)
    path = layouts.clipag_training_checkpoint(source, cache_dir() / "CLIPAG_ViTB32.pt",
                                              optimizer=False)
    del source
    reference = open_clip.create_model("ViT-B-32", pretrained=str(path), weights_only=False)
    guide = load_model("clipag-vitb32")
    assert activation(guide.model) == "GELU"
    same(guide, reference)
    with pytest.raises(ClipagError, match="ViT-B-32 or ViT-B-32-quickgelu"):
        load_model(checkpoint=str(path))  # no --model: the activation cannot be read


# --- hub repos (chs20 FARE4/TeCoA4, ViT-L/14 ones) -----------------------------------------------------

@pytest.mark.parametrize("weights", ["bin", "safetensors", "both"])
@pytest.mark.parametrize("preset", ["fare4-vitb32", "tecoa4-vitb32", "fare2-vitl14"])
def test_hub_presets_match_open_clips_hub_loader(tmp_path, preset, weights):
    repo = PRESETS[preset].source[len("hf-hub:"):]
    source = tiny(4)
    state = source.state_dict()
    files = {"open_clip_config.json": layouts.open_clip_config(ARCH_CONFIGS[TINY])}
    if weights in ("bin", "both"):
        files["open_clip_pytorch_model.bin"] = layouts.bin_bytes(state, tmp_path)
    if weights in ("safetensors", "both"):
        files["open_clip_model.safetensors"] = layouts.safetensors_bytes(state, tmp_path)
    layouts.hf_cache_repo(cache_dir(), repo, files)
    reference = open_clip.create_model(f"hf-hub:{repo}", cache_dir=str(cache_dir()))
    same(load_model(preset), reference)
    same(load_model(preset), source)


def test_hub_config_without_weights_is_an_error_not_random_weights(tmp_path):
    repo = PRESETS["fare4-vitb32"].source[len("hf-hub:"):]
    layouts.hf_cache_repo(cache_dir(), repo,
                          {"open_clip_config.json": layouts.open_clip_config(ARCH_CONFIGS[TINY])})
    with pytest.raises(ClipagError, match="config is cached but no weights"):
        load_model("fare4-vitb32")
    result = CliRunner().invoke(cli, ["generate", "x", "-m", "fare4-vitb32", "--steps", "1"])
    assert result.exit_code == 2
    assert "no weights are available" in result.output and "Traceback" not in result.output


# --- OpenAI weights need QuickGELU ---------------------------------------------------------------------

def test_openai_preset_names_the_quickgelu_config():
    assert PRESETS["openai-vitb32"].arch == "ViT-B-32-quickgelu"
    assert open_clip.get_model_config("ViT-B-32-quickgelu")["quick_gelu"] is True
    with torch.device("meta"):
        assert activation(build_model("ViT-B-32-quickgelu")[0]) == "QuickGELU"
        assert activation(build_model("ViT-B-32")[0]) == "GELU"  # CLIPAG's, LAION's


@pytest.mark.slow
def test_openai_tag_real_shapes_match_open_clip(tmp_path):
    source = build_model("ViT-B-32-quickgelu", seed=0)[0]
    layouts.hf_cache_repo(cache_dir(), "timm/vit_base_patch32_clip_224.openai",
                          {"open_clip_model.safetensors":
                           layouts.safetensors_bytes(source.state_dict(), tmp_path)})
    reference = open_clip.create_model("ViT-B-32-quickgelu", pretrained="openai",
                                       cache_dir=str(cache_dir()))
    guide = load_model("openai-vitb32")
    assert activation(guide.model) == "QuickGELU"
    same(guide, reference)
    # --model ViT-B-32 --pretrained openai: the tag's activation is applied, not the name's
    assert activation(load_model("ViT-B-32", pretrained="openai").model) == "QuickGELU"
    # RobustVLM's FARE4 ViT-B/32 (OpenAI start): its image tower over the OpenAI base
    robust = build_model("ViT-B-32-quickgelu", seed=1)[0]
    layouts.vision_only(robust, cache_dir() / "vitb32_fare_eps_4.pt")
    reference.visual.load_state_dict(robust.visual.state_dict())
    del robust
    same(load_model("fare4-vitb32-openai"), reference)


# --- vision-encoder-only files (RobustVLM) --------------------------------------------------------------

@pytest.mark.parametrize("wrapped", [False, True])
def test_vision_only_file_over_a_base_model(tmp_path, wrapped):
    base, robust = tiny(5), tiny(6)
    base_file = tmp_path / "base.bin"
    torch.save(base.state_dict(), base_file)
    vision = layouts.vision_only(robust, tmp_path / "vitb32_fare_eps_4.pt", wrapped)
    guide = load_model(TINY, pretrained=str(base_file), checkpoint=str(vision))
    # the publisher's recipe: the base model, then model.visual.load_state_dict(checkpoint)
    base.visual.load_state_dict(robust.visual.state_dict())
    same(guide, base)


def test_vision_only_file_needs_a_base_model(tmp_path):
    vision = layouts.vision_only(tiny(7), tmp_path / "vision.pt")
    with pytest.raises(ClipagError, match="only an image tower.*--pretrained"):
        load_model(checkpoint=str(vision))
    with pytest.raises(ClipagError, match="text tower random"):
        load_model(TINY, checkpoint=str(vision))
    result = CliRunner().invoke(cli, ["generate", "x", "-c", str(vision), "--steps", "1"])
    assert result.exit_code == 2 and "only an image tower" in result.output


def test_vision_only_file_of_another_architecture(tmp_path):
    base_file = tmp_path / "base.bin"
    torch.save(tiny(8).state_dict(), base_file)
    other = build_model("world-vit", seed=0)[0]
    vision = layouts.vision_only(other, tmp_path / "vision.pt")
    with pytest.raises(ClipagError, match="does not match the model"):
        load_model(TINY, pretrained=str(base_file), checkpoint=str(vision))


# --- bad files, one line each -----------------------------------------------------------------------

def run(*args):
    result = CliRunner().invoke(cli, ["generate", "x", "--steps", "1", "-d", "out", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.count("\n") <= 4
    return result.output


def test_truncated_download_is_one_line(tmp_path):
    path = layouts.clipag_training_checkpoint(tiny(9), tmp_path / "c.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated" in run("-m", TINY, "-c", str(cut))


@pytest.mark.parametrize("trust", [[], ["--trust-checkpoint"]])
def test_random_bytes_are_corrupt_not_unsafe(tmp_path, trust):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    out = run("-m", TINY, "-c", str(junk), *trust)
    assert "not a checkpoint" in out and "code" not in out


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "w.bin"
    torch.save(build_model("world-vit", seed=0)[0].state_dict(), path)
    assert "does not match the model" in run("-m", TINY, "-c", str(path))


def test_model_flag_contradicting_a_clipag_file(tiny_checkpoint):
    assert "not world-vit" in run("-m", "world-vit", "-c", str(tiny_checkpoint))


@pytest.mark.parametrize("repo", ["", "a", "a/b/c", "../x/y", "org/-x"])
def test_malformed_hub_ids(repo):
    assert "not a hub repo id" in run("-m", f"hf-hub:{repo}")


def test_a_one_member_mix_with_weight_zero(tmp_path):
    assert "must be > 0" in run("-m", "world-robust*0")


def test_unsafe_pickle_names_the_global(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny(0).state_dict(), "cfg": zipfile.ZipInfo("x")}, path)
    out = run("-m", TINY, "-c", str(path))
    assert "zipfile.ZipInfo" in out and "--trust-checkpoint" in out
