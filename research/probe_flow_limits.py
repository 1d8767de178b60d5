"""What limits a 16 px CrossFlow draft on the world, measured without training a flow:

- the resolution: the world's own images (400 scenes with at most two objects), taken down
  to 16, 24 and 32 px (area) and back up to 64 (bicubic, as `clipag bench init` does with a
  draft), read by the analytic judge;
- the text tower: world-vanilla's cosine between captions that differ in the shape only,
  in the object's colour only, in the background's colour only, and with the two colours
  swapped (does the pooled embedding the flow reads tell them apart?), and, for the shapes,
  the same cosine between the token states the token-sequence VE reads, position by position
  (is the shape word still distinct before pooling?);
- the velocity nets' cost: seconds per training step at batch 64 for the transformer and
  U-Net sizes tried.

    OMP_NUM_THREADS=2 python research/probe_flow_limits.py            # all three
    python research/probe_flow_limits.py --parts resolution,text
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import to_tensor

from clipag.flow.crossflow import CrossFlow, FlowConfig, flow_loss
from clipag.load import ModelSpec, load_spec
from clipag.world.judge import judge
from clipag.world.scenes import WorldConfig, full_caption, sample

COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "cyan"]
SHAPES = ["circle", "square", "triangle", "cross"]


def resolution(n: int = 400) -> None:
    config = WorldConfig(seed=999, digit_fraction=0.0)
    images, prompts, i = [], [], 0
    while len(prompts) < n:
        image, _, scene = sample(i, config)
        i += 1
        if scene.count <= 2:
            images.append(to_tensor(image))
            prompts.append(full_caption(scene))
    x = torch.stack(images)

    def accuracy(batch: torch.Tensor) -> dict[str, float]:
        hits: dict[str, list[bool]] = {}
        for image, prompt in zip(batch, prompts):
            for key, value in judge(image, prompt).items():
                hits.setdefault(key, []).append(value)
        return {k: round(sum(v) / len(v), 3) for k, v in hits.items()}

    print("64 px (as rendered)", accuracy(x))
    for side in (16, 24, 32):
        small = F.interpolate(x, size=side, mode="area")
        print(f"{side} px and back", accuracy(
            F.interpolate(small, size=64, mode="bicubic", align_corners=False).clamp(0, 1)))


def text() -> None:
    guide = load_spec(ModelSpec(model="world-vanilla"), torch.device("cpu"), quiet=True)

    def embed(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return guide.encode_texts(texts)

    captions = [f"a small red {s} on a white background" for s in SHAPES]
    e = embed(captions)
    print("shapes", SHAPES, "\n", (e @ e.T).numpy().round(3))
    with torch.no_grad():
        states = F.normalize(guide.encode_text_tokens(captions), dim=-1)  # (4, L, W)
    length = int((states.abs().sum(-1) > 0).sum(1)[0])
    tri, cross = SHAPES.index("triangle"), SHAPES.index("cross")
    print("token states, triangle vs cross, by position (start ... end of text):",
          [round(float(states[tri, i] @ states[cross, i]), 3) for i in range(length)])
    swap = [float(a @ b) for a, b in (embed([f"a {x} circle on a {y} background",
                                              f"a {y} circle on a {x} background"])
                                       for x, y in itertools.permutations(COLOURS, 2))]
    fg, bg = [], []
    for a, b, c in list(itertools.permutations(COLOURS, 3))[:200]:
        e = embed([f"a {a} circle on a {c} background", f"a {b} circle on a {c} background",
                   f"a {a} circle on a {b} background"])
        fg.append(float(e[0] @ e[1]))
        bg.append(float(e[0] @ e[2]))
    print(f"colours swapped {statistics.mean(swap):.3f}; object colour changed "
          f"{statistics.mean(fg):.3f}; background colour changed {statistics.mean(bg):.3f}")


def speed() -> None:
    for net, width, depth in [("transformer", 128, 4), ("unet", 32, 1), ("unet", 64, 2)]:
        torch.manual_seed(0)
        model = CrossFlow(FlowConfig(text_dim=64, resolution=16, net=net, width=width, depth=depth))
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x, t = torch.rand(64, 3, 16, 16), F.normalize(torch.randn(64, 64), dim=-1)
        for i in range(6):
            if i == 2:
                start = time.perf_counter()
            loss = flow_loss(model, t, x)
            opt.zero_grad()
            loss.total.backward()
            opt.step()
        print(f"{net} width {width} depth {depth}: {(time.perf_counter() - start) / 4:.3f} s/step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="resolution,text,speed")
    parts = parser.parse_args().parts.split(",")
    for name, run in (("resolution", resolution), ("text", text), ("speed", speed)):
        if name in parts:
            run()


if __name__ == "__main__":
    main()
