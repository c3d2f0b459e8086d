"""Kernels compiled for real hardware (skipped without a GPU/TPU), and the bench suite's shapes.

On hardware the kernels run in bf16 at MaskGWM shapes against the XLA reference in float32.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tools.bench_suites import attention as bench
from wm_jax.kernels import attention as attn

BF16_TOL = dict(atol=2e-2, rtol=2e-2)


def _inputs(n, s, h=4, d=64, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(n, s, h, d)), jnp.bfloat16) for _ in range(3)]


def _check(impl, mask, n=2, s=730, keep_idx=None):
  q, k, v = _inputs(n, s)
  f32 = lambda x: x.astype(jnp.float32)
  if keep_idx is None:
    fn = lambda q, k, v: attn.attention(q, k, v, mask=mask, impl=impl)
    ref = lambda q, k, v: attn.xla_attention(f32(q), f32(k), f32(v), mask=mask)
  else:
    take = lambda x: jnp.take_along_axis(f32(x), keep_idx[:, :, None, None], axis=1)
    fn = lambda q, k, v: attn.attention_gathered(q, k, v, keep_idx, mask=mask, impl=impl)
    ref = lambda q, k, v: attn.xla_attention(take(q), take(k), take(v), mask=mask)
  loss = lambda f: (lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) ** 2))
  out, want = jax.jit(fn)(q, k, v), jax.jit(ref)(q, k, v)
  np.testing.assert_allclose(f32(out), want, **BF16_TOL)
  grads = jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2)))(q, k, v)
  ref_grads = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
  for g, r in zip(grads, ref_grads):
    scale = float(jnp.max(jnp.abs(r))) + 1e-6
    np.testing.assert_allclose(f32(g) / scale, r / scale, atol=3e-2)


def _masks(s):
  allowed = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], bool)
  ids = np.repeat(np.array([[0] * (s - 100) + [1] * 100]), 2, 0)
  return {"none": None, "block": attn.BlockMask(-(-s // 3), allowed),
          "segment": attn.SegmentIds(ids, ids), "causal": attn.BlockCausal(25)}


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["none", "block", "segment", "causal"])
def test_gpu_kernel_matches_reference_bf16(kind):
  _check("gpu", _masks(730)[kind])


@pytest.mark.gpu
def test_gpu_gathered_matches_reference_bf16():
  rng = np.random.default_rng(1)
  keep = jnp.asarray(np.sort(np.argsort(rng.random((2, 730)), -1)[:, :442], -1), jnp.int32)
  _check("gpu", attn.BlockCausal(17), keep_idx=keep)


@pytest.mark.gpu
def test_cudnn_matches_reference_bf16():
  _check("cudnn", None)
  _check("cudnn", attn.BlockCausal(1))


@pytest.mark.tpu
@pytest.mark.parametrize("kind", ["none", "block", "segment", "causal"])
def test_splash_kernel_matches_reference_bf16(kind):
  _check("splash", _masks(730)[kind])


def test_bench_case_shapes_follow_the_configs():
  long, mview = bench.CONFIGS["long"], bench.CONFIGS["mview"]
  assert bench.case_shapes(long, "spatial_joint", 1)[:3] == (25, 576 + 154, 730)
  assert bench.case_shapes(long, "spatial_masked", 2)[:3] == (50, 18 * 24 + 154, 586)
  # the suite's mask ratio is the configs' (r = 0.25)
  from configs import maskgwm_long, maskgwm_mview
  assert long["mask_ratio"] == maskgwm_long.get_config().mask.ratio
  assert mview["mask_ratio"] == maskgwm_mview.get_config().mask.ratio
  assert bench.case_shapes(long, "temporal", 1)[:3] == (576, 25, 25)
  assert bench.case_shapes(long, "crossview", 1) is None
  n, sq, sk, mask, _ = bench.case_shapes(mview, "crossview", 1)
  assert (n, sq, sk, mask.block_size) == (8 * 18, 6 * 32, 192, 32)
  assert mask.allowed.sum() == 6 * 3  # self + two ring neighbours per camera
