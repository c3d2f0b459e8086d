#!/usr/bin/env bash
# The GPU acceptance checks of the kernels and the training system, on a machine with one NVIDIA
# GPU and a Python that has jax[cuda] and wm_jax's dependencies (it makes no venv: GPU machines
# bring their own CUDA-enabled jax).
#
#   bash tools/gpu_acceptance.sh [OUTDIR [STEP...]]   # default OUTDIR: gpu_acceptance; all steps
#   bash tools/gpu_acceptance.sh out kernels attention  # only these (e.g. to fit a time limit)
#
# Steps (each one logged to OUTDIR/<step>.log; a failing step does not stop the others):
#   kernels      pytest -m gpu tests/kernels: the Pallas/Triton and cuDNN paths against XLA, bf16
#   attention    tools/bench.py attention: each impl vs XLA at the long / mview shapes (README:
#                target >= 1.5x XLA on spatial attention at 288x512, forward+backward)
#   train_bench  tools/bench.py train: the fixed `bench` config, mask on and off
#   train_long   tools/bench.py train on maskgwm_long, batch 1, bf16, mask off and on (targets:
#                MFU >= 0.40, masked step <= 0.85x the unmasked one), with Adam's first moment in
#                bf16: fp32 params + grads + moments alone take 50 GiB of an 80 GB GPU, and remat
#                dots_saveable keeps about 25 GiB of activations (tools/bench.py compile reports
#                state_bytes and residual_bytes). If the step does not fit, it is tried again
#                with remat 'full' (train_long_remat_full: about 2 GiB of activations), and
#                if that fails too (e.g. cuDNN refuses a shape), with XLA attention.
# Every JSON line of every log in OUTDIR is collected in OUTDIR/results.jsonl at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_acceptance}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
# jax takes 75% of the GPU by default; maskgwm_long at batch 1 needs nearly all of it
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
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

long() {  # long NAME [ARGS...]: maskgwm_long, batch 1, bf16, mask off and on
  step "$1" python tools/bench.py train --config=configs/maskgwm_long.py --batch=1 --mask=both \
      --dtype=bfloat16 "${@:2}"
}
run_step() {
  case "$1" in
    kernels) step kernels python -m pytest -q -p no:cacheprovider -m gpu tests/kernels ;;
    attention) step attention python tools/bench.py attention ;;
    train_bench) step train_bench python tools/bench.py train ;;
    train_long) long train_long --set train.mu_dtype=bfloat16 ||
        long train_long_remat_full --set train.mu_dtype=bfloat16 --remat=full ||
        long train_long_xla_attention --set train.mu_dtype=bfloat16 --remat=full \
            --set model.attention_impl=xla ;;
    *) echo "[gpu_acceptance] unknown step '$1'; steps: kernels attention train_bench train_long" >&2
       return 2 ;;
  esac
}
steps=("${@:2}")
[ ${#steps[@]} -gt 0 ] || steps=(kernels attention train_bench train_long)
for name in "${steps[@]}"; do run_step "$name"; done
cat "$out"/*.log | grep '^{' > "$out/results.jsonl"
echo "[gpu_acceptance] $(wc -l < "$out/results.jsonl") result lines in $out/results.jsonl"
