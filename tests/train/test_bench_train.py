"""The train bench's config overrides and its check that a compiled step fits the device."""

import types

import jax
import pytest

from tests.train import toy
from tools.bench_suites import train as bench_train


def test_overrides_parse_literals_and_name_unknown_keys():
  cfg = toy.config()
  bench_train.apply_overrides(cfg, ["train.mu_dtype=bfloat16", "train.nan_guard=False",
                                    "train.learning_rate=3e-4"])
  assert cfg.train.mu_dtype == "bfloat16" and cfg.train.nan_guard is False
  assert cfg.train.learning_rate == 3e-4
  with pytest.raises(ValueError, match="'train.mu_dtyp'"):
    bench_train.apply_overrides(cfg, ["train.mu_dtyp=bfloat16"])
  with pytest.raises(ValueError, match="KEY=VALUE"):
    bench_train.apply_overrides(cfg, ["train.mu_dtype"])


def test_a_step_larger_than_the_device_is_refused_with_its_sizes(monkeypatch):
  gib = 2**30
  mem = types.SimpleNamespace(argument_size_in_bytes=60 * gib, output_size_in_bytes=60 * gib,
                              alias_size_in_bytes=60 * gib, temp_size_in_bytes=30 * gib)
  device = types.SimpleNamespace(memory_stats=lambda: {"bytes_limit": 80 * gib})
  monkeypatch.setattr(jax, "local_devices", lambda: [device])
  cfg = toy.config()
  cfg.model.remat_policy = "dots_saveable"
  with pytest.raises(MemoryError, match=r"needs 90.0 GiB .* has 80.0 GiB"):
    bench_train._check_fits(mem, cfg, masked=True)
  mem.temp_size_in_bytes = 10 * gib  # 70 GiB: fits
  bench_train._check_fits(mem, cfg, masked=True)
  device.memory_stats = lambda: None  # a CPU reports no limit: nothing to check
  mem.temp_size_in_bytes = 1000 * gib
  bench_train._check_fits(mem, cfg, masked=True)


NO_TENSORFLOW = r'''
import builtins, sys
real = builtins.__import__
def guard(name, *args, **kwargs):
  if name.split(".")[0] in ("tensorflow", "tensorboard", "tensorflow_datasets", "torch"):
    raise ImportError(f"{name} is not installed on this (simulated) GPU image")
  return real(name, *args, **kwargs)
builtins.__import__ = guard

import jax
from tools.bench_suites.train import load_config
from wm_jax.parallel import mesh as mesh_lib
from wm_jax.train import run as run_lib

config = load_config("configs/maskgwm_tiny.py")
config.train.batch_size = 1
config.mesh.update(data=1, fsdp=1, tensor=1)
run = run_lib.build(config, mesh=mesh_lib.make_mesh(config.mesh, jax.devices()[:1]))
run.step_fn.lower(*run.abstract_inputs())
print("lowered without", [m for m in ("tensorflow", "clu.metric_writers") if m in sys.modules])
'''


def test_train_step_and_bench_need_no_tensorflow():
  """GPU images ship jax but not TensorFlow (too large to carry): setting up and lowering the
  train step, as the train bench does, must not import it (clu's writers do, so they load late)."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", NO_TENSORFLOW], cwd=root, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "lowered without []" in out.stdout, out.stdout
