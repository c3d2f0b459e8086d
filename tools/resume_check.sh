#!/usr/bin/env bash
# Exact resume at full size: trains maskgwm_tiny 12 steps straight; then the same command killed
# (SIGKILL) at a random step, 64 bytes of its newest checkpoint overwritten, and the same command
# again. Passes when both runs' step 12 (params, optimizer state, EMA, counters) are bit-identical.
#   bash tools/resume_check.sh DIR        # about 4 minutes on 2 CPU cores
set -euo pipefail
W=$(mkdir -p "${1:?usage: bash tools/resume_check.sh WORKDIR}" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
WM_JAX_EXTRAS="" source tools/venv.sh
export JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1
rm -rf "$W/straight" "$W/broken"
ARGS="--config=configs/maskgwm_tiny.py --config.train.num_steps=12 --config.checkpoint.every_steps=3
      --config.train.log_every=1 --config.train.vae_steps=40"
echo "[resume_check] straight run (logs in $W/*.log)"
python -m wm_jax.main $ARGS --workdir="$W/straight" > "$W/straight.log" 2>&1
mkdir -p "$W/broken"
cp -r "$W/straight/vae" "$W/broken/vae"  # the same VAE, found by main.py in the workdir
KILL=$(( (RANDOM % 5) + 7 ))
echo "[resume_check] second run, killed at step $KILL"
python -m wm_jax.main $ARGS --workdir="$W/broken" > "$W/broken1.log" 2>&1 &
PID=$!
until grep -q "^\[train\] step $KILL/" "$W/broken1.log"; do
  sleep 0.5
  kill -0 $PID 2>/dev/null || { echo "[resume_check] the run ended before step $KILL"; exit 1; }
done
kill -9 $PID
wait $PID || true
echo "[resume_check] checkpoints left: $(ls "$W/broken/checkpoints" | tr '\n' ' ')"
NEWEST=$(ls "$W/broken/checkpoints" | grep -E '^[0-9]+$' | sort -n | tail -1)
python - "$(ls -S "$W/broken/checkpoints/$NEWEST/state/d/"* | head -1)" <<'PY'
import os, sys
path = sys.argv[1]
with open(path, "r+b") as f:
  f.seek(os.path.getsize(path) // 2)
  f.write(os.urandom(64))
print(f"[resume_check] overwrote 64 bytes in the middle of {path}")
PY
echo "[resume_check] the same command again"
python -m wm_jax.main $ARGS --workdir="$W/broken" > "$W/broken2.log" 2>&1
grep -E "^\[checkpoint\]|resumed from|done at" "$W/broken2.log"
python - "$W" <<'PY'
import sys
import jax
import numpy as np
import orbax.checkpoint as ocp
w = sys.argv[1]
read = lambda run: jax.tree_util.tree_flatten_with_path(
    ocp.StandardCheckpointer().restore(f"{w}/{run}/checkpoints/12/state"))[0]
a, b = read("straight"), read("broken")
assert len(a) == len(b) > 0, (len(a), len(b))
differ = [jax.tree_util.keystr(p) for (p, x), (_, y) in zip(a, b)
          if not np.array_equal(np.asarray(x), np.asarray(y))]
print(f"[resume_check] step 12: {len(differ)} of {len(a)} arrays differ {differ[:5]}")
sys.exit(1 if differ else 0)
PY
