#!/usr/bin/env bash
# On a connected machine: download the wheels a GPU box with only torch/torchvision/numpy lacks
# (clipag's requirements, what they require, and pytest) for CPython PYVER on manylinux x86_64.
#   bash bench/gpu-wheels.sh 3.12 [DIR]        # DIR defaults to bench/wheels (not for git)
# Then copy the repository with DIR to the box and run bash bench/gpu.sh there.
set -euo pipefail
if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: bash bench/gpu-wheels.sh PYVER [DIR]   (PYVER like 3.12: the box's Python)" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
dest=${2:-$here/wheels}
# BOX_HAS=scipy,click,... skips packages the box already has (see bench/README.md).
exec "${PYTHON:-python3}" "$here/wheels.py" download --python-version "$1" --dest "$dest" \
  --box-has "${BOX_HAS:-}"
