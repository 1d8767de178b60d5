"""What a world model can tell apart on clean ground-truth images: zero-shot accuracy per
attribute (foreground colour, background, shape) over 150 single-object world scenes, each
ranked against captions "a {colour} {shape} on a {background} background" that differ only in
that attribute (shape also split by object size); "binding" ranks the true caption against the
one with the foreground and background colours swapped (chance 0.5), which a model that only
counts colours cannot do. It also prints the median L2 distance between renders that differ
only in shape.

    python research/probe_zero_shot.py world-vanilla world-robust work/world/x.safetensors
    OBJECT_SCALE=1.6 python research/probe_zero_shot.py ...   # scenes of `world export --object-scale`

A name ending in .state.pt is a robustify resume file (weights mid-training), world-vit
unless prefixed with its architecture: world-rn:work/x.safetensors.state.pt.
"""

import dataclasses
import os
import random
import sys

import numpy as np
import torch

from clipag.load import load_model
from clipag.world.scenes import COLORS, SHAPES, render, sample_scene


def load(name: str):
    if name.endswith(".state.pt"):
        arch, _, name = name.rpartition(":") if ":" in name else ("world-vit", "", name)
        guide = load_model(arch, pretrained="none")
        guide.model.load_state_dict(torch.load(name, map_location="cpu", weights_only=True)["model"])
        return guide
    return load_model(name)


def probe(guide, scenes, images) -> dict[str, float]:
    options = {"color": list(COLORS), "background": list(COLORS), "shape": list(SHAPES)}
    result = {}
    with torch.no_grad():
        emb = guide.encode_images(images)
        for attr, values in options.items():
            # every scene's candidate captions encoded in one batch: (scenes, values, dim)
            captions = [f"a {p['color']} {p['shape']} on a {p['background']} background"
                        for s in scenes for p in ({**vars(s), attr: v} for v in values)]
            texts = guide.encode_texts(captions).view(len(scenes), len(values), -1)
            picks = (texts @ emb[:, :, None]).squeeze(-1).argmax(1).tolist()
            hits = [values[i] == getattr(s, attr) for i, s in zip(picks, scenes)]
            result[attr] = round(sum(hits) / len(scenes), 3)
            if attr == "shape":
                for size in ("small", "large"):
                    mine = [h for h, s in zip(hits, scenes) if s.size == size]
                    result[f"shape_{size}"] = round(sum(mine) / len(mine), 3)
        captions = [f"a {a} {s.shape} on a {b} background"
                    for s in scenes for a, b in ((s.color, s.background), (s.background, s.color))]
        texts = guide.encode_texts(captions).view(len(scenes), 2, -1)
        picks = (texts @ emb[:, :, None]).squeeze(-1).argmax(1)
        result["binding"] = round((picks == 0).float().mean().item(), 3)
    return result


def shape_distances(scenes) -> dict[str, float]:
    """Median L2 distance (pixels in [0, 1], 64 px) between renders of the same scene that
    differ only in the shape, per object size: how far an attack of radius eps must go to
    make one shape look like another (halfway is the boundary)."""
    result = {}
    for size in ("small", "large"):
        gaps = []
        for scene in (s for s in scenes if s.size == size):
            images = [np.asarray(render(dataclasses.replace(scene, shape=shape), 64),
                                 dtype=np.float32) / 255 for shape in SHAPES]
            gaps += [float(np.sqrt(((a - b) ** 2).sum()))
                     for i, a in enumerate(images) for b in images[i + 1:]]
        result[size] = round(float(np.median(gaps)), 1)
    return result


def main() -> None:
    torch.set_num_threads(1)
    rng = random.Random(7)
    scale = float(os.environ.get("OBJECT_SCALE", "1"))
    scenes = [s for s in (sample_scene(rng, scale) for _ in range(600)) if s.count == 1][:150]
    images = torch.stack([torch.from_numpy(np.array(render(s, 64))).permute(2, 0, 1).float() / 255
                          for s in scenes])
    print("median L2 distance between shapes:", shape_distances(scenes))
    for name in sys.argv[1:]:
        guide = load(name)
        guide.model.eval()
        print(name, probe(guide, scenes, images))


if __name__ == "__main__":
    main()
