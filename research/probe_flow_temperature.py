"""The draft temperature checked on prompts it was not chosen on.

`clipag bench init --flow-temperature T` picked the shipped temperature on the fixed
32-prompt suite (suite seed 1234). This reads bare drafts of the given flows on another
suite (default: 64 prompts of suite seed 4321, the one the shipped-flow test draws from)
at each temperature, over sampler seeds, with the analytic judge: colour, background,
shape and count accuracy, each the mean over seeds.

    python research/probe_flow_temperature.py crossflow work/tok9k/world-crossflow.safetensors \
        --temperatures 1,0.5,0.25 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import statistics

import torch

from clipag.flow.crossflow import SampleConfig, load_flow_init
from clipag.prompts import parse_prompt
from clipag.world.benchmark import suite
from clipag.world.judge import judge

ATTRIBUTES = ("color", "background", "shape", "count")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("flows", nargs="+", help="crossflow (the embedded one) or FILE")
    parser.add_argument("--temperatures", default="1,0.5,0.25")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--suite-seed", type=int, default=4321)
    args = parser.parse_args()
    prompts = suite(args.prompts, seed=args.suite_seed)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{len(prompts)} prompts of suite seed {args.suite_seed}, sampler seeds {args.seeds}\n")
    print("| flow | temperature | " + " | ".join(ATTRIBUTES) + " |")
    print("|---|---|" + "---|" * len(ATTRIBUTES))
    for flow in args.flows:
        spec = flow if flow == "crossflow" else f"crossflow:{flow}"
        for temperature in (float(t) for t in args.temperatures.split(",")):
            init = load_flow_init(spec, torch.device("cpu"), None,
                                  SampleConfig(temperature=temperature))
            per_seed = []
            for seed in seeds:
                reads = [judge(init.draft(parse_prompt(p), seed=seed * 100_000 + i), p)
                         for i, p in enumerate(prompts)]
                per_seed.append({a: statistics.mean(float(r[a]) for r in reads if a in r)
                                 for a in ATTRIBUTES})  # each over the prompts naming it
            cells = [f"{statistics.mean(s[a] for s in per_seed):.2f}" for a in ATTRIBUTES]
            print(f"| {flow.split('/')[-1]} | {temperature:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
