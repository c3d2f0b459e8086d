"""JAX's splash kernel behind impl='splash_interpret' (Pallas interpret mode on CPU) against the
XLA reference, forward and gradients, for every mask kind wm_jax translates, with odd lengths
(padding by segment id) and rows that see no key (zeros, as the reference)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from tests.kernels.test_flash import _assert_close, _jit, _qkv, _with_vjp
from wm_jax.kernels import attention as attn
from wm_jax.kernels import splash


def _mask(kind, sq, sk):
  if kind == "none":
    return None
  if kind == "block":  # one table for the batch, groups of 5 (not a block multiple)
    allowed = np.random.default_rng(1).random((-(-sq // 5), -(-sk // 5))) < 0.5
    allowed[0] = False  # a group of queries that sees nothing -> zero rows
    return attn.BlockMask(5, allowed)
  if kind == "segment":  # queries with id 7 have no key
    q_ids = np.array([[0] * 9 + [1] * (sq - 12) + [7] * 3, [2] * sq])
    kv_ids = np.array([[0] * 4 + [1] * (sk - 4), [2] * (sk - 5) + [3] * 5])
    return attn.SegmentIds(q_ids, kv_ids)
  if kind == "causal":
    return attn.BlockCausal(3)
  if kind == "all":
    return (_mask("block", sq, sk), _mask("segment", sq, sk), attn.BlockCausal(4))
  raise ValueError(kind)


@pytest.mark.parametrize("kind,sq,sk", [("none", 19, 21), ("block", 21, 21), ("segment", 21, 13),
                                        ("causal", 21, 21), ("all", 21, 21), ("none", 128, 256)])
def test_splash_interpret_matches_reference(kind, sq, sk):
  q, k, v = _qkv(2, sq, sk, 2, 8)
  mask = _mask(kind, sq, sk)
  assert attn.uses_splash("splash_interpret", mask)
  got = _jit(_with_vjp(lambda q, k, v: attn.attention(q, k, v, mask=mask,
                                                      impl="splash_interpret")))(q, k, v)
  want = _jit(_with_vjp(lambda q, k, v: attn.xla_attention(q, k, v, mask=mask)))(q, k, v)
  _assert_close(got, want)
  empty = {"block": slice(0, 5), "segment": slice(sq - 3, sq)}.get(kind)
  if empty is not None:                          # rows without keys are zeros
    assert np.all(np.asarray(got[0])[0, empty] == 0)


def test_per_example_table_runs_wm_jax_kernel_with_the_same_result():
  q, k, v = _qkv(2, 21, 21, 2, 8)
  allowed = np.random.default_rng(2).random((2, 5, 5)) < 0.5
  mask = attn.BlockMask(5, allowed)
  assert not attn.uses_splash("splash_interpret", mask)
  got = _jit(_with_vjp(lambda q, k, v: attn.attention(q, k, v, mask=mask,
                                                      impl="splash_interpret")))(q, k, v)
  want = _jit(_with_vjp(lambda q, k, v: attn.xla_attention(q, k, v, mask=mask)))(q, k, v)
  _assert_close(got, want)
  with pytest.raises(ValueError, match="traced or differs between batch elements"):
    splash.splash_attention(q, k, v, mask=mask, interpret=True)


def test_splash_under_shard_map_on_8_device_mesh(cpu_devices):
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3,
                       devices=cpu_devices)
  q, k, v = _qkv(4, 21, 21, 2, 8)
  ids = np.repeat(np.array([[0] * 15 + [1] * 6]), 4, 0)
  mask = (attn.BlockCausal(3), attn.SegmentIds(ids, ids))
  with jax.set_mesh(mesh):
    got = _jit(_with_vjp(lambda q, k, v: attn.attention(q, k, v, mask=mask,
                                                        impl="splash_interpret")))(q, k, v)
  want = _jit(_with_vjp(lambda q, k, v: attn.xla_attention(q, k, v, mask=mask)))(q, k, v)
  _assert_close(got, want)


def test_block_causal_mask_equals_the_dense_description():
  m = splash.static_mask(attn.BlockCausal(4), 10, 10)
  assert m.shape == (128, 128)
  dense = np.asarray(attn.dense_mask(attn.BlockCausal(4), 1, 10, 10)[0])
  np.testing.assert_array_equal(m[0:10, 0:10], dense)
  assert m == splash.static_mask(attn.BlockCausal(4), 10, 10)
  assert hash(m) == hash(splash.static_mask(attn.BlockCausal(4), 10, 10))
