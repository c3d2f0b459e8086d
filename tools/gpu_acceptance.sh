#!/usr/bin/env bash
# The GPU acceptance checks of the kernels and the training system, on a machine with one NVIDIA
# GPU and a Python that has jax[cuda] and wm_jax's dependencies (it makes no venv: GPU machines
# bring their own CUDA-enabled jax).
#
#   bash tools/gpu_acceptance.sh [OUTDIR [STEP...]]   # default OUTDIR: gpu_acceptance; all steps
#   bash tools/gpu_acceptance.sh out kernels attention  # only these (e.g. to fit a time limit)
#   PYTHON=/path/to/python bash tools/gpu_acceptance.sh  # default: python3
#
# Steps (each one logged to OUTDIR/<step>.log; a failing step does not stop the others):
#   kernels      pytest -m gpu tests/kernels: the Pallas/Triton and cuDNN paths against XLA, bf16
#   attention    tools/bench.py attention: each impl vs XLA at the long / mview shapes (README:
#                target >= 1.5x XLA on spatial attention at 288x512, forward+backward)
#   train_bench  tools/bench.py train: the fixed `bench` config, mask on and off
#   train_long   tools/bench.py train on maskgwm_long, batch 1, bf16, mask off and on (targets:
#                MFU >= 0.40, masked step <= 0.85x the unmasked one), with Adam's first moment in
#                bf16, trying until one fits the GPU (tools/bench.py compile reports the sizes:
#                state + gradients 44 GiB, plus the activations kept for the backward pass):
#                  train_long_dots     remat dots_saveable (~26 GiB of activations)
#                  train_long_narrow   remat narrow_dots_saveable (~13 GiB; recomputes the MLP
#                                      up-projections: 1.15x the model's matmul FLOPs executed)
#                  train_long_full     remat full (~2 GiB; recomputes the whole forward: 1.33x)
#                  train_long_xla      remat full and XLA attention (in case cuDNN refuses a shape)
#                Each rung is also a step of its own, to run one per command.
# Every JSON line of every log in OUTDIR is collected in OUTDIR/results.jsonl at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_acceptance}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
# jax takes 75% of the GPU by default; maskgwm_long at batch 1 needs nearly all of it
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python3}"

"$py" - <<'EOF' || { echo "[gpu_acceptance] no GPU visible to jax; nothing to check" >&2; exit 2; }
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

long() {  # long NAME [ARGS...]: maskgwm_long, batch 1, bf16, mask off and on
  step "$1" "$py" tools/bench.py train --config=configs/maskgwm_long.py --batch=1 --mask=both \
      --dtype=bfloat16 "${@:2}"
}
run_step() {
  case "$1" in
    kernels) step kernels "$py" -m pytest -q -p no:cacheprovider -m gpu tests/kernels ;;
    attention) step attention "$py" tools/bench.py attention ;;
    train_bench) step train_bench "$py" tools/bench.py train ;;
    train_long) run_step train_long_dots || run_step train_long_narrow ||
        run_step train_long_full || run_step train_long_xla ;;
    train_long_dots) long train_long_dots --set train.mu_dtype=bfloat16 --remat=dots_saveable ;;
    train_long_narrow) long train_long_narrow --set train.mu_dtype=bfloat16 \
        --remat=narrow_dots_saveable ;;
    train_long_full) long train_long_full --set train.mu_dtype=bfloat16 --remat=full ;;
    train_long_xla) long train_long_xla --set train.mu_dtype=bfloat16 --remat=full \
        --set model.attention_impl=xla ;;
    *) echo "[gpu_acceptance] unknown step '$1'; steps: kernels attention train_bench train_long" \
            "train_long_dots train_long_narrow train_long_full train_long_xla" >&2
       return 2 ;;
  esac
}
steps=("${@:2}")
[ ${#steps[@]} -gt 0 ] || steps=(kernels attention train_bench train_long)
for name in "${steps[@]}"; do run_step "$name"; done
cat "$out"/*.log | grep '^{' > "$out/results.jsonl"
echo "[gpu_acceptance] $(wc -l < "$out/results.jsonl") result lines in $out/results.jsonl"
