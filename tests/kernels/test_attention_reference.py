"""The XLA reference against a direct NumPy softmax attention with a dense mask."""
import jax
import numpy as np
import pytest

from wm_jax.kernels import attention as attn


def _numpy_attention(q, k, v, allowed):
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(allowed[:, None], logits, -np.inf)
  m = np.max(logits, -1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0)
  w = np.exp(logits - m) * allowed[:, None]
  d = w.sum(-1, keepdims=True)
  p = w / np.where(d > 0, d, 1)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize("kind", ["none", "block", "segment", "causal", "combined"])
def test_reference_matches_numpy(kind):
  rng = np.random.default_rng(0)
  b, s, h, d = 2, 12, 3, 8
  q, k, v = (rng.normal(size=(b, s, h, d)).astype(np.float32) for _ in range(3))
  allowed_views = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], bool)
  seg = np.array([[0] * 10 + [1] * 2, [0] * 12])
  specs = {
      "none": None,
      "block": attn.BlockMask(4, allowed_views),
      "segment": attn.SegmentIds(seg, seg),
      "causal": attn.BlockCausal(4),
      "combined": (attn.BlockMask(4, allowed_views), attn.BlockCausal(4)),
  }
  mask = specs[kind]
  dense = attn.dense_mask(mask, b, s, s)
  allowed = np.ones((b, s, s), bool) if dense is None else np.asarray(dense)
  out = jax.jit(lambda q, k, v: attn.attention(q, k, v, mask=mask, impl="xla"))(q, k, v)
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, allowed), atol=1e-5, rtol=1e-5)


def test_fully_masked_rows_are_zero_not_nan():
  q = k = v = np.ones((1, 4, 1, 2), np.float32)
  seg_q = np.array([[0, 0, 5, 5]])
  seg_k = np.array([[0, 0, 1, 1]])
  out = attn.xla_attention(q, k, v, mask=attn.SegmentIds(seg_q, seg_k))
  assert np.all(np.isfinite(out)) and np.all(out[0, 2:] == 0)


def test_bad_shapes_and_impl():
  x = np.zeros((1, 4, 2, 8), np.float32)
  with pytest.raises(ValueError, match="rank 4"):
    attn.attention(x[0], x, x)
  with pytest.raises(ValueError, match="unknown attention impl 'nope'"):
    attn.attention(x, x, x, impl="nope")
