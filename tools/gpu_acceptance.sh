#!/usr/bin/env bash
# The GPU acceptance checks of the kernels and the training system, in one command, on a machine
# with one NVIDIA GPU and a Python that has jax[cuda] and wm_jax's dependencies (it makes no venv:
# GPU machines bring their own CUDA-enabled jax).
#
#   bash tools/gpu_acceptance.sh [OUTDIR]        # default OUTDIR: gpu_acceptance
#
# Steps (each one logged to OUTDIR/<step>.log; a failing step does not stop the others):
#   kernels      pytest -m gpu tests/kernels: the Pallas/Triton and cuDNN paths against XLA, bf16
#   attention    tools/bench.py attention: each impl vs XLA at the long / mview shapes (README:
#                target >= 1.5x XLA on spatial attention at 288x512, forward+backward)
#   train_bench  tools/bench.py train: the fixed `bench` config, mask on and off
#   train_long   tools/bench.py train on maskgwm_long, batch 1, bf16, mask on and off (targets:
#                MFU >= 0.40, masked step <= 0.85x the unmasked one); if it fails (e.g. out of
#                memory with remat dots_saveable) it is run again with --remat=full
# Every JSON line of every step is collected in OUTDIR/results.jsonl at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_acceptance}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python - <<'EOF' || { echo "[gpu_acceptance] no GPU visible to jax; nothing to check" >&2; exit 2; }
import jax
gpus = [d for d in jax.devices() if d.platform == "gpu"]
print(f"[gpu_acceptance] jax {jax.__version__}, devices: {gpus}")
raise SystemExit(0 if gpus else 1)
EOF

step() {  # step NAME COMMAND...: runs it, logs it, reports its exit status
  local name=$1; shift
  echo "[gpu_acceptance] $name: $*"
  local start=$(date +%s)
  "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "[gpu_acceptance] $name: exit $rc after $(( $(date +%s) - start )) s (log: $out/$name.log)"
  grep '^{' "$out/$name.log" || tail -n 5 "$out/$name.log"
  return $rc
}

step kernels python -m pytest -q -p no:cacheprovider -m gpu tests/kernels
step attention python tools/bench.py attention
step train_bench python tools/bench.py train
step train_long python tools/bench.py train --config=configs/maskgwm_long.py --batch=1 \
    --mask=both --dtype=bfloat16 ||
  step train_long_remat_full python tools/bench.py train --config=configs/maskgwm_long.py \
    --batch=1 --mask=both --dtype=bfloat16 --remat=full
cat "$out"/*.log | grep '^{' > "$out/results.jsonl"
echo "[gpu_acceptance] $(wc -l < "$out/results.jsonl") result lines in $out/results.jsonl"
