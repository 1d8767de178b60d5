#!/usr/bin/env bash
# Rebuild the embedded initializer clipag/assets/gmm-photos16.safetensors from the photographs
# bundled in scikit-image and scikit-learn (offline): 16x16 images, 16 components, rank 8.
set -euo pipefail
python3 examples/export_skimage_photos.py work/photos
clipag init fit work/photos -o clipag/assets/gmm-photos16.safetensors \
  --resolution 16 --components 16 --rank 8 --crops-per-image 200 --seed 0 --overwrite
