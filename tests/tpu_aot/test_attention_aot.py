"""The attention dispatch compiled ahead of time for TPU v5e:2x2 (libtpu, no TPU): impl='splash'
forward and backward for every mask kind at the sequence shapes of maskgwm_long and
maskgwm_mview, on a mesh with fsdp and tensor axes. Each case names the Mosaic kernels it must
find in the compiled HLO, so a silent fall back to XLA (or to the other kernel) fails it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from wm_jax.kernels import attention as attn
from wm_jax.parallel import aot

pytestmark = pytest.mark.tpu_aot

HEADS, HEAD_DIM = 24, 64                     # both configs: SD3.5-medium heads
LONG_SPATIAL = 18 * 32 + 154                 # maskgwm_long: 36x64 latents / patch 2 + text
MVIEW_SPATIAL = 16 * 28 + 154                # maskgwm_mview: 32x56 latents / patch 2 + text
MVIEW_ROW, VIEWS = 6 * 28, 6                 # a cross-view row: 6 cameras x 28 tokens
RING = np.eye(VIEWS, dtype=bool) | np.roll(np.eye(VIEWS, dtype=bool), 1, 1) \
    | np.roll(np.eye(VIEWS, dtype=bool), -1, 1)   # nuScenes camera adjacency: each and its two
SPLASH = ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv")
OWN = ("wm_flash_fwd", "wm_flash_dq", "wm_flash_dkv")


@pytest.fixture(scope="module")
def mesh():
  devices = aot.topology_devices("v5e:2x2")
  return jax.sharding.Mesh(np.array(devices).reshape(1, 2, 2), ("data", "fsdp", "tensor"))


def _kernels(mesh, fn, batch, seq, *extra):
  """Compile fn(q, k, v, *extra)'s value and gradients for the mesh; the Mosaic kernels in it."""
  spec = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
  x = jax.ShapeDtypeStruct((batch, seq, HEADS, HEAD_DIM), jnp.bfloat16, sharding=spec)
  loss = lambda q, k, v, *e: jnp.sum(fn(q, k, v, *e).astype(jnp.float32) ** 2)
  with jax.set_mesh(mesh):
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(
        x, x, x, *extra).compile()
  return aot.pallas_kernels(compiled.as_text())


def _assert_kernels(found, names):
  for name in names:
    assert any(k.startswith(name) for k in found), f"no {name} kernel in the HLO: {found}"


@pytest.mark.parametrize("kind", ["none", "segment", "causal", "causal+segment"])
@pytest.mark.parametrize("seq", [LONG_SPATIAL, MVIEW_SPATIAL], ids=["long", "mview"])
def test_spatial_sequences_compile_with_jax_splash(mesh, kind, seq):
  ids = jax.ShapeDtypeStruct((2, seq), jnp.int32,
                             sharding=NamedSharding(mesh, P(("data", "fsdp"), None)))

  def fn(q, k, v, ids):
    masks = {"none": None, "segment": attn.SegmentIds(ids, ids), "causal": attn.BlockCausal(25),
             "causal+segment": (attn.BlockCausal(25), attn.SegmentIds(ids, ids))}
    return attn.attention(q, k, v, mask=masks[kind], impl="splash")

  found = _kernels(mesh, fn, 2, seq, ids)
  _assert_kernels(found, SPLASH)
  assert not any(k.startswith("wm_flash") for k in found), found


def test_crossview_rows_with_a_static_adjacency_compile_with_jax_splash(mesh):
  fn = lambda q, k, v: attn.attention(q, k, v, mask=attn.BlockMask(28, RING), impl="splash")
  _assert_kernels(_kernels(mesh, fn, 4, MVIEW_ROW), SPLASH)


def test_per_example_adjacency_and_gathered_rows_compile_with_wm_jax_kernel(mesh):
  """What JAX's splash cannot express runs wm_jax's own Mosaic kernel, compiled here too: the
  model's camera adjacency (a traced [B, V, V] table from the batch) and the kept rows of the
  masked path (read through indices in-kernel; maskgwm_long keeps 24 of 32 per row)."""
  tables = jax.ShapeDtypeStruct((4, VIEWS, VIEWS), jnp.bool_,
                                sharding=NamedSharding(mesh, P(("data", "fsdp"), None, None)))
  fn = lambda q, k, v, t: attn.attention(q, k, v, mask=attn.BlockMask(28, t), impl="splash")
  found = _kernels(mesh, fn, 4, MVIEW_ROW, tables)
  _assert_kernels(found, OWN)
  assert not any(k.startswith("splash") for k in found), found

  keep = 18 * 24 + 154
  idx = jax.ShapeDtypeStruct((2, keep), jnp.int32,
                             sharding=NamedSharding(mesh, P(("data", "fsdp"), None)))
  fn = lambda q, k, v, i: attn.attention_gathered(q, k, v, i, impl="splash")
  _assert_kernels(_kernels(mesh, fn, 2, LONG_SPATIAL, idx), ("wm_flash_fwd_gathered",) + OWN[1:])
