"""nuScenes map expansion (v1.3 JSON, no devkit) -> the layout's map lines near an ego pose.

    vmap = parse(json.load(open(path)), path)  # or nuscenes.vector_map(path): parsed once
    lines = lines_near(vmap, world_from_ego)   # [(class index, points [M,3] ego frame)]
    layout_render.render_layout(boxes, lines, intrinsics, extrinsics, image_size)

On disk (as released, and as nuscenes-devkit's NuScenesMap reads it): one file per location,
ROOT/maps/expansion/<location>.json, the location being the `location` of the scene's log
(boston-seaport, singapore-onenorth, singapore-hollandvillage, singapore-queenstown). The file is
one JSON object: "version" (e.g. "1.3"; the devkit refuses older maps), "canvas_edge" [x, y]
(metres), the geometric layers

  node     {token, x, y}                          global frame, metres (the frame of ego_pose)
  line     {token, node_tokens}                   a polyline
  polygon  {token, exterior_node_tokens, holes}   holes: [{node_tokens}]; rings are not closed
                                                  by a repeated node

and the non-geometric layers (lists of records) drivable_area {token, polygon_tokens},
road_segment {token, polygon_token, is_intersection, drivable_area_token}, road_block, lane
{token, polygon_token, lane_type, from_edge_line_token, to_edge_line_token,
left_lane_divider_segments, right_lane_divider_segments}, ped_crossing {token, polygon_token,
road_segment_token}, walkway, stop_line, carpark_area, road_divider {token, line_token,
road_segment_token}, lane_divider {token, line_token, lane_divider_segments: [{node_token,
segment_type}]}, traffic_light, lane_connector, plus the dicts arcline_path_3 and connectivity
(keyed by lane token).

Layers -> layout classes (layout_render.MAP_LINE_CLASSES), grouped as the vector-map learners
group them (MapTR's divider, ped_crossing and boundary classes):
  ped_crossing  the exterior ring of each ped_crossing polygon
  lane_divider  the lines of road_divider (between directions) and lane_divider records
  road_edge     every ring (exterior and holes) of every drivable_area polygon: where the
                drivable surface ends, i.e. the kerb lines. (MapTR takes the contour of the union
                of the road_segment and lane polygons, which needs a polygon union; the
                drivable_area rings outline the drivable surface directly.)
Other layers are not read. A polygon ring is drawn closed (its last node joined to the first),
except a ring that runs out along a chain of nodes and back along the same nodes (tokens
t0..tn..t1, a zero-area polygon): its boundary is that open polyline, drawn once. Lines are
drawn in the order their first node has in the node layer (a file's own order; where lines of
two classes cross, the later one is on top).

Errors (ValueError) name the file and the record: a missing layer, a record without the field it
needs, a token that no record of the referenced layer holds, a non-finite or missing node
coordinate, a line or ring of one node. Lines without any node are skipped and counted
(`VectorMap.empty_lines`), as the devkit does (a few real lines have none).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from wm_jax.data.layout_render import MAP_LINE_CLASSES

# The layers of a map-expansion file (nuscenes-devkit NuScenesMap loads each of them).
LIST_LAYERS = ("node", "line", "polygon", "drivable_area", "road_segment", "road_block", "lane",
               "ped_crossing", "walkway", "stop_line", "carpark_area", "road_divider",
               "lane_divider", "traffic_light", "lane_connector")
DICT_LAYERS = ("arcline_path_3", "connectivity")
# The layers read here, in reading order, and the layout class each one gives.
LAYER_CLASS = {
    "drivable_area": MAP_LINE_CLASSES.index("road_edge"),
    "road_divider": MAP_LINE_CLASSES.index("lane_divider"),
    "lane_divider": MAP_LINE_CLASSES.index("lane_divider"),
    "ped_crossing": MAP_LINE_CLASSES.index("ped_crossing"),
}
REQUIRED_LAYERS = ("node", "line", "polygon") + tuple(LAYER_CLASS)
RADIUS = 90.0  # metres: lines with a point this near the ego are kept (the synthetic renderer's)


def expansion_path(root: str, location: str) -> str:
  """ROOT/maps/expansion/<location>.json."""
  return os.path.join(root, "maps", "expansion", f"{location}.json")


@dataclasses.dataclass(frozen=True)
class VectorMap:
  """The map lines of one map-expansion file, global frame.

  classes [L] int (index into MAP_LINE_CLASSES); lines: L arrays [M>=2,2] float64 (x, y metres);
  lo, hi [L,2]: each line's bounding box; empty_lines: line records without nodes (skipped).
  """
  path: str
  version: str
  classes: np.ndarray
  lines: tuple
  lo: np.ndarray
  hi: np.ndarray
  empty_lines: int


class _Reader:
  """Token lookups of one parsed file, with errors that name the file and the record."""

  def __init__(self, obj: Any, path: str):
    self.path = path
    if not isinstance(obj, dict):
      raise ValueError(f"nuScenes map {path} must hold a JSON object, got {type(obj).__name__}")
    for name in REQUIRED_LAYERS:
      if name not in obj:
        raise ValueError(f"nuScenes map {path} has no layer {name!r} (a map expansion holds "
                         f"{', '.join(LIST_LAYERS)})")
      if not isinstance(obj[name], list):
        raise ValueError(f"nuScenes map {path}: layer {name!r} must be a list of records, got "
                         f"{type(obj[name]).__name__}")
    self.obj = obj
    self.index = {}
    for name in REQUIRED_LAYERS:
      index = {}
      for i, rec in enumerate(obj[name]):
        if not isinstance(rec, dict) or "token" not in rec:
          raise ValueError(f"nuScenes map {path}: {name}[{i}] has no 'token': {str(rec)[:200]}")
        index.setdefault(rec["token"], i)
      self.index[name] = index
    nodes = obj["node"]
    self.xy = np.full((len(nodes), 2), np.nan)
    for i, node in enumerate(nodes):
      try:
        self.xy[i] = float(node["x"]), float(node["y"])
      except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{self.where('node', i)} has no numeric x, y: {str(node)[:200]}") from e

  def where(self, layer: str, i: int) -> str:
    return f"nuScenes map {self.path}: {layer}[{i}] (token {self.obj[layer][i]['token']})"

  def field(self, layer: str, i: int, name: str, kind: type):
    value = self.obj[layer][i].get(name)
    if not isinstance(value, kind):
      raise ValueError(f"{self.where(layer, i)} has no {kind.__name__} field {name!r}: "
                       f"{value!r}")
    return value

  def ref(self, layer: str, i: int, target: str, token: str, via: str) -> int:
    j = self.index[target].get(token)
    if j is None:
      raise ValueError(f"{self.where(layer, i)}{via} refers to {target} token {token!r}, which "
                       "the file does not hold")
    return j

  def nodes(self, layer: str, i: int, tokens, via: str) -> np.ndarray:
    """Node indices [M] of `tokens` (a field of record i of `layer`; `via` names the path)."""
    if not isinstance(tokens, list):
      raise ValueError(f"{self.where(layer, i)}{via} must be a list of node tokens: {tokens!r}")
    idx = np.array([self.ref(layer, i, "node", t, via) for t in tokens], np.int64)
    bad = idx[~np.isfinite(self.xy[idx]).all(1)] if len(idx) else idx
    if len(bad):
      k = int(bad[0])
      node = self.obj["node"][k]["token"]
      raise ValueError(f"{self.where(layer, i)}{via}: node[{k}] (token {node}) has a non-finite "
                       f"coordinate (x={self.xy[k, 0]}, y={self.xy[k, 1]})")
    return idx

  def ring(self, layer: str, i: int, tokens, via: str) -> np.ndarray:
    """Node indices of a polygon ring as a polyline: closed, or open for an out-and-back ring."""
    idx = self.nodes(layer, i, tokens, via)
    if len(idx) > 2 and idx[0] == idx[-1]:
      idx = idx[:-1]  # a ring closed by repeating its first node
    if len(idx) < 2:
      raise ValueError(f"{self.where(layer, i)}{via}: a polygon ring needs at least 2 nodes, got "
                       f"{len(idx)}")
    m = len(idx)
    if m % 2 == 0 and np.array_equal(idx[1:m // 2], idx[m - 1:m // 2:-1]):
      return idx[:m // 2 + 1]  # t0..tn..t1: the open polyline t0..tn
    return np.concatenate([idx, idx[:1]])


def parse(obj: Any, path: str) -> VectorMap:
  """VectorMap of a parsed map-expansion file `obj` (json.load of `path`; see the docstring)."""
  rd = _Reader(obj, path)
  found = []  # (first node index, layer order, record, class, node indices)
  empty = 0
  for order, (layer, cls) in enumerate(LAYER_CLASS.items()):
    for i, rec in enumerate(obj[layer]):
      rings = []
      if layer in ("road_divider", "lane_divider"):
        line_token = rd.field(layer, i, "line_token", str)
        j = rd.ref(layer, i, "line", line_token, ".line_token")
        via = f".line_token -> line[{j}].node_tokens"
        idx = rd.nodes(layer, i, obj["line"][j].get("node_tokens"), via)
        if not len(idx):
          empty += 1
          continue
        if len(idx) < 2:
          raise ValueError(f"{rd.where(layer, i)}{via}: a line needs at least 2 nodes, got 1")
        rings.append(idx)
      else:
        if layer == "drivable_area":
          polygons = rd.field(layer, i, "polygon_tokens", list)
        else:
          polygons = [rd.field(layer, i, "polygon_token", str)]
        for k, token in enumerate(polygons):
          field = f".polygon_tokens[{k}]" if layer == "drivable_area" else ".polygon_token"
          j = rd.ref(layer, i, "polygon", token, field)
          poly = obj["polygon"][j]
          via = f"{field} -> polygon[{j}]"
          rings.append(rd.ring(layer, i, poly.get("exterior_node_tokens"),
                               f"{via}.exterior_node_tokens"))
          if layer != "drivable_area":
            continue
          holes = poly.get("holes", [])
          if not isinstance(holes, list):
            raise ValueError(f"{rd.where(layer, i)}{via}.holes must be a list: {holes!r}")
          for h, hole in enumerate(holes):
            tokens = hole.get("node_tokens") if isinstance(hole, dict) else None
            if tokens == []:
              continue  # empty holes are skipped, as the devkit does
            rings.append(rd.ring(layer, i, tokens, f"{via}.holes[{h}].node_tokens"))
      for idx in rings:
        found.append((int(idx[0]), order, i, cls, idx))
  found.sort(key=lambda f: f[:3])
  lines = tuple(rd.xy[f[4]] for f in found)
  lo = np.array([p.min(0) for p in lines]).reshape(-1, 2)
  hi = np.array([p.max(0) for p in lines]).reshape(-1, 2)
  return VectorMap(path, str(obj.get("version", "")), np.array([f[3] for f in found], np.int64),
                   lines, lo, hi, empty)


def lines_near(vmap: VectorMap, world_from_ego: np.ndarray, radius: float = RADIUS) -> list:
  """[(class index, points [M,3] float64 in the ego frame)] of the lines near the ego.

  A line is kept when one of its points lies within `radius` metres (in x-y) of the ego; it is
  cut to the span from the point before its first near point to the point after its last one
  (as the synthetic renderer does). Map points lie on the ground of the global frame (z = 0).
  world_from_ego: [4,4] (the frame's ego_pose).
  """
  pose = np.asarray(world_from_ego, np.float64)
  centre = pose[:2, 3]
  gap = np.maximum(np.maximum(vmap.lo - centre, centre - vmap.hi), 0.0)
  inv = np.linalg.inv(pose)
  out = []
  for i in np.flatnonzero(np.hypot(gap[:, 0], gap[:, 1]) < radius):
    pts = vmap.lines[i]
    near = np.flatnonzero(np.hypot(pts[:, 0] - centre[0], pts[:, 1] - centre[1]) < radius)
    if not len(near):
      continue
    seg = pts[max(near[0] - 1, 0):min(near[-1] + 2, len(pts))]
    if len(seg) >= 2:
      seg = np.concatenate([seg, np.zeros((len(seg), 1))], 1)
      out.append((int(vmap.classes[i]), seg @ inv[:3, :3].T + inv[:3, 3]))
  return out
