"""Write the colour photographs bundled inside scikit-image (and scikit-learn) to a folder,
for fitting the default initializer offline: python examples/export_skimage_photos.py DIR"""

import sys
from pathlib import Path

from PIL import Image

NAMES = ["astronaut", "chelsea", "coffee", "rocket", "retina", "immunohistochemistry",
         "colorwheel", "logo", "motorcycle_left", "motorcycle_right", "hubble_deep_field"]


def main(out: Path) -> None:
    import skimage.data as data
    from sklearn.datasets import load_sample_images

    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name in NAMES:
        try:
            image = getattr(data, name)()
        except Exception as exc:  # some are fetched from the network: skip those
            print(f"skip {name}: {type(exc).__name__}", file=sys.stderr)
            continue
        if image.ndim == 3 and image.shape[2] >= 3:
            Image.fromarray(image[..., :3]).save(out / f"{name}.png")
            written += 1
    for i, image in enumerate(load_sample_images().images):
        Image.fromarray(image).save(out / f"sklearn-{i}.png")
        written += 1
    print(f"{written} photographs in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "work/photos"))
