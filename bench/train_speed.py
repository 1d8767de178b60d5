"""Training throughput of `clipag robustify`: images/s clean (eps 0) vs adversarial.

    python bench/train_speed.py [--model world-vit] [--batch-size 64] [--steps 6]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from clipag.world import scenes as world
from clipag.train.attacks import ThreatModel
from clipag.device import resolve_device
from clipag.load import ModelSpec
from clipag.train.robustify import TrainConfig, robustify


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="world-vit")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--attack-steps", type=int, default=3)
    parser.add_argument("--images", type=int, default=512, help="world images exported to train on")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        # no digits: they need scikit-learn, which a bare GPU box lacks
        data = world.export(Path(tmp) / "data", args.images,
                            world.WorldConfig(seed=0, digit_fraction=0.0))
        rates = {}
        for label, eps in (("clean (eps 0)", 0.0), (f"adversarial (L2 eps 1, {args.attack_steps} "
                                                    "PGD steps)", 1.0)):
            logs = []
            config = TrainConfig(data=str(data), out=str(Path(tmp) / f"{eps}.safetensors"),
                                 steps=args.steps, batch_size=args.batch_size, lr=1e-4,
                                 log_every=1, train_text=False, save_every=0,
                                 threat=ThreatModel("l2", eps, args.attack_steps))
            start = time.perf_counter()
            robustify(config, ModelSpec(model=args.model, pretrained="none"), device,
                      on_log=logs.append)
            rate = sum(log.images_per_s for log in logs[1:]) / max(1, len(logs) - 1)
            rates[label] = rate
            print(f"{label:>40}: {rate:7.1f} images/s "
                  f"(run {time.perf_counter() - start:.1f} s incl. start-up)")
    clean, adv = rates.values()
    print(f"model {args.model}, batch {args.batch_size}, device {device}, threads "
          f"{torch.get_num_threads()}: the attack costs {clean / adv:.1f}x in throughput")


if __name__ == "__main__":
    main()
