"""Device mesh from config.mesh, parameter/optimizer shardings from logical names, and the checks
that must pass before anything is compiled.

Mesh axes are ('data', 'fsdp', 'tensor') plus 'context' when config.mesh.context is set. Sizes of
-1 are filled with the devices left over (at most one -1 per mesh). Multi-slice runs give DCN
(between-slice) sizes in config.mesh.dcn_data / dcn_fsdp; the mesh is then built with
`mesh_utils.create_hybrid_device_mesh`, each axis' total size being ICI size * DCN size.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wm_jax.parallel import rules

BASE_AXES = ("data", "fsdp", "tensor")
AXIS_TYPES = {"auto": jax.sharding.AxisType.Auto, "explicit": jax.sharding.AxisType.Explicit}


def axis_names(mesh_config) -> tuple[str, ...]:
  return BASE_AXES + (("context",) if mesh_config.context != 0 else ())


def axis_sizes(mesh_config, num_devices: int) -> dict[str, int]:
  """Total size of every mesh axis (ICI * DCN), with a -1 filled from `num_devices`.

  Raises ValueError naming the numbers when the sizes cannot fit `num_devices`.
  """
  names = axis_names(mesh_config)
  dcn = {"data": int(mesh_config.dcn_data), "fsdp": int(mesh_config.dcn_fsdp)}
  sizes = {n: int(mesh_config[n]) for n in names}
  if any(d < 1 for d in dcn.values()):
    raise ValueError(f"mesh DCN sizes must be >= 1, got dcn_data={dcn['data']} dcn_fsdp={dcn['fsdp']}")
  auto = [n for n, s in sizes.items() if s == -1]
  bad = {n: s for n, s in sizes.items() if s == 0 or s < -1}
  if bad:
    raise ValueError(f"mesh axis sizes must be >= 1 or -1, got {bad}")
  if len(auto) > 1:
    raise ValueError(f"at most one mesh axis may be -1 (auto), got {auto} in {sizes}")
  # Sizes in config are per slice (ICI) sizes times the DCN factor of that axis.
  fixed = math.prod(s * dcn.get(n, 1) for n, s in sizes.items() if s != -1)
  if auto:
    n = auto[0]
    rest = fixed * dcn.get(n, 1)
    if num_devices % rest:
      raise ValueError(f"mesh axes {sizes} (dcn {dcn}) need a multiple of {rest} devices to fill "
                       f"'{n}'=-1, but there are {num_devices} devices")
    sizes[n] = num_devices // rest
  total = {n: s * dcn.get(n, 1) for n, s in sizes.items()}
  need = math.prod(total.values())
  if need > num_devices:
    raise ValueError(f"mesh {total} needs {need} devices but only {num_devices} are present")
  if need != num_devices:
    raise ValueError(f"mesh {total} uses {need} devices but {num_devices} are present; "
                     f"set one axis to -1 or make the product equal the device count")
  return total


def _check_slices(mesh_config, devices, ici: dict[str, int]) -> None:
  """Raises ValueError naming the numbers unless `devices` form dcn_data*dcn_fsdp slices of
  prod(ici) devices each: what `create_hybrid_device_mesh` needs, whose own errors name neither
  the config values nor the slices at fault."""
  per_slice = math.prod(ici.values())
  dd, df = int(mesh_config.dcn_data), int(mesh_config.dcn_fsdp)
  want = f"dcn_data*dcn_fsdp={dd}*{df}={dd * df} slices requested"
  missing = [d for d in devices if not hasattr(d, "slice_index")]
  if missing:
    raise ValueError(f"{want} but device {missing[0]} (platform {missing[0].platform!r}) has no "
                     f"slice_index; DCN sizes > 1 need multi-slice TPU devices")
  counts: dict[int, int] = {}
  for d in devices:
    counts[d.slice_index] = counts.get(d.slice_index, 0) + 1
  if len(counts) != dd * df:
    raise ValueError(f"{want} but the devices span {len(counts)} slices "
                     f"(slice_index {sorted(counts)})")
  if any(c != per_slice for c in counts.values()):
    raise ValueError(f"{want}, each of {per_slice} devices (per-slice mesh {ici}), but the "
                     f"devices per slice_index are {dict(sorted(counts.items()))}")


def make_mesh(mesh_config, devices=None) -> Mesh:
  """The mesh for `mesh_config` over `devices` (default: all), always with explicit axis_types."""
  devices = list(jax.devices() if devices is None else devices)
  total = axis_sizes(mesh_config, len(devices))
  names = tuple(total)
  kind = str(mesh_config.axis_type).lower()
  if kind not in AXIS_TYPES:
    raise ValueError(f"config.mesh.axis_type={kind!r}; expected one of {sorted(AXIS_TYPES)}")
  axis_types = (AXIS_TYPES[kind],) * len(names)
  dcn = [int(mesh_config["dcn_" + n]) if n in ("data", "fsdp") else 1 for n in names]
  if math.prod(dcn) > 1:
    from jax.experimental import mesh_utils
    ici = [total[n] // d for n, d in zip(names, dcn)]
    _check_slices(mesh_config, devices, dict(zip(names, ici)))
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices,
                                                allow_split_physical_axes=True)
    return Mesh(grid, names, axis_types=axis_types)
  return jax.make_mesh(tuple(total.values()), names, axis_types=axis_types, devices=devices)


# ---------------------------------------------------------------------------------------------
# Shardings from logical annotations


def _is_spec(x):
  return isinstance(x, PartitionSpec)


def logical_specs(state):
  """Logical PartitionSpecs of an nnx State (parameters carry names via nnx.with_partitioning)."""
  from flax import nnx
  return nnx.get_partition_spec(state)


def state_shardings(state, mesh: Mesh, rule_table: Mapping[str, Any] | None = None):
  """NamedShardings (same tree as `state`) from the logical names on its Variables.

  A logical name whose mesh axes do not divide the dimension is dropped for that dimension
  (replicated) rather than failing: tiny test models would otherwise need mesh-shaped widths.
  A variable annotated with an activation name raises ValueError.
  """
  specs = logical_specs(state)

  def one(spec, leaf):
    wrong = [name for name in spec if name is not None and rules.is_activation(name)]
    if wrong:
      raise ValueError(f"a variable of shape {getattr(leaf, 'shape', ())} is annotated with "
                       f"activation names {wrong}; variables take parameter names (rules.py)")
    mesh_spec = rules.logical_to_spec(tuple(spec), mesh.axis_names, rule_table)
    shape = getattr(leaf, "shape", ())
    mesh_spec = _fit(mesh_spec, shape, mesh)
    return NamedSharding(mesh, mesh_spec)

  return jax.tree.map(one, specs, state, is_leaf=_is_spec)


def _fit(spec: PartitionSpec, shape, mesh: Mesh) -> PartitionSpec:
  out = []
  for i, entry in enumerate(tuple(spec)[:len(shape)]):
    axes = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
    size = math.prod(mesh.shape[a] for a in axes)
    out.append(entry if size and shape[i] % size == 0 else None)
  return PartitionSpec(*out)


def _key(path) -> tuple[str, ...]:
  return tuple(str(k) for k in path)


def matching_shardings(tree, reference, reference_shardings, mesh: Mesh):
  """Shardings for `tree` (e.g. optax state) whose leaves mirror leaves of `reference` (params).

  A leaf takes the sharding of the reference leaf whose key path is the longest suffix of its own
  and whose shape equals its shape; any other leaf (counts, scalars) is replicated.
  """
  ref = {}
  for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(reference),
                              jax.tree.leaves(reference_shardings)):
    ref[_key(path)] = (getattr(leaf, "shape", ()), sh)
  replicated = NamedSharding(mesh, PartitionSpec())

  def one(path, leaf):
    key = _key(path)
    shape = getattr(leaf, "shape", ())
    for start in range(len(key)):
      hit = ref.get(key[start:])
      if hit is not None and tuple(hit[0]) == tuple(shape):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(one, tree)


def replicated_large_params(state, shardings, min_size: int = 2 ** 20) -> list[tuple[str, tuple, int]]:
  """(path, shape, size) of every leaf with >= `min_size` elements that is fully replicated.

  On a mesh with more than one device a large replicated parameter costs its full size on every
  device; this is the check that the logical annotations actually shard the big tensors.
  """
  out = []
  for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(shardings)):
    size = int(np.prod(getattr(leaf, "shape", ())))
    if size >= min_size and sh.is_fully_replicated and sh.mesh.size > 1:
      out.append((jax.tree_util.keystr(path), tuple(leaf.shape), size))
  return out


# ---------------------------------------------------------------------------------------------
# Validation before compiling


def validate(config, mesh: Mesh | None = None, num_devices: int | None = None) -> dict[str, int]:
  """Checks config against the mesh (or the mesh config.mesh would give) before compiling.

  Raises ValueError naming the numbers for: a mesh larger than the device count, attention heads
  not divisible by the tensor axis, a global batch not divisible by data*fsdp, latent sizes not
  divisible by the patch size, tokens not divisible by the context axis, and (mask enabled) a
  token row width W with ratio*W not an integer (or K=0).
  Returns the resolved mesh axis sizes.
  """
  if mesh is not None:
    sizes = dict(mesh.shape)
    if num_devices is not None and mesh.size > num_devices:
      raise ValueError(f"mesh {sizes} needs {mesh.size} devices but only {num_devices} are present")
  else:
    sizes = axis_sizes(config.mesh, jax.device_count() if num_devices is None else num_devices)
  errors = []
  m = config.model
  tensor = sizes.get("tensor", 1)
  heads = int(m.num_heads)
  if heads % tensor:
    errors.append(f"num_heads={heads} is not divisible by the tensor axis size {tensor}")
  batch = int(config.train.batch_size)
  dp = sizes.get("data", 1) * sizes.get("fsdp", 1)
  if batch % dp:
    errors.append(f"train.batch_size={batch} is not divisible by data*fsdp="
                  f"{sizes.get('data', 1)}*{sizes.get('fsdp', 1)}={dp}")
  p = int(m.patch_size)
  lh, lw = int(m.latent_height), int(m.latent_width)
  if lh % p or lw % p:
    errors.append(f"latent size {lh}x{lw} is not divisible by patch_size={p}")
  rows, width = lh // p, lw // p
  tokens = rows * width
  ctx = sizes.get("context", 1)
  if ctx > 1 and tokens % ctx:
    errors.append(f"tokens per view {rows}x{width}={tokens} are not divisible by the context axis "
                  f"size {ctx}")
  mask = config.mask
  if mask.enabled:
    ratio = float(mask.ratio)
    dropped = ratio * width
    if abs(dropped - round(dropped)) > 1e-6:
      errors.append(f"mask.ratio={ratio} times token row width {width} = {dropped:g} is not an "
                    f"integer")
    elif width - round(dropped) < 1:
      errors.append(f"mask.ratio={ratio} on token row width {width} keeps K={width - round(dropped)} "
                    f"tokens; need K >= 1")
  if errors:
    raise ValueError("config does not fit mesh " + str(sizes) + ": " + "; ".join(errors))
  return sizes
