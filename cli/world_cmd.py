"""`clipag world ...`: the procedural captioned world."""

from __future__ import annotations

import dataclasses

import click

from clipag.world import scenes as world_lib

from .common import Command
from .params import Count, Real

_WORLD = {f.name: f.default for f in dataclasses.fields(world_lib.WorldConfig)}


@click.group()
def world():
    """The procedural world of captioned shapes and digits."""


@world.command("export", cls=Command)
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n", "count", type=Count(1, 10_000_000), default=20000, show_default=True,
              help="items to write (a multiple of --siblings)")
@click.option("--seed", type=Count(0), default=_WORLD["seed"], show_default=True)
@click.option("--size", type=Count(8, 4096), default=_WORLD["size"], show_default=True,
              help="image side in pixels")
@click.option("--layout", type=click.Choice(["captions", "classes", "shards"]), default="captions",
              show_default=True)
@click.option("--digit-fraction", type=Real(0, 1), default=_WORLD["digit_fraction"],
              show_default=True)
@click.option("--siblings", type=Count(1, 1024), default=_WORLD["siblings"], show_default=True,
              help="Write items in groups of K that differ only in shape (hard negatives); "
                   "train on them with `clipag robustify --group K`.")
@click.option("--class-by", default="shape", show_default=True,
              help="With --layout classes: the attributes that name a class, a comma-separated "
                   "subset of color,shape,background (e.g. color,shape: 'red circle').")
@click.option("--object-scale", type=Real(0.5, world_lib.MAX_OBJECT_SCALE),
              default=_WORLD["object_scale"], show_default=True,
              help="Multiply every object's extent: a world of bigger shapes.")
def export(out, count, seed, size, layout, digit_fraction, siblings, class_by, object_scale):
    """Write COUNT world images in a layout `clipag robustify` reads, into a new folder OUT
    (it appears only when complete)."""
    config = world_lib.WorldConfig(seed=seed, size=size, digit_fraction=digit_fraction,
                                   siblings=siblings, object_scale=object_scale)
    by = tuple(part.strip() for part in class_by.split(",") if part.strip())
    click.echo(str(world_lib.export(out, count, config, layout, class_by=by)))
