"""Scanned layers: runs of identical CTSDDiT layers, stored stacked and applied with nnx.scan.

A layer here is joint block i plus the temporal and cross-view blocks that follow it. Each layer
has a signature (which sub-blocks and options it has); `layer_runs` splits the stack into runs of
`period` consecutive layers whose signatures repeat `repeats` times. A run's parameters carry a
leading axis of size `repeats` and its `period` layers are traced once, so compile time grows with
the number of distinct layers rather than the depth. The split minimises traced layers, then runs;
`boundaries` start a new run at given layers (the mask module sits before the first decoder block).

For maskgwm_long (24 layers, dual attention in 0-12, temporal blocks after 2,3,6,7,...; mask
decoder from layer 19) this traces 13 layers instead of 24, e.g. layers 0-11 as [D, D, DT, DT] x 3.

Checkpoints on disk hold the model's own tree; conversion (wm_jax.convert) always speaks the
canonical, unscanned names, which are OpenDWM's state_dict keys. `unstack_flat` and `stack_flat`
move a flat {path tuple: array} map between the trees:

  ('layer_runs', s, k, FIELD, *rest)  [repeats, ...]  <->  (CANONICAL[FIELD], index, *rest)

where layer i = start(s) + r * period(s) + k, and index is i for the joint block, the rank of
layer i among the layers with a temporal (cross-view) block for the temporal (cross-view) parts.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

RUNS = "layer_runs"

# Layer field (models.ctsd_dit.Layer) -> (canonical list name, group whose layers index that list)
FIELDS = {
    "joint": ("transformer_blocks", "joint"),
    "temporal": ("temporal_transformer_blocks", "temporal"),
    "time_mixer": ("time_mixers", "temporal"),
    "time_pos_embed": ("time_pos_embeds", "temporal"),
    "crossview": ("crossview_transformer_blocks", "crossview"),
    "view_mixer": ("view_mixers", "crossview"),
    "view_pos_embed": ("view_pos_embeds", "crossview"),
}
# the (index MLP, block, mixer) fields of a layer's temporal / cross-view parts, in that order
PARTS = {"temporal": ("time_pos_embed", "temporal", "time_mixer"),
         "crossview": ("view_pos_embed", "crossview", "view_mixer")}


class Run(NamedTuple):
  start: int    # first layer
  period: int   # layers traced per scan step
  repeats: int  # scan length

  @property
  def layers(self) -> range:
    return range(self.start, self.start + self.period * self.repeats)

  def layer(self, r: int, k: int) -> int:
    return self.start + r * self.period + k


def layer_runs(signatures: Sequence[Hashable], boundaries: Sequence[int] = ()) -> tuple[Run, ...]:
  """The split of layers with these signatures into runs with the fewest traced layers.

  Ties go to fewer runs. A layer in `boundaries` always starts a run. O(L^3) for L layers.
  """
  sig = list(signatures)
  n = len(sig)
  cuts = set(int(b) for b in boundaries)
  # best[i] = (traced layers, runs, plan) for layers i..n-1
  best: list[Any] = [None] * n + [(0, 0, ())]
  for i in reversed(range(n)):
    for p in range(1, n - i + 1):
      if any(c in cuts for c in range(i + 1, i + p)):
        break  # the first period would cross a boundary; longer ones too
      pattern, reps = sig[i:i + p], 1
      while True:
        end = i + p * reps
        traced, runs, plan = best[end]
        cand = (traced + p, runs + 1, (Run(i, p, reps),) + plan)
        if best[i] is None or cand[:2] < best[i][:2]:
          best[i] = cand
        nxt = end + p
        if nxt > n or sig[end:nxt] != pattern or any(c in cuts for c in range(end, nxt)):
          break
        reps += 1
  return best[0][2]


# ------------------------------------------------------------------------------------------------
# flat-map conversion between the scanned and the canonical tree


def is_scanned(flat: Mapping[tuple, Any]) -> bool:
  return any(path and path[0] == RUNS for path in flat)


def _leading(value) -> int:
  return int(value.shape[0])


def _slice(value, r: int):
  if isinstance(value, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(tuple(value.shape[1:]), value.dtype)
  return np.asarray(value)[r]


def _structure(flat: Mapping[tuple, Any]):
  """(runs, fields of each (s, k), canonical index of (group, layer)) read from scanned paths."""
  periods: dict[int, int] = {}
  repeats: dict[int, int] = {}
  fields: dict[tuple[int, int], set[str]] = {}
  for path, value in flat.items():
    if not path or path[0] != RUNS:
      continue
    s, k, field = int(path[1]), int(path[2]), str(path[3])
    if field not in FIELDS:
      raise ValueError(f"scanned path {'.'.join(map(str, path))}: unknown layer field {field!r}; "
                       f"known: {sorted(FIELDS)}")
    periods[s] = max(periods.get(s, 0), k + 1)
    repeats.setdefault(s, _leading(value))
    fields.setdefault((s, k), set()).add(field)
  if sorted(periods) != list(range(len(periods))):
    raise ValueError(f"scanned runs {sorted(periods)} are not numbered 0..{len(periods) - 1}: "
                     "mapping scanned paths needs the whole checkpoint state (params and buffers)")
  runs, start = [], 0
  for s in range(len(periods)):
    runs.append(Run(start, periods[s], repeats[s]))
    start += periods[s] * repeats[s]
  members: dict[str, list[int]] = {"joint": [], "temporal": [], "crossview": []}
  for s, run in enumerate(runs):
    for r in range(run.repeats):
      for k in range(run.period):
        for group in {FIELDS[f][1] for f in fields.get((s, k), ())}:
          members[group].append(run.layer(r, k))
  index = {(g, layer): j for g, layers in members.items() for j, layer in enumerate(sorted(layers))}
  return runs, index


def canonical_paths(flat: Mapping[tuple, Any]) -> dict[tuple, list[tuple]]:
  """Each scanned path of `flat` -> the canonical paths of its slices 0..repeats-1."""
  if not is_scanned(flat):
    return {}
  runs, index = _structure(flat)
  out = {}
  for path, value in flat.items():
    if not path or path[0] != RUNS:
      continue
    s, k, field, rest = int(path[1]), int(path[2]), str(path[3]), tuple(path[4:])
    name, group = FIELDS[field]
    run = runs[s]
    if _leading(value) != run.repeats:
      raise ValueError(f"scanned path {'.'.join(map(str, path))} has leading size "
                       f"{_leading(value)}, but run {s} repeats {run.repeats} times")
    out[path] = [(name, index[(group, run.layer(r, k))]) + rest for r in range(run.repeats)]
  return out


def unstack_flat(flat: Mapping[tuple, Any]) -> dict[tuple, Any]:
  """Canonical (unscanned) flat map; a map without scanned paths is returned as a copy.

  Works on arrays and on jax.ShapeDtypeStruct values (abstract states)."""
  scanned = canonical_paths(flat)
  out = {}
  for path, value in flat.items():
    if path not in scanned:
      out[path] = value
      continue
    for r, canonical in enumerate(scanned[path]):
      out[canonical] = _slice(value, r)
  return out


def stack_flat(canonical: Mapping[tuple, Any], like: Mapping[tuple, Any]) -> dict[tuple, Any]:
  """Arrays for the paths of `like` (a scanned or canonical flat map: the target tree) from a
  canonical flat map. A path all of whose parts are in `canonical` gets them stacked; one with no
  part there is left out (the caller keeps its own value). Raises ValueError naming the keys when
  only some of a stacked parameter's parts are present."""
  scanned = canonical_paths(like)
  out = {}
  for path in like:
    parts = scanned.get(path)
    if parts is None:
      if path in canonical:
        out[path] = canonical[path]
      continue
    have = [p for p in parts if p in canonical]
    if not have:
      continue
    if len(have) != len(parts):
      missing = ".".join(map(str, next(p for p in parts if p not in canonical)))
      raise ValueError(f"{len(have)} of the {len(parts)} layers stacked in "
                       f"{'.'.join(map(str, path))} are given; {missing} is not")
    out[path] = np.stack([np.asarray(canonical[p]) for p in parts])
  return out
