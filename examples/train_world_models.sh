#!/usr/bin/env bash
# Rebuild the embedded world models with clipag's own commands.
#   bash examples/train_world_models.sh [WORKDIR]
# Environment: VANILLA_STEPS, ROBUST_EPS, ROBUST_STEPS, JUDGE_STEPS, GUIDE_MODEL (world-vit;
# world-rn makes ResNet guides, as in the README's rows 27-31).
# Writes WORKDIR/{world-vanilla,world-robust,world-judge}.safetensors; copy them into
# clipag/assets/ to ship them. Every step resumes if interrupted (rerun the script).
# On 2 CPU cores the judge trains beside the vanilla guide, one thread each.
set -euo pipefail
work=${1:-work/world}
mkdir -p "$work"
run() { echo "+ $*" >&2; "$@"; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# 1. Data: 20k captioned world images for the guides, an independent 20k (other seed) for the judge.
[ -f "$work/data/scenes.jsonl" ] || run clipag world export "$work/data" --n 20000 --seed 0
[ -f "$work/data-judge/scenes.jsonl" ] || run clipag world export "$work/data-judge" --n 20000 --seed 1

common=(--batch-size 128 --save-every 50 --log-every 50 --half --resume)

# 2. The held-out judge: another architecture (ResNet), seed and data; never used as a guide.
run clipag robustify "$work/data-judge" -o "$work/world-judge.safetensors" \
  --model world-rn --pretrained none --train-text --eps 0 \
  --steps "${JUDGE_STEPS:-2500}" --lr 5e-4 --warmup 50 --weight-decay 0.1 --seed 1 \
  "${common[@]}" > "$work/judge.log" 2>&1 &
judge=$!

# 3. The vanilla guide: a small ViT CLIP trained from random init, plain contrastive (eps 0).
run clipag robustify "$work/data" -o "$work/world-vanilla.safetensors" \
  --model "${GUIDE_MODEL:-world-vit}" --pretrained none --train-text --eps 0 \
  --steps "${VANILLA_STEPS:-700}" --lr 5e-4 --warmup 100 --weight-decay 0.1 --seed 0 "${common[@]}"

# 4. The robust guide: the vanilla one fine-tuned on L2-PGD images (CLIPAG's contrastive
#    objective, text tower frozen).
run clipag robustify "$work/data" -o "$work/world-robust.safetensors" \
  --checkpoint "$work/world-vanilla.safetensors" --objective contrastive \
  --norm l2 --eps "${ROBUST_EPS:-4.0}" --attack-steps 3 \
  --steps "${ROBUST_STEPS:-300}" --lr 1e-4 --warmup 20 --weight-decay 0.01 --seed 0 "${common[@]}"
wait $judge
