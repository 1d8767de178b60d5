#!/usr/bin/env bash
# Train a world ViT wider and deeper than world-vit (width 256, 8 layers, text 128 x 4; world-vit
# is 128 x 4, text 64 x 2) from random weights, plainly and then robust (the recipe of
# examples/train_world_models.sh), and run the PAG benchmark on it beside the shipped
# world-robust. Sized for about 6 minutes on one H100-class card: the training steps are chosen
# from the throughput measured on this machine to fit VANILLA_S and ROBUST_S seconds.
#   bash bench/gpu-world.sh [WORKDIR]        # default WORKDIR: work/gpu-world
#   TOY=1 bash bench/gpu-world.sh [WORKDIR]  # the same pipeline at toy scale (runs on a CPU)
# On a box with only torch, run bash bench/gpu.sh first: it installs the wheels and lays clipag
# out, and this script then uses that (script-common.sh). On an H200: 244 s (row G5). The PAG
# table lands in WORKDIR/pag/ (and $OUT when set).
# Environment: TOY, PYTHON, OUT, DEVICE (auto), VANILLA_S (110), ROBUST_S (80), N (10000: the
# export is one CPU process, about 1 s per 100 images).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-work/gpu-world}
mkdir -p "$work"
source "$(dirname "$0")/script-common.sh"

if [[ ${TOY:-0} == 1 ]]; then
  n=${N:-256}; vanilla_s=${VANILLA_S:-8}; robust_s=${ROBUST_S:-8}; batch=16; calibrate=3
  arch=(--width 64 --layers 2 --head-width 32 --text-width 32 --text-layers 1 --embed-dim 32)
  max=(--max-vanilla 20 --max-robust 10)
  pag=(--prompts 4 --steps 8 --views 4 --batch-size 4 --init-candidates 50)
else
  n=${N:-10000}; vanilla_s=${VANILLA_S:-110}; robust_s=${ROBUST_S:-80}; batch=128; calibrate=12
  arch=()
  max=(--max-vanilla 3000 --max-robust 1000)
  pag=(--prompts 32 --steps 100 --views 32 --batch-size 16)
fi

# 1. Data: the world without digits (the benchmark's prompts have none, and the digits need
#    scikit-learn, which a bare GPU box lacks).
[ -f "$work/data/scenes.jsonl" ] || clipag world export "$work/data" --n "$n" --seed 0 --digit-fraction 0
elapsed

# 2. Random weights of the bigger architecture; the checkpoint carries its config.
[ -f "$work/init.safetensors" ] || run "$py" "$repo/bench/world_arch.py" init "$work/init.safetensors" "${arch[@]}"

# 3. How many steps fit the budgets here (robustify's own images/s, plain and adversarial).
[ -s "$work/plan.txt" ] || run "$py" "$repo/bench/world_arch.py" plan \
  --checkpoint "$work/init.safetensors" --data "$work/data" --batch-size "$batch" \
  --calibrate-steps "$calibrate" --vanilla-s "$vanilla_s" --robust-s "$robust_s" \
  --device "$device" "${max[@]}" >"$work/plan.txt"
cat "$work/plan.txt" >&2
read -r vanilla_steps robust_steps < <(grep -v '^#' "$work/plan.txt")
warmup=$((vanilla_steps / 10 < 100 ? vanilla_steps / 10 : 100))
elapsed

common=(--batch-size "$batch" --save-every 0 --log-every 50 --device "$device" -q)

# 4. Plain contrastive training from random weights (text tower too), as world-vanilla.
[ -f "$work/wide-vanilla.safetensors" ] || clipag robustify "$work/data" \
  -o "$work/wide-vanilla.safetensors" --checkpoint "$work/init.safetensors" --train-text \
  --eps 0 --steps "$vanilla_steps" --lr 5e-4 --warmup "$warmup" --weight-decay 0.1 --seed 0 \
  "${common[@]}"
elapsed

# 5. Robust fine-tuning on L2-PGD images (CLIPAG's contrastive objective), as world-robust.
[ -f "$work/wide-robust.safetensors" ] || clipag robustify "$work/data" \
  -o "$work/wide-robust.safetensors" --checkpoint "$work/wide-vanilla.safetensors" \
  --objective contrastive --norm l2 --eps 4.0 --attack-steps 3 --steps "$robust_steps" \
  --lr 1e-4 --warmup $((robust_steps / 15)) --weight-decay 0.01 --seed 0 "${common[@]}"
elapsed

# 6. The PAG benchmark at world-robust's settings: shipped guide, the wide one plain and robust.
clipag bench pag --guides "world-robust,$work/wide-vanilla.safetensors,$work/wide-robust.safetensors" \
  --patch-views 0 --scales 8,16,32 --cutout 0 --tv 0.3 "${pag[@]}" --device "$device" \
  --out "$work/pag"
elapsed
if [[ -n ${OUT:-} ]]; then
  mkdir -p "$OUT" && cp "$work/plan.txt" "$OUT/gpu-world-plan.txt"
  cp "$work/pag/pag.md" "$OUT/gpu-world-pag.md" && cp "$work/pag/pag.json" "$OUT/gpu-world-pag.json"
fi
echo "done in $(($(date +%s) - start)) s: $work/pag" >&2
