"""How much the object is worth to the generator's objective, on ground-truth world renders of
single-object bench prompts (a small object):

- clean: the guide's score of the render, of the same render without the object and with the
  object in a wrong colour;
- views: the score averaged over the generator's own views (64 per image: colour jitter,
  translation, resize, cutout) for the object at the centre, at a corner, and for the
  background alone, at several cutout sizes. "Object minus no object" is the pull the
  optimiser feels towards drawing the object there;
- gradient noise: the cosine between the pixel gradients of two independent draws of the
  views, at 32 and 128 views (1 = the views do not matter, 0 = pure noise).

    python research/probe_views.py world-robust world-judge work/world2/world-robust.safetensors
"""

import argparse

import numpy as np
import torch

from clipag.augment import ViewConfig, Views
from clipag.world.benchmark import suite
from clipag.generate import encode_targets, weighted_distance
from clipag.load import load_model
from clipag.prompts import parse_prompt as parse_weighted
from clipag.world.scenes import COLORS, SIZE_FRACTION, Scene, parse_prompt, render

PLACES = {"centre": (0.5, 0.5), "corner": (0.16, 0.16), "no object": None}


def scene_image(prompt: str, place: tuple[float, float] | None, color: str | None = None
                ) -> torch.Tensor:
    attrs = parse_prompt(prompt)
    boxes = () if place is None else ((*place, SIZE_FRACTION["small"]),)
    scene = Scene(attrs["shape"], color or attrs["color"], attrs["background"], "small", 1, None,
                  boxes)
    return torch.from_numpy(np.array(render(scene, 64))).permute(2, 0, 1).float() / 255


def wrong_color(prompt: str) -> str:
    attrs = parse_prompt(prompt)
    return next(c for c in COLORS if c not in (attrs["color"], attrs["background"]))


def clean_scores(guide, prompts: list[str]) -> dict[str, float]:
    texts = guide.encode_texts(prompts)
    sets = {"object": [scene_image(p, PLACES["centre"]) for p in prompts],
            "no object": [scene_image(p, None) for p in prompts],
            "wrong colour": [scene_image(p, PLACES["centre"], wrong_color(p)) for p in prompts]}
    return {k: (guide.encode_images(torch.stack(v)) * texts).sum(-1).mean().item()
            for k, v in sets.items()}


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


def gradient_agreement(guide, prompts: list[str], views: int, cutout: float = 0.5) -> float:
    images = torch.stack([scene_image(p, PLACES["centre"]) for p in prompts])
    targets = encode_targets(guide, [parse_weighted(p) for p in prompts])
    make_views = Views(guide.image_size, ViewConfig(global_views=views, patch_views=0,
                                                    cutout=cutout))
    grads = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        x = images.clone().requires_grad_(True)
        batch, _ = make_views(x)
        emb = guide.encode_images(batch).view(len(prompts), views, -1)
        weighted_distance(emb, targets).sum().backward()
        grads.append(x.grad.flatten(1))
    return torch.cosine_similarity(*grads).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guides", nargs="+")
    parser.add_argument("--cutouts", default="0.5,0.25,0")
    parser.add_argument("--prompts", type=int, default=16, help="single-object bench prompts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = [p for p in suite(64) if parse_prompt(p).get("count", 1) == 1][:args.prompts]
    for name in args.guides:
        guide = load_model(name)
        guide.model.eval()
        guide.model.requires_grad_(False)
        with torch.no_grad():
            c = clean_scores(guide, prompts)
            print(f"{name}  clean: object {c['object']:.3f}  no object {c['no object']:.3f}  "
                  f"wrong colour {c['wrong colour']:.3f}")
            for cutout in (float(x) for x in args.cutouts.split(",")):
                s = view_scores(guide, prompts, cutout)
                print(f"{name}  views, cutout {cutout:g}: centre {s['centre']:.3f}  corner "
                      f"{s['corner']:.3f}  no object {s['no object']:.3f}  object adds "
                      f"{s['centre'] - s['no object']:.3f} at the centre, "
                      f"{s['corner'] - s['no object']:.3f} at a corner")
        agree = {n: gradient_agreement(guide, prompts, n) for n in (32, 128)}
        print(f"{name}  gradient agreement of two view draws (cutout 0.5): "
              + "  ".join(f"{n} views {a:.3f}" for n, a in agree.items()))


if __name__ == "__main__":
    main()
