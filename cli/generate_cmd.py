"""`clipag generate`: parse, plan, load, run (the work is clipag.batch's)."""

from __future__ import annotations

import time
import types
from pathlib import Path

import click
from click.core import ParameterSource
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from clipag.output import image_format, save_image
from clipag.batch import (RunConfig, WriteError, batches, check_tasks, check_writable, claim_batch,
                          finished, model_identity, plan, rank_and_world, release, run_batch,
                          share, sweep)
from clipag.device import resolve_device
from clipag.errors import ClipagError
from clipag.load import load_spec, preset_of
from clipag.models import DEFAULT_PRESET, PRESETS
from clipag.prompts import Job, parse_prompt, read_prompts_file, unknown_words, world_vocabulary
from clipag.recipes import RECIPES, recipe_config, recipe_run, uses_recommended
from clipag.canvas.config import CANVAS_NAMES, DEFAULT_LR
from clipag.generate import GenerateConfig
from clipag.settings import SETTINGS, apply, config_default

from .common import Command, console, model_options
from .params import ANCHOR_DEFAULT, ANCHOR_SIDE_DEFAULT, setting_option

RUN = RunConfig()
WORLD_PRESETS = ("world-robust", "world-vanilla")  # models that know only the world's words
REAL_PRESET = "clipag-vitb32"  # the preset to suggest for real prompts


def field_name(name: str) -> str:
    """The GenerateConfig/ViewConfig field a setting sets ("tv" -> "tv_weight")."""
    return SETTINGS[name].path[-1].lstrip("*")


def flag_of(field: str) -> str:
    for s in SETTINGS.values():
        if s.path and s.path[-1].lstrip("*") == field:
            return "--" + s.name.replace("_", "-")
    return "--" + field.replace("_", "-")


def as_flag(field: str, value) -> str:
    """A setting as the command line would give it: `--scales 8,16`, `--tv-wrap`."""
    flag = flag_of(field)
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {','.join(map(str, value)) if isinstance(value, tuple) else value}"


def generation_options(base: GenerateConfig, recipe: str):
    """The options `generate` and `draw` share, their defaults read from `base` (the recipe
    the command starts from), so that --help shows what a run does."""
    run = recipe_run(recipe)

    def opt(name, *decls, **kwargs):
        return setting_option(name, *decls, base=base, run=run, **kwargs)

    options = [
        click.argument("prompt", required=False),
        click.option("--prompts-file", "-f", type=click.Path(dir_okay=False),
                     help="one prompt a line (# comments), or .jsonl with per-line settings"),
        click.option("--negative", "-n", multiple=True, help="text to move away from (repeatable)"),
        opt("negative_weight", help="weight of each --negative"),
        click.option("--output", "-o", type=click.Path(dir_okay=False),
                     help="output image (.png, .jpg, .webp; strokes: .png or .svg, both are "
                          "written) for a single image [default: OUTDIR/NNNN-prompt-sSEED.png]"),
        click.option("--outdir", "-d", default=RUN.outdir, show_default=True,
                     type=click.Path(file_okay=False)),
        opt("samples", help="images per prompt"),
        opt("seed", help="sample k uses seed+k"),
        model_options(default_hint=DEFAULT_PRESET, mix=True),
        click.option("--recipe", type=click.Choice(RECIPES), default=recipe, show_default=True,
                     help="settings to start from: clipag's defaults (with a preset's "
                          "recommended settings); reference: the CLIPAG notebook as published; "
                          "clipdraw: the CLIPAG + CLIPDraw notebook (strokes); flags you give "
                          "apply over it"),
        click.option("--canvas", "canvas", type=click.Choice(CANVAS_NAMES),
                     default=config_default(SETTINGS["canvas"], base), show_default=True,
                     help="what the image is made of: pixels, pyramid (a sum of images at many "
                          "resolutions), fourier (a scaled spectrum) or strokes (Bezier curves, "
                          "written as PNG + SVG)"),
        opt("steps"),
        opt("lr", show_default=_lr_default(base),
            help="AdamW learning rate of the canvas's main parameters (pixels, levels, "
                 "spectrum, stroke points in pixels)"),
        opt("weight_decay", help="AdamW weight decay on them (0 = off)"),
        opt("size", show_default="model input" if base.size is None else True,
            help="output side in pixels"),
        opt("views", help="global views per step"),
        opt("patch_views", help="random-crop views per step"),
        opt("patch_fraction", show_default="0.571 (128/224)",
            help="patch side as a fraction of the image side"),
        opt("view_batch", help="views per model pass (0 = all at once; lower to save memory)"),
        opt("global_weight"),
        opt("patch_weight"),
        opt("jitter", help="colour-jitter strength of the views: 1 = reference, 0 = none, up to 2"),
        opt("cutout", help="side of the square each view blanks, as a fraction of the view "
                           "(0 = none)"),
        opt("noise", help="per-view pixel noise std"),
        opt("grad_clip", help="per-image gradient-norm clip (0 = off)"),
        opt("threshold", help="pixels canvas: dynamic-thresholding percentile (0 = clamp)"),
        click.option("--keep", type=click.Choice(("best", "last")), default=base.keep,
                     show_default=True, help="the image kept: the best seen (lowest loss) or "
                                             "the last"),
        opt("tv", help="total-variation penalty: smoother images, cleaner backgrounds (0 = off)"),
        opt("tv_wrap", help="the penalty wraps around the borders (the image as a torus), so "
                            "a shape costs the same anywhere, not less in a corner"),
        opt("tv_by_side", help="with --scales: weight the penalty side/size at each coarse "
                               "stage, so a shape's outline costs the same at every stage"),
        opt("anchor", show_default=ANCHOR_DEFAULT,
            help="trust region: penalty on moving the image's layout away from the start "
                 "image's, so the refiner keeps a draft's shapes (0 = off)"),
        opt("anchor_side", show_default=ANCHOR_SIDE_DEFAULT,
            help="the grid side at which --anchor compares layouts"),
        opt("init", help="pixels, pyramid, fourier: gmm (embedded mixture), noise, a mixture "
                         "file from `clipag init fit`, or crossflow[:FILE] (a learned draft; "
                         "the embedded world flow without FILE); strokes start from the seed"),
        opt("flow_steps", help="ODE steps of the CrossFlow draft"),
        opt("flow_guidance", help="classifier-free guidance scale of the CrossFlow draft"),
        opt("flow_temperature", help="spread of the CrossFlow draft's source (0 = its mean)"),
        opt("flow_candidates", help="CrossFlow drafts drawn per image; the one the model "
                                    "scores best is refined"),
        click.option("--init-image", "init_image", type=click.Path(dir_okay=False),
                     help="start from this image (not with strokes)"),
        opt("init_candidates", help="best-of-N mixture samples scored by the model"),
        opt("scales", show_default=False,
            help="pixels canvas: coarse-to-fine, optimise first at these sides (e.g. 16,32), "
                 "then at --size"),
        opt("strokes", help="strokes canvas: how many strokes"),
        opt("segments", help="strokes: most cubic segments a stroke has (each gets 1..N)"),
        opt("stroke_width", help="strokes: widths are clamped to LOW,HIGH pixels"),
        opt("start_width", help="strokes: width each stroke starts with"),
        opt("reach", help="strokes: a start stroke's control points step up to half this "
                          "fraction of the side"),
        opt("width_lr", help="strokes: learning rate of the widths"),
        opt("color_lr", help="strokes: learning rate of the RGBA colours"),
        opt("background", help="strokes: background colour R,G,B in [0, 1]"),
        opt("curve_samples", help="strokes: polyline points per segment when rendering"),
        opt("levels", help="pyramid canvas: how many resolutions (the finest: size, size/2, ...)"),
        opt("decay", help="fourier canvas: spectrum scale 1/f^decay"),
        opt("batch_size", help="images optimised together (same settings)"),
        opt("save_every", help="keep a frame every N steps and write a GIF beside the image"),
        click.option("--video", is_flag=True,
                     help="write an MP4 (H.264) of the run beside each image instead of a GIF: "
                          "a frame every --save-every steps (default: 100 frames a run); no "
                          "system ffmpeg needed"),
        click.option("--preview", type=click.Path(dir_okay=False),
                     help="rewrite this PNG with the image being made every 10 steps (watch "
                          "it in any image viewer)"),
        click.option("--overwrite", is_flag=True, help="replace existing outputs"),
        click.option("--quiet", "-q", is_flag=True),
    ]

    def wrap(f):
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


def _lr_default(base: GenerateConfig) -> str:
    if base.lr is not None:
        return f"{base.lr:g}"
    return "per canvas: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())


@click.command(cls=Command)
@generation_options(GenerateConfig(), "clipag")
def generate_cmd(**kwargs):
    """Make an image of PROMPT (or of every prompt in --prompts-file)."""
    run_generation(**kwargs)


@click.command(cls=Command)
@generation_options(recipe_config("clipdraw"), "clipdraw")
def draw_cmd(**kwargs):
    """Draw PROMPT with vector strokes (CLIPDraw under the guide; PNG + SVG), or every prompt
    in --prompts-file. The CLIPAG + CLIPDraw notebook's settings: 256 strokes, 1000 steps, 4
    perspective views a step; any flag of `generate` applies."""
    run_generation(**kwargs, draws_strokes=True)


def run_generation(prompt, prompts_file, negative, output, outdir, spec, device, recipe,
                   overwrite, quiet, video, preview, draws_strokes=False, **values):
    """The work of `generate` and `draw` (`draws_strokes`: the canvas is strokes unless --canvas
    says otherwise, whatever the recipe): parse, plan, load, run."""
    began = time.time()
    ctx = click.get_current_context()
    resolve_device(device)  # a bad --device is an error even when every image is finished
    if ctx.get_parameter_source("negative_weight") == ParameterSource.DEFAULT:
        values["negative_weight"] = recipe_run(recipe).negative_weight
    if bool(prompt) == bool(prompts_file):
        raise ClipagError("give a PROMPT or --prompts-file, not both and not neither")
    if prompt:
        parse_prompt(prompt)
    jobs = read_prompts_file(prompts_file) if prompts_file else [Job(prompt)]
    run = RunConfig(samples=values.pop("samples"), batch_size=values.pop("batch_size"),
                    negative_weight=values.pop("negative_weight"), seed=values.pop("seed"),
                    outdir=outdir, overwrite=overwrite, video=video)
    if values["init_image"] and not Path(values["init_image"]).is_file():
        raise ClipagError(f"init image not found: {values['init_image']}")
    given = {k: v for k, v in values.items()
             if ctx.get_parameter_source(k) != ParameterSource.DEFAULT}
    if draws_strokes and "canvas" not in given:
        given["canvas"] = "strokes"
    if video and "save_every" not in given:  # about 100 frames a run
        given["save_every"] = max(1, given.get("steps", recipe_config(recipe).steps) // 100)
    if video and given["save_every"] == 0:
        raise ClipagError("--video needs frames: --save-every must be >= 1 (or left out)")
    if preview:
        check_writable(Path(preview).parent)
        image_format(Path(preview))
    config = apply(recipe_config(recipe), given)
    explicit = frozenset(field_name(k) for k in given)
    preset = preset_of(spec)
    recommended = preset.recommended if preset and uses_recommended(recipe) else ()
    output_path = Path(output) if output else None
    tasks, changed = plan(jobs, config, run, model_identity(spec), tuple(negative), output_path,
                          recommended, explicit)
    folder = output_path.parent if output_path else Path(outdir)

    def notes(todo):
        if spec.model is None and spec.checkpoint is None and not quiet:
            console.print(f"using the embedded default model {DEFAULT_PRESET} "
                          f"({PRESETS[DEFAULT_PRESET].about}); pick another with --model")
        if changed and not quiet:
            console.print("with its recommended settings: " + " ".join(
                as_flag(k, v) for k, v in changed.items()))
        world_words_note(preset, [t.prompt for t in todo] + [n for t in todo for n in t.negatives])

    execute(tasks, spec, device, folder, run, quiet, preview, began,
            single=output_path is not None, notes=notes)


def world_words_note(preset, texts: list[str]) -> None:
    """Tell the user (stderr) which words of `texts` a world model does not know."""
    if preset is None or preset.name not in WORLD_PRESETS:
        return
    unknown = unknown_words(texts, world_vocabulary())
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" (+{len(unknown) - 10} more)"
                                           if len(unknown) > 10 else "")
        click.echo(f"note: {preset.name} knows only its procedural world's words (colours, "
                   f"shapes, sizes, positions, counts, digits), not: {shown}; for real prompts "
                   f"use --model {REAL_PRESET}", err=True)


def execute(tasks, spec, device, folder: Path, run: RunConfig, quiet: bool, preview, began: float,
            single: bool = False, notes=None):
    """Make the planned tasks this process's share holds, that are not finished: claim them
    batch by batch, load the guide once, optimise, write (the runner of `generate`, `draw` and
    `style`). `notes(todo)` prints what to tell the user before the work starts (rank 0).
    Returns the last batch's result (None when nothing was made)."""
    overwrite = run.overwrite
    check_writable(folder)
    rank, world, _ = rank_and_world()
    todo = tasks if overwrite else [t for t in tasks if finished(t) is None]
    if len(todo) < len(tasks) and not quiet and rank == 0:
        console.print(f"skipping {len(tasks) - len(todo)} finished image(s)")
    pending = {t.key for t in todo}
    mine = [g for g in share(batches(tasks, run.batch_size), rank, world)
            if any(t.key in pending for t in g)]
    if not mine:
        return None
    if notes is not None and rank == 0:
        notes(todo)
    dev = resolve_device(device)
    guide = load_spec(spec, dev, quiet=quiet)
    check_tasks(tasks, guide)  # every line against the model, before the first image
    model_info = {k: v for k, v in guide.info.items() if k != "config"}
    model_info.update(name=guide.name, checkpoint_name=guide.info.get("name"))
    sweep(folder, began, {tasks[0].png.name} if single else None)
    written, busy, result = 0, 0, None
    previews = types.SimpleNamespace(failed=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                  console=console, disable=quiet) as progress:
        overall = progress.add_task("images" if world == 1 else f"rank {rank} images",
                                    total=sum(len(g) for g in mine), info="")
        for group in mine:
            try:
                claims, counts = claim_batch(group, overwrite)
            except WriteError as exc:
                raise ClipagError(f"{exc}; kept {written} finished image(s) in {folder} "
                                  "(rerun to resume)") from None
            busy += counts["busy"]
            progress.advance(overall, len(group) - len(claims))
            if not claims:
                continue
            per = progress.add_task(f"  {group[0].prompt[:40]}", total=group[0].config.steps,
                                    info="")

            def on_step(info, per=per):
                progress.update(per, completed=info.step,
                                info=f"loss {info.loss.mean().item():.4f}")
                if preview and info.render is not None and not previews.failed:
                    try:
                        save_image(Path(preview), info.render()[0].cpu(), {"step": info.step})
                    except OSError as exc:  # a preview is a view of the run, never its end
                        previews.failed = True
                        click.echo(f"note: stopped writing the preview {preview}: "
                                   f"{exc.strerror or exc}", err=True)

            try:
                result = run_batch(guide, claims, model_info, on_step, run.video)
            except WriteError as exc:
                raise ClipagError(f"{exc}; kept {written} finished image(s) in {folder} "
                                  "(rerun to resume)") from None
            finally:
                release(claims)
            written += len(claims)
            progress.remove_task(per)
            progress.advance(overall, len(claims))
            for c, record in zip(claims, result.records):
                score = record.get("score")
                progress.console.print(f"{c.png}  score "
                                       f"{'n/a' if score is None else f'{score:.3f}'}")
    if busy:
        click.echo(f"note: {busy} image(s) were being made by another live process; "
                   "rerun later to check they finished", err=True)
    return result

