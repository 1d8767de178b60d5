#!/usr/bin/env bash
# Train a wider CrossFlow on the world (by default a U-Net of width 64, depth 2, reading the
# token sequence, the velocity net reading the VE's mean; the shipped one is a U-Net of 32 x 1,
# 16 px, token VE, --condition mean, trained 14000 x 64 in about 90 minutes on a 2-core CPU) with the
# official objective, and measure its bare drafts and refined images against the shipped flow
# and the GMM start (`clipag bench init`, 32 prompts). NET=transformer trains the paper's
# velocity network instead (width 256, depth 8: row G6 of docs/experiments.md).
#   bash bench/gpu-crossflow.sh [WORKDIR]        # default WORKDIR: work/gpu-crossflow
#   TOY=1 bash bench/gpu-crossflow.sh [WORKDIR]  # the same pipeline at toy scale (a CPU)
# Environment: TOY, PYTHON, OUT, DEVICE (auto), STEPS (4000), BATCH (256), RESOLUTION (16),
# TRAIN_S (unset; when set, STEPS is chosen to fill about TRAIN_S seconds of training at the
# images/s a short calibration run measures here, at most MAX_STEPS, 20000; the plan is kept in
# WORKDIR/plan-KIND-TRAIN_Ss-bBATCH.txt so a rerun resumes the same schedule), SEEDS (0,1,2:
# the bare drafts' sampler seeds; the refined bench uses the first), FLOW_TEMPERATURE (the
# benches' --flow-temperature; unset: clipag's default, 0.5; rows G6 and G10 drew at 1),
# NET (unet), TEXT_INPUT (tokens: the VE reads the text tower's token sequence; or pooled),
# CONDITION (mean: the velocity net also reads the VE's mean, rows I70-I72; or none),
# WIDTH (unet 64, transformer 256), DEPTH (unet 2, transformer 8), LR (unet 1e-3,
# transformer 5e-4), N (10000 world images; the export is one CPU process, about 1 s per 100
# images). On an H200 the transformer trained at 5,200-6,200 images/s (row G6: STEPS=2000
# took 185 s in all), the U-Net at 32 px with TEXT_INPUT=tokens at 2,900-3,700 (row G10:
# TRAIN_S=180 took 337 s in all). The next experiment (row G10's notes):
#   RESOLUTION=32 TEXT_INPUT=tokens TRAIN_S=420 bash bench/gpu-crossflow.sh
# Run bench/gpu.sh first on a box with only torch. Tables land in WORKDIR/init-*/ (and $OUT).
set -euo pipefail

work=${1:-work/gpu-crossflow}
if [[ -n ${TRAIN_S:-} && ! $TRAIN_S =~ ^[1-9][0-9]*$ ]]; then
  echo "TRAIN_S must be whole seconds, got '$TRAIN_S'" >&2
  exit 2
fi
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
text_input=${TEXT_INPUT:-tokens}
condition=${CONDITION:-mean}
kind="$net-$text_input-$condition-${RESOLUTION:-16}px"
flow="$work/flow-$kind.safetensors"  # one file per kind: --resume never mixes them
seeds=${SEEDS:-0,1,2}

[ -f "$work/data/scenes.jsonl" ] || clipag world export "$work/data" --n "$n" --seed 0 --digit-fraction 0
elapsed

train=(crossflow train "$work/data" --model world-vanilla --device "$device"
  --resolution "${RESOLUTION:-16}" --net "$net" --text-input "$text_input"
  --condition "$condition" --width "$width" --depth "$depth" --batch-size "$batch" --lr "$lr" --ema 0.999)
# How many steps fit TRAIN_S: images/s of a short run of the same training, logged at its end.
[[ -n ${TRAIN_S:-} ]] && plan="$work/plan-$kind-${TRAIN_S}s-b$batch.txt"
if [[ -n ${TRAIN_S:-} && ! -s $plan ]]; then
  calibrate=$([[ ${TOY:-0} == 1 ]] && echo 4 || echo 150)  # 60 read 2,246 img/s, the run 3,400 (row G10)
  clipag "${train[@]}" -o "$work/calibrate-$kind.safetensors" --steps "$calibrate" --warmup 1 \
    --save-every 0 --log-every $((calibrate / 3)) --overwrite 2>&1 | tee "$work/calibrate-$kind.log"
  rate=$({ grep -o '[0-9]* img/s' "$work/calibrate-$kind.log" || true; } | tail -n 1 | cut -d' ' -f1)
  [[ -n $rate ]] || { echo "calibration printed no img/s" >&2; exit 1; }
  planned=$((TRAIN_S * rate / batch))
  ((planned > ${MAX_STEPS:-20000})) && planned=${MAX_STEPS:-20000}
  ((planned < 1)) && planned=1
  echo "$planned  # steps: ${TRAIN_S} s x $rate img/s / batch $batch" >"$plan"
  elapsed
fi
[[ -n ${TRAIN_S:-} ]] && steps=$(cut -d' ' -f1 "$plan")

clipag "${train[@]}" -o "$flow" --steps "$steps" --warmup $((steps / 20 + 1)) --save-every 500 \
  --log-every 100 --half --resume
elapsed

keep() {  # copy a finished table to $OUT at once: a later stage may run out of time
  if [[ -n ${OUT:-} ]]; then
    mkdir -p "$OUT"
    cp "$work/$1/init.md" "$OUT/gpu-crossflow-$1.md" && cp "$work/$1/init.json" "$OUT/gpu-crossflow-$1.json"
  fi
}
temperature=()
[[ -n ${FLOW_TEMPERATURE:-} ]] && temperature=(--flow-temperature "$FLOW_TEMPERATURE")
# bare drafts: the new flow beside the shipped one; then refined at world-robust's settings
clipag bench init --inits "crossflow:$flow,crossflow" --refiner-steps 0 --device "$device" \
  "${bench[@]:0:4}" "${temperature[@]}" --seed "$seeds" -o "$work/init-bare"
keep init-bare
elapsed
clipag bench init --inits "gmm,crossflow:$flow" --patch-views 0 --scales 8,16,32 --cutout 0 \
  --tv 0.3 --tv-wrap "${bench[@]}" "${temperature[@]}" --seed "${seeds%%,*}" --device "$device" \
  -o "$work/init-refined"
keep init-refined
echo "done in $(($(date +%s) - start)) s: $work/init-bare $work/init-refined" >&2
