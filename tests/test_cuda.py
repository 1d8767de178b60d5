"""Checks that need a CUDA device (bench/gpu.sh runs them on a GPU box; they skip elsewhere):
fp16 autocast generation agrees with fp32, AMP robustify trains, and with two GPUs the
torchrun paths (NCCL robustify, data-parallel generate) run."""

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipag.augment import ViewConfig, Views
from clipag.generate import GenerateConfig, encode_targets, optimise, weighted_distance
from clipag.load import ModelSpec, load_model
from clipag.prompts import parse_prompt
from clipag.train.attacks import ThreatModel
from clipag.train.robustify import TrainConfig, robustify
from clipag.world import scenes as world

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")

CONFIG = GenerateConfig(steps=4, lr=0.01, init="noise", log_every=1,
                        views=ViewConfig(global_views=8, patch_views=8))


@pytest.fixture
def cuda_guide(tiny_guide):
    return tiny_guide.to(torch.device("cuda"))


def _start(seed: int = 0, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 32, 32, generator=g).cuda()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fp16_autocast_pixel_gradient_matches_fp32(cuda_guide, seed):
    """The step's model pass under autocast: same views, same loss to fp16 precision, and the
    pixel gradient points the same way."""
    targets = encode_targets(cuda_guide, [parse_prompt("a red circle")])
    views = Views(cuda_guide.image_size, CONFIG.views).cuda()
    pixels = _start(seed)
    torch.manual_seed(seed)
    g, p = views(pixels)
    batch = torch.cat([g, p]).detach()
    grads, losses = [], []
    for amp in (False, True):
        x = batch.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            emb = cuda_guide.encode_images(x)
        loss = weighted_distance(emb.view(1, len(batch), -1), targets).sum()
        loss.backward()
        grads.append(x.grad.float())
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert abs(losses[0] - losses[1]) < 1e-2 * max(1.0, abs(losses[0]))
    assert _cos(grads[0], grads[1]) > 0.99


def test_fp16_autocast_steps_follow_the_fp32_steps(cuda_guide):
    """The library's whole step with amp on and off, same seed: the losses agree, the images
    move the same way."""
    targets = encode_targets(cuda_guide, [parse_prompt("a red circle")] * 2)
    start = _start(0, batch=2)
    runs = []
    for amp in (False, True):
        torch.manual_seed(0)
        losses = []
        result = optimise(cuda_guide, targets, start, dataclasses.replace(CONFIG, amp=amp),
                          lambda info, losses=losses: losses.append(info.loss.float().cpu()))
        runs.append((result, torch.stack(losses)))
    (fp32, loss32), (fp16, loss16) = runs
    assert torch.isfinite(loss16).all() and torch.isfinite(fp16.images).all()
    assert (loss16[0] - loss32[0]).abs().max() < 1e-2  # the same start and views
    assert (loss16 - loss32).abs().max() < 5e-2
    move32, move16 = fp32.images - start.cpu(), fp16.images - start.cpu()
    assert _cos(move32, move16) > 0.8


def test_amp_robustify_step_is_finite_and_changes_the_model(tmp_path, tiny_checkpoint):
    data = world.export(tmp_path / "data", 32, world.WorldConfig(seed=0, size=32,
                                                                 digit_fraction=0.0))
    logs = []
    out = tmp_path / "robust.safetensors"
    config = TrainConfig(data=str(data), out=str(out), steps=2, batch_size=8, lr=1e-3,
                         log_every=1, threat=ThreatModel("l2", 1.0, 2))
    robustify(config, ModelSpec(checkpoint=str(tiny_checkpoint)), torch.device("cuda"),
              on_log=logs.append)
    assert [log.step for log in logs] == [1, 2]
    assert all(math.isfinite(log.loss) and math.isfinite(log.clean_loss) for log in logs)
    before = load_model(str(tiny_checkpoint)).model.state_dict()
    after = load_model(str(out)).model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))


def _torchrun(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "clipag", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@two_gpus
def test_nccl_robustify_on_two_gpus(tmp_path, tiny_checkpoint):
    data = world.export(tmp_path / "data", 64, world.WorldConfig(seed=0, size=32,
                                                                 digit_fraction=0.0))
    out = tmp_path / "ddp.safetensors"
    result = _torchrun(["robustify", str(data), "-o", str(out), "--checkpoint",
                        str(tiny_checkpoint), "--steps", "2", "--batch-size", "8", "--eps", "1",
                        "--attack-steps", "1", "--device", "cuda", "-q"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    guide = load_model(str(out))
    assert all(torch.isfinite(v).all() for v in guide.model.state_dict().values()
               if v.is_floating_point())


@two_gpus
def test_data_parallel_generate_on_two_gpus_writes_each_image_once(tmp_path, tiny_checkpoint):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\na small cross\n")
    result = _torchrun(["generate", "-f", str(prompts), "-c", str(tiny_checkpoint), "-d",
                        str(tmp_path / "out"), "--steps", "3", "--views", "4", "--patch-views",
                        "4", "--init", "noise", "--device", "cuda", "-q"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    images = sorted((tmp_path / "out").glob("*.png"))
    assert len(images) == 4
    assert len({p.name for p in images}) == 4
    assert not list((tmp_path / "out").glob(".*.part"))
