"""Shared CLI pieces: one-line errors, model options, console."""

from __future__ import annotations

import functools
import sys
from fractions import Fraction

import click
from rich.console import Console

from clipag.errors import ClipagError
from clipag.models import ModelSpec

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
                       "--views, --batch-size or --size", err=True)
            sys.exit(3)


def torch_oom():
    import torch

    return torch.OutOfMemoryError


class Group(click.Group):
    command_class = Command
    group_class = type


def number(text: str) -> float:
    """A float that may be written as a fraction: `4/255`."""
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise click.BadParameter(f"{text!r} is not a number") from None


class Number(click.ParamType):
    name = "number"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        return number(value)


class Sides(click.ParamType):
    """Comma-separated image sides: `16,32`; empty for none."""

    name = "sides"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of sides like 16,32", param, ctx)


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
            spec = ModelSpec(model, pretrained, checkpoint, trust_checkpoint)
            return f(*args, spec=spec, **kwargs)

        return inner

    return wrap
