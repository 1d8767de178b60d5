"""`clipag models`, `clipag init fit`, `clipag eval`, `clipag bench`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from clipag.augment import VIEW_STYLES
from clipag.canvas.config import CANVAS_NAMES, CanvasConfig, StrokesConfig
from clipag.recipes import STYLE_RECIPES
from clipag.train.attacks import ThreatModel
from clipag.train.common import check_writable
from clipag.train.data import DEFAULT_TEMPLATE, open_dataset, split
from clipag.device import resolve_device
from clipag.errors import ClipagError
from clipag.train.evaluate import zero_shot
from clipag.fileio import write_text_atomic
from clipag.generate import GenerateConfig
from clipag.init import fit, images_for_fit
from clipag.load import load_spec

from .common import Command, bench_view_options, model_options
from .params import Count, IntList, Real

out = Console()
_GEN = GenerateConfig()  # the generation defaults the benchmarks start from


@click.group()
def init():
    """Initializers for generation."""


@init.command("fit", cls=Command)
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False))
@click.option("--resolution", type=Count(2, 256), default=16, show_default=True,
              help="side of the low-resolution images the mixture models")
@click.option("--components", type=Count(1, 4096), default=16, show_default=True)
@click.option("--rank", type=Count(1, 4096), default=16, show_default=True,
              help="rank of each component's covariance factor")
@click.option("--crops-per-image", type=Count(1, 10_000), default=1, show_default=True)
@click.option("--seed", type=Count(0), default=0, show_default=True)
@click.option("--overwrite", is_flag=True,
              help="replace an existing OUTPUT (once the new mixture is complete)")
def init_fit(folder, output, resolution, components, rank, crops_per_image, seed, overwrite):
    """Fit a compact Gaussian mixture over FOLDER's images at low resolution."""
    if Path(output).exists() and not overwrite:
        raise ClipagError(f"{output} exists; pass --overwrite to replace it")
    check_writable(Path(output))
    images, skipped = images_for_fit(folder, resolution, crops_per_image, seed)
    mixture = fit(images, components=components, rank=rank, seed=seed)
    try:
        path = mixture.save(output)
    except OSError as exc:
        raise ClipagError(f"could not write {output}: {exc.strerror or exc} (the fit is "
                          "lost; anything already there is unchanged)") from None
    click.echo(f"{path}: {mixture.components} components fitted on {len(images)} images "
               f"({skipped} unreadable skipped), {path.stat().st_size / 1024:.0f} KB")


@click.command(cls=Command)
@click.argument("data")
@model_options()
@click.option("--norm", type=click.Choice(["l2", "linf"]), default="l2", show_default=True)
@click.option("--eps", type=Real(0), default=1.0, show_default=True, help="0 = clean only")
@click.option("--attack-steps", type=Count(0, 100_000), default=10, show_default=True)
@click.option("--attack-step-size", type=Real(0, low_open=True), default=None,
              help="[default: 2.5*eps/steps]")
@click.option("--template", default=DEFAULT_TEMPLATE, show_default=True)
@click.option("--holdout", type=Real(0, 1, high_open=True), default=0.0, show_default=True,
              help="evaluate only the held-out split of this fraction (0 = all the data)")
@click.option("--limit", type=Count(1), default=None, help="at most this many images")
@click.option("--batch-size", type=Count(1, 65_536), default=64, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="also save as JSON")
def eval_cmd(data, spec, device, norm, eps, attack_steps, attack_step_size, template, holdout,
             limit, batch_size, json_path):
    """Zero-shot accuracy, clean and under PGD, on a labelled class-folder DATA."""
    threat = ThreatModel(norm, eps, attack_steps, attack_step_size, True)
    if json_path:
        check_writable(Path(json_path))
    dataset = split(open_dataset(data, template), holdout, "eval")
    if not dataset.classes:
        raise ClipagError("eval needs a labelled class-folder dataset (class_name/*.jpg)")
    if dataset.empty_classes:  # left out, it would vanish from the accuracy unseen
        empty = dataset.empty_classes
        shown = ", ".join(empty[:5]) + (f" (+{len(empty) - 5} more)" if len(empty) > 5 else "")
        raise ClipagError(f"{data}: the class folder{'s' * (len(empty) > 1)} {shown} "
                          f"hold{'s' * (len(empty) == 1)} no images, so the accuracy would "
                          f"leave {'them' if len(empty) > 1 else 'it'} out: add images or "
                          "remove the folder")
    guide = load_spec(spec, resolve_device(device))
    result = zero_shot(guide, dataset, threat, batch_size=batch_size, limit=limit)
    table = Table(title=f"zero-shot accuracy of {guide.name} on {data}")
    for column in ("images", "unreadable (skipped)", "classes", "clean",
                   f"robust ({norm} eps {eps:g})"):
        table.add_column(column)
    robust = "-" if result.robust_accuracy is None else f"{result.robust_accuracy:.3f}"
    table.add_row(str(result.images), str(result.skipped), str(len(dataset.classes)),
                  f"{result.clean_accuracy:.3f}", robust)
    out.print(table)
    if json_path:
        payload = {"model": guide.name, "data": data, **dataclasses.asdict(result)}
        try:
            write_text_atomic(json_path, json.dumps(payload, indent=2) + "\n")
        except OSError as exc:
            raise ClipagError(f"could not write {json_path}: {exc.strerror or exc} (the table "
                              "above holds the result)") from None


@click.group()
def bench():
    """Benchmarks (see also `make bench`)."""


@bench.command("pag", cls=Command)
@click.option("--guides", default="world-vanilla,world-robust", show_default=True,
              help="comma-separated guide models or checkpoint files, run under identical "
                   "settings; A*3+B is one guide mixing A and B with relative weights 3 and 1")
@click.option("--judge-model", default="world-judge", show_default=True,
              help="held-out CLIP judge (never a guide): a model name or checkpoint file")
@click.option("--prompts", type=Count(1, 10_000), default=24, show_default=True)
@click.option("--steps", type=Count(1, 100_000), default=_GEN.steps, show_default=True)
@bench_view_options
@click.option("--lr", type=Real(0, low_open=True), default=None,
              help="the canvas's main learning rate [default: the canvas's]")
@click.option("--threshold", type=Real(0, 1, high_open=True), default=_GEN.threshold,
              show_default=True, help="dynamic-thresholding percentile (0 = clamp)")
@click.option("--canvas", type=click.Choice(CANVAS_NAMES), default="pixels", show_default=True,
              help="what the images are made of")
@click.option("--strokes", type=Count(1, 100_000), default=StrokesConfig().count,
              show_default=True, help="with --canvas strokes: how many")
@click.option("--view-style", type=click.Choice(VIEW_STYLES), default="clipag",
              show_default=True, help="how views are drawn (clipdraw: perspective + crop)")
@click.option("--keep", type=click.Choice(("best", "last")), default="best", show_default=True)
@click.option("--init", default=_GEN.init, show_default=True,
              help="gmm, noise, a mixture file or crossflow[:FILE]")
@click.option("--init-candidates", type=Count(1, 1_000_000), default=_GEN.init_candidates,
              show_default=True)
@click.option("--batch-size", type=Count(1, 4096), default=8, show_default=True)
@click.option("--seed", type=Count(0), default=0, show_default=True)
@click.option("--out", "-o", default="bench/results", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
def bench_pag(guides, judge_model, prompts, steps, settings, lr, threshold, canvas, strokes,
              view_style, keep, init, init_candidates, batch_size, seed, out, device):
    """Judge accuracy of images made with each guide on fixed world prompts."""
    import sys

    from clipag.world.benchmark import run
    from clipag.generate import GenerateConfig

    names = _names(guides, "--guides")
    settings["views"] = dataclasses.replace(settings["views"], style=view_style)
    shape = CanvasConfig(name=canvas, strokes=dataclasses.replace(StrokesConfig(), count=strokes))
    config = GenerateConfig(steps=steps, init=init, init_candidates=init_candidates, lr=lr,
                            threshold=threshold, canvas=shape, keep=keep, **settings)
    config.check()
    check_writable(Path(out) / "pag.md")
    command = "clipag " + " ".join(sys.argv[1:]) if sys.argv else "clipag bench pag"
    try:
        _, table = run(names, judge_model, prompts, config, Path(out), resolve_device(device),
                       batch_size, seed, command)
    except OSError as exc:
        raise ClipagError(_os_failure(exc)) from None
    out_console = Console()
    out_console.print(table.read_text())


def _os_failure(exc: OSError) -> str:
    """One line for a late filesystem failure (results already written stay complete: each
    file is written atomically)."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"stopped: {exc.strerror or exc}{where}"


def _names(text: str, option: str) -> list[str]:
    """The entries of a comma-separated option, or a one-line error when it names none."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ClipagError(f"{option} names nothing: give a comma-separated list, e.g. "
                          f"{'world-robust' if option == '--guides' else 'gmm,crossflow'}")
    return names


@bench.command("style", cls=Command)
@click.option("--guides", default="world-robust,world-vanilla", show_default=True,
              help="comma-separated guide models or checkpoint files, run under identical "
                   "settings")
@click.option("--cases", type=Count(2, 10_000), default=32, show_default=True)
@click.option("--seed", type=IntList(), default="0", show_default=True,
              help="comma-separated seeds")
@click.option("--steps", type=Count(1, 100_000), default=None,
              help="[default: the style recipe's]")
@click.option("--content-weight", type=Real(0, 1e6), default=None,
              help="[default: the style recipe's]")
@click.option("--recipe", type=click.Choice(STYLE_RECIPES), default="clipag", show_default=True)
@click.option("--canvas", type=click.Choice(("pixels", "unet")), default=None,
              help="[default: the style recipe's]")
@click.option("--lr", type=Real(0, low_open=True), default=None,
              help="[default: the canvas's]")
@click.option("--grad-clip", type=Real(0), default=None, help="[default: the style recipe's]")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="folder for style.md, style.json and style-grid.png")
@click.option("--overwrite", is_flag=True, help="replace results already in --out")
@click.option("--device", default="auto", show_default=True)
def bench_style(guides, cases, seed, steps, content_weight, recipe, canvas, lr, grad_clip, out,
                overwrite, device):
    """Style transfer in the world: world scenes restyled to change one colour, read by the
    analytic judge (target changed, other colour kept, object mask IoU)."""
    import sys

    from clipag.load import load_model
    from clipag.generate import resolved
    from clipag.recipes import style_recipe_config
    from clipag.world.style_benchmark import run

    names = _names(guides, "--guides")
    config = style_recipe_config(recipe)
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    if content_weight is not None:
        config = dataclasses.replace(config, style=dataclasses.replace(
            config.style, content_weight=content_weight))
    if canvas is not None:
        config = dataclasses.replace(config, canvas=dataclasses.replace(config.canvas, name=canvas))
    changes = {k: v for k, v in (("lr", lr), ("grad_clip", grad_clip)) if v is not None}
    config = resolved(dataclasses.replace(config, **changes))
    config.check()
    out = Path(out)
    if (out / "style.md").exists() and not overwrite:
        raise ClipagError(f"{out / 'style.md'} exists; pass --overwrite or another --out")
    check_writable(out)
    dev = resolve_device(device)
    loaded = [(name, load_model(name, device=dev)) for name in names]
    command = "clipag " + " ".join(sys.argv[1:]) if sys.argv else "clipag bench style"
    try:
        _, table = run(loaded, cases, list(seed), config, out, command)
    except OSError as exc:
        raise ClipagError(_os_failure(exc)) from None
    Console().print(table)


@bench.command("init", cls=Command)
@click.option("--guide", default="world-robust", show_default=True,
              help="guide model, checkpoint file or mix (A*3+B)")
@click.option("--judge-model", default="world-judge", show_default=True,
              help="held-out CLIP judge (never a guide): a model name or checkpoint file")
@click.option("--inits", default="gmm,crossflow", show_default=True,
              help="comma-separated inits: gmm, crossflow, crossflow:FILE, a mixture file")
@click.option("--refiner-steps", type=IntList(0, 100_000), default="0,25,50,100", show_default=True,
              help="comma-separated refiner step counts (0 = the start image alone)")
@click.option("--prompts", type=Count(1, 10_000), default=16, show_default=True)
@bench_view_options
@click.option("--lr", type=Real(0, low_open=True), default=_GEN.lr, show_default=True,
              help="the refiner's learning rate")
@click.option("--init-candidates", type=Count(1, 1_000_000), default=_GEN.init_candidates,
              show_default=True)
@click.option("--flow-steps", type=Count(1, 10_000), default=_GEN.flow.steps, show_default=True)
@click.option("--flow-guidance", type=Real(0, 100), default=_GEN.flow.guidance,
              show_default=True)
@click.option("--flow-temperature", type=Real(0, 10), default=_GEN.flow.temperature,
              show_default=True, help="spread of the CrossFlow draft's source (0 = its mean)")
@click.option("--flow-candidates", type=Count(1, 1000), default=_GEN.flow.candidates,
              show_default=True, help="drafts per image; the guide's best is kept")
@click.option("--batch-size", type=Count(1, 4096), default=8, show_default=True)
@click.option("--seed", "seeds", type=IntList(0), default="0", show_default=True,
              help="sampler seed, or seeds (0,1,2): each figure is then their mean")
@click.option("--out", "-o", default="bench/results", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
def bench_init(guide, judge_model, inits, refiner_steps, prompts, settings, lr, init_candidates,
               flow_steps, flow_guidance, flow_temperature, flow_candidates, batch_size, seeds,
               out, device):
    """Judge accuracy and time of GMM vs CrossFlow starts at several refiner step counts."""
    import sys

    from clipag.world.benchmark import run_inits
    from clipag.flow.crossflow import SampleConfig
    from clipag.generate import GenerateConfig, check_init

    names = _names(inits, "--inits")
    for name in names:
        check_init(name)
    if not refiner_steps or min(refiner_steps) < 0:
        raise ClipagError("--refiner-steps must be counts >= 0, e.g. 0,25,50")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ClipagError(f"--seed {','.join(map(str, seeds))}: give one or more different "
                          "seeds, e.g. 0,1,2")
    config = GenerateConfig(init_candidates=init_candidates, lr=lr,
                            flow=SampleConfig(flow_steps, flow_guidance,
                                              temperature=flow_temperature,
                                              candidates=flow_candidates), **settings)
    config.check()
    check_writable(Path(out) / "init.md")
    command = "clipag " + " ".join(sys.argv[1:]) if sys.argv else "clipag bench init"
    try:
        _, table = run_inits(guide, judge_model, prompts, names, list(refiner_steps), config,
                             Path(out), resolve_device(device), batch_size, seeds, command)
    except OSError as exc:
        raise ClipagError(_os_failure(exc)) from None
    Console().print(table.read_text())
