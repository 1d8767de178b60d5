"""`clipag robustify`: adversarial fine-tuning. Every option's default is read from
`TrainConfig` / `ThreatModel`, where it is written once."""

from __future__ import annotations

import dataclasses

import click

from clipag.device import resolve_device
from clipag.errors import ClipagError
from clipag.train.attacks import ThreatModel
from clipag.train.robustify import OBJECTIVES, TrainConfig, robustify

from .common import Command, TrainingProgress, console, model_options
from .params import Count, Real

_TRAIN = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
_THREAT = {f.name: f.default for f in dataclasses.fields(ThreatModel)}
MODEL_HELP = ("the model to fine-tune (required: this or --checkpoint): a preset, or an "
              "open_clip architecture with --pretrained TAG|FILE|none")


def _default(name: str):
    return _TRAIN[name]


@click.command(cls=Command)
@click.argument("data")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="final checkpoint (.safetensors); training state goes beside it")
@model_options()
@click.option("--objective", type=click.Choice(OBJECTIVES), default=_default("objective"),
              show_default=True)
@click.option("--norm", type=click.Choice(["l2", "linf"]), default=_THREAT["norm"],
              show_default=True)
@click.option("--eps", type=Real(0), default=_THREAT["eps"], show_default=True,
              help="attack radius in [0,1] pixel units (fractions like 4/255 work); 0 = plain training")
@click.option("--attack-steps", type=Count(0, 100_000), default=_THREAT["steps"],
              show_default=True)
@click.option("--attack-step-size", type=Real(0, low_open=True), default=None,
              help="[default: 2.5*eps/steps]")
@click.option("--no-random-start", is_flag=True, help="start PGD at the clean image")
@click.option("--pag-weight", type=Real(0), default=_default("pag_weight"), show_default=True,
              help="add W times a gradient-alignment term: the image gradient of the score for "
                   "a sibling's caption should point at that sibling (needs --group K siblings "
                   "from `clipag world export --siblings K`)")
@click.option("--clean-weight", type=Real(0), default=_default("clean_weight"), show_default=True,
              help="add this times the loss on the clean images (TRADES-style; keeps what the "
                   "model knows on clean data)")
@click.option("--noise", type=Real(0, 1), default=_default("noise"), show_default=True,
              help="std of Gaussian pixel noise added to every training image (with --eps 0: "
                   "noise training, as randomized smoothing does; generate with --noise alike)")
@click.option("--train-text", is_flag=True, help="also train the text tower and temperature")
@click.option("--steps", type=Count(1), default=_default("steps"), show_default=True)
@click.option("--batch-size", type=Count(1), default=_default("batch_size"), show_default=True,
              help="global batch")
@click.option("--accum", type=Count(1), default=_default("accum"), show_default=True,
              help="gradient accumulation")
@click.option("--lr", type=Real(0, low_open=True), default=_default("lr"), show_default=True)
@click.option("--weight-decay", type=Real(0), default=_default("weight_decay"), show_default=True)
@click.option("--warmup", type=Count(0), default=_default("warmup"), show_default=True)
@click.option("--grad-clip", type=Real(0), default=_default("grad_clip"), show_default=True,
              help="clip the gradient norm to this (0 = off)")
@click.option("--save-every", type=Count(0), default=_default("save_every"), show_default=True,
              help="keep a resumable training state every N steps (0 = never)")
@click.option("--log-every", type=Count(1), default=_default("log_every"), show_default=True)
@click.option("--seed", type=Count(0), default=_default("seed"), show_default=True)
@click.option("--holdout", type=Real(0, 1, high_open=True), default=_default("holdout"),
              show_default=True, help="fraction of the data kept out for evaluation")
@click.option("--group", type=Count(1), default=_default("group"), show_default=True,
              help="keep runs of K consecutive items in one batch: hard-negative siblings "
                   "from `clipag world export --siblings K`")
@click.option("--template", default=_default("template"), show_default=True,
              help="caption template for class folders")
@click.option("--resume", is_flag=True,
              help="insist on continuing the saved training state (a rerun of the same command "
                   "resumes it anyway; this makes a missing state an error)")
@click.option("--overwrite", is_flag=True,
              help="start over: ignore a saved state and replace an existing output (each is "
                   "replaced only when its new version is complete)")
@click.option("--half", is_flag=True, help="store the final weights in fp16 (half the size)")
@click.option("--quiet", "-q", is_flag=True)
def robustify_cmd(data, out, spec, device, objective, norm, eps, attack_steps, attack_step_size,
                  no_random_start, pag_weight, clean_weight, noise, train_text, steps, batch_size,
                  accum, lr, weight_decay, warmup, grad_clip, save_every, log_every, seed, holdout,
                  group, template, resume, overwrite, half, quiet):
    """Adversarially fine-tune a CLIP on DATA (folder, manifest, class folders or tar shards).

    Rerunning an interrupted command resumes its saved state; a state or output from other
    settings is refused (--overwrite starts over). Nothing existing is replaced before its
    replacement is complete."""
    if spec.model is None and spec.checkpoint is None:
        raise ClipagError("name the model to train: --model ARCH --pretrained TAG|FILE|none, "
                          "a preset, or --checkpoint FILE")
    threat = ThreatModel(norm, eps, attack_steps, attack_step_size, not no_random_start)
    config = TrainConfig(data=data, out=out, objective=objective, threat=threat,
                         train_text=train_text, pag_weight=pag_weight,
                         clean_weight=clean_weight, noise=noise, steps=steps,
                         batch_size=batch_size, accum=accum,
                         lr=lr, weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip,
                         save_every=save_every, log_every=log_every, seed=seed, holdout=holdout,
                         group=group, template=template, resume=resume, overwrite=overwrite,
                         half=half)
    config.validate()
    dev = resolve_device(device)
    progress = TrainingProgress("robustify", steps, out, save_every, overwrite, quiet)

    def on_log(log):
        progress.info(f"loss {log.loss:.4f} clean {log.clean_loss:.4f} lr {log.lr:.2e} "
                      f"{log.images_per_s:.0f} img/s"
                      + (f" skipped {log.skipped}" if log.skipped else ""))
        if quiet is False and not console.is_terminal:
            console.print(f"step {log.step} loss {log.loss:.4f} {log.images_per_s:.0f} img/s")

    path = progress.run(lambda: robustify(config, spec, dev, on_log=on_log,
                                          on_state=progress.on_state, on_step=progress.on_step))
    click.echo(str(path))


for _param in robustify_cmd.params:  # model_options' help names a default; here it is required
    if _param.name == "model":
        _param.help = MODEL_HELP
