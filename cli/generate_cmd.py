"""`clipag generate`."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from clipag.augment import ViewConfig
from clipag.batch import batches, plan, run_batch
from clipag.device import resolve_device
from clipag.errors import ClipagError
from clipag.flow.crossflow import SampleConfig
from clipag.ensemble import load_spec
from clipag.generate import GenerateConfig
from clipag.models import DEFAULT_PRESET, PRESETS
from clipag.prompts import Job, parse_prompt, read_prompts_file

from .common import Command, console, model_options
from .params import Sides

D = GenerateConfig()
V = ViewConfig()


FLAGS = {"tv_weight": "tv"}  # settings whose flag is not their name with dashes


def recommended_settings(ctx: click.Context, spec, values: dict) -> dict:
    """The preset's recommended value for every setting the user left at its default."""
    name = spec.model if spec.checkpoint is None else None
    name = DEFAULT_PRESET if (name is None and spec.checkpoint is None) else name
    preset = PRESETS.get(name) if name else None
    if preset is None:
        return values
    out = dict(values)
    for key, value in preset.recommended:
        if key in out and ctx.get_parameter_source(key) == ParameterSource.DEFAULT:
            out[key] = value
    return out


@click.command(cls=Command)
@click.argument("prompt", required=False)
@click.option("--prompts-file", "-f", type=click.Path(dir_okay=False),
              help="one prompt a line (# comments), or .jsonl with per-line settings")
@click.option("--negative", "-n", multiple=True, help="text to move away from (repeatable)")
@click.option("--negative-weight", type=float, default=0.5, show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="output PNG for a single image [default: OUTDIR/NNNN-prompt-sSEED.png]")
@click.option("--outdir", "-d", default="outputs", show_default=True, type=click.Path(file_okay=False))
@click.option("--samples", type=int, default=1, show_default=True, help="images per prompt")
@click.option("--seed", type=int, default=0, show_default=True, help="sample k uses seed+k")
@model_options(default_hint=DEFAULT_PRESET, mix=True)
@click.option("--steps", type=int, default=D.steps, show_default=True)
@click.option("--lr", type=float, default=D.lr, show_default=True)
@click.option("--size", type=int, default=None, help="output side in pixels [default: model input]")
@click.option("--views", type=int, default=V.global_views, show_default=True, help="global views per step")
@click.option("--patch-views", type=int, default=V.patch_views, show_default=True)
@click.option("--patch-fraction", type=float, default=V.patch_fraction, show_default="0.571 (128/224)",
              help="patch side as a fraction of the image side")
@click.option("--global-weight", type=float, default=D.global_weight, show_default=True)
@click.option("--patch-weight", type=float, default=D.patch_weight, show_default=True)
@click.option("--jitter", type=float, default=1.0, show_default=True,
              help="colour-jitter strength of the views: 1 = reference, 0 = none, up to 2")
@click.option("--cutout", type=float, default=V.cutout, show_default=True,
              help="side of the square each view blanks, as a fraction of the view (0 = none)")
@click.option("--noise", type=float, default=V.noise, show_default=True, help="per-view pixel noise std")
@click.option("--grad-clip", type=float, default=D.grad_clip, show_default=True,
              help="per-image gradient-norm clip (0 = off)")
@click.option("--threshold", type=float, default=D.threshold, show_default=True,
              help="dynamic-thresholding percentile (0 = clamp)")
@click.option("--tv", "tv_weight", type=float, default=D.tv_weight, show_default=True,
              help="total-variation penalty: smoother images, cleaner backgrounds (0 = off)")
@click.option("--init", "init", default=D.init, show_default=True,
              help="gmm (embedded mixture), noise, a mixture file from `clipag init fit`, or "
                   "crossflow[:FILE] (a learned draft; the embedded world flow without FILE)")
@click.option("--flow-steps", type=int, default=D.flow.steps, show_default=True,
              help="ODE steps of the CrossFlow draft")
@click.option("--flow-guidance", type=float, default=D.flow.guidance, show_default=True,
              help="classifier-free guidance scale of the CrossFlow draft")
@click.option("--init-image", type=click.Path(dir_okay=False), help="start from this image")
@click.option("--init-candidates", type=int, default=D.init_candidates, show_default=True,
              help="best-of-N mixture samples scored by the model")
@click.option("--scales", type=Sides(), default="", show_default=False,
              help="coarse-to-fine: optimise first at these sides (e.g. 16,32), then at --size")
@click.option("--batch-size", type=int, default=1, show_default=True,
              help="images optimised together (same settings)")
@click.option("--save-every", type=int, default=0, show_default=True,
              help="keep a frame every N steps and write a GIF beside the PNG")
@click.option("--overwrite", is_flag=True, help="replace existing outputs")
@click.option("--quiet", "-q", is_flag=True)
def generate_cmd(prompt, prompts_file, negative, negative_weight, output, outdir, samples, seed,
                 spec, device, steps, lr, size, views, patch_views, patch_fraction, global_weight,
                 patch_weight, jitter, cutout, noise, grad_clip, threshold, tv_weight, init,
                 flow_steps, flow_guidance, init_image, init_candidates, scales, batch_size,
                 save_every, overwrite, quiet):
    """Make an image of PROMPT (or of every prompt in --prompts-file)."""
    given = {"scales": scales, "patch_views": patch_views, "jitter": jitter, "cutout": cutout,
             "tv_weight": tv_weight}
    chosen = recommended_settings(click.get_current_context(), spec, given)
    if chosen["scales"] != scales and steps <= len(chosen["scales"]):
        chosen["scales"] = scales  # too few steps to split over the recommended stages
    scales, patch_views, jitter = chosen["scales"], chosen["patch_views"], chosen["jitter"]
    cutout, tv_weight = chosen["cutout"], chosen["tv_weight"]
    if bool(prompt) == bool(prompts_file):
        raise ClipagError("give a PROMPT or --prompts-file, not both and not neither")
    if prompt:
        parse_prompt(prompt)
    jobs = read_prompts_file(prompts_file) if prompts_file else [Job(prompt)]
    if samples < 1 or batch_size < 1:
        raise ClipagError("--samples and --batch-size must be >= 1")
    if init_image and not Path(init_image).is_file():
        raise ClipagError(f"init image not found: {init_image}")
    view_config = ViewConfig(global_views=views, patch_views=patch_views,
                             patch_fraction=patch_fraction, noise=noise,
                             cutout=cutout).with_jitter(jitter)
    config = GenerateConfig(size=size, steps=steps, lr=lr, grad_clip=grad_clip,
                            global_weight=global_weight, patch_weight=patch_weight,
                            threshold=threshold, tv_weight=tv_weight, views=view_config,
                            init=init, init_image=init_image, init_candidates=init_candidates,
                            scales=scales, save_every=save_every,
                            flow=SampleConfig(steps=flow_steps, guidance=flow_guidance))
    tasks = plan(jobs, config, Path(outdir), samples, seed, tuple(negative),
                 Path(output) if output else None)
    for task in tasks:  # every setting a prompts file may change, before any model loads
        task.config.check()
    if output and len(tasks) > 1:
        raise ClipagError("--output names one file; use --outdir for several images")
    if overwrite:
        todo = tasks
    elif output and tasks[0].done():
        raise ClipagError(f"{output} exists; pass --overwrite to replace it")
    else:
        todo = [t for t in tasks if not t.done()]
    if len(todo) < len(tasks) and not quiet:
        console.print(f"skipping {len(tasks) - len(todo)} finished image(s)")
    if not todo:
        return
    dev = resolve_device(device)
    if spec.model is None and spec.checkpoint is None and not quiet:
        console.print(f"using the embedded default model {DEFAULT_PRESET} "
                      f"({PRESETS[DEFAULT_PRESET].about}); pick another with --model")
    changed = {k: v for k, v in chosen.items() if v != given[k]}
    if changed and not quiet:
        console.print("with its recommended settings: " + " ".join(
            f"--{FLAGS.get(k, k.replace('_', '-'))} "
            f"{','.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in changed.items()))
    guide = load_spec(spec, dev, quiet=quiet)
    model_info = {k: v for k, v in guide.info.items() if k != "config"}
    model_info.update(name=guide.name, checkpoint_name=guide.info.get("name"))
    model_info["negative_weight"] = negative_weight
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                  console=console, disable=quiet) as progress:
        overall = progress.add_task("images", total=len(todo), info="")
        for group in batches(todo, batch_size):
            per = progress.add_task(f"  {group[0].prompt[:40]}", total=group[0].config.steps,
                                    info="")
            def on_step(info, per=per):
                progress.update(per, completed=info.step,
                                info=f"loss {info.loss.mean().item():.4f}")

            result = run_batch(guide, group, model_info, on_step, negative_weight)
            progress.remove_task(per)
            progress.advance(overall, len(group))
            for task, score in zip(group, result.score):
                progress.console.print(f"{task.png}  score {score:.3f}")
