"""How perceptually aligned a world model's gradients are for shape: over 32 held-out groups
of world siblings (scenes that differ only in the shape), the mean cosine between the
input-gradient of an image's score for a sibling's caption and the step from the image to
that sibling (every sibling offset, no noise). 0 = unrelated, 1 = following the gradient of
"a triangle" turns the circle into the triangle. The training term of `robustify
--pag-weight` is 1 minus this cosine.

    python research/probe_alignment.py world-vanilla world-robust work/x.safetensors

Names are read as in probe_zero_shot.py (presets, files, `.state.pt` resume files).
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F

from clipag.images import image_to_tensor
from clipag.train.robustify import sibling_alignment
from clipag.world.scenes import WorldConfig, sample
from probe_zero_shot import load

GROUP = 4


def main() -> None:
    torch.set_num_threads(1)
    config = WorldConfig(seed=5, digit_fraction=0.0, siblings=GROUP)
    items = [sample(i, config) for i in range(32 * GROUP)]
    images = torch.stack([image_to_tensor(image, config.size) for image, _, _ in items])
    captions = [text for _, text, _ in items]
    for name in sys.argv[1:]:
        guide = load(name)
        guide.model.eval()

        def encode(x, guide=guide):
            return F.normalize(guide.model.visual(guide.normalize(x)).float(), dim=-1)

        cosines = [sibling_alignment(guide, encode, images, captions, GROUP, shift).mean().item()
                   for shift in range(1, GROUP)]
        print(f"{name}: sibling-gradient alignment {np.mean(cosines):.3f}")


if __name__ == "__main__":
    main()
