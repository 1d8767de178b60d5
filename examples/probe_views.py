"""How much the object is worth to the generator's objective: the guide's score of ground-truth
world renders averaged over the generator's own views (64 per image, colour jitter,
translation, resize, cutout), for a small object at the centre, at a corner, and for the
background alone, at several cutout sizes. The difference "object minus no object" is the
pull the optimiser feels towards drawing the object there.

    python examples/probe_views.py world-robust work/world2/world-robust.safetensors
    python examples/probe_views.py world-robust --cutouts 0.5,0.25,0
"""

import argparse

import numpy as np
import torch

from clipag.augment import ViewConfig, Views
from clipag.benchmark import spec_for, suite
from clipag.models import load_guide
from clipag.world import SIZE_FRACTION, Scene, parse_prompt, render

PLACES = {"centre": (0.5, 0.5), "corner": (0.16, 0.16), "no object": None}


def scene_image(prompt: str, place: tuple[float, float] | None) -> torch.Tensor:
    attrs = parse_prompt(prompt)
    boxes = () if place is None else ((*place, SIZE_FRACTION["small"]),)
    scene = Scene(attrs["shape"], attrs["color"], attrs["background"], "small", 1, None, boxes)
    return torch.from_numpy(np.array(render(scene, 64))).permute(2, 0, 1).float() / 255


def view_scores(guide, prompts: list[str], cutout: float, views: int = 64) -> dict[str, float]:
    make_views = Views(guide.image_size, ViewConfig(global_views=views, patch_views=0,
                                                    cutout=cutout))
    texts = guide.encode_texts(prompts)
    out = {}
    for name, place in PLACES.items():
        images = torch.stack([scene_image(p, place) for p in prompts])
        torch.manual_seed(0)  # the same views for every placement: a paired comparison
        batch, _ = make_views(images)
        emb = guide.encode_images(batch).view(len(prompts), views, -1)
        out[name] = (emb * texts[:, None]).sum(-1).mean().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guides", nargs="+")
    parser.add_argument("--cutouts", default="0.5,0.25,0")
    parser.add_argument("--prompts", type=int, default=16, help="single-object bench prompts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = [p for p in suite(64) if parse_prompt(p).get("count", 1) == 1][:args.prompts]
    for name in args.guides:
        guide = load_guide(spec_for(name), torch.device("cpu"), quiet=True)
        guide.model.eval()
        with torch.no_grad():
            for cutout in (float(c) for c in args.cutouts.split(",")):
                s = view_scores(guide, prompts, cutout)
                print(f"{name}  cutout {cutout:g}: centre {s['centre']:.3f}  corner "
                      f"{s['corner']:.3f}  no object {s['no object']:.3f}  object adds "
                      f"{s['centre'] - s['no object']:.3f} at the centre, "
                      f"{s['corner'] - s['no object']:.3f} at a corner")


if __name__ == "__main__":
    main()
