"""Golden sharding table: maskgwm_mview's parameters on a (data=1, fsdp=4, tensor=2) mesh, from
abstract state only (nnx.eval_shape: no memory, nothing runs)."""

import jax
import numpy as np
import pytest
from flax import nnx

from configs import maskgwm_mview
from wm_jax import defaults
from wm_jax.convert import param_map
from wm_jax.models import scan
from wm_jax.models.ctsd_dit import CTSDDiT
from wm_jax.parallel import mesh as mesh_lib

# parameter path -> (shape, mesh PartitionSpec entries): embed -> fsdp, heads/mlp -> tensor,
# norms/head_dim/conv_in replicated (parallel/rules.py)
GOLDEN = {
    "transformer_blocks/0/attn/to_q/kernel": ((1536, 1536), ("fsdp", "tensor")),
    "transformer_blocks/0/attn/to_q/bias": ((1536,), ("tensor",)),
    "transformer_blocks/0/attn/to_out/0/kernel": ((1536, 1536), ("tensor", "fsdp")),
    "transformer_blocks/0/attn/add_k_proj/kernel": ((1536, 1536), ("fsdp", "tensor")),
    "transformer_blocks/0/attn/norm_q/scale": ((64,), (None,)),
    "transformer_blocks/12/attn2/to_v/kernel": ((1536, 1536), ("fsdp", "tensor")),
    "transformer_blocks/23/ff/net/0/proj/kernel": ((1536, 6144), ("fsdp", "tensor")),
    "transformer_blocks/23/ff/net/2/kernel": ((6144, 1536), ("tensor", "fsdp")),
    "transformer_blocks/5/norm1/linear/kernel": ((1536, 13824), ("fsdp", "tensor")),
    "temporal_transformer_blocks/0/attn1/to_k/kernel": ((1536, 1536), ("fsdp", "tensor")),
    "temporal_transformer_blocks/0/norm1/scale": ((1536,), (None,)),
    "pos_embed/proj/kernel": ((2, 2, 16, 1536), (None, None, None, "fsdp")),
    "proj_out/kernel": ((1536, 64), ("fsdp", None)),
    "time_text_embed/text_embedder/linear_1/kernel": ((2048, 1536), (None, "fsdp")),
    "mask_module/sideblocks/0/mlp/fc1/kernel": ((1536, 6144), ("fsdp", "tensor")),
    "mask_module/noise_proj/kernel": ((1, 3, 3, 16, 1536), (None, None, None, None, "fsdp")),
    "view_embedding/linear_1/kernel": ((2816, 1536), (None, "fsdp")),
}


def _path(keypath):
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keypath
                  if getattr(k, "name", None) != "value" and str(k) != ".value")


@pytest.mark.parametrize("scan_layers", [False, True])
def test_mview_params_sharded_as_rules_say(cpu_devices, scan_layers):
  """Scanned layers (mview's default) shard like unscanned ones, with the stacked axis whole."""
  c = maskgwm_mview.get_config()
  c.model.scan_layers = scan_layers
  params = nnx.state(nnx.eval_shape(lambda: CTSDDiT(c.model, c.mask, rngs=nnx.Rngs(0))), nnx.Param)
  m = defaults.mesh()
  m.update(data=1, fsdp=4, tensor=2)
  mesh = mesh_lib.make_mesh(m, cpu_devices)
  sh = mesh_lib.state_shardings(params, mesh)
  flat = {tuple(str(p) for p in path): v for path, v in param_map.flat_state(params).items()}
  canonical = scan.canonical_paths(flat)
  assert bool(canonical) == scan_layers
  got = {}
  per_device = total = 0
  for (kp, leaf), s in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(sh)):
    spec = tuple(s.spec) + (None,) * (leaf.ndim - len(s.spec))
    path = tuple(_path(kp).split("/"))
    if path in canonical:  # stacked [repeats, ...]: the layer axis is never sharded
      assert spec[0] is None, (path, spec)
      for part in canonical[path]:
        got["/".join(map(str, part))] = (tuple(leaf.shape[1:]), spec[1:])
    else:
      got["/".join(path)] = (tuple(leaf.shape), spec)
    total += leaf.size
    per_device += int(np.prod(s.shard_shape(leaf.shape)))
  for path, want in GOLDEN.items():
    assert path in got, f"{path} missing; e.g. {sorted(got)[:5]}"
    assert got[path] == want, (path, got[path], want)
  # nothing large is left replicated, and a device holds ~1/8 of the parameters (+8%: (embed, embed)
  # matrices shard on fsdp only, norms are replicated)
  assert mesh_lib.replicated_large_params(params, sh) == []
  assert per_device / total < 1 / 8 * 1.1, per_device / total
