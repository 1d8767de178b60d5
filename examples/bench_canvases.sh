#!/usr/bin/env bash
# The canvas table of the README: every canvas under world-robust and world-vanilla on the
# 32-prompt world suite, seeds 0, 1, 2 (all of seed 0 first). Resumable: a run whose pag.json
# exists is skipped. Then: python research/canvas_table.py bench/results/DATE-canvases
#   OUT=bench/results/2026-12-07-canvases SEEDS="0 1 2" bash examples/bench_canvases.sh
set -euo pipefail
OUT=${OUT:-bench/results/$(date +%F)-canvases}
SEEDS=${SEEDS:-0 1 2}
PROMPTS=${PROMPTS:-32}
# the pixel canvas at world-robust's recommended settings (the README's first table); the
# pyramid and fourier canvases the same from a mid-grey noise start, without coarse stages;
# strokes: 128 strokes at 96 px, 300 steps, the last image, 8 of clipag's views (CLIPDraw's
# perspective views frame the image with a saturated border the judge reads as background:
# docs/experiments.md, rows K1-K8)
COMMON="--views 32 --patch-views 0 --cutout 0 --tv 0.3"
declare -A CANVAS=(
  [pixels]="--canvas pixels $COMMON --scales 8,16,32"
  [pyramid]="--canvas pyramid $COMMON --init noise"
  [fourier]="--canvas fourier $COMMON --init noise"
  [strokes]="--canvas strokes --views 8 --patch-views 0 --cutout 0 --keep last --steps 300 --size 96 --strokes 128 --lr 0.5"
)
CANVASES=${CANVASES:-pixels pyramid fourier strokes}
for seed in $SEEDS; do
  for canvas in $CANVASES; do
    for guide in world-robust world-vanilla; do
      dir="$OUT/$canvas-$guide-s$seed"
      [ -f "$dir/pag.json" ] && continue
      echo "== $dir" >&2
      python -m clipag bench pag --guides "$guide" --prompts "$PROMPTS" --batch-size 16 \
        --seed "$seed" ${CANVAS[$canvas]} -o "$dir" > /dev/null
    done
  done
done
