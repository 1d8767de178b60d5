"""A usable flow file from a CrossFlow run still training: the moving average of the weights
in its resumable state (`OUT.state.pt`, written every --save-every steps), saved with the
metadata of a finished flow of the same architecture (`--like`), where `--set` changes the
fields the run differs in. For reading a long run's drafts before it ends:

    python research/snapshot_flow.py work/cond9k/world-crossflow.safetensors.state.pt \
        --like clipag/assets/world-crossflow.safetensors --set condition=mean \
        -o work/cond9k/snapshot.safetensors
    clipag bench init --inits crossflow:work/cond9k/snapshot.safetensors --refiner-steps 0 ...

The state is read with weights_only=True (clipag.train.common.load_state).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from clipag.checkpoint import read_meta
from clipag.flow.crossflow import CrossFlow, FlowConfig, save_flow
from clipag.train.common import load_state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state", type=Path)
    parser.add_argument("--like", type=Path, required=True, help="a finished flow file")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a FlowConfig field that differs (strings and whole numbers)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    meta = read_meta(args.like)
    changes = dict(item.split("=", 1) for item in args.set)
    changes = {k: int(v) if v.isdigit() else v for k, v in changes.items()}
    cfg = dataclasses.replace(FlowConfig(**meta["flow"]), **changes)
    state = load_state(args.state)
    prefix = "ema.average."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    model = CrossFlow(cfg)
    model.load_state_dict(weights)
    meta = {k: v for k, v in meta.items() if k not in ("kind", "flow")}
    meta.update(name=args.out.stem, steps=state["step"], snapshot_of=str(args.state))
    save_flow(args.out, model, meta, half=True)
    print(f"{args.out}: the moving average at step {state['step']}")


if __name__ == "__main__":
    main()
