#!/usr/bin/env bash
# Train on one GPU machine (all its GPUs form the mesh: data=-1 by default). Usage:
#   bash launch/gpu.sh [CONFIG] [WORKDIR] [extra wm_jax.main flags]
# e.g. bash launch/gpu.sh configs/maskgwm_long.py /data/runs/long --config.train.batch_size=8
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-configs/maskgwm_tiny.py}"; WORKDIR="${2:-runs/$(basename "$CONFIG" .py)}"
shift $(( $# < 2 ? $# : 2 ))
WM_JAX_EXTRAS="gpu" source tools/venv.sh
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
# latency-hiding scheduler: overlap FSDP all-gathers with compute
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
python -c "import jax; print('[gpu.sh] devices:', jax.devices())"
echo "+ python -m wm_jax.main --config=$CONFIG --workdir=$WORKDIR $*"
exec python -m wm_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
