import pytest
import torch

from clipag.checkpoint import read_meta, save_checkpoint
from clipag.errors import ClipagError
from clipag.load import ModelSpec, cache_status, load_spec as load_guide
from clipag.models import PRESETS, build_model

CPU = torch.device("cpu")


def _same_outputs(a, b):
    x = torch.rand(2, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a.encode_images(x), b.encode_images(x))
        assert torch.equal(a.encode_texts(["a red circle"]), b.encode_texts(["a red circle"]))


def test_clipag_checkpoint_says_its_architecture(tiny_guide, tiny_checkpoint):
    assert read_meta(tiny_checkpoint)["arch"] == "clipag-tiny"
    loaded = load_guide(ModelSpec(checkpoint=str(tiny_checkpoint)), CPU)
    assert loaded.image_size == 32
    _same_outputs(tiny_guide, loaded)


def test_open_clip_state_dict_with_model_name(tmp_path, tiny_guide):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in tiny_guide.model.state_dict().items()}},
               path)
    loaded = load_guide(ModelSpec(model="clipag-tiny", checkpoint=str(path)), CPU)
    _same_outputs(tiny_guide, loaded)
    via_pretrained = load_guide(ModelSpec(model="clipag-tiny", pretrained=str(path)), CPU)
    _same_outputs(tiny_guide, via_pretrained)


def test_a_bare_state_dict_needs_the_architecture(tmp_path):
    """A state dict does not say its activation (GELU or QuickGELU): never built on a guess."""
    model, _ = build_model({
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16,
                       "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1,
                     "layers": 2}}, seed=0)
    path = tmp_path / "openai_style.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ClipagError, match="cannot tell which architecture and activation.*--model"):
        load_guide(ModelSpec(checkpoint=str(path)), CPU)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickles_that_run_code_need_trust(tmp_path, tiny_guide):
    path = tmp_path / "evil.pt"
    state = dict(tiny_guide.model.state_dict())
    state["extra"] = Evil()
    torch.save(state, path)
    with pytest.raises(ClipagError, match="--trust-checkpoint"):
        load_guide(ModelSpec(model="clipag-tiny", checkpoint=str(path)), CPU)
    loaded = load_guide(ModelSpec(model="clipag-tiny", checkpoint=str(path), trust=True), CPU)
    _same_outputs(tiny_guide, loaded)


def test_torchscript_needs_trust(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ClipagError, match="TorchScript"):
        load_guide(ModelSpec(model="clipag-tiny", checkpoint=str(path)), CPU)


def test_mismatched_checkpoint_names_keys(tmp_path, tiny_guide):
    state = dict(tiny_guide.model.state_dict())
    state["token_embedding.weight"] = torch.zeros(10, 32)
    del state["ln_final.weight"]
    path = tmp_path / "bad.safetensors"
    save_checkpoint(path, state, {"arch": "clipag-tiny"})
    with pytest.raises(ClipagError) as info:
        load_guide(ModelSpec(checkpoint=str(path)), CPU)
    message = str(info.value)
    assert "token_embedding.weight" in message and "ln_final.weight" in message
    assert "\n" not in message


def test_wrong_architecture_is_an_error(tiny_checkpoint):
    from safetensors.torch import load_file, save_file

    plain = tiny_checkpoint.with_name("plain.safetensors")
    save_file(load_file(str(tiny_checkpoint)), str(plain))  # no clipag metadata
    with pytest.raises(ClipagError, match="does not match"):
        load_guide(ModelSpec(model="world-vit", checkpoint=str(plain)), CPU)


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not a checkpoint"])
def test_corrupt_checkpoints(tmp_path, content):
    for name in ("x.pt", "x.safetensors"):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ClipagError, match="empty|corrupt|not a checkpoint"):
            load_guide(ModelSpec(model="clipag-tiny", checkpoint=str(path)), CPU)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ClipagError, match="not found"):
        load_guide(ModelSpec(checkpoint=str(tmp_path / "nope.pt")), CPU)


def test_url_downloads_into_cache(tmp_path, tiny_guide, tiny_checkpoint):
    url = tiny_checkpoint.as_uri()  # file:// exercises the download code without a network
    loaded = load_guide(ModelSpec(model="clipag-tiny", pretrained=url), CPU, quiet=True)
    _same_outputs(tiny_guide, loaded)
    from clipag.hub import cache_dir, recorded_digest, sha256_of

    cached = cache_dir() / tiny_checkpoint.name
    assert cached.is_file() and recorded_digest(cached) == sha256_of(tiny_checkpoint)


def test_unreachable_url_says_what_to_fetch(tmp_path):
    with pytest.raises(ClipagError, match="could not download https://example.invalid/w.pt .*save"):
        load_guide(ModelSpec(model="clipag-tiny", pretrained="https://example.invalid/w.pt"), CPU)


def test_preset_url_uses_the_cached_file(tiny_checkpoint, monkeypatch):
    from clipag import models
    from clipag.hub import cache_dir

    preset = models.Preset("tiny-remote", "clipag-tiny", "https://example.invalid/tiny.pt", True, "")
    monkeypatch.setitem(models.PRESETS, preset.name, preset)
    assert cache_status(preset).state == "not downloaded"
    target = cache_dir() / "tiny.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(tiny_checkpoint.read_bytes())
    assert cache_status(preset).state == "cached"
    assert load_guide(ModelSpec(model="tiny-remote"), CPU).name == "tiny-remote"


def test_hub_models_fail_clearly_offline():
    with pytest.raises(ClipagError, match="could not get open_clip_config.json of hf-hub:chs20/FARE4"):
        load_guide(ModelSpec(model=PRESETS["fare4-vitb32"].name), CPU)


def test_unknown_architecture():
    with pytest.raises(ClipagError, match="unknown model architecture"):
        load_guide(ModelSpec(model="no-such-model", pretrained="none"), CPU)


class _System:
    """A pickle that would run a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_calling_os_system_is_refused_by_name_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "system.pt"
    torch.save({"weights": torch.zeros(2), "payload": _System(marker)}, path)
    with pytest.raises(ClipagError) as info:
        load_guide(ModelSpec(model="clipag-tiny", checkpoint=str(path)), CPU)
    message = str(info.value)
    assert "refused as unsafe" in message and "system" in message  # posix.system or nt.system
    assert "--trust-checkpoint" in message
    assert "weights_only" not in message and "corrupt" not in message  # no torch advice
    assert not marker.exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_guide_with_non_finite_weights_is_refused(tmp_path, tiny_guide, value):
    state = dict(tiny_guide.model.state_dict())
    state["ln_final.weight"] = state["ln_final.weight"].clone().fill_(value)
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, state, {"arch": "clipag-tiny"})
    with pytest.raises(ClipagError, match="NaN or infinite.*ln_final.weight"):
        load_guide(ModelSpec(checkpoint=str(path)), CPU)
