"""Helpers of bench/gpu-world.sh: a bigger world ViT, and how many steps fit a time budget.

    python bench/world_arch.py init OUT.safetensors [--width 256 --layers 8 ...]
    python bench/world_arch.py plan --checkpoint INIT --data DATA --vanilla-s 130 --robust-s 90

`init` writes random weights of a world ViT wider and deeper than `world-vit` as a clipag
checkpoint: the file carries its architecture config, so `clipag robustify --checkpoint` trains
it and `clipag bench pag --guides FILE` loads it with no architecture name registered anywhere.
`plan` measures this machine's training throughput (images/s from robustify's own step logs,
plain and adversarial) and prints the two step counts that fit the budgets.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from clipag.checkpoint import save_checkpoint
from clipag.device import resolve_device
from clipag.load import ModelSpec
from clipag.models import ARCH_CONFIGS, build_model
from clipag.train.attacks import ThreatModel
from clipag.train.robustify import TrainConfig, robustify


@dataclass(frozen=True)
class WorldArch:
    width: int = 256  # world-vit: 128
    layers: int = 8  # world-vit: 4
    head_width: int = 64  # world-vit: 32
    text_width: int = 128  # world-vit: 64
    text_layers: int = 4  # world-vit: 2
    embed_dim: int = 128  # world-vit: 64

    def config(self) -> dict:
        """The open_clip config: world-vit's (64 px, patch 8, 24-token captions), resized."""
        config = copy.deepcopy(ARCH_CONFIGS["world-vit"])
        config["embed_dim"] = self.embed_dim
        config["vision_cfg"].update(width=self.width, layers=self.layers,
                                    head_width=self.head_width)
        config["text_cfg"].update(width=self.text_width, layers=self.text_layers,
                                  heads=max(1, self.text_width // 32))
        return config


def write_init(out: Path, arch: WorldArch, seed: int) -> Path:
    model, _ = build_model(arch.config(), seed=seed)
    params = sum(p.numel() for p in model.parameters())
    name = f"world-vit-w{arch.width}-l{arch.layers}"
    meta = {"arch": arch.config(), "name": name, "base_model": "random init", "seed": seed,
            "parameters": params}
    return save_checkpoint(out, model.state_dict(), meta)


def throughput(checkpoint: str, data: str, batch_size: int, steps: int, train_text: bool,
               threat: ThreatModel, device) -> float:
    """Images/s of `steps` robustify steps after the first (which warms up)."""
    logs = []
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(data=data, out=str(Path(tmp) / "calibrate.safetensors"),
                             steps=steps, batch_size=batch_size, lr=1e-4, log_every=1,
                             train_text=train_text, threat=threat, save_every=0)
        robustify(config, ModelSpec(checkpoint=checkpoint), device, on_log=logs.append)
    timed = logs[1:] or logs
    return sum(log.images_per_s for log in timed) / len(timed)


def steps_for(seconds: float, images_per_s: float, batch_size: int, low: int, high: int,
              margin: float = 0.85) -> int:
    """Steps of `batch_size` images that fit `margin * seconds`, within [low, high]."""
    fit = math.floor(margin * seconds * images_per_s / batch_size)
    return max(low, min(high, fit))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="random weights of a bigger world ViT")
    init.add_argument("out", type=Path)
    for field in fields(WorldArch):
        init.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default)
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--overwrite", action="store_true")
    plan = sub.add_parser("plan", help="steps that fit the time budgets on this machine")
    plan.add_argument("--checkpoint", required=True)
    plan.add_argument("--data", required=True)
    plan.add_argument("--batch-size", type=int, default=128)
    plan.add_argument("--eps", type=float, default=4.0)
    plan.add_argument("--attack-steps", type=int, default=3)
    plan.add_argument("--calibrate-steps", type=int, default=12)
    plan.add_argument("--vanilla-s", type=float, required=True)
    plan.add_argument("--robust-s", type=float, required=True)
    plan.add_argument("--min-steps", type=int, default=4)
    plan.add_argument("--max-vanilla", type=int, default=3000)
    plan.add_argument("--max-robust", type=int, default=1000)
    plan.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.command == "init":
        if args.out.exists() and not args.overwrite:
            parser.error(f"{args.out} exists; pass --overwrite")
        arch = WorldArch(**{f.name: getattr(args, f.name) for f in fields(WorldArch)})
        path = write_init(args.out, arch, args.seed)
        print(path)
        return
    device = resolve_device(args.device)
    plain = throughput(args.checkpoint, args.data, args.batch_size, args.calibrate_steps, True,
                       ThreatModel("l2", 0.0, 0), device)
    adversarial = throughput(args.checkpoint, args.data, args.batch_size, args.calibrate_steps,
                             False, ThreatModel("l2", args.eps, args.attack_steps), device)
    vanilla = steps_for(args.vanilla_s, plain, args.batch_size, args.min_steps, args.max_vanilla)
    robust = steps_for(args.robust_s, adversarial, args.batch_size, args.min_steps,
                       args.max_robust)
    print(f"# {plain:.0f} images/s plain (text tower trained), {adversarial:.0f} images/s "
          f"adversarial (L2 eps {args.eps:g}, {args.attack_steps} PGD steps), batch "
          f"{args.batch_size}, {device}", flush=True)
    print(vanilla, robust)


if __name__ == "__main__":
    main()
