# Sourced by tools/test.sh and tools/demo.sh: create .venv from nothing and install wm_jax
# with the extras named in WM_JAX_EXTRAS. Re-installs only when setup.cfg changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${WM_JAX_VENV:-$ROOT/.venv}"
EXTRAS="${WM_JAX_EXTRAS:-}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[venv] creating $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
stamp="$VENV/.wm_jax_stamp"
want="$(cat "$ROOT/setup.cfg" | sha256sum | cut -c1-16) extras=$EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  case ",$EXTRAS," in
    *,torch,*)
      # The CPU build of torch first, so the torch extra does not pull a CUDA build.
      echo "[venv] installing torch (CPU)"
      "$VENV/bin/python" -m pip install -q "torch==2.13.0" || "$VENV/bin/python" -m pip install -q "torch>=2.4,<=2.14.1";;
  esac
  spec="$ROOT"
  [ -n "$EXTRAS" ] && spec="$ROOT[$EXTRAS]"
  echo "[venv] installing wm_jax${EXTRAS:+[$EXTRAS]} and its dependencies (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --progress-bar off -e "$spec"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
