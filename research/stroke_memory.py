"""Peak memory of one stroke render with its backward (CLIPDraw's start strokes, a random
gradient on the image): the renderer's bound on memory, measured.

    python research/stroke_memory.py --strokes 256 --size 224 [--batch 1] [--width 1]

On the CPU it prints the process's peak resident memory (ru_maxrss) before and after; on
CUDA (--device cuda) torch.cuda.max_memory_allocated."""

from __future__ import annotations

import argparse
import resource

import torch

from clipag.canvas.config import StrokesConfig
from clipag.canvas.stroke_render import render_strokes
from clipag.canvas.strokes import random_strokes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strokes", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--width", type=float, default=1.0, help="every stroke's width")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = StrokesConfig(count=args.strokes, start_width=args.width)
    parts = [random_strokes(cfg, args.size, torch.Generator().manual_seed(s))
             for s in range(args.batch)]
    points, widths, colors, segments = (torch.stack(p).to(device) for p in zip(*parts))
    tensors = [t.requires_grad_() for t in (points, widths, colors)]
    background = torch.ones(args.batch, 3, device=device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    image = render_strokes(*tensors, segments, background, args.size, args.size)
    image.backward(torch.randn_like(image))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = (f"{args.batch} x {args.strokes} strokes at {args.size} px, width {args.width:g}: "
            f"peak RSS {before:.0f} MB before, {after:.0f} MB after")
    if device.type == "cuda":
        line += f"; CUDA max allocated {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB"
    print(line)


if __name__ == "__main__":
    main()
