# Sourced by the bench scripts that run clipag stages (gpu-world.sh, gpu-crossflow.sh):
# PYTHON (python3) runs clipag; run() echoes each command; elapsed() prints the seconds since
# the script started. Sets py, device (DEVICE, default auto) and start.
py=${PYTHON:-python3}
device=${DEVICE:-auto}
run() { echo "+ $*" >&2; "$@"; }
clipag() { run "$py" -m clipag "$@"; }
start=$(date +%s)
elapsed() { echo "  [$(($(date +%s) - start)) s]" >&2; }
