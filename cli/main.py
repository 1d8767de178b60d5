"""Entry point: `clipag COMMAND ...` (also `python -m clipag`).

The commands are imported only when one runs or its help is asked for: `clipag --help`,
`clipag --version` and a mistyped command answer without loading torch."""

from __future__ import annotations

import importlib

import click

from clipag import __version__

from .common import Group

# name: (module, attribute, one-line help shown by `clipag --help`)
COMMANDS = {
    "generate": ("generate_cmd", "generate_cmd",
                 "Make an image of PROMPT (or of every prompt in --prompts-file)."),
    "draw": ("generate_cmd", "draw_cmd",
             "Draw PROMPT with vector strokes (CLIPDraw under the guide; PNG + SVG)."),
    "style": ("style_cmd", "style_cmd",
              "Restyle images toward a text (CLIPStyler's directional loss under the guide)."),
    "robustify": ("robustify_cmd", "robustify_cmd",
                  "Adversarially fine-tune a CLIP into a robust guide (PGD in the loop)."),
    "eval": ("misc_cmd", "eval_cmd",
             "Zero-shot accuracy, clean and under PGD, on a labelled class-folder DATA."),
    "models": ("models_cmd", "models_cmd",
               "List model presets, where each comes from, and what is available locally."),
    "init": ("misc_cmd", "init", "Initializers for generation."),
    "world": ("world_cmd", "world", "The procedural world of captioned shapes and digits."),
    "crossflow": ("crossflow_cmd", "crossflow",
                  "CrossFlow: a noise-free text-to-image flow, used as a learned initializer."),
    "bench": ("misc_cmd", "bench", "Benchmarks (see also `make bench`)."),
}


class LazyGroup(Group):
    """The top-level group: lists COMMANDS from the table, imports one when it is used."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attribute, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"{__package__}.{module}"), attribute)

    def format_commands(self, ctx, formatter):
        rows = [(name, short) for name, (_, _, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clipag")
def cli():
    """Generator-free text-to-image synthesis with a robust CLIP's gradients."""


def main():
    cli(prog_name="clipag")
