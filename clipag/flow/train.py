"""`clipag crossflow train`: fit a CrossFlow on any dataset `clipag robustify` reads, with
text embeddings from a frozen CLIP text tower; checkpoints and exact resume like
robustify, and torchrun data parallelism (each rank its share of the global batch,
gradients averaged). An exponential moving average of the weights is kept beside them
(and resumed with them); the final file stores the average, which sampling uses."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from torch import nn

from .crossflow import (CONTRASTS, EMA, NET_SIZES, NETS, TEXT_INPUTS, CrossFlow, FlowConfig,
                        LossWeights, flow_loss, save_flow, text_probe)
from ..train.data import DEFAULT_TEMPLATE, BatchStream, load_all, open_dataset
from ..errors import ClipagError
from ..load import ModelSpec, load_spec
from ..models import Guide
from ..train.common import (TrainingState, average_gradients, barrier, check_writable,
                            clean_stale_parts, finished, init_distributed, lr_factor,
                            state_path)


@dataclass
class FlowTrainConfig:
    data: str
    out: str
    # the architecture's defaults are FlowConfig's and NET_SIZES', written once
    resolution: int = FlowConfig.resolution
    # the U-Net, not FlowConfig's transformer (the paper's): on the world the transformer drew
    # specks over the background where the U-Net drew objects, on 2 CPU threads and on an
    # H200 alike (docs/experiments.md, rows I20-I36, G6)
    net: str = "unet"
    width: int | None = None  # None: NET_SIZES[net]
    depth: int | None = None
    text_input: str = FlowConfig.text_input
    condition: str = FlowConfig.condition
    steps: int = 2000
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 100
    grad_clip: float = 1.0
    weights: LossWeights = LossWeights()
    contrast: str = "latent"  # FlowConfig.contrast
    ema: float = 0.999  # decay of the weights' moving average (0 = keep the last weights)
    save_every: int = 0
    log_every: int = 50
    seed: int = 0
    template: str = DEFAULT_TEMPLATE
    resume: bool = False  # insist on continuing a saved state (a matching one is resumed anyway)
    overwrite: bool = False  # start over; the old output is replaced only by a complete new one
    half: bool = False

    def validate(self) -> None:
        if self.net not in NETS:
            raise ClipagError(f"unknown --net {self.net!r}: {' or '.join(NETS)}")
        if self.text_input not in TEXT_INPUTS:
            raise ClipagError(f"unknown --text-input {self.text_input!r}: "
                              f"{' or '.join(TEXT_INPUTS)}")
        for name in ("steps", "batch_size", "resolution", "width", "depth", "log_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ClipagError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("warmup", "save_every"):
            if getattr(self, name) < 0:
                raise ClipagError(f"--{name.replace('_', '-')} must be >= 0")
        for name in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise ClipagError(f"--{name.replace('_', '-')} must be a finite number "
                                  f"{'> 0' if name == 'lr' else '>= 0'}, got {value}")
        if not 0 <= self.ema < 1:
            raise ClipagError(f"--ema must be in [0, 1), got {self.ema}")
        if self.contrast not in CONTRASTS:
            raise ClipagError(f"unknown --contrast {self.contrast!r}: {' or '.join(CONTRASTS)}")
        self.weights.validate()
        self.architecture(1, 1).validate()
        if self.resume and self.overwrite:
            raise ClipagError("--resume and --overwrite contradict each other: pick one")

    def architecture(self, text_dim: int, text_len: int = 0) -> FlowConfig:
        width, depth = NET_SIZES[self.net]
        return FlowConfig(text_dim=text_dim, resolution=self.resolution, net=self.net,
                          width=self.width or width, depth=self.depth or depth,
                          contrast=self.contrast, text_input=self.text_input,
                          condition=self.condition,
                          text_len=text_len if self.text_input == "tokens" else 0)


@dataclass
class FlowLog:
    step: int
    loss: float
    flow: float
    kl: float
    contrastive: float
    lr: float
    images_per_s: float


class Trainee(nn.Module):
    """What a run trains and resumes: the flow and the moving average of its weights."""

    def __init__(self, model: CrossFlow, ema: float):
        super().__init__()
        self.model = model
        self.ema = EMA(model, ema)


def check_readable(dataset, resolution: int) -> None:
    """Stop before training when the dataset yields no readable image: the batch stream
    would wait for one forever. (load_all raises a ClipagError when it finds none.)"""
    load_all(dataset, resolution, limit=1)


class TextCache:
    """Caption -> the VE's input from a frozen text tower (`encode`: the pooled unit embedding
    or the token states), each caption encoded once while the table stays under `budget`
    bytes (a token entry is L x W floats: 158 KB for ViT-B-32's tower); beyond it, encoded
    per batch."""

    def __init__(self, encode: Callable[[list[str]], torch.Tensor], budget: int = 1 << 30):
        self.encode, self.budget, self.limit = encode, budget, None
        self.table: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        new = sorted({c for c in captions if c not in self.table})
        fresh = {}
        if new:
            with torch.no_grad():
                fresh = dict(zip(new, self.encode(new)))
            if self.limit is None:
                entry = next(iter(fresh.values()))
                self.limit = max(1, self.budget // (entry.numel() * entry.element_size()))
            room = max(0, self.limit - len(self.table))
            self.table.update(list(fresh.items())[:room])
        return torch.stack([self.table[c] if c in self.table else fresh[c] for c in captions])


def text_model_name(spec: ModelSpec, guide: Guide) -> str:
    """How the checkpoint names its text model: the checkpoint path or the preset/arch name."""
    return str(Path(spec.checkpoint).resolve()) if spec.checkpoint else (spec.model or guide.name)


def run_record(config: FlowTrainConfig, spec: ModelSpec, guide: Guide, arch: FlowConfig,
               dataset) -> dict:
    """What a resumable state belongs to: every setting that shapes the training trajectory
    (not logging, saving, storage precision or the device), one plain value per field, named
    as the CLI option it comes from where there is one, so a refusal names the option."""
    weights = {_WEIGHT_OPTIONS.get(k, k): v for k, v in asdict(config.weights).items()}
    return {"data": dataset.fingerprint(), "text_model": text_model_name(spec, guide),
            "pretrained": spec.pretrained, **asdict(arch), **weights, "steps": config.steps,
            "batch_size": config.batch_size, "lr": config.lr,
            "weight_decay": config.weight_decay, "warmup": config.warmup,
            "grad_clip": config.grad_clip, "ema": config.ema, "seed": config.seed,
            "template": config.template}


_WEIGHT_OPTIONS = {"kl": "kl_weight", "contrastive": "contrastive_weight",
                   "time": "time_sampling"}  # LossWeights field: `crossflow train` option


def train_flow(config: FlowTrainConfig, text_spec: ModelSpec, device: torch.device,
               on_log: Callable[[FlowLog], None] | None = None,
               on_step: Callable[[int], None] | None = None,
               on_state: Callable[[int, Path], None] | None = None) -> Path:
    """Train, keep a resumable state every `save_every` steps, and write the flow, as
    `clipag.train.robustify.robustify` does: everything is checked before the first step,
    a saved state of this run is resumed and one of other settings refused, and nothing
    that exists is replaced until its replacement is complete. `on_state(step, path)` hears
    which step the state on disk holds, whenever that changes (resumed or saved)."""
    started = time.time()
    config.validate()
    rank, world = init_distributed(device)
    out = Path(config.out)
    if rank == 0:
        clean_stale_parts((out, state_path(out)), started)
    if finished(out, config.resume, config.overwrite):
        return out
    check_writable(out)
    torch.manual_seed(config.seed)
    text_guide = load_spec(text_spec, device, quiet=rank != 0)
    text_guide.model.requires_grad_(False)
    encode = text_guide.encode_text_tokens if config.text_input == "tokens" else \
        text_guide.encode_texts
    with torch.no_grad():
        shape = encode(["a photo"]).shape  # (1, D) or (1, L, W)
    texts = TextCache(encode)
    dataset = open_dataset(config.data, config.template)
    check_readable(dataset, config.resolution)
    arch = config.architecture(shape[-1], shape[1] if len(shape) == 3 else 0)
    model = CrossFlow(arch).to(device).train()
    trainee = Trainee(model, config.ema).to(device)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup, config.steps))
    state = TrainingState(out, run_record(config, text_spec, text_guide, arch, dataset), trainee,
                          optimizer, scheduler, config.overwrite, on_state)
    step, position = state.resume(config.steps)
    stream = BatchStream(dataset, config.batch_size, config.resolution, seed=config.seed,
                         position=position, rank=rank, world=world)
    batches = iter(stream)
    tick, seen = time.perf_counter(), 0
    while step < config.steps:
        images, captions, _ = next(batches)
        images = images.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = flow_loss(model, texts(captions), images, config.weights)
        loss.total.backward()
        average_gradients(params)
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        trainee.ema.update(model)
        step += 1
        seen += len(images)
        if on_log and rank == 0 and (step % config.log_every == 0 or step == config.steps):
            elapsed = time.perf_counter() - tick
            on_log(FlowLog(step, loss.total.item(), loss.flow.item(), loss.kl.item(),
                           loss.contrastive.item(), scheduler.get_last_lr()[0],
                           seen * world / max(elapsed, 1e-9)))
            tick, seen = time.perf_counter(), 0
        if config.save_every and step % config.save_every == 0 and step < config.steps and rank == 0:
            state.save(step, stream.position)
        if on_step:
            on_step(step)
    if rank == 0:
        meta = {"name": out.stem, "text_model": text_model_name(text_spec, text_guide),
                "text_probe": text_probe(text_guide.encode_texts), "steps": config.steps,
                "batch_size": config.batch_size, "lr": config.lr, "seed": config.seed,
                "data": str(config.data), "data_fingerprint": dataset.fingerprint(),
                "loss_weights": asdict(config.weights), "ema": config.ema,
                "weights": "ema" if config.ema else "last"}
        final = trainee.ema.average if config.ema else model
        state.finish(lambda: save_flow(out, final, meta, half=config.half), step,
                     stream.position)
    barrier()
    return out
