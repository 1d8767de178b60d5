#!/usr/bin/env bash
# Rebuild the embedded world CrossFlow (the learned initializer for `--init crossflow`).
#   bash examples/train_world_crossflow.sh [WORKDIR]
# Needs the world data from examples/train_world_models.sh (it exports it if missing) and
# uses the text tower of the embedded world-vanilla model (world-robust shares it: its
# robust fine-tuning keeps the text tower frozen). Resumes if interrupted (rerun).
# The objective is CrossFlow's own (the defaults): the official VE regulariser (weight 1e-2)
# and contrast between z0 and the image mapped to the latent's size (weight 1), sigma_min
# 1e-5; the file stores the moving average of the weights (--ema). The velocity network is
# the small U-Net (--net unet, base width 32, one block per level), the Variational Encoder
# reads the text tower's token sequence (--text-input tokens) and the velocity network also
# reads the VE's mean (--condition mean: without it every flow here drew circles for every
# shape, docs/experiments.md rows I70-I72): 14000 steps of batch 64, about 90 minutes on 2 CPU
# threads (OMP_NUM_THREADS=2; 12100 of them took 78 minutes here). 9000 steps drew the prompted
# shape in 0.55 of the drafts, 14000 in 0.77 (row I86). FLOW_STEPS, FLOW_BATCH, FLOW_LR,
# FLOW_EMA override the run (the lr schedule follows FLOW_STEPS; a resumed run must keep them).
# Copy WORKDIR/world-crossflow.safetensors to clipag/assets/ to ship it.
set -euo pipefail
work=${1:-work/world}
mkdir -p "$work"
run() { echo "+ $*" >&2; "$@"; }
[ -f "$work/data/scenes.jsonl" ] || run clipag world export "$work/data" --n 20000 --seed 0

run clipag crossflow train "$work/data" -o "$work/world-crossflow.safetensors" \
  --model world-vanilla --resolution 16 --net unet --width 32 --depth 1 --text-input tokens \
  --condition mean \
  --batch-size "${FLOW_BATCH:-64}" --steps "${FLOW_STEPS:-14000}" --lr "${FLOW_LR:-1e-3}" --warmup 100 \
  --ema "${FLOW_EMA:-0.998}" \
  --save-every 100 --log-every 50 --half --resume
