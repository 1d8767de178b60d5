"""Shared CLI pieces: one-line errors, model options, console."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import click
from rich.console import Console

from clipag.errors import ClipagError


console = Console(stderr=True)


class Command(click.Command):
    """A click command whose ClipagError and Ctrl-C end in one line, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClipagError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished outputs were kept; rerun to resume", err=True)
            sys.exit(130)
        except torch_oom() as exc:  # noqa: B030 - built lazily to keep import light
            click.echo(f"error: out of memory ({str(exc).splitlines()[0][:160]}); lower "
                       "--view-batch (views through the model at a time), --views, "
                       "--batch-size or --size", err=True)
            sys.exit(3)


def torch_oom():
    import torch

    return torch.OutOfMemoryError


class Group(click.Group):
    """The top-level group: a usage error (a value out of its declared range, a missing
    argument) is one line naming the option, like every other error, not click's three."""

    command_class = Command
    group_class = type

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) else prog_name or "clipag"
            hint = f" (see {where} --help)" if isinstance(exc, click.UsageError) else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


class TrainingProgress:
    """A training command's progress bar, its resume line and what its Ctrl-C says. The bar
    starts with the first step (or a resume), so an error found while the data, model and
    saved state are checked is the only line printed; an interruption promises a resume
    only when a training state is on disk."""

    def __init__(self, label: str, steps: int, out: str | Path, save_every: int,
                 overwrite: bool, quiet: bool):
        self.out, self.save_every, self.overwrite = Path(out), save_every, overwrite
        self.quiet = quiet
        self.kept: int | None = None  # the step the state on disk holds for this run
        self.trained = False
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), console=console, disable=quiet)
        self.task = self.bar.add_task("train", total=steps, info="")

    def info(self, text: str) -> None:
        self.bar.update(self.task, info=text)

    def on_state(self, step: int, path: Path) -> None:
        if not self.trained and not self.quiet:  # before the first step: a resume
            console.print(f"resuming {path} at step {step}")
        self.kept = step

    def on_step(self, step: int) -> None:
        self.trained = True
        if not self.bar.live.is_started:
            self.bar.start()
        self.bar.update(self.task, completed=step)

    def run(self, train: Callable[[], Path]) -> Path:
        """`train()`, the bar stopped after it; Ctrl-C ends in one line saying what is kept."""
        try:
            try:
                return train()
            finally:
                if self.bar.live.is_started:
                    self.bar.stop()
        except KeyboardInterrupt:
            click.echo(f"interrupted: {self.interrupted()}", err=True)
            sys.exit(130)

    def interrupted(self) -> str:
        from clipag.train.common import resume_hint, state_path

        saved = state_path(self.out)
        if saved.exists() and (self.kept is not None or not self.overwrite):
            step = f" of step {self.kept}" if self.kept is not None else ""
            return (f"the training state{step} is kept in {saved}; "
                    f"{resume_hint(self.overwrite)} to resume")
        if self.save_every:
            return f"no training state yet (one is kept every --save-every {self.save_every} steps)"
        return "no training state is kept with --save-every 0"


def model_options(default_hint: str = "world-robust", mix: bool = False):
    """--model/--pretrained/--checkpoint/--trust-checkpoint/--device; `mix`: --model may name
    a guide mix (A*3+B)."""
    mixes = "; A*3+B mixes guides (names or files) with weights 3:1" if mix else ""

    def wrap(f):
        options = [
            click.option("--model", "-m", default=None,
                         help=f"preset, open_clip architecture or hf-hub:ID{mixes} "
                              f"[default: {default_hint}]"),
            click.option("--pretrained", default=None,
                         help="open_clip pretrained tag, URL, file or 'none' (with an architecture)"),
            click.option("--checkpoint", "-c", default=None, type=click.Path(dir_okay=False),
                         help="local weights: clipag .safetensors, open_clip .pt/.bin/.safetensors"),
            click.option("--trust-checkpoint", is_flag=True,
                         help="allow checkpoints that run code when loaded (pickles, TorchScript)"),
            click.option("--device", default="auto", show_default=True,
                         help="auto, cpu, cuda or cuda:N"),
        ]
        for option in reversed(options):
            f = option(f)

        @functools.wraps(f)
        def inner(*args, model, pretrained, checkpoint, trust_checkpoint, **kwargs):
            from clipag.load import ModelSpec  # torch: only once a command runs

            spec = ModelSpec(model, pretrained, checkpoint, trust_checkpoint)
            return f(*args, spec=spec, **kwargs)

        return inner

    return wrap


def bench_view_options(f):
    """The views and pixel-penalty settings both benchmarks share (--views, --patch-views,
    --patch-weight, --jitter, --cutout, --noise, --tv, --tv-wrap, --tv-by-side, --anchor,
    --anchor-side, --scales, --size), handed to the command as one `settings` dict of
    GenerateConfig fields (views built and validated here)."""
    from clipag.augment import ViewConfig

    from .params import ANCHOR_DEFAULT, ANCHOR_SIDE_DEFAULT, setting_option

    options = [  # the same declared ranges and defaults as `clipag generate`
        setting_option("views", help="global views per step"),
        setting_option("patch_views", help="random-crop views per step"),
        setting_option("patch_weight"),
        setting_option("jitter", help="colour-jitter strength of the views (1 = reference)"),
        setting_option("cutout", help="side of the square each view blanks (0 = none)"),
        setting_option("noise", help="per-view pixel noise std"),
        setting_option("tv", help="total-variation penalty on the pixels (0 = off)"),
        setting_option("tv_wrap", help="the penalty wraps around the borders"),
        setting_option("tv_by_side", help="with --scales: the penalty weighted side/size per stage"),
        setting_option("anchor", show_default=ANCHOR_DEFAULT,
                       help="trust region: penalty on moving the layout away from the start "
                            "image's (0 = off)"),
        setting_option("anchor_side", show_default=ANCHOR_SIDE_DEFAULT,
                       help="the grid side at which --anchor compares layouts"),
        setting_option("scales", show_default=False, help="coarse-to-fine sides, e.g. 16,32"),
        setting_option("size", show_default="the guide's input",
                       help="side of the optimised image"),
    ]
    for option in reversed(options):
        f = option(f)

    @functools.wraps(f)
    def inner(*args, views, patch_views, patch_weight, jitter, cutout, noise, tv, tv_wrap,
              tv_by_side, anchor, anchor_side, scales, size, **kwargs):
        view_config = ViewConfig(global_views=views, patch_views=patch_views, cutout=cutout,
                                 noise=noise).with_jitter(jitter)
        settings = dict(views=view_config, patch_weight=patch_weight, tv_weight=tv,
                        tv_wrap=tv_wrap, tv_by_side=tv_by_side, anchor=anchor,
                        anchor_side=anchor_side, scales=scales, size=size)
        return f(*args, settings=settings, **kwargs)

    return inner
