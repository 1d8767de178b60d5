"""Generation speed: views/s and seconds per image, one batch of views vs a per-view loop.

    python bench/speed.py [--model world-robust] [--views 32] [--patch-views 32] [--steps 5]
"""

import argparse
import time

import torch

from clipag.augment import ViewConfig, Views
from clipag.device import resolve_device
from clipag.generate import encode_targets, weighted_distance
from clipag.models import ModelSpec, load_guide
from clipag.prompts import parse_prompt


def step_batched(guide, views, pixels, targets):
    g, p = views(pixels)
    emb = guide.encode_images(torch.cat([g, p]))
    loss = weighted_distance(emb.view(1, -1, emb.shape[-1]), targets).sum()
    loss.backward()


def step_looped(guide, views, pixels, targets):
    g, p = views(pixels)
    for view in torch.cat([g, p]):
        emb = guide.encode_images(view[None])
        weighted_distance(emb.view(1, 1, -1), targets).sum().backward(retain_graph=True)


def timed(fn, steps, device):
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="world-robust")
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--patch-views", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--image-steps", type=int, default=100, help="steps per image")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    guide = load_guide(ModelSpec(model=args.model), device)
    guide.model.requires_grad_(False)
    size = guide.image_size
    views = Views(size, ViewConfig(global_views=args.views, patch_views=args.patch_views)).to(device)
    targets = encode_targets(guide, [parse_prompt("a red circle on a blue background")])
    n = args.views + args.patch_views
    results = {}
    for name, fn in (("batched", step_batched), ("per-view loop", step_looped)):
        pixels = torch.rand(1, 3, size, size, device=device, requires_grad=True)
        seconds = timed(lambda fn=fn, pixels=pixels: fn(guide, views, pixels, targets),
                        args.steps, device)
        results[name] = seconds
        print(f"{name:>14}: {n / seconds:8.1f} views/s  {seconds * 1000:8.1f} ms/step  "
              f"{seconds * args.image_steps:7.1f} s/image ({args.image_steps} steps)")
    print(f"model {guide.name} ({size}px), {n} views/step, device {device}, "
          f"threads {torch.get_num_threads()}: batching is "
          f"{results['per-view loop'] / results['batched']:.1f}x faster than the loop")


if __name__ == "__main__":
    main()
