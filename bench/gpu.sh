#!/usr/bin/env bash
# The one-command GPU check, for a CUDA box with no internet that has only torch, torchvision
# and numpy:
#   bash bench/gpu.sh             # bench/wheels must come from `bash bench/gpu-wheels.sh PYVER`
#   DRY_RUN=1 bash bench/gpu.sh   # print the stages and write the summary, running nothing
#   REHEARSE=1 bash bench/gpu.sh  # every stage on the CPU at toy sizes (a rehearsal without a GPU)
# Installs the wheels the box lacks into $SITE (/tmp/clipag-site), then runs, each stage under
# `timeout` and all within TOTAL_S (480 s = 8 minutes): the CUDA-marked tests, one `clipag
# generate` on the default model, one on ViT-B-32 with random weights (fp16 autocast),
# bench/speed.py (also at 8 images a step) and bench/train_speed.py. The markdown summary goes
# to $OUT/gpu-DATE.md when OUT is set, else to bench/results/gpu-DATE.md; the speed results and
# images go beside it (8 files in all: the most a device call brings back).
# Environment: PYTHON (python3 or python, whichever has torch), OUT, SITE, SRC, WHEELS, TOTAL_S,
# STAGE_SCALE (multiplies every stage's time limit), DRY_RUN, REHEARSE.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-}
if [[ -z $py ]]; then  # the interpreter that has torch
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
      py=$candidate && break
    fi
  done
  py=${py:-python3}
fi
dry=${DRY_RUN:-0}
total=${TOTAL_S:-480}
site=${SITE:-/tmp/clipag-site}
wheels=${WHEELS:-$repo/bench/wheels}
src=${SRC:-/tmp/clipag-src}   # clipag laid out as installed: clipag/ plus cli/ as clipag/cli
day=$(date -u +%F)
if [[ ${REHEARSE:-0} == 1 ]]; then
  dev=cpu
  scale=${STAGE_SCALE:-4}  # a CPU is slower: longer stage limits (TOTAL_S still applies)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # a shared CPU: spinning OpenMP threads crawl
  gen=(--steps 2 --init-candidates 4)
  gen_vit=(--steps 1 --views 2 --patch-views 2 --init-candidates 2)
  speed=(--quick --models world-robust --views 4)
  speed_batch=(--views 4)
  train=(--steps 2 --batch-size 8 --images 64)
else
  dev=cuda
  scale=${STAGE_SCALE:-1}
  gen=()
  gen_vit=()
  speed=()
  speed_batch=()
  train=(--steps 12 --batch-size 256 --images 2048)
fi
out=${OUT:-$repo/bench/results}
summary=$out/gpu-$day.md
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/clipag-gpu.XXXXXX")
start=$(date +%s)
deadline=$((start + total))
stage_rows=()

say() { echo "$*" >&2; }

# The package as `pip install` would lay it out (cli/ installs as clipag.cli), made of links
# to this checkout, so `python -m clipag` and the tests run this tree without installing it.
lay_out_source() {
  if [[ -e $src && ! -e $src/.made-by-gpu-sh ]]; then
    say "$src exists and was not made by bench/gpu.sh: set SRC to a new folder"
    return 1
  fi
  rm -rf "$src" && mkdir -p "$src/clipag" && touch "$src/.made-by-gpu-sh" || return 1
  local entry
  for entry in "$repo"/clipag/*; do ln -s "$entry" "$src/clipag/"; done
  ln -s "$repo/cli" "$src/clipag/cli"
}

# stage NAME LIMIT_S COMMAND...: run COMMAND in $src under timeout, log it, add a summary row.
stage() {
  local name=$1 limit=$(($2 * scale)) slug
  shift 2
  slug=$(echo "$name" | tr -c 'a-zA-Z0-9\n' '-')
  local left=$((deadline - $(date +%s)))
  ((limit > left)) && limit=$left
  say "== $name (timeout ${limit}s): $*"
  if [[ $dry == 1 ]]; then
    stage_rows+=("| $name | dry run | - | \`$*\` |")
    return 0
  fi
  if ((limit < 10)); then
    stage_rows+=("| $name | skipped: out of time | - | \`$*\` |")
    return 0
  fi
  local t0 t1 rc
  t0=$(date +%s.%N)
  (cd "$src" && timeout -k 10 "$limit" "$@") >"$work/$slug.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  local seconds status
  seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMED OUT after ${limit}s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  say "   $status in ${seconds}s"
  stage_rows+=("| $name | $status | $seconds | \`$*\` |")
  {
    echo "### $name: $status, ${seconds} s"
    echo
    echo '```'
    tail -n 30 "$work/$slug.log"
    echo '```'
    echo
  } >>"$work/details.md"
  return 0
}

{
  echo "# clipag GPU check, $(date -u '+%F %H:%M UTC')"
  echo
  echo "Commit \`$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)\`, host \`$(hostname 2>/dev/null || uname -n)\`."
  echo
  if [[ $dry == 1 ]]; then
    echo "DRY RUN: nothing was run."
  elif [[ $dev == cpu ]]; then
    echo "REHEARSAL on the CPU at toy sizes: these are not GPU figures."
  else
    echo '```'
    nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 || echo "nvidia-smi failed"
    "$py" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())' 2>&1
    echo '```'
  fi
  echo
} >"$work/header.md"
: >"$work/details.md"

if [[ $dry != 1 ]]; then
  lay_out_source || { say "cannot lay out $src"; exit 1; }
  export PYTHONPATH="$src:$site${PYTHONPATH:+:$PYTHONPATH}"
fi

stage "install missing wheels" 60 "$py" "$repo/bench/wheels.py" install "$wheels" --target "$site"
stage "CUDA tests" 85 "$py" -m pytest -p no:cacheprovider -W ignore -rs -c "$repo/pyproject.toml" \
  --rootdir "$repo" "$repo/tests/test_cuda.py" "$repo/tests/test_bench.py"
stage "generate, default model" 40 "$py" -m clipag generate "a red circle on a blue background" \
  --device "$dev" "${gen[@]}" -o "$out/gpu-$day-default.png" --overwrite -q
stage "generate, ViT-B-32 random weights, fp16" 55 "$py" -m clipag generate "a photo of a red car" \
  --model ViT-B-32 --pretrained none --device "$dev" "${gen_vit[@]}" -o "$out/gpu-$day-vitb32.png" \
  --overwrite -q
stage "speed benchmark" 170 "$py" "$repo/bench/speed.py" --device "$dev" "${speed[@]}" \
  --out "$out/speed-$day-gpu"
# the step's fixed cost is per step, not per image (rows G2, G7): 8 images a step amortise it
stage "speed benchmark, 8 images a step" 60 "$py" "$repo/bench/speed.py" --device "$dev" \
  --models world-robust --batch-size 8 --quick "${speed_batch[@]}" --out "$work/speed-batch8"
stage "robustify throughput" 60 "$py" "$repo/bench/train_speed.py" --device "$dev" "${train[@]}"

{
  cat "$work/header.md"
  echo "| stage | result | seconds | command |"
  echo "|---|---|---|---|"
  printf '%s\n' "${stage_rows[@]}"
  echo
  echo "Total $(($(date +%s) - start)) s of a ${total} s budget."
  echo
  if [[ $dry != 1 && -f "$out/speed-$day-gpu.md" ]]; then
    echo "## Speed"
    echo
    cat "$out/speed-$day-gpu.md"
    echo
  fi
  if [[ $dry != 1 && -f "$work/speed-batch8.md" ]]; then
    echo "## Speed, 8 images a step"
    echo
    cat "$work/speed-batch8.md"
    echo
  fi
  echo "## Logs (last 30 lines of each)"
  echo
  cat "$work/details.md"
} >"$summary.part" && mv "$summary.part" "$summary"
say "summary: $summary"
rm -rf "$work"
