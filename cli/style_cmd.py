"""`clipag style`: restyle images from a text (the work is clipag.style's, run by the same
planner and runner as `generate`)."""

from __future__ import annotations

import time
from pathlib import Path

import click
from click.core import ParameterSource

from clipag.batch import RunConfig, check_writable, model_identity, plan_style
from clipag.device import resolve_device
from clipag.errors import ClipagError
from clipag.images import IMAGE_EXTS
from clipag.load import preset_of
from clipag.models import DEFAULT_PRESET, PRESETS
from clipag.prompts import parse_prompt
from clipag.recipes import STYLE_RECIPES, style_recipe_config
from clipag.settings import apply
from clipag import style_net

from .common import Command, console, model_options
from .generate_cmd import execute, world_words_note
from .params import setting_option

BASE = style_recipe_config("clipag")


def content_files(paths: tuple[str, ...]) -> list[Path]:
    """The images named, a folder standing for the images directly in it (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS
                            and f.is_file() and not f.name.startswith("."))
            if not inside:
                raise ClipagError(f"{p} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
            files += inside
        elif not p.exists():
            raise ClipagError(f"content image not found: {p}")
        else:
            files.append(p)
    return list(dict.fromkeys(files))


@click.command(cls=Command)
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.argument("target")
@click.option("--source", default=BASE.style.source, show_default=True,
              help="what the content images are now: the direction runs from this text to "
                   "TARGET")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="output image (.png keeps an alpha channel; .jpg, .webp) for a single image "
                   "[default: OUTDIR/NAME-target-sSEED.png]")
@click.option("--outdir", "-d", default=RunConfig().outdir, show_default=True,
              type=click.Path(file_okay=False))
@setting_option("samples", help="restyled images per content image")
@setting_option("seed", help="sample k uses seed+k")
@model_options(default_hint=DEFAULT_PRESET, mix=True)
@click.option("--recipe", type=click.Choice(STYLE_RECIPES), default="clipag", show_default=True,
              help="clipag: the content's own pixels as the canvas; clipstyler: CLIPStyler's "
                   "U-Net trained on the content, its settings as published; flags you give "
                   "apply over it")
@setting_option("content", base=BASE,
                help="content metric: guide (the self-similarity of the guide's tokens; "
                     "offline) or vgg "
                     "(torchvision's VGG19 weights, if already on disk)")
@setting_option("content_weight", base=BASE, help="weight of the content distance")
@setting_option("floor", base=BASE, help="patch views with a directional distance below it "
                                         "count as 0 (CLIPStyler's threshold)")
@setting_option("max_side", base=BASE, help="a larger content image is scaled down to fit")
@setting_option("content_crops", base=BASE, help="full-resolution windows the content metric "
                                                 "compares a step, when the image is larger "
                                                 "than the metric's input")
@setting_option("steps", base=BASE)
@setting_option("lr", base=BASE, show_default="per canvas: pixels 0.0175, unet 0.0005",
                help="learning rate of the canvas (pixels, or the U-Net's weights)")
@setting_option("views", base=BASE, help="global views per step")
@setting_option("patch_views", base=BASE, help="random-crop views per step")
@setting_option("patch_fraction", base=BASE, help="patch side, a fraction of the shorter side")
@setting_option("view_batch", base=BASE, help="views per model pass (0 = all at once; lower to "
                                              "save memory)")
@setting_option("global_weight", base=BASE)
@setting_option("patch_weight", base=BASE)
@setting_option("tv", base=BASE, help="total-variation penalty (0 = off)")
@setting_option("grad_clip", base=BASE, help="per-image gradient-norm clip (0 = off)")
@setting_option("channels", base=BASE, help="clipstyler: the U-Net's channels at its top level")
@setting_option("residual", base=BASE, show_default="on; off with --recipe clipstyler",
                help="the U-Net adds to the content (its first render is the content) instead "
                     "of drawing from a random start as CLIPStyler's does")
@setting_option("save_every", base=BASE, help="keep a frame every N steps (GIF or --video)")
@click.option("--video", is_flag=True, help="an MP4 (H.264) of the run beside each image")
@click.option("--preview", type=click.Path(dir_okay=False),
              help="rewrite this PNG with the image being made every 10 steps")
@click.option("--save-net", type=click.Path(dir_okay=False),
              help="clipstyler: save the trained U-Net (.safetensors) to restyle other images "
                   "with --net in one pass (one content image, one sample)")
@click.option("--net", type=click.Path(dir_okay=False),
              help="restyle with a U-Net saved by --save-net: one forward pass an image, no "
                   "guide, no optimisation")
@click.option("--overwrite", is_flag=True, help="replace existing outputs")
@click.option("--quiet", "-q", is_flag=True)
def style_cmd(images, target, source, output, outdir, samples, seed, spec, device, recipe,
              video, preview, save_net, net, overwrite, quiet, **values):
    """Restyle IMAGES (files or folders) toward TARGET, a text such as "a watercolor
    painting": CLIPStyler's directional loss under the guide, the content kept by a content
    metric. The output keeps each image's size, aspect and alpha channel."""
    began = time.time()
    ctx = click.get_current_context()
    resolve_device(device)
    if not target.strip():
        raise ClipagError("the TARGET text is empty")
    parse_prompt(target)
    contents = content_files(images)
    run = RunConfig(samples=samples, seed=seed, outdir=outdir, overwrite=overwrite, video=video,
                    batch_size=1)
    output_path = Path(output) if output else None
    if net:
        return style_net.apply_saved_net(Path(net), contents, target, run, output_path, device, quiet)
    given = {k: v for k, v in values.items()
             if ctx.get_parameter_source(k) != ParameterSource.DEFAULT}
    config = style_recipe_config(recipe)
    config = apply(config, given)
    config = apply(config, {"source": source})
    if video and "save_every" not in given:
        config = apply(config, {"save_every": max(1, config.steps // 100)})
    if video and config.save_every == 0:
        raise ClipagError("--video needs frames: --save-every must be >= 1 (or left out)")
    if save_net:
        if config.canvas.name != "unet":
            raise ClipagError("--save-net saves a style network: use --recipe clipstyler")
        if len(contents) * samples != 1:
            raise ClipagError("--save-net saves one network: give one content image and "
                              "--samples 1")
        check_writable(Path(save_net).parent)
        if Path(save_net).exists() and not overwrite:
            raise ClipagError(f"{save_net} exists; pass --overwrite to replace it")
    if preview:
        check_writable(Path(preview).parent)
    config.check()
    tasks = plan_style(contents, target, config, run, model_identity(spec), output_path)
    folder = output_path.parent if output_path else Path(outdir)

    def notes(todo):
        if spec.model is None and spec.checkpoint is None and not quiet:
            console.print(f"using the embedded default model {DEFAULT_PRESET} "
                          f"({PRESETS[DEFAULT_PRESET].about}); pick another with --model")
        world_words_note(preset_of(spec), [target, config.style.source])

    result = execute(tasks, spec, device, folder, run, quiet, preview, began,
                     single=output_path is not None, notes=notes)
    if save_net:
        if result is None:
            raise ClipagError(f"{tasks[0].png} is finished already, so no network was trained; "
                              "pass --overwrite to train (and save) it again")
        style_net.save_net(Path(save_net), result, overwrite)
        click.echo(str(save_net))

