"""Entry point: `clipag COMMAND ...` (also `python -m clipag`)."""

from __future__ import annotations

import click

from clipag import __version__

from .common import Group
from .crossflow_cmd import crossflow
from .generate_cmd import draw_cmd, generate_cmd
from .misc_cmd import bench, eval_cmd, init
from .models_cmd import models_cmd
from .robustify_cmd import robustify_cmd
from .world_cmd import world


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clipag")
def cli():
    """Generator-free text-to-image synthesis with a robust CLIP's gradients."""


cli.add_command(generate_cmd, "generate")
cli.add_command(draw_cmd, "draw")
cli.add_command(robustify_cmd, "robustify")
cli.add_command(eval_cmd, "eval")
cli.add_command(models_cmd, "models")
cli.add_command(init, "init")
cli.add_command(world, "world")
cli.add_command(crossflow, "crossflow")
cli.add_command(bench, "bench")


def main():
    cli(prog_name="clipag")
