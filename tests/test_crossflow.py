import dataclasses

import pytest
import torch

from clipag.flow.crossflow import (CrossFlow, FlowConfig, LossWeights, SampleConfig, flow_loss,
                              kl_to_standard_normal, load_flow, sample, save_flow)
from clipag.flow.train import FlowTrainConfig, train_flow
from clipag.errors import ClipagError
from clipag.models import ModelSpec

TINY = FlowConfig(text_dim=32, resolution=8, patch=2, width=32, depth=2, heads=2,
                  ve_hidden=64, embed_dim=16)


def test_ve_latent_has_the_image_shape_and_kl_is_zero_at_the_prior():
    torch.manual_seed(0)
    model = CrossFlow(TINY)
    z0, mean, logvar = model.latent(torch.randn(5, 32))
    assert z0.shape == mean.shape == logvar.shape == (5, 3, 8, 8)
    zeros = torch.zeros(2, 3, 8, 8)
    assert kl_to_standard_normal(zeros, zeros).item() == pytest.approx(0.0)
    # KL of N(1, 1) against N(0, 1) is 1/2 per element
    assert kl_to_standard_normal(zeros + 1, zeros).item() == pytest.approx(0.5)
    assert kl_to_standard_normal(zeros, zeros + 1).item() > 0


def test_velocity_net_maps_images_to_images():
    model = CrossFlow(TINY)
    x = torch.randn(3, 3, 8, 8)
    v = model.velocity(x, torch.rand(3), torch.tensor([0, 1, 1]))
    assert v.shape == x.shape
    assert torch.count_nonzero(v) == 0  # the output layer starts at zero


def _toy_batch(n=32, g=None):
    """Texts that determine the image: 4 colours, each a flat 8x8 image."""
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])
    which = torch.randint(0, 4, (n,), generator=g)
    text = torch.nn.functional.one_hot(which, 32).float()
    images = colours[which].view(n, 3, 1, 1).expand(n, 3, 8, 8).clone()
    return text, images, colours, which


def test_flow_loss_falls_and_samples_follow_the_text():
    torch.manual_seed(0)
    model = CrossFlow(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(400):
        text, images, _, _ = _toy_batch(g=g)
        loss = flow_loss(model, text, images, LossWeights(uncond=0.1))
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        losses.append(loss.flow.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    text, _, colours, which = _toy_batch(16, torch.Generator().manual_seed(1))
    out = sample(model, text, SampleConfig(steps=8, guidance=1.0),
                 torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 8, 8) and out.min() >= 0 and out.max() <= 1
    mean_rgb = out.mean(dim=(2, 3))
    nearest = torch.cdist(mean_rgb, colours).argmin(1)
    assert (nearest == which).float().mean() >= 0.75


def test_sampling_is_deterministic_with_a_seed_and_diverse_across_seeds():
    torch.manual_seed(0)
    model = CrossFlow(TINY)
    torch.nn.init.normal_(model.velocity.out.weight, std=0.1)
    text = torch.randn(2, 32)
    for method in ("euler", "heun"):
        cfg = SampleConfig(steps=4, method=method)
        a = sample(model, text, cfg, torch.Generator().manual_seed(3))
        b = sample(model, text, cfg, torch.Generator().manual_seed(3))
        c = sample(model, text, cfg, torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c)
    mean_only = SampleConfig(steps=4, temperature=0.0)
    assert torch.equal(sample(model, text, mean_only, torch.Generator().manual_seed(3)),
                       sample(model, text, mean_only, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("change,message", [
    ({"steps": 0}, "steps"), ({"method": "rk4"}, "euler or heun"), ({"guidance": -1}, "guidance"),
])
def test_bad_sample_settings(change, message):
    with pytest.raises(ClipagError, match=message):
        dataclasses.replace(SampleConfig(), **change).validate()


def test_bad_architecture():
    with pytest.raises(ClipagError, match="multiple of the patch"):
        CrossFlow(dataclasses.replace(TINY, resolution=9))


def test_save_load_roundtrip_and_refusals(tmp_path, tiny_checkpoint):
    model = CrossFlow(TINY)
    path = save_flow(tmp_path / "f.safetensors", model, {"text_model": "x", "text_probe": [0.0]})
    loaded, meta = load_flow(path, torch.device("cpu"))
    assert meta["text_model"] == "x" and loaded.cfg == TINY
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with pytest.raises(ClipagError, match="not found"):
        load_flow(tmp_path / "missing.safetensors", torch.device("cpu"))
    with pytest.raises(ClipagError, match="not a clipag CrossFlow"):
        load_flow(tiny_checkpoint, torch.device("cpu"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ClipagError):
        load_flow(bad, torch.device("cpu"))


def test_train_writes_a_checkpoint_and_resumes_exactly(tmp_path, world_captions, tiny_checkpoint):
    spec = ModelSpec(checkpoint=str(tiny_checkpoint))
    base = dict(data=str(world_captions), resolution=8, width=32, depth=1, batch_size=16,
                lr=1e-3, warmup=2, log_every=1)
    logs = []
    whole = train_flow(FlowTrainConfig(out=str(tmp_path / "whole.safetensors"), steps=6, **base),
                       spec, torch.device("cpu"), on_log=logs.append)
    assert [entry.step for entry in logs] == list(range(1, 7))
    assert all(entry.loss > 0 and entry.kl >= 0 for entry in logs)

    class Stop(Exception):
        pass

    def interrupt(step):
        if step == 3:
            raise Stop

    half = FlowTrainConfig(out=str(tmp_path / "half.safetensors"), steps=6, save_every=3,
                           resume=True, **base)
    with pytest.raises(Stop):
        train_flow(half, spec, torch.device("cpu"), on_step=interrupt)
    assert (tmp_path / "half.safetensors.state.pt").is_file()
    resumed = train_flow(half, spec, torch.device("cpu"))
    a, meta = load_flow(whole, torch.device("cpu"))
    b, _ = load_flow(resumed, torch.device("cpu"))
    for key, value in a.state_dict().items():
        assert torch.allclose(b.state_dict()[key], value, atol=1e-6), key
    assert meta["text_model"].endswith("tiny.safetensors") and len(meta["text_probe"]) == 8
    with pytest.raises(ClipagError, match="exists"):
        train_flow(dataclasses.replace(half, resume=False), spec, torch.device("cpu"))


def _flow_for(guide, tmp_path, probe=None, name="flow.safetensors"):
    from clipag.flow.crossflow import text_probe

    with torch.no_grad():
        dim = guide.encode_texts(["x"]).shape[-1]
    torch.manual_seed(0)
    model = CrossFlow(dataclasses.replace(TINY, text_dim=dim))
    torch.nn.init.normal_(model.velocity.out.weight, std=0.05)
    meta = {"text_model": "tiny", "text_probe": probe or text_probe(guide.encode_texts)}
    return save_flow(tmp_path / name, model, meta)


def test_crossflow_init_plugs_into_generate(tmp_path, tiny_guide, tiny_checkpoint):
    from clipag.flow.crossflow import FlowInit
    from clipag.generate import GenerateConfig, encode_targets, init_source, initial_images
    from clipag.init import upsample
    from clipag.prompts import parse_prompt

    path = _flow_for(tiny_guide, tmp_path)
    config = GenerateConfig(init=f"crossflow:{path}", flow=SampleConfig(steps=3))
    source = init_source(config, tiny_guide)
    assert isinstance(source, FlowInit) and source.text is tiny_guide  # same tower: reused
    prompts = [parse_prompt("a red circle"), parse_prompt("a blue square")]
    targets = encode_targets(tiny_guide, prompts)
    start = initial_images(tiny_guide, targets, config, 32, [5, 6], source, prompts)
    again = initial_images(tiny_guide, targets, config, 32, [5, 6], source, prompts)
    assert start.shape == (2, 3, 32, 32) and torch.equal(start, again)
    draft = source.draft(prompts[0], 5)
    assert draft.shape == (3, 8, 8)
    assert torch.allclose(start[0], upsample(draft[None], 32)[0])

    from click.testing import CliRunner

    from clipag.cli.main import cli
    out = tmp_path / "out.png"
    result = CliRunner().invoke(cli, ["generate", "a red circle", "-c", str(tiny_checkpoint),
                                      "--init", f"crossflow:{path}", "--steps", "2", "--views",
                                      "2", "--patch-views", "0", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    import json
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["init"] == "crossflow" and meta["settings"]["flow"]["steps"] == 10


def test_crossflow_init_refuses_a_flow_from_another_text_tower(tmp_path, tiny_guide, tiny_checkpoint):
    from clipag.flow.crossflow import load_flow, text_guide_for

    path = _flow_for(tiny_guide, tmp_path, probe=[9.0] * 8)
    _, meta = load_flow(path, torch.device("cpu"))
    meta["text_model"] = str(tiny_checkpoint)
    with pytest.raises(ClipagError, match="different one"):
        text_guide_for(meta, torch.device("cpu"), tiny_guide)


def test_crossflow_commands_train_then_sample(tmp_path, world_captions, tiny_checkpoint):
    import json

    from click.testing import CliRunner
    from PIL import Image

    from clipag.cli.main import cli
    from clipag.output import PNG_KEY

    runner = CliRunner()
    flow = tmp_path / "flow.safetensors"
    result = runner.invoke(cli, ["crossflow", "train", str(world_captions), "-o", str(flow),
                                 "-c", str(tiny_checkpoint), "--resolution", "8", "--width",
                                 "32", "--depth", "1", "--steps", "3", "--batch-size", "8",
                                 "--half", "-q"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(cli, ["crossflow", "train", str(world_captions), "-o", str(flow),
                                "-c", str(tiny_checkpoint), "--steps", "3", "-q"])
    assert again.exit_code != 0 and "exists" in again.output and "Traceback" not in again.output
    out = tmp_path / "drafts"
    result = runner.invoke(cli, ["crossflow", "sample", "a red circle", "--flow", str(flow),
                                 "--samples", "2", "--steps", "3", "--size", "32", "-d", str(out)])
    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["a-red-circle-crossflow-s0.png", "a-red-circle-crossflow-s1.png"]
    image = Image.open(pngs[0])
    assert image.size == (32, 32)
    assert json.loads(image.text[PNG_KEY])["seed"] == 0
    for args, message in [(["--steps", "0"], "steps"), (["--flow", str(tiny_checkpoint)],
                                                         "not a clipag CrossFlow"),
                          ([], "exists")]:
        bad = runner.invoke(cli, ["crossflow", "sample", "a red circle", "--flow", str(flow),
                                  "-d", str(out), "--samples", "1", *args])
        assert bad.exit_code != 0 and message in bad.output and "Traceback" not in bad.output
