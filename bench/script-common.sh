# Sourced by the bench scripts that run clipag stages (gpu-world.sh, gpu-crossflow.sh):
# PYTHON (python3) runs clipag; run() echoes each command; elapsed() prints the seconds since
# the script started. Sets py, device (DEVICE, default auto) and start.
py=${PYTHON:-python3}
# On a box that bench/gpu.sh prepared (clipag laid out in SRC as installed, the missing wheels
# in SITE), run that clipag. PYTHONSAFEPATH keeps the checkout's own clipag/ folder, which has
# no clipag.cli, from shadowing it when `python -m clipag` runs from the checkout's root.
common_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
common_src=${SRC:-/tmp/clipag-src}
if [[ -e $common_src/.made-by-gpu-sh && $(readlink "$common_src/clipag/cli") == "$common_repo/cli" ]]; then
  export PYTHONPATH="$common_src:${SITE:-/tmp/clipag-site}${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONSAFEPATH=1
device=${DEVICE:-auto}
run() { echo "+ $*" >&2; "$@"; }
clipag() { run "$py" -m clipag "$@"; }
start=$(date +%s)
elapsed() { echo "  [$(($(date +%s) - start)) s]" >&2; }
