# Sourced by tools/test.sh and tools/demo.sh: create .venv from nothing and install wm_jax
# with the extras named in WM_JAX_EXTRAS (added to those installed before). Re-installs only when
# setup.cfg changed or an extra is new.
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
# The stamp holds setup.cfg's hash and the extras installed so far: asking for extras already
# installed (the demo after the tests) installs nothing; new ones are added to the old ones.
stamp="$VENV/.wm_jax_stamp"
hash="$(sha256sum < "$ROOT/setup.cfg" | cut -c1-16)"
have=""
if [ -f "$stamp" ] && [ "$(cut -d' ' -f1 < "$stamp")" = "$hash" ]; then
  have="$(sed -n 's/^[^ ]* extras=//p' "$stamp")"
fi
union="$(echo "$have,$EXTRAS" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -)"
if [ ! -f "$stamp" ] || [ "$(cut -d' ' -f1 < "$stamp")" != "$hash" ] || [ "$union" != "$have" ]; then
  case ",$union," in
    *,torch,*)
      # The CPU build of torch first, so the torch extra does not pull a CUDA build.
      echo "[venv] installing torch (CPU)"
      "$VENV/bin/python" -m pip install -q "torch==2.13.0" || "$VENV/bin/python" -m pip install -q "torch>=2.4,<=2.14.1";;
  esac
  spec="$ROOT"
  [ -n "$union" ] && spec="$ROOT[$union]"
  echo "[venv] installing wm_jax${union:+[$union]} and its dependencies (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --progress-bar off -e "$spec"
  echo "$hash extras=$union" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
