#!/usr/bin/env bash
# Runs the test suite on CPU (8 virtual devices, Pallas in interpret mode).
# Creates .venv on first use. Extra arguments go to pytest, e.g. `bash tools/test.sh tests/models`.
# WM_JAX_SLOW=1 also runs the tests marked slow.
set -euo pipefail
cd "$(dirname "$0")/.."
WM_JAX_EXTRAS="test,torch,eval" source tools/venv.sh
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
export PYTHONUNBUFFERED=1
markers="not gpu and not tpu"
[ "${WM_JAX_SLOW:-0}" = "1" ] || markers="$markers and not slow"
workers="${WM_JAX_TEST_WORKERS:-2}"
echo "[test] pytest -m '$markers' -n $workers $*"
set +e
python -m pytest -m "$markers" -n "$workers" --durations=15 -q "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
exit $rc
