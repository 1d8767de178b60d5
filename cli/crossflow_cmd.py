"""`clipag crossflow train` and `clipag crossflow sample`."""

from __future__ import annotations

from pathlib import Path

import click

from clipag.flow.crossflow import (CONDITIONS, CONTRASTS, DEFAULT_FLOW, NET_SIZES, NETS,
                                   REGULARISERS, TEXT_INPUTS, TIME_SAMPLINGS, FlowInit, LossWeights,
                                   SampleConfig, load_flow, text_guide_for)
from clipag.batch import check_writable
from clipag.flow.train import FlowTrainConfig, train_flow
from clipag.device import resolve_device
from clipag.train.data import DEFAULT_TEMPLATE
from clipag.errors import ClipagError
from clipag.init import upsample
from clipag.output import save_png, slug
from clipag.prompts import parse_prompt

from .common import Command, Group, TrainingProgress, console, model_options
from .params import SEED_MAX, Count, Real


@click.group(cls=Group)
def crossflow():
    """CrossFlow: a noise-free text-to-image flow, used as a learned initializer."""


@crossflow.command("train", cls=Command)
@click.argument("data")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="final checkpoint (.safetensors); training state goes beside it")
@model_options(default_hint="world-robust")
@click.option("--resolution", type=Count(4, 256), default=16, show_default=True,
              help="image side of the flow")
@click.option("--net", type=click.Choice(NETS), default=FlowTrainConfig.net, show_default=True,
              help="velocity network: a convolutional U-Net, or a plain transformer over pixel "
              "patches (the paper's)")
@click.option("--width", type=Count(8, 4096), default=None,
              help="transformer width or U-Net base channels "
              f"[default: {', '.join(f'{k} {v[0]}' for k, v in NET_SIZES.items())}]")
@click.option("--depth", type=Count(1, 64), default=None,
              help="transformer layers or U-Net residual blocks per level "
              f"[default: {', '.join(f'{k} {v[1]}' for k, v in NET_SIZES.items())}]")
@click.option("--text-input", type=click.Choice(TEXT_INPUTS), default=FlowTrainConfig.text_input,
              show_default=True, help="what the text encoder reads: the pooled CLIP embedding, "
              "or the text tower's token sequence (the paper's; keeps words the pooled vector "
              "blurs)")
@click.option("--condition", type=click.Choice(CONDITIONS), default=FlowTrainConfig.condition,
              show_default=True, help="what the velocity network reads besides x_t: none (the "
              "paper's: the text only through z0) or mean (also the VE's mean)")
@click.option("--steps", type=Count(1), default=2000, show_default=True)
@click.option("--batch-size", type=Count(1, 1 << 20), default=128, show_default=True,
              help="global batch")
@click.option("--lr", type=Real(0, 1, low_open=True), default=5e-4, show_default=True)
@click.option("--weight-decay", type=Real(0, 10), default=0.01, show_default=True)
@click.option("--warmup", type=Count(0), default=100, show_default=True)
@click.option("--kl-weight", type=Real(0, 1e3), default=LossWeights.kl, show_default=True,
              help="weight of the VE regulariser")
@click.option("--regulariser", type=click.Choice(REGULARISERS), default=LossWeights.regulariser,
              show_default=True, help="official: CrossFlow's (variance held near 1, mean nearly "
              "free); standard: KL to N(0, I) per element (the first flows; use --kl-weight 1e-3)")
@click.option("--contrastive-weight", type=Real(0, 1e3), default=LossWeights.contrastive,
              show_default=True)
@click.option("--contrast", type=click.Choice(CONTRASTS), default="latent", show_default=True,
              help="latent: z0 itself against the image mapped to its size (official); "
              "projection: both projected to 64-d (the first flows; --contrastive-weight 0.1)")
@click.option("--sigma-min", type=Real(0, 1, high_open=True), default=LossWeights.sigma_min,
              show_default=True, help="the path's end noise: x_t = (1 - (1 - s) t) z0 + t x1")
@click.option("--time-sampling", "time_sampling", type=click.Choice(TIME_SAMPLINGS),
              default=LossWeights.time, show_default=True,
              help="training times: uniform, or square (t = u^2: more near the text latent)")
@click.option("--ema", type=Real(0, 1, high_open=True), default=FlowTrainConfig.ema,
              show_default=True, help="decay of the weights' moving average that the file "
              "stores (0 = the last weights)")
@click.option("--uncond", type=Real(0, 1, high_open=True), default=LossWeights.uncond,
              show_default=True, help="share of indicator-0 pairs (for classifier-free guidance)")
@click.option("--save-every", type=Count(0), default=100, show_default=True)
@click.option("--log-every", type=Count(1), default=50, show_default=True)
@click.option("--seed", type=Count(0), default=0, show_default=True)
@click.option("--template", default=DEFAULT_TEMPLATE, show_default=True,
              help="caption template for class folders")
@click.option("--resume", is_flag=True,
              help="insist on continuing the saved training state (a rerun of the same command "
                   "resumes it anyway; this makes a missing state an error)")
@click.option("--overwrite", is_flag=True,
              help="start over: ignore a saved state and replace an existing output (each is "
                   "replaced only when its new version is complete)")
@click.option("--half", is_flag=True, help="store the final weights in fp16")
@click.option("--quiet", "-q", is_flag=True)
def train_cmd(data, out, spec, device, resolution, net, width, depth, text_input, condition, steps,
              batch_size, lr, weight_decay, warmup, kl_weight, regulariser, contrastive_weight,
              contrast, sigma_min, time_sampling, ema, uncond, save_every, log_every, seed,
              template, resume, overwrite, half, quiet):
    """Train a CrossFlow on DATA, with text embeddings from a CLIP's text tower (--model).

    Rerunning an interrupted command resumes its saved state; a state or output from other
    settings is refused (--overwrite starts over). Nothing existing is replaced before its
    replacement is complete."""
    config = FlowTrainConfig(
        data=data, out=out, resolution=resolution, net=net, width=width, depth=depth,
        text_input=text_input, condition=condition, steps=steps, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup=warmup,
        weights=LossWeights(kl_weight, contrastive_weight, uncond, regulariser, sigma_min,
                            time_sampling),
        contrast=contrast, ema=ema, save_every=save_every, log_every=log_every, seed=seed,
        template=template, resume=resume, overwrite=overwrite, half=half)
    config.validate()
    dev = resolve_device(device)
    progress = TrainingProgress("crossflow", steps, out, save_every, overwrite, quiet)

    def on_log(log):
        info = (f"loss {log.loss:.4f} flow {log.flow:.4f} kl {log.kl:.3f} "
                f"con {log.contrastive:.3f} {log.images_per_s:.0f} img/s")
        progress.info(info)
        if not quiet and not console.is_terminal:
            console.print(f"step {log.step} {info}")

    path = progress.run(lambda: train_flow(config, spec, dev, on_log=on_log,
                                           on_step=progress.on_step, on_state=progress.on_state))
    click.echo(str(path))


@crossflow.command("sample", cls=Command)
@click.argument("prompt")
@click.option("--flow", "flow_path", default=None, type=click.Path(dir_okay=False),
              help="CrossFlow checkpoint [default: the embedded world flow]")
@click.option("--outdir", "-d", default="outputs", show_default=True, type=click.Path(file_okay=False))
@click.option("--samples", type=Count(1, 10_000), default=4, show_default=True,
              help="images (seeds seed..)")
@click.option("--seed", type=Count(0, SEED_MAX - 10_000), default=0, show_default=True)
@click.option("--steps", type=Count(1, 10_000), default=SampleConfig.steps, show_default=True,
              help="ODE steps")
@click.option("--guidance", type=Real(0, 100), default=SampleConfig.guidance, show_default=True)
@click.option("--method", type=click.Choice(["euler", "heun"]), default="euler", show_default=True)
@click.option("--temperature", type=Real(0, 10), default=SampleConfig.temperature,
              show_default=True, help="spread of the text latent (0 = its mean: one image per "
              "prompt; 0.5 suits the embedded flow, the paper samples at 1)")
@click.option("--size", type=Count(8, 4096), default=None, help="upsample the output to this side")
@click.option("--overwrite", is_flag=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
def sample_cmd(prompt, flow_path, outdir, samples, seed, steps, guidance, method, temperature,
               size, overwrite, device):
    """Sample low-resolution images of PROMPT from a CrossFlow alone (no refiner)."""
    import torch

    if samples < 1:
        raise ClipagError("--samples must be >= 1")
    if size is not None and not 8 <= size <= 4096:
        raise ClipagError(f"impossible size {size}: use 8..4096 pixels")
    config = SampleConfig(steps, guidance, method, temperature)
    config.validate()
    check_writable(Path(outdir))
    dev = resolve_device(device)
    model, meta = load_flow(Path(flow_path) if flow_path else DEFAULT_FLOW, dev)
    text = text_guide_for(meta, dev)
    paths = [Path(outdir) / f"{slug(prompt)}-crossflow-s{seed + k}.png" for k in range(samples)]
    taken = [p for p in paths if p.exists()]
    if taken and not overwrite:
        raise ClipagError(f"{taken[0]} exists; pass --overwrite to replace it")
    parsed = parse_prompt(prompt)
    drafter = FlowInit(model, text, config)
    for k, path in enumerate(paths):
        image = drafter.draft(parsed, seed + k).cpu()
        if size:
            image = upsample(image[None], size)[0]
        try:
            save_png(path, image, {"prompt": prompt, "seed": seed + k, "init": "crossflow",
                                   "flow": meta.get("name"), "steps": steps,
                                   "guidance": guidance, "method": method,
                                   "temperature": temperature, "torch": torch.__version__})
        except OSError as exc:
            previous = " (the previous file is unchanged)" if path.exists() else ""
            done = f"the {k} image{'s' * (k != 1)} before it" if k else "no image"
            raise ClipagError(f"could not write {path}{previous}: {exc.strerror or exc}; "
                              f"kept: {done}") from None
        click.echo(str(path))
