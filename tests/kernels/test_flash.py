"""The Pallas flash kernels (interpret mode on CPU) against the XLA reference, forward and grads.

Interpret-mode compiles are the cost here, so each case jits forward + vjp once, at XLA's lowest
backend optimisation level, on tiny shapes with 8-wide blocks and odd lengths (padding).
"""
import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractDevice, AbstractMesh, AxisType, NamedSharding, PartitionSpec as P

from wm_jax.kernels import attention as attn
from wm_jax.kernels import block_table as bt
from wm_jax.kernels import flash

_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# With no GPU present, jax >= 0.11 lowers Pallas Triton kernels only for a GPU the context mesh
# names by an abstract device (older jax fell back to compute capability 9.0, an H100).
_H100 = AbstractDevice(device_kind="NVIDIA H100", num_cores=None, platform="cuda")


def _on_h100(mesh=None):
  """`mesh`'s axes (else one axis of size 1) as an abstract mesh on H100s, to lower for Triton."""
  am = AbstractMesh((1,), ("_",), (AxisType.Explicit,)) if mesh is None else mesh.abstract_mesh
  return am.update(abstract_device=_H100)


def _qkv(b, sq, sk, h, d, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, sq, h, d)).astype(np.float32)
  k, v = (rng.normal(size=(b, sk, h, d)).astype(np.float32) for _ in range(2))
  return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def _with_vjp(fn):
  """fn(q, k, v) -> (out, grads of sum(out * cos(out)) w.r.t. q, k, v): one jit, one compile."""
  def both(q, k, v):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(jnp.cos(out))
  return both


def _assert_close(got, want):
  (out, grads), (ref_out, ref_grads) = got, want
  np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-5)
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4, err_msg=f"d{name}")


def _mask(kind, b, sq, sk):
  if kind == "none":
    return None
  if kind == "block":  # batched camera adjacency, groups of 5 tokens (not a block multiple)
    rng = np.random.default_rng(1)
    allowed = rng.random((b, -(-sq // 5), -(-sk // 5))) < 0.5
    allowed[:, 0, :] = False  # a group of queries that sees nothing -> zero rows
    return attn.BlockMask(5, allowed)
  if kind == "segment":  # padding-style ids; queries with id 7 have no key
    q_ids = np.array([[0] * 9 + [1] * (sq - 12) + [7] * 3, [2] * sq])
    kv_ids = np.array([[0] * 4 + [1] * (sk - 4), [2] * (sk - 5) + [3] * 5])
    return attn.SegmentIds(q_ids[:b], kv_ids[:b])
  if kind == "causal":
    return attn.BlockCausal(3)
  raise ValueError(kind)


# sq != sk for 'segment' (cross attention); all lengths odd, so both q and kv get padded.
@pytest.mark.parametrize("kind,sq,sk", [("none", 19, 21), ("block", 21, 21), ("segment", 21, 13),
                                        ("causal", 21, 21)])
def test_pallas_interpret_matches_reference(kind, sq, sk):
  b, h, d = 2, 2, 8
  q, k, v = _qkv(b, sq, sk, h, d)
  mask = _mask(kind, b, sq, sk)
  got = _jit(_with_vjp(lambda q, k, v: attn.attention(
      q, k, v, mask=mask, impl="pallas_interpret", block_sizes=(8, 8))))(q, k, v)
  want = _jit(_with_vjp(lambda q, k, v: attn.xla_attention(q, k, v, mask=mask)))(q, k, v)
  _assert_close(got, want)


def test_gpu_target_body_in_interpret_mode():
  """The GPU (Triton) target's layout, block rules and padded group tables, run interpreted."""
  b, s, h, d = 2, 27, 1, 16
  q, k, v = _qkv(b, s, s, h, d, seed=2)
  allowed = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], bool)
  mask = (attn.BlockMask(9, allowed), attn.BlockCausal(4))
  target = flash.make_target("gpu", s, s, block_sizes=(16, 16), interpret=True)
  assert target.layout == "bshd" and target.min_groups == 16
  got = _jit(_with_vjp(lambda q, k, v: flash.flash_attention(
      q, k, v, mask=mask, scale=0.3, target=target)))(q, k, v)
  ref = lambda q, k, v: attn.xla_attention(q, k, v, mask=mask, scale=0.3)
  want = _jit(_with_vjp(ref))(q, k, v)
  _assert_close(got, want)


def test_under_shard_map_on_8_device_mesh(cpu_devices):
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3,
                       devices=cpu_devices)
  b, s, h, d = 4, 19, 2, 8
  q, k, v = _qkv(b, s, s, h, d, seed=3)
  seg = np.repeat(np.array([[0] * 12 + [1] * 7]), b, 0)
  seg[1, -4:] = 5
  allowed = np.random.default_rng(4).random((b, 4, 4)) < 0.6
  mask = (attn.SegmentIds(seg, seg), attn.BlockMask(5, allowed))
  fn = lambda q, k, v: attn.attention(q, k, v, mask=mask, impl="pallas_interpret",
                                      block_sizes=(8, 8))
  sharding = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
  q, k, v = (jax.device_put(x, sharding) for x in (q, k, v))
  with jax.set_mesh(mesh):
    assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v))
    got = _jit(_with_vjp(fn))(q, k, v)
  want = _jit(_with_vjp(lambda q, k, v: attn.xla_attention(q, k, v, mask=mask)))(q, k, v)
  _assert_close(got, want)
  assert got[0].sharding.spec == P(("data", "fsdp"), None, "tensor", None)

  # the gathered variant: indices [B, K] split over the batch like q (forward only)
  rng = np.random.default_rng(9)
  keep_idx = jnp.asarray(np.stack([np.sort(rng.permutation(s)[:13]) for _ in range(b)]),
                         jnp.int32)
  fn = lambda q, k, v: attn.attention_gathered(q, k, v, keep_idx, mask=attn.BlockCausal(3),
                                               impl="pallas_interpret", block_sizes=(8, 8))
  with jax.set_mesh(mesh):
    assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v))
    out = _jit(fn)(q, k, v)
  take = lambda x: jnp.take_along_axis(x, keep_idx[:, :, None, None], axis=1)
  want = attn.xla_attention(take(q), take(k), take(v), mask=attn.BlockCausal(3))
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)


def test_inside_a_callers_shard_map(cpu_devices):
  """Called inside shard_map (manual axes) the kernel runs on the local shard, no nested map.

  JAX's Pallas interpreter does not track varying manual axes, so the interpreted run needs
  check_vma=False; the Mosaic and Triton lowerings are checked with check_vma=True (the kernels
  declare their outputs as varying like their inputs).
  """
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Explicit,) * 3,
                       devices=cpu_devices)
  spec = P(("data", "fsdp"), None, "tensor", None)
  q, k, v = _qkv(4, 11, 11, 2, 8, seed=8)
  mask = attn.BlockCausal(2)
  inner = lambda q, k, v: attn.attention(q, k, v, mask=mask, impl="pallas_interpret")
  fn = jax.shard_map(inner, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)
  with jax.set_mesh(mesh):
    out = _jit(fn)(*(jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v)))
  want = attn.xla_attention(q, k, v, mask=mask)
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)

  for platform, name in (("tpu", "tpu"), ("cuda", "gpu")):
    m = mesh if platform == "tpu" else _on_h100(mesh)
    x = jax.ShapeDtypeStruct((8, 256, 4, 64), jnp.bfloat16, sharding=NamedSharding(m, spec))
    def per_shard(q, k, v, name=name):
      target = flash.make_target(name, 256, 256)
      o, vjp = jax.vjp(lambda q, k, v: flash.flash_attention(q, k, v, mask=mask, target=target),
                       q, k, v)
      return o, vjp(o)
    f = jax.shard_map(per_shard, mesh=m, in_specs=(spec,) * 3, out_specs=(spec, (spec,) * 3))
    with jax.set_mesh(m) if platform == "tpu" else jax.sharding.use_abstract_mesh(m):
      jax.jit(f).trace(x, x, x).lower(lowering_platforms=(platform,))


@pytest.mark.parametrize("target", ["tpu", "gpu"], ids=["row_copies", "vector_loads"])
def test_gathered_equals_gather_then_reference(target):
  """Row-wise kept tokens (3 rows x 5 of 8 columns) read through indices inside the kernel.

  TPU target: indices in SMEM, rows copied into VMEM one by one; GPU target: indexed loads.
  """
  b, rows, width, keep, h, d = 2, 3, 8, 5, 2, 8
  q, k, v = _qkv(b, rows * width, rows * width, h, d, seed=5)
  rng = np.random.default_rng(6)
  cols = np.sort(np.stack([np.stack([rng.permutation(width)[:keep] for _ in range(rows)])
                           for _ in range(b)]), -1)
  keep_idx = attn.row_keep_to_flat(jnp.asarray(cols), width)
  assert keep_idx.shape == (b, rows * keep)
  np.testing.assert_array_equal(keep_idx[0, keep:2 * keep], cols[0, 1] + width)
  mask = attn.BlockMask(keep, np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1]], bool))  # row groups
  if target == "tpu":
    fn = lambda q, k, v: attn.attention_gathered(q, k, v, keep_idx, mask=mask,
                                                 impl="pallas_interpret", block_sizes=(8, 8))
  else:
    fn = lambda q, k, v: flash.flash_attention_gathered(
        q, k, v, keep_idx, mask=mask, target=flash.make_target("gpu", 15, 15, interpret=True))
  got = _jit(_with_vjp(fn))(q, k, v)
  take = lambda x: jnp.take_along_axis(x, keep_idx[:, :, None, None], axis=1)
  ref = lambda q, k, v: attn.xla_attention(take(q), take(k), take(v), mask=mask)
  want = _jit(_with_vjp(ref))(q, k, v)
  _assert_close(got, want)
  # dropped tokens get no gradient
  dropped = np.ones((b, rows * width), bool)
  np.put_along_axis(dropped, np.asarray(keep_idx), False, axis=1)
  assert np.all(np.asarray(got[1][0])[dropped] == 0)


def test_skipped_blocks_are_never_read():
  """NaNs in kv blocks the table marks SKIP for some q blocks must not reach those queries."""
  b, s, h, d = 1, 24, 1, 8
  q, k, v = _qkv(b, s, s, h, d, seed=7)
  mask = attn.BlockCausal(8)  # aligned with 8-wide blocks: every block is FULL or SKIP
  _, table, _ = bt.build(mask, b, s, s, 8, 8)
  np.testing.assert_array_equal(table[0], [[2, 0, 0], [2, 2, 0], [2, 2, 2]])
  k_nan, v_nan = k.at[:, 16:].set(jnp.nan), v.at[:, 16:].set(jnp.nan)
  out = _jit(lambda q, k, v: attn.attention(q, k, v, mask=mask, impl="pallas_interpret",
                                            block_sizes=(8, 8)))(q, k_nan, v_nan)
  want = _jit(lambda q, k, v: attn.xla_attention(q, k, v, mask=mask))(q, k, v)
  np.testing.assert_allclose(out[:, :16], want[:, :16], atol=1e-5, rtol=1e-5)
  assert np.all(np.isnan(out[:, 16:]))


@pytest.mark.parametrize("platform", ["tpu", "cuda"], ids=["mosaic", "triton"])
def test_kernels_lower_for_tpu_and_gpu(platform):
  """The Mosaic (TPU) and Triton (GPU) lowerings accept every kernel at a real MaskGWM shape.

  Cross-platform lowering needs no accelerator: it checks the TPU block-shape rules, scalar
  prefetch, SMEM/VMEM use and the Triton tile rules. (Compiling the lowered kernels is left to
  the gpu/tpu-marked tests.)
  """
  b, s, h, d, keep = 2, 730, 2, 64, 300  # spatial joint attention: 576 image + 154 text tokens
  x = jax.ShapeDtypeStruct((b, s, h, d), jnp.bfloat16)
  ids = jax.ShapeDtypeStruct((b, s), jnp.int32)
  idx = jax.ShapeDtypeStruct((b, keep), jnp.int32)
  allowed = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], bool)
  name = "tpu" if platform == "tpu" else "gpu"

  def f(q, k, v, ids, idx):
    mask = (attn.BlockMask(250, allowed), attn.SegmentIds(ids, ids), attn.BlockCausal(25))
    full = lambda q, k, v: flash.flash_attention(
        q, k, v, mask=mask, target=flash.make_target(name, s, s))
    gathered = lambda q, k, v: flash.flash_attention_gathered(
        q, k, v, idx, mask=attn.BlockCausal(30), target=flash.make_target(name, keep, keep))
    outs = []
    for fn in (full, gathered):
      o, vjp = jax.vjp(fn, q, k, v)
      outs.append((o, vjp(o)))
    return outs

  on_gpu = platform == "cuda"
  with jax.sharding.use_abstract_mesh(_on_h100()) if on_gpu else contextlib.nullcontext():
    text = jax.jit(f).trace(x, x, x, ids, idx).lower(lowering_platforms=(platform,)).as_text()
  marker = "tpu_custom_call" if platform == "tpu" else "xla.gpu.triton"
  assert text.count(marker) >= 6  # fwd, dq, dkv for each of the two entry points
