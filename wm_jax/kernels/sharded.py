"""Run a Pallas attention kernel per shard under the current mesh (`jax.set_mesh`).

A pallas_call is opaque to XLA's partitioner, so under a mesh the kernels run inside shard_map
with specs from the logical axis rules (wm_jax/parallel/rules.py): q/k/v [B, S, H, D] as
('activation_batch', None, 'activation_heads', None) -> batch over ('data', 'fsdp'), heads over
'tensor', as the attention activations around the kernel are constrained. Mask arrays
with a batch dim (SegmentIds, a batched BlockMask table, gather indices) follow the batch;
unbatched tables are replicated. The sequence stays whole on every shard (a 'context'-sharded
sequence is gathered; ring attention is not implemented). Without a mesh, or when called inside
a caller's shard_map (manual axes), the kernel runs as is on the local data.
"""

from __future__ import annotations

import math

import jax

from wm_jax.kernels import masks as masks_lib
from wm_jax.parallel import rules

QKV_AXES = ("activation_batch", None, "activation_heads", None)


def current_mesh():
  """The mesh to split over: None without one, or inside a shard_map (data already per shard)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or mesh._any_axis_manual:  # pylint: disable=protected-access
    return None
  return mesh


def _shards(mesh, spec_entry):
  if spec_entry is None:
    return 1
  axes = (spec_entry,) if isinstance(spec_entry, str) else spec_entry
  return math.prod(mesh.shape[a] for a in axes)


def unsupported_reason(q, mask):
  """Why q [B, S, H, D] cannot be split over the current mesh by the rules (None if it can)."""
  mesh = current_mesh()
  if mesh is None:
    return None
  spec = rules.logical_to_spec(QKV_AXES, mesh.axis_names)
  for dim, name, entry in ((0, "activation_batch", spec[0]), (2, "activation_heads", spec[2])):
    n = _shards(mesh, entry)
    if q.shape[dim] % n:
      return (f"{name} {q.shape[dim]} is not divisible by the {n} shards of mesh axes {entry} "
              f"(mesh {dict(mesh.shape)})")
  return None


def _mask_leaves(mask):
  """(arrays, logical axes per array, rebuild(arrays) -> mask) for the specs of `mask`."""
  specs = masks_lib.as_tuple(mask)
  leaves, axes, makers = [], [], []
  for spec in specs:
    if isinstance(spec, masks_lib.BlockMask):
      batched = jax.numpy.ndim(spec.allowed) == 3
      leaves.append(spec.allowed)
      axes.append(("activation_batch", None, None) if batched else (None, None))
      makers.append((1, lambda arrs, s=spec: masks_lib.BlockMask(s.block_size, arrs[0])))
    elif isinstance(spec, masks_lib.SegmentIds):
      leaves += [spec.q, spec.kv]
      axes += [("activation_batch", None)] * 2
      makers.append((2, lambda arrs: masks_lib.SegmentIds(arrs[0], arrs[1])))
    else:
      makers.append((0, lambda arrs, s=spec: s))

  def rebuild(arrays):
    out, pos = [], 0
    for n, make in makers:
      out.append(make(arrays[pos:pos + n]))
      pos += n
    return tuple(out) if out else None

  return leaves, axes, rebuild


def over_mesh(run, q, k, v, mask, extra=()):
  """run(q, k, v, mask, *extra) per shard of the current mesh (directly when there is none).

  extra: arrays [B, ...] split over the batch like q (e.g. gather indices).
  """
  mesh = current_mesh()
  if mesh is None:
    return run(q, k, v, mask, *extra)
  leaves, leaf_axes, rebuild = _mask_leaves(mask)
  to_spec = lambda logical: rules.logical_to_spec(logical, mesh.axis_names)
  qkv = to_spec(QKV_AXES)
  extra_specs = [to_spec(("activation_batch",) + (None,) * (jax.numpy.ndim(x) - 1)) for x in extra]
  n_leaves = len(leaves)

  def per_shard(q, k, v, *arrays):
    return run(q, k, v, rebuild(arrays[:n_leaves]), *arrays[n_leaves:])

  in_specs = (qkv, qkv, qkv, *(to_spec(a) for a in leaf_axes), *extra_specs)
  return jax.shard_map(per_shard, mesh=mesh, in_specs=in_specs, out_specs=qkv,
                       check_vma=False)(q, k, v, *leaves, *extra)
