"""wm_jax.parallel.aot without libtpu: the compiled-HLO readers (collectives, Pallas kernels) on
a program compiled for the 8 CPU devices, and the clear refusal of a TPU topology."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from wm_jax.parallel import aot


def test_collectives_of_a_sharded_matmul_gradient(cpu_devices):
  mesh = jax.sharding.Mesh(np.array(cpu_devices).reshape(4, 2), ("fsdp", "tensor"))
  x = jax.ShapeDtypeStruct((16, 64), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None)))
  w = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, P(None, "tensor")))
  # the gradient of w sums over the fsdp-sharded batch: an all-reduce (or reduce-scatter)
  text = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w)))).lower(w, x).compile().as_text()
  found = aot.collectives(text)
  assert found, text[:2000]
  kinds = set(found)
  assert kinds <= set(aot.COLLECTIVES)
  assert kinds & {"all-reduce", "reduce-scatter"}, found
  for entry in found.values():
    assert entry["count"] >= 1 and entry["bytes"] > 0
  # a program with no sharding has none
  plain = jax.jit(lambda a: a * 2).lower(jnp.ones(4)).compile().as_text()
  assert aot.collectives(plain) == {}


def test_readers_on_hlo_lines():
  text = """
  %all-gather-start.1 = (bf16[4,128]{1,0}, bf16[16,128]{1,0}) all-gather-start(bf16[4,128]{1,0} %p)
  %all-gather-done.1 = bf16[16,128]{1,0} all-gather-done((bf16[4,128]{1,0}, bf16[16,128]{1,0}) %s)
  ROOT %all-reduce.7 = f32[256]{0} all-reduce(f32[256]{0} %x), replica_groups={{0,1}}
  %splash_mha_fwd_residuals.3 = (f32[2,128,128]{2,1,0}) custom-call(%a), custom_call_target="tpu_custom_call"
  %wm_flash_dq.1.2 = f32[2]{0} custom-call(%b), custom_call_target="tpu_custom_call"
  %other = f32[2]{0} custom-call(%b), custom_call_target="Sharding"
  """
  assert aot.collectives(text) == {"all-gather": {"count": 1, "bytes": 16 * 128 * 2},
                                   "all-reduce": {"count": 1, "bytes": 256 * 4}}
  assert aot.pallas_kernels(text) == {"splash_mha_fwd_residuals": 1, "wm_flash_dq": 1}


def test_tpu_topology_without_libtpu_names_the_fix(monkeypatch):
  monkeypatch.setattr(aot, "has_libtpu", lambda: False)
  with pytest.raises(RuntimeError, match=r"'v5e:2x2' needs libtpu: pip install -e '\.\[tpu\]'"):
    aot.topology_devices("v5e:2x2")
  from tools import aot_compile
  with pytest.raises(SystemExit, match=r"needs libtpu.*--topology=cpu compiles for the devices"):
    aot_compile.main(["--config=configs/bench.py", "--topology=v5e:2x2"])


def test_overrides_name_unknown_keys():
  from tools import aot_compile
  from tools.bench_suites.train import load_config
  config = load_config("configs/maskgwm_tiny.py")
  aot_compile.apply_overrides(config, mesh="fsdp=2,tensor=2", batch=4,
                              sets=["model.attention_impl=splash", "model.remat_policy=full"])
  assert (config.mesh.fsdp, config.mesh.tensor, config.train.batch_size) == (2, 2, 4)
  assert (config.model.attention_impl, config.model.remat_policy) == ("splash", "full")
  with pytest.raises(ValueError, match="no field 'model.nope'"):
    aot_compile.apply_overrides(config, sets=["model.nope=1"])
  with pytest.raises(ValueError, match="no field 'nope.x'"):
    aot_compile.apply_overrides(config, sets=["nope.x=1"])
  with pytest.raises(ValueError, match="unknown axis 'pipeline'"):
    aot_compile.apply_overrides(config, mesh="pipeline=2")


def test_hbm_per_chip_by_device_kind():
  assert aot.hbm_bytes("TPU v5 lite") == int(15.75 * 2**30)
  assert aot.hbm_bytes("TPU v5") == 95 * 2**30
  assert aot.hbm_bytes("TPU v6 lite") == int(31.25 * 2**30)
  assert aot.hbm_bytes("cpu") is None
