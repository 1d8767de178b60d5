"""Generation speed as the user waits for it: the library's own step (views, model forward and
backward, loss, optimiser, thresholding: `clipag.generate.optimise`) timed step by step.

    python bench/speed.py [--models world-robust,ViT-B-32] [--steps 2] [--quick]
                          [--device auto] [--out bench/results/speed-DATE]

For each model: s/step, s/image (100 steps of optimisation; model loading and the start image
not counted), views/s, the model's forward+backward of the same batch of views timed alone and
the share of the step spent outside it, and the FLOPs of one step (FlopCounterMode) as achieved
FLOP/s and as a share of the device's dense peak where the device is known. `world-robust` runs
at its recommended settings (32 global views, no patch views; its coarse-to-fine scales are
left out: views are made at the model's input size, so a step costs the same at every scale);
an open_clip architecture name (ViT-B-32) runs with random weights at the GenerateConfig
defaults (32 global + 32 patch views). On CUDA each model runs in fp32, fp16 autocast (the
library's own path), bf16 autocast, and fp16 with torch.compile on the image encoder.
Results: a table, plus OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from clipag.device import resolve_device
from clipag.fileio import write_text_atomic
from clipag.generate import GenerateConfig, encode_targets, optimise, with_recommended
from clipag.models import ARCH_CONFIGS, PRESETS, Guide, _guide, build_model
from clipag.prompts import parse_prompt

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle on a blue background"

# Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets; fp32 is the non-tensor-core rate
# (torch's default for float32 matmuls), tf32 the tensor-core rate.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},  # SXM
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
}


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of a known GPU at `precision`, else None (CPUs, unknown cards)."""
    name = device_name.upper().replace("-", " ")
    for key, peaks in PEAK_TFLOPS.items():  # most specific first
        if all(part.upper() in name for part in key.split()):
            return peaks[precision] * 1e12 if precision in peaks else None
    return None


@dataclass(frozen=True)
class Variant:
    """How the step runs: `amp` is the library's fp16 autocast (CUDA only); `dtype` wraps the
    image encoder in an autocast of its own (bf16); `compile` compiles the image encoder."""

    name: str
    amp: bool = False
    dtype: str | None = None
    compile: bool = False

    @property
    def precision(self) -> str:
        return self.dtype or ("fp16" if self.amp else "fp32")


FP32 = Variant("fp32")
CUDA_VARIANTS = (FP32, Variant("fp16 autocast", amp=True), Variant("bf16 autocast", dtype="bf16"),
                 Variant("fp16 + compile", amp=True, compile=True))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class BenchGuide:
    """A guide whose image encoder runs under the variant's own autocast and/or compiled; the
    rest is the wrapped guide's."""

    def __init__(self, guide: Guide, variant: Variant):
        self._guide, self._variant = guide, variant
        encode = guide.model.encode_image
        self._encode = torch.compile(encode) if variant.compile else encode

    def __getattr__(self, name):
        return getattr(self._guide, name)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        context = (torch.autocast(images.device.type, dtype=DTYPES[self._variant.dtype])
                   if self._variant.dtype else nullcontext())
        with context:
            return F.normalize(self._encode(self._guide.normalize(images)).float(), dim=-1)


def describe_failure(exc: BaseException) -> str:
    """One line: the exception's type, its first non-empty message line and where it was
    raised (the innermost frame), so a failure inside a compiler with an empty message (as
    torch.compile's on the H200, row G3) still says where it happened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"[:160] + where


def wrap(guide: Guide, variant: Variant):
    return BenchGuide(guide, variant) if variant.dtype or variant.compile else guide


@dataclass
class Row:
    model: str
    image_size: int
    views: int  # per image per step
    batch: int  # images optimised together
    variant: str
    s_step: float  # mean over the timed steps
    s_image: float  # image_steps x s_step / batch: a step moves `batch` images
    views_per_s: float
    best_step_s: float  # the fastest step (of the timed ones and of those paired with model_s)
    model_s: float  # the fastest forward + backward of the same views alone
    outside_share: float  # 1 - model_s / best_step_s: best against best, timed in turns
    flops_step: float
    flops_per_s: float
    peak_flops: float | None
    peak_share: float | None
    note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(name: str, image_steps: int, views: int | None, patch_views: int | None,
                 view_batch: int) -> GenerateConfig:
    """The settings a user gets for model `name` (a preset's recommended ones, without scales),
    from a noise start, logging every step; `views`/`patch_views` override."""
    config = GenerateConfig(steps=image_steps, init="noise", log_every=1, view_batch=view_batch)
    if name in PRESETS:
        config, _ = with_recommended(config, PRESETS[name].recommended, explicit={"scales"})
    overrides = {k: v for k, v in (("global_views", views), ("patch_views", patch_views))
                 if v is not None}
    if overrides:
        config = dataclasses.replace(config, views=dataclasses.replace(config.views, **overrides))
    return config


def step_flops(guide, targets, start: torch.Tensor, config: GenerateConfig) -> float:
    """FLOPs of one optimisation step: one-step `optimise` minus its final scoring pass."""
    one = dataclasses.replace(config, steps=1)
    with FlopCounterMode(display=False) as counter:
        optimise(guide, targets, start, one)
    with FlopCounterMode(display=False) as scoring, torch.no_grad():
        guide.encode_images(start)
    return float(counter.get_total_flops() - scoring.get_total_flops())


def time_steps(guide, targets, start: torch.Tensor, config: GenerateConfig, steps: int
               ) -> list[float]:
    """Seconds of each of `steps` optimisation steps (the first one includes the optimiser's
    setup), read at the library's per-step callback."""
    device = start.device
    marks = []

    def mark(_info) -> None:
        sync(device)
        marks.append(time.perf_counter())

    sync(device)
    marks.append(time.perf_counter())
    optimise(guide, targets, start, dataclasses.replace(config, steps=steps), on_step=mark)
    return [b - a for a, b in zip(marks, marks[1:])]


def time_model(guide, views: torch.Tensor, variant: Variant, reps: int) -> list[float]:
    """Seconds of each of `reps` forward + backward passes (to the pixels) of the image encoder
    on `views`."""
    device = views.device
    times = []
    for _ in range(reps):
        x = views.detach().clone().requires_grad_(True)
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16,
                            enabled=variant.amp and device.type == "cuda"):
            emb = guide.encode_images(x)
        emb.sum().backward()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def paired_times(guide, targets, start: torch.Tensor, views: torch.Tensor, config: GenerateConfig,
                 variant: Variant, pairs: int) -> tuple[float, float]:
    """(fastest one-step run, fastest forward+backward) over `pairs` runs of each, taken in
    turns, so a load that changes over time (a shared CPU) hits both alike."""
    steps, model = [], []
    for _ in range(pairs):
        steps += time_steps(guide, targets, start, config, 1)
        model += time_model(guide, views, variant, 1)
    return min(steps), min(model)


@dataclass(frozen=True)
class BenchSettings:
    steps: int = 2  # timed steps, after one warm-up step
    image_steps: int = 100
    batch: int = 1
    views: int | None = None  # None: the model's settings
    patch_views: int | None = None
    view_batch: int = 0
    seed: int = 0


def bench_model(name: str, guide: Guide, variants: tuple[Variant, ...], settings: BenchSettings,
                device_name: str, on_row=None, failures: list[dict] | None = None) -> list[Row]:
    """One row per variant for one model; a variant that cannot run here (torch.compile with no
    compiler, bf16 on an old card) is added to `failures` instead."""
    device = guide.device
    config = bench_config(name, settings.image_steps, settings.views, settings.patch_views,
                          settings.view_batch)
    config.validate(guide)
    guide.model.requires_grad_(False)
    targets = encode_targets(guide, [parse_prompt(PROMPT)] * settings.batch)
    size = guide.image_size
    g = torch.Generator().manual_seed(settings.seed)
    start = torch.rand(settings.batch, 3, size, size, generator=g).to(device)
    n_views = config.views.global_views + config.views.patch_views
    views = torch.rand(settings.batch * n_views, 3, size, size, generator=g).to(device)
    flops = None
    rows = []
    for variant in variants:
        note = ""
        try:
            bench_guide = wrap(guide, variant)
            run = dataclasses.replace(config, amp=variant.amp)
            torch.manual_seed(settings.seed)
            if flops is None and not variant.compile:
                flops = step_flops(bench_guide, targets, start, run)  # also the warm-up
            else:
                time_steps(bench_guide, targets, start, run, 1)  # warm-up (compiles)
            torch.manual_seed(settings.seed)
            per_step = time_steps(bench_guide, targets, start, run, settings.steps)
            best_step, model_s = paired_times(bench_guide, targets, start, views, run, variant,
                                              settings.steps)
            best_step = min(best_step, *per_step)
        except Exception as exc:  # a variant that cannot run here is reported, not fatal
            message = describe_failure(exc)
            traceback.print_exc()
            print(f"{name} {variant.name}: failed: {message}", file=sys.stderr)
            if failures is not None:
                failures.append({"model": name, "variant": variant.name, "error": message})
            continue
        s_step = sum(per_step) / len(per_step)
        step_flops_ = flops or 0.0
        peak = peak_flops(device_name, variant.precision) if device.type == "cuda" else None
        achieved = step_flops_ / s_step
        if variant.precision == "fp32" and device.type == "cuda":
            note = f"float32 matmul precision {torch.get_float32_matmul_precision()}"
        row = Row(name, size, n_views, settings.batch, variant.name, s_step,
                  settings.image_steps * s_step / settings.batch,
                  settings.batch * n_views / s_step,
                  best_step, model_s, 1 - model_s / best_step, step_flops_, achieved, peak,
                  achieved / peak if peak else None, note)
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def load_model(name: str, device: torch.device) -> Guide:
    """A preset (or checkpoint) through the loader, or an architecture with random weights."""
    import open_clip

    if name in ARCH_CONFIGS or open_clip.get_model_config(name) is not None:
        model, tokenizer = build_model(name, seed=0)
        return _guide(model, tokenizer, f"{name} (random init)", {"arch": name}).to(device)
    from clipag.load import load_model

    return load_model(name, device=device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def si(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


COLUMNS = ("model", "px", "views", "variant", "s/step", "s/image", "views/s", "fwd+bwd s",
           "outside model", "FLOP/step", "FLOP/s", "of peak")


def cells(row: Row) -> list[str]:
    return [row.model, str(row.image_size), f"{row.batch}x{row.views}", row.variant,
            f"{row.s_step:.4g}", f"{row.s_image:.4g}", f"{row.views_per_s:.4g}",
            f"{row.model_s:.4g}", f"{100 * row.outside_share:.1f}%", si(row.flops_step, "FLOP"),
            si(row.flops_per_s, "FLOP/s"),
            "-" if row.peak_share is None else f"{100 * row.peak_share:.1f}%"]


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [f"# Generation speed, {meta['date']}", "",
             f"Device: {meta['device']} ({meta['device_name']}), torch {meta['torch']}, "
             f"torch threads {meta['threads']}. Command: `{meta['command']}`.", "",
             f"s/step: mean of the timed steps; s/image = {meta['image_steps']} steps x s/step "
             "/ images a step (the views column: images x views; optimisation only: no model "
             "loading, no start image). Outside model = 1 - "
             "(fastest forward+backward of the same views alone) / (fastest step), the two "
             "timed in turns. FLOP/step: "
             "FlopCounterMode on one step (the pixel gradient only: the weights are frozen). "
             "Peak: dense data-sheet FLOP/s of the card at the variant's precision (unknown on "
             "a CPU).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    notes = sorted({f"{r.variant}: {r.note}" for r in rows if r.note})
    lines += [""] + [f"- {n}" for n in notes] + [""] * bool(notes)
    lines += [f"- {f['model']} {f['variant']}: failed: {f['error']}"
              for f in meta.get("failed", [])]
    lines += compile_verdict(rows)
    return "\n".join(lines) + "\n"


def compile_verdict(rows: list[Row]) -> list[str]:
    """Per model: torch.compile's speed-up over fp16 eager, when both ran."""
    out = []
    for model in dict.fromkeys(r.model for r in rows):
        by = {r.variant: r for r in rows if r.model == model}
        if "fp16 autocast" in by and "fp16 + compile" in by:
            gain = by["fp16 autocast"].s_step / by["fp16 + compile"].s_step
            out.append(f"- {model}: torch.compile is {gain:.2f}x the speed of eager fp16 "
                       f"({'keep it' if gain > 1.05 else 'no gain worth keeping'}).")
    return out


def print_table(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "variant") else "right")
    for row in rows:
        table.add_row(*cells(row))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def write_results(rows: list[Row], meta: dict, out: Path) -> tuple[Path, Path]:
    """OUT.json and OUT.md (atomic writes)."""
    stem = out.with_suffix("") if out.suffix in (".json", ".md") else out
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    payload = {**meta, "rows": [dataclasses.asdict(r) for r in rows]}
    write_text_atomic(json_path, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    write_text_atomic(md_path, markdown(rows, meta))
    return json_path, md_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="world-robust,ViT-B-32",
                        help="comma-separated presets, checkpoints or open_clip architectures "
                             "(random weights)")
    parser.add_argument("--steps", type=int, default=BenchSettings.steps,
                        help="timed steps per variant, after one warm-up step")
    parser.add_argument("--quick", action="store_true",
                        help="one timed step; on CUDA only fp32 and fp16 (no bf16, no compile)")
    parser.add_argument("--image-steps", type=int, default=BenchSettings.image_steps)
    parser.add_argument("--batch-size", type=int, default=BenchSettings.batch)
    parser.add_argument("--views", type=int, default=None, help="[default: the model's]")
    parser.add_argument("--patch-views", type=int, default=None, help="[default: the model's]")
    parser.add_argument("--view-batch", type=int, default=0, help="views per model pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None,
                        help="results stem: writes OUT.json and OUT.md "
                             "[default: bench/results/speed-DATE]")
    args = parser.parse_args(argv)
    for flag in ("steps", "image_steps", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    device = resolve_device(args.device)
    settings = BenchSettings(steps=1 if args.quick else args.steps, image_steps=args.image_steps,
                             batch=args.batch_size, views=args.views,
                             patch_views=args.patch_views, view_batch=args.view_batch)
    variants = (FP32,) if device.type != "cuda" else CUDA_VARIANTS[:2 if args.quick else 4]
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    name = device_name(device)
    meta = {"date": day, "command": "python " + " ".join(["bench/speed.py", *sys.argv[1:]]),
            "device": str(device), "device_name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "image_steps": settings.image_steps,
            "prompt": PROMPT}
    rows: list[Row] = []
    meta["failed"] = []
    out = args.out or ROOT / "bench" / "results" / f"speed-{day}"

    def on_row(row: Row) -> None:  # results so far are on disk if a later variant hangs
        rows.append(row)
        print(" | ".join(cells(row)), file=sys.stderr)
        write_results(rows, meta, out)

    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        guide = load_model(model, device)
        bench_model(model, guide, variants, settings, name, on_row=on_row,
                    failures=meta["failed"])
        del guide
    print_table(rows, f"clipag generation step on {device} ({name})")
    for line in compile_verdict(rows):
        print(line)
    paths = write_results(rows, meta, out)
    print("wrote " + ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
