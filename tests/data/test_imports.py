"""The pipeline does not load tensorflow_datasets unless a TFDS source is read (the import graph
as a whole is checked by tests/test_import_layers.py)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_pipeline_loads_tensorflow_datasets_only_for_the_tfds_source():
  code = ("import sys; import wm_jax.data.pipeline, wm_jax.data.sources; "
          "print('tensorflow_datasets' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "False"
