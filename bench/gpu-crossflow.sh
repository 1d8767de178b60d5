#!/usr/bin/env bash
# Train a wider CrossFlow on the world (by default a U-Net of width 64, depth 2; the shipped
# one is a U-Net of 32 x 1, 16 px, trained 9000 x 64 in 65 minutes on a 2-core CPU) with the
# official objective, and measure its bare drafts and refined images against the shipped flow
# and the GMM start (`clipag bench init`, 32 prompts). NET=transformer trains the paper's
# velocity network instead (width 256, depth 8: row G6 of docs/experiments.md).
#   bash bench/gpu-crossflow.sh [WORKDIR]        # default WORKDIR: work/gpu-crossflow
#   TOY=1 bash bench/gpu-crossflow.sh [WORKDIR]  # the same pipeline at toy scale (a CPU)
# Environment: TOY, PYTHON, OUT, DEVICE (auto), STEPS (4000), BATCH (256), RESOLUTION (16),
# NET (unet), TEXT_INPUT (pooled, or tokens: the VE reads the text tower's token sequence),
# WIDTH (unet 64, transformer 256), DEPTH (unet 2, transformer 8), LR (unet 1e-3,
# transformer 5e-4), N (10000 world images; the export is one CPU process, about 1 s per 100
# images). On an H200 the transformer trained at 5,200-6,200 images/s (row G6: STEPS=2000
# took 185 s in all); the U-Net's speed there is not measured yet.
# Run bench/gpu.sh first on a box with only torch. Tables land in WORKDIR/init-*/ (and $OUT).
set -euo pipefail

work=${1:-work/gpu-crossflow}
mkdir -p "$work"
source "$(dirname "$0")/script-common.sh"

net=${NET:-unet}
if [[ $net == unet ]]; then wide=64; deep=2; lr=${LR:-1e-3}; else wide=256; deep=8; lr=${LR:-5e-4}; fi
if [[ ${TOY:-0} == 1 ]]; then
  n=${N:-128}; steps=${STEPS:-6}; batch=${BATCH:-8}; width=${WIDTH:-32}; depth=${DEPTH:-1}
  bench=(--prompts 2 --batch-size 2 --init-candidates 20 --views 2 --refiner-steps 0,4)
else
  n=${N:-10000}; steps=${STEPS:-4000}; batch=${BATCH:-256}; width=${WIDTH:-$wide}; depth=${DEPTH:-$deep}
  bench=(--prompts 32 --batch-size 16 --views 32 --refiner-steps 0,25,50)
fi
flow="$work/flow-$net-${TEXT_INPUT:-pooled}.safetensors"  # one file per kind: --resume never mixes them

[ -f "$work/data/scenes.jsonl" ] || clipag world export "$work/data" --n "$n" --seed 0 --digit-fraction 0
elapsed

clipag crossflow train "$work/data" -o "$flow" --model world-vanilla --device "$device" \
  --resolution "${RESOLUTION:-16}" --net "$net" --text-input "${TEXT_INPUT:-pooled}" --width "$width" --depth "$depth" \
  --batch-size "$batch" --steps "$steps" --lr "$lr" --warmup $((steps / 20 + 1)) --ema 0.999 --save-every 500 \
  --log-every 100 --half --resume
elapsed

# bare drafts: the new flow beside the shipped one; then refined at world-robust's settings
clipag bench init --inits "crossflow:$flow,crossflow" --refiner-steps 0 --device "$device" \
  "${bench[@]:0:4}" -o "$work/init-bare"
clipag bench init --inits "gmm,crossflow:$flow" --patch-views 0 --scales 8,16,32 --cutout 0 \
  --tv 0.3 --tv-wrap "${bench[@]}" --device "$device" -o "$work/init-refined"
elapsed
if [[ -n ${OUT:-} ]]; then
  mkdir -p "$OUT"
  for d in init-bare init-refined; do
    cp "$work/$d/init.md" "$OUT/gpu-crossflow-$d.md" && cp "$work/$d/init.json" "$OUT/gpu-crossflow-$d.json"
  done
fi
echo "done in $(($(date +%s) - start)) s: $work/init-bare $work/init-refined" >&2
