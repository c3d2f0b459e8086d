#!/usr/bin/env bash
# The main job: from nothing to videos of a trained driving world model, on a CPU machine.
#   bash tools/demo.sh [WORKDIR] [demo flags...]     (default WORKDIR: ./workdir_demo)
# Creates .venv (first time: a few minutes), renders the synthetic world, trains a tiny VAE and
# maskgwm_tiny with the action module (mask reconstruction: --mask_reconstruction=1), rolls out
# held-out scenes under their own and commanded steering, measures controllability and quality
# against two baselines (FVD with the eval extra's I3D), and writes videos, plots and
# summary.json into WORKDIR.
# Flags: python -m wm_jax.train.demo --help (e.g. --steps=600 for a longer run).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
WM_JAX_EXTRAS="eval" source tools/venv.sh
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
workdir="${1:-workdir_demo}"
[ $# -gt 0 ] && shift
echo "[demo.sh] venv ready after $(( $(date +%s) - start )) s; workdir $workdir"
python -m wm_jax.train.demo --workdir="$workdir" "$@"
echo "[demo.sh] done in $(( $(date +%s) - start )) s. Videos: $workdir/videos  Summary: $workdir/summary.json"
