"""`clipag models`: the presets, where each comes from, and what is cached."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from clipag.errors import ClipagError
from clipag.hub import cache_dir
from clipag.load import cache_status
from clipag.models import PRESETS

from .common import Command

@click.command(cls=Command)
@click.option("--verify", is_flag=True,
              help="re-hash every cached file against its recorded sha256 (or hub blob name)")
def models_cmd(verify):
    """List model presets, where each comes from, and what is available locally."""
    out = Console()
    table = Table(title=f"clipag model presets (cache: {cache_dir()})")
    for column in ("name", "arch", "robust", "status", "size", "source", "about"):
        table.add_column(column, overflow="fold")
    bad = []
    for preset in PRESETS.values():
        status = cache_status(preset, verify=verify)
        state = status.state
        if verify and status.state == "cached":
            state = "verified" if not status.problems else "CORRUPT"
        bad += status.problems
        source = preset.source if preset.base is None else f"{preset.source} over {preset.base}"
        table.add_row(preset.name, preset.arch, "yes" if preset.robust else "no", state,
                      f"{status.size / 2**20:.1f} MiB" if status.size else "-", source,
                      preset.about)
    out.print(table)
    if bad:
        raise ClipagError(f"{len(bad)} cached file(s) do not match their recorded sha256: "
                          + ", ".join(bad) + "; delete them and load again to re-download")
