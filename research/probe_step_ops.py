"""How much of a generation step is fixed overhead: tensor operations per step outside and
inside the model, and the milliseconds of the views at a size where their arithmetic is nil.

On a GPU every tensor operation is at least one kernel launch (microseconds of host time),
so at small models the step is bound by their count, not by arithmetic (docs/experiments.md,
rows G2-G3). The count hardly depends on the device, so this CPU probe shows what a GPU step
pays in launches.

    python research/probe_step_ops.py [--models world-robust,default] [--reps 200]

`world-robust` runs at its recommended views (32 global, no patch views, no cutout, tv 0.3);
`default` is the GenerateConfig views (32 global + 32 patch, cutout 0.5) on the same guide.
Operations are counted with a TorchDispatchMode over one steady step (a two-step run minus a
one-step run); those that only reshape (view, slice, expand, ...) are counted apart from
those that compute.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from clipag.augment import Views
from clipag.generate import GenerateConfig, encode_targets, optimise, with_recommended
from clipag.load import load_model
from clipag.models import PRESETS
from clipag.prompts import parse_prompt

RESHAPES = {"view", "_unsafe_view", "slice", "select", "expand", "unsqueeze", "squeeze",
            "permute", "transpose", "t", "detach", "alias", "split", "unbind", "as_strided",
            "_reshape_alias", "reshape"}


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def split(ops: collections.Counter) -> tuple[int, int]:
    """(operations that compute, operations that only reshape)."""
    reshape = sum(v for k, v in ops.items() if k in RESHAPES)
    return sum(ops.values()) - reshape, reshape


def settings(name: str) -> GenerateConfig:
    config = GenerateConfig(steps=2, init="noise")
    if name == "world-robust":
        config, _ = with_recommended(config, PRESETS[name].recommended, explicit={"scales"})
    return config


def probe(name: str, reps: int) -> dict:
    guide = load_model("world-robust")
    config = settings(name)
    targets = encode_targets(guide, [parse_prompt("a red circle on a blue background")])
    torch.manual_seed(0)
    start = torch.rand(1, 3, guide.image_size, guide.image_size)
    with Count() as one:
        optimise(guide, targets, start, dataclasses.replace(config, steps=1))
    with Count() as two:
        optimise(guide, targets, start, config)
    step = two.ops - one.ops
    views = config.views.global_views + config.views.patch_views
    x = torch.rand(views, 3, guide.image_size, guide.image_size, requires_grad=True)
    with Count() as model:
        guide.encode_images(x).sum().backward()
    outside = step - model.ops
    tiny = Views(8, config.views)
    pixels = torch.rand(1, 3, 8, 8, requires_grad=True)

    def views_pass() -> None:
        g, p = tiny(pixels)
        torch.cat([g, p]).sum().backward()

    for _ in range(10):
        views_pass()
    t0 = time.perf_counter()
    for _ in range(reps):
        views_pass()
    ms = (time.perf_counter() - t0) / reps * 1e3
    return {"config": name, "views": views, "outside": split(outside), "model": split(model.ops),
            "views_ms": ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="world-robust,default")
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    print("| config | views/step | ops outside the model (compute + reshape) | ops in the model "
          "fwd+bwd | views fwd+bwd at 8 px, ms |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        r = probe(name, args.reps)
        print(f"| {r['config']} | {r['views']} | {sum(r['outside'])} ({r['outside'][0]} + "
              f"{r['outside'][1]}) | {sum(r['model'])} | {r['views_ms']:.2f} |")


if __name__ == "__main__":
    main()
