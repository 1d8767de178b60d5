"""`clipag robustify` and `clipag eval`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from clipag.train.attacks import ThreatModel
from clipag.device import resolve_device
from clipag.errors import ClipagError
from clipag.train.robustify import TrainConfig, robustify

from .common import Command, console, model_options
from .params import Real


@click.command(cls=Command)
@click.argument("data")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="final checkpoint (.safetensors); training state goes beside it")
@model_options(default_hint="world-robust")
@click.option("--objective", type=click.Choice(["contrastive", "tecoa", "fare"]),
              default="contrastive", show_default=True)
@click.option("--norm", type=click.Choice(["l2", "linf"]), default="l2", show_default=True)
@click.option("--eps", type=Real(), default=1.0, show_default=True,
              help="attack radius in [0,1] pixel units (fractions like 4/255 work); 0 = plain training")
@click.option("--attack-steps", type=int, default=3, show_default=True)
@click.option("--attack-step-size", type=Real(), default=None, help="[default: 2.5*eps/steps]")
@click.option("--no-random-start", is_flag=True, help="start PGD at the clean image")
@click.option("--pag-weight", type=float, default=0.0, show_default=True,
              help="add W times a gradient-alignment term: the image gradient of the score for "
                   "a sibling's caption should point at that sibling (needs --group K siblings "
                   "from `clipag world export --siblings K`)")
@click.option("--clean-weight", type=float, default=0.0, show_default=True,
              help="add this times the loss on the clean images (TRADES-style; keeps what the "
                   "model knows on clean data)")
@click.option("--noise", type=Real(), default=0.0, show_default=True,
              help="std of Gaussian pixel noise added to every training image (with --eps 0: "
                   "noise training, as randomized smoothing does; generate with --noise alike)")
@click.option("--train-text", is_flag=True, help="also train the text tower and temperature")
@click.option("--steps", type=int, default=1000, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True, help="global batch")
@click.option("--accum", type=int, default=1, show_default=True, help="gradient accumulation")
@click.option("--lr", type=float, default=1e-5, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--warmup", type=int, default=0, show_default=True)
@click.option("--grad-clip", type=float, default=0.0, show_default=True)
@click.option("--save-every", type=int, default=100, show_default=True)
@click.option("--log-every", type=int, default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--holdout", type=float, default=0.0, show_default=True,
              help="fraction of the data kept out for evaluation")
@click.option("--group", type=int, default=1, show_default=True,
              help="keep runs of K consecutive items in one batch: hard-negative siblings "
                   "from `clipag world export --siblings K`")
@click.option("--template", default="a photo of a {}", show_default=True,
              help="caption template for class folders")
@click.option("--resume", is_flag=True, help="continue from the saved training state")
@click.option("--overwrite", is_flag=True, help="replace an existing output")
@click.option("--half", is_flag=True, help="store the final weights in fp16 (half the size)")
@click.option("--quiet", "-q", is_flag=True)
def robustify_cmd(data, out, spec, device, objective, norm, eps, attack_steps, attack_step_size,
                  no_random_start, pag_weight, clean_weight, noise, train_text, steps, batch_size,
                  accum, lr, weight_decay, warmup, grad_clip, save_every, log_every, seed, holdout,
                  group, template, resume, overwrite, half, quiet):
    """Adversarially fine-tune a CLIP on DATA (folder, manifest, class folders or tar shards)."""
    if spec.model is None and spec.checkpoint is None:
        raise ClipagError("name the model to train: --model ARCH --pretrained TAG|FILE|none, "
                          "a preset, or --checkpoint FILE")
    out_path = Path(out)
    if overwrite and out_path.exists():
        out_path.unlink()
    threat = ThreatModel(norm, eps, attack_steps, attack_step_size, not no_random_start)
    config = TrainConfig(data=data, out=out, objective=objective, threat=threat,
                         train_text=train_text, pag_weight=pag_weight,
                         clean_weight=clean_weight, noise=noise, steps=steps,
                         batch_size=batch_size, accum=accum,
                         lr=lr, weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip,
                         save_every=save_every, log_every=log_every, seed=seed, holdout=holdout,
                         group=group, template=template, resume=resume, half=half)
    dev = resolve_device(device)
    with Progress(TextColumn("[bold]robustify"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                  disable=quiet) as progress:
        task = progress.add_task("train", total=steps, info="")

        def on_log(log):
            progress.update(task, info=f"loss {log.loss:.4f} clean {log.clean_loss:.4f} "
                                      f"lr {log.lr:.2e} {log.images_per_s:.0f} img/s"
                                      + (f" skipped {log.skipped}" if log.skipped else ""))
            if quiet is False and not console.is_terminal:
                console.print(f"step {log.step} loss {log.loss:.4f} {log.images_per_s:.0f} img/s")

        path = robustify(config, spec, dev, on_log=on_log,
                         on_step=lambda s: progress.update(task, completed=s))
    click.echo(str(path))
