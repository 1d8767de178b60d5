"""`clipag world ...`: the procedural captioned world."""

from __future__ import annotations

import click

from clipag.world import scenes as world_lib

from .common import Command


@click.group()
def world():
    """The procedural world of captioned shapes and digits."""


@world.command("export", cls=Command)
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n", "count", type=int, default=20000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=int, default=64, show_default=True)
@click.option("--layout", type=click.Choice(["captions", "classes", "shards"]), default="captions",
              show_default=True)
@click.option("--digit-fraction", type=float, default=0.1, show_default=True)
@click.option("--siblings", type=int, default=1, show_default=True,
              help="Write items in groups of K that differ only in shape (hard negatives); "
                   "train on them with `clipag robustify --group K`.")
@click.option("--class-by", default="shape", show_default=True,
              help="With --layout classes: the attributes that name a class, a comma-separated "
                   "subset of color,shape,background (e.g. color,shape: 'red circle').")
@click.option("--object-scale", type=float, default=1.0, show_default=True,
              help="Multiply every object's extent (0.5-1.6): a world of bigger shapes.")
def export(out, count, seed, size, layout, digit_fraction, siblings, class_by, object_scale):
    """Write COUNT world images in a layout `clipag robustify` reads."""
    config = world_lib.WorldConfig(seed=seed, size=size, digit_fraction=digit_fraction,
                                   siblings=siblings, object_scale=object_scale)
    by = tuple(part.strip() for part in class_by.split(",") if part.strip())
    click.echo(str(world_lib.export(out, count, config, layout, class_by=by)))
