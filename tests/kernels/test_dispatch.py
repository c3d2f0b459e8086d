"""Impl selection: 'auto' falls back to XLA with one warning per reason; explicit impls raise."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from wm_jax.kernels import attention as attn


@pytest.fixture
def fresh_warnings(monkeypatch):
  monkeypatch.setattr(attn, "_warned", set())


def _x(b=2, s=12, h=2, d=8, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(0).normal(size=(b, s, h, d)), dtype)


def test_auto_on_cpu_is_xla_without_warning(caplog, fresh_warnings):
  x = _x(s=300)
  with caplog.at_level(logging.WARNING):
    assert attn.resolve_impl("auto", x, x) == "xla"
  assert not caplog.records


def test_auto_on_gpu_takes_cudnn_where_it_can(monkeypatch, fresh_warnings):
  monkeypatch.setattr(attn, "_backend", lambda: "gpu")
  long_bf16 = _x(s=300, d=64).astype(jnp.bfloat16)
  assert attn.resolve_impl("auto", long_bf16, long_bf16) == "cudnn"
  assert attn.resolve_impl("auto", long_bf16, long_bf16, attn.BlockCausal(1)) == "cudnn"
  # camera-adjacency rows, float32, short sequences: XLA
  mask = attn.BlockMask(100, np.ones((3, 3), bool))
  assert attn.resolve_impl("auto", long_bf16, long_bf16, mask) == "xla"
  assert attn.resolve_impl("auto", _x(s=300, d=64), _x(s=300, d=64)) == "xla"
  short = _x(s=100, d=64).astype(jnp.bfloat16)
  assert attn.resolve_impl("auto", short, short) == "xla"


def test_auto_falls_back_once_per_reason(caplog, monkeypatch, fresh_warnings):
  # Pretend this is a GPU host whose 'auto' picks 'gpu' for long sequences ...
  monkeypatch.setattr(attn, "_backend", lambda: "gpu")
  monkeypatch.setattr(attn, "AUTO", {"gpu": "gpu"})
  monkeypatch.setattr(attn, "AUTO_MIN_SEQ", 8)
  x = _x(d=8)  # ... but head_dim 8 is below what the Triton tiles take
  z = _x(d=12)
  with caplog.at_level(logging.WARNING):
    assert attn.resolve_impl("auto", x, x) == "xla"
    assert attn.resolve_impl("auto", x, x) == "xla"
    assert attn.resolve_impl("auto", z, z) == "xla"  # another reason warns again, once
    assert attn.resolve_impl("auto", z, z) == "xla"
  warnings = [r.getMessage() for r in caplog.records if "falls back to XLA" in r.getMessage()]
  assert len(warnings) == 2, warnings
  assert "head_dim 8 is not a power of two" in warnings[0] and "head_dim 12" in warnings[1]
  # the fallback computes the reference result
  mask = attn.BlockMask(4, np.ones((3, 3), bool))
  out = jax.jit(lambda x: attn.attention(x, x, x, mask=mask, impl="auto"))(x)
  want = jax.jit(lambda x: attn.xla_attention(x, x, x, mask=mask))(x)
  np.testing.assert_allclose(out, want, atol=1e-6)


@pytest.mark.parametrize("impl,backend,kwargs,reason", [
    ("gpu", "cpu", {}, "needs a GPU backend, this is 'cpu'"),
    ("splash", "cpu", {}, "needs a TPU backend"),
    ("gpu", "gpu", {"d": 12}, "head_dim 12 is not a power of two"),
    ("cudnn", "gpu", {"mask": attn.BlockCausal(4)}, "cuDNN takes no mask or token-causal only"),
    ("cudnn", "gpu", {}, "cuDNN needs float16/bfloat16 inputs, got float32"),
    # a per-example camera-adjacency table: wm_jax's own kernel, whose sequence stays in VMEM
    ("splash", "tpu", {"s": 200_000, "mask": attn.BlockMask(
        100_000, np.array([[[1, 0], [0, 1]], [[1, 1], [1, 1]]], bool))}, "over the 24 MiB budget"),
])
def test_explicit_impl_raises_with_reason(impl, backend, kwargs, reason, monkeypatch):
  monkeypatch.setattr(attn, "_backend", lambda: backend)
  x = _x(s=kwargs.get("s", 12), d=kwargs.get("d", 8))
  with pytest.raises(ValueError, match=f"impl '{impl}' cannot run this call: .*{reason}"):
    attn.resolve_impl(impl, x, x, kwargs.get("mask"))


def test_splash_takes_what_jax_splash_can_express_and_the_own_kernel_the_rest(monkeypatch):
  monkeypatch.setattr(attn, "_backend", lambda: "tpu")
  x = _x(s=200_000)  # JAX's splash tiles the sequence: no VMEM limit on its length
  assert attn.resolve_impl("splash", x, x) == "splash"
  table = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], bool)
  ids = np.zeros((2, 12), np.int32)
  for mask in (None, attn.BlockCausal(4), attn.BlockMask(4, table),
               attn.BlockMask(4, np.stack([table, table])), attn.SegmentIds(ids, ids),
               (attn.BlockMask(4, table), attn.SegmentIds(ids, ids), attn.BlockCausal(3))):
    assert attn.uses_splash("splash", mask), mask
    assert attn.uses_splash("splash_interpret", mask), mask
  per_example = attn.BlockMask(4, np.stack([table, table.T]))
  two_segments = (attn.SegmentIds(ids, ids), attn.SegmentIds(ids, ids))
  for mask in (per_example, two_segments):
    assert not attn.uses_splash("splash", mask)
  assert not attn.uses_splash("splash", None, gathered=True)
  assert not attn.uses_splash("pallas_interpret", None)
  seen = []  # a table traced under jit (the model's camera adjacency from the batch)
  jax.jit(lambda t: seen.append(attn.uses_splash("splash", attn.BlockMask(4, t))) or t)(table)
  assert seen == [False]


def test_cudnn_accepts_token_causal_half_precision(monkeypatch):
  monkeypatch.setattr(attn, "_backend", lambda: "gpu")
  x = _x(d=64, dtype=jnp.bfloat16)
  assert attn.resolve_impl("cudnn", x, x, attn.BlockCausal(1)) == "cudnn"
  assert attn.resolve_impl("gpu", x, x, attn.BlockCausal(4)) == "gpu"


def test_mesh_divisibility(cpu_devices, caplog, monkeypatch, fresh_warnings):
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3,
                       devices=cpu_devices)
  x = _x(b=3)  # batch 3 cannot split over data x fsdp = 4
  with jax.set_mesh(mesh):
    with pytest.raises(ValueError, match=r"batch 3 is not divisible by the 4 shards"):
      attn.resolve_impl("pallas_interpret", x, x)
    monkeypatch.setattr(attn, "AUTO", {"cpu": "pallas_interpret"})
    monkeypatch.setattr(attn, "AUTO_MIN_SEQ", 8)
    with caplog.at_level(logging.WARNING):
      assert attn.resolve_impl("auto", x, x) == "xla"
    assert attn.resolve_impl("auto", _x(b=4), _x(b=4)) == "pallas_interpret"
  assert any("batch 3 is not divisible" in r.getMessage() for r in caplog.records)


def test_bad_impl_block_sizes_and_indices():
  x = _x()
  with pytest.raises(ValueError, match="unknown attention impl 'nope'"):
    attn.attention(x, x, x, impl="nope")
  with pytest.raises(ValueError, match=r"multiples of 8, got \(8, 12\)"):
    attn.attention(x, x, x, impl="pallas_interpret", block_sizes=(8, 12))
  with pytest.raises(ValueError, match=r"powers of two >= 16"):
    attn.flash.make_target("gpu", 12, 12, block_sizes=(8, 16))
  with pytest.raises(ValueError, match=r"keep_idx must be \[B=2, K\], got shape \(5,\)"):
    attn.attention_gathered(x, x, x, jnp.arange(5))
