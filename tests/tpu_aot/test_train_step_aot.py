"""The sharded train step compiled ahead of time for TPU v5e:2x2 (libtpu, no TPU) with JAX's
splash kernel forced, for maskgwm_tiny and the bench config (both with mask reconstruction and
two cameras), on a mesh that uses the fsdp and tensor axes. About a minute of compilation each on
2 CPU cores.
"""
import pytest

from tools import aot_compile
from tools.bench_suites.train import load_config
from wm_jax.parallel import aot

pytestmark = pytest.mark.tpu_aot


@pytest.mark.parametrize("config_path", ["configs/maskgwm_tiny.py", "configs/bench.py"])
def test_train_step_compiles_with_splash(config_path):
  config = aot_compile.apply_overrides(load_config(config_path), mesh="data=1,fsdp=2,tensor=2",
                                       batch=4, sets=["model.attention_impl=splash"])
  _, report = aot_compile.compile_train_step(config, aot.topology_devices("v5e:2x2"),
                                             log=lambda m: None)
  kernels = report["pallas_kernels"]
  for name in ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv"):
    assert any(k.startswith(name) for k in kernels), (name, kernels)
  # the camera adjacency of the cross-view rows comes with the batch (a traced table), which
  # splash cannot take: wm_jax's own kernel runs those rows
  for name in ("wm_flash_fwd", "wm_flash_dq", "wm_flash_dkv"):
    assert name in kernels, (name, kernels)
  assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
  assert report["collectives"].get("all-gather", {}).get("count", 0) > 0  # fsdp gathers weights
  assert report["memory_per_device"]["total_estimate_bytes"] > 0
  assert report["hbm_per_device_bytes"] == int(15.75 * 2**30) and report["fits_hbm"] is True
  assert report["xla_flops_per_device"] > 0 and report["model_flops_per_step"] > 0
  assert report["host_peak_rss_bytes"] > 2**20
