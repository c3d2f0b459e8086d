"""Procedural driving scenes: roads with curves and junctions, buildings, street furniture, traffic.

`make_scene(seed, domain)` builds a `SceneSpec` (numpy only, deterministic from the seed). Geometry
lives in the world frame: x, y on the ground plane (z = 0), z up, metres. Everything solid is an
oriented box (centre, half size, yaw about z), which the renderer ray-casts:

  static boxes   buildings, lamp posts (pole + arm), trees (trunk + crown)
  actors         vehicles (body + cabin, or cab + cargo) and pedestrians (body + head) that move
                 along lane / sidewalk paths at constant speed; parked cars stand still.

Roads are polylines of centreline points; the renderer gets them as straight segments (arcs split
every few degrees) and paints asphalt, lane markings, kerbs, sidewalks and zebra crossings from
the distance to the nearest segment. The main road carries traffic in both directions (the side
of the road follows the domain's traffic_side); side roads cross it at right angles (junctions)
and carry parked cars.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from wm_jax.data.layout_render import CLASS_NAMES, MAP_LINE_CLASSES
from wm_jax.data.synthetic import ego as ego_lib
from wm_jax.data.synthetic.domains import Domain, get_domain

# Materials of primitives (the renderer's texture table).
MAT_BUILDING, MAT_BODY, MAT_GLASS, MAT_METAL, MAT_FOLIAGE, MAT_PERSON, MAT_BUS = range(7)
PARKING_WIDTH = 2.3
CAR = CLASS_NAMES.index("car")
TRUCK = CLASS_NAMES.index("truck")
BUS = CLASS_NAMES.index("bus")
PEDESTRIAN = CLASS_NAMES.index("pedestrian")


@dataclasses.dataclass
class Road:
  points: np.ndarray    # [M,2] centreline, ~1 m apart
  heading: np.ndarray   # [M] direction of travel for +s
  s: np.ndarray         # [M] arc length
  half_width: float     # asphalt half width
  lane_width: float
  lanes_per_direction: int
  parking: bool         # a parking strip along each kerb

  def __post_init__(self):
    self._unwrapped = np.unwrap(self.heading)

  def at(self, s):
    """Centre points [...,2] and headings [...] at arc lengths `s` (linear interpolation)."""
    s = np.asarray(s, np.float64)
    x = np.interp(s, self.s, self.points[:, 0])
    y = np.interp(s, self.s, self.points[:, 1])
    h = np.interp(s, self.s, self._unwrapped)
    return np.stack([x, y], -1), h

  def offset_points(self, s, u):
    """World points at arc length s and lateral offset u (positive = left of the +s direction)."""
    p, h = self.at(s)
    n = np.stack([-np.sin(h), np.cos(h)], -1)
    return p + np.asarray(u)[..., None] * n, h


@dataclasses.dataclass
class Actor:
  track_id: int
  cls: int                 # index into CLASS_NAMES
  size: np.ndarray         # (l, w, h) of the annotation box
  color: np.ndarray        # RGB
  road: int                # index of the road whose centreline parametrises the path
  u: float                 # lateral offset of the path
  s0: float                # arc length at time 0
  speed: float             # signed ds/dt (negative: travels against the road's +s direction)
  parts: np.ndarray        # [P,10] local boxes: cx,cy,cz, hl,hw,hh, r,g,b, material
  moving: bool


@dataclasses.dataclass
class SceneSpec:
  seed: int
  domain: Domain
  roads: list
  segments: dict           # renderer road segments: a [S,2], b [S,2], s0 [S], road [S] (int)
  road_params: np.ndarray  # [R,4] half_width, lane_width, lanes_per_direction, parking
  crossings: np.ndarray    # [J,3] zebra crossings: road, s_start, s_end
  static: np.ndarray       # [Ns,11] boxes: cx,cy,cz, hl,hw,hh, yaw, r,g,b, material
  actors: list
  map_lines: list          # [(class index into MAP_LINE_CLASSES, points [M,3] world)]
  ego_lane_u: float        # lateral offset of the ego lane on road 0
  ego_s0: float
  ego_cruise: float        # m/s
  ego_speed_wobble: tuple  # (amplitude m/s, period s, phase)

  def __post_init__(self):
    a = self.actors
    self.actor_table = {
        "road": np.array([x.road for x in a], np.int64), "u": np.array([x.u for x in a]),
        "s0": np.array([x.s0 for x in a]), "speed": np.array([x.speed for x in a]),
        "size": np.array([x.size for x in a]).reshape(-1, 3),
        "cls": np.array([x.cls for x in a], np.float64),
        "track_id": np.array([x.track_id for x in a], np.float64),
        "parts": np.array([x.parts for x in a], np.float32).reshape(-1, 2, 10),
    }

  @property
  def ego_start(self):
    p, h = self.roads[0].offset_points(self.ego_s0, self.ego_lane_u)
    return np.array([p[0], p[1], h], np.float64)


def _polyline_road(rng, length, domain):
  """Main road: straight pieces and arcs, heading kept within +-60 deg of the start."""
  pts, heads = [np.zeros(2)], [0.0]
  total, straight = 0.0, True
  pieces = []  # (kind, s_start, s_end)
  while total < length:
    h = heads[-1]
    if straight:
      n = int(rng.uniform(45, 110))
      seg_start = total
      for _ in range(n):
        pts.append(pts[-1] + np.array([np.cos(h), np.sin(h)]))
        heads.append(h)
      total += n
      pieces.append(("straight", seg_start, total))
    else:
      radius = rng.uniform(45, 140)
      turn = np.deg2rad(rng.uniform(15, 45)) * rng.choice([-1, 1])
      if abs(h + turn) > np.deg2rad(60):
        turn = -turn
      n = max(int(abs(turn) * radius), 2)
      dh = turn / n
      for _ in range(n):
        h = h + dh
        pts.append(pts[-1] + np.array([np.cos(h - dh / 2), np.sin(h - dh / 2)]))
        heads.append(h)
      total += n
    straight = not straight
  pts = np.asarray(pts)
  seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
  s = np.concatenate([[0.0], np.cumsum(seg)])
  return pts, np.asarray(heads), s, pieces


def _point_polyline_distance(points, poly):
  """Min distance from each of points [P,2] to polyline vertices poly [M,2] (dense polylines)."""
  d = np.linalg.norm(points[:, None, :] - poly[None, :, :], axis=-1)
  return d.min(axis=1)


def _road_segments(roads, max_turn_deg=6.0, max_len=60.0):
  """Splits each road into straight renderer segments (a new one every few degrees of turn)."""
  a, b, s0, rid = [], [], [], []
  for r, road in enumerate(roads):
    keep = [0]
    for i in range(1, len(road.points)):
      turned = abs(np.rad2deg(road.heading[i] - road.heading[keep[-1]])) > max_turn_deg
      if turned or road.s[i] - road.s[keep[-1]] >= max_len or i == len(road.points) - 1:
        keep.append(i)
    for i, j in zip(keep[:-1], keep[1:]):
      a.append(road.points[i])
      b.append(road.points[j])
      s0.append(road.s[i])
      rid.append(r)
  return {"a": np.asarray(a, np.float32), "b": np.asarray(b, np.float32),
          "s0": np.asarray(s0, np.float32), "road": np.asarray(rid, np.int32)}


def _box_corners(cx, cy, hl, hw, yaw):
  c, s = np.cos(yaw), np.sin(yaw)
  local = np.array([[hl, hw], [hl, -hw], [-hl, -hw], [-hl, hw], [0, 0], [hl, 0], [-hl, 0],
                    [0, hw], [0, -hw]])
  return np.stack([cx + c * local[:, 0] - s * local[:, 1], cy + s * local[:, 0] + c * local[:, 1]], -1)


def _vehicle_parts(cls, size, color, rng):
  """Local part boxes [P,10] (cx,cy,cz, hl,hw,hh, r,g,b, material), origin at the box bottom centre."""
  l, w, h = size
  glass = np.array([0.08, 0.10, 0.13])
  if cls == CAR:
    body_top = 0.58 * h
    return np.array([
        [0.0, 0.0, (0.12 + body_top) / 2, l / 2, w / 2, (body_top - 0.12) / 2, *color, MAT_BODY],
        [-0.05 * l, 0.0, (body_top + h) / 2, 0.3 * l, 0.44 * w, (h - body_top) / 2, *glass,
         MAT_GLASS]])
  if cls == TRUCK:
    cab = 2.2
    cargo_color = np.clip(np.array([0.85, 0.85, 0.82]) * rng.uniform(0.7, 1.0), 0, 1)
    return np.array([
        [l / 2 - cab / 2, 0.0, (0.25 + 0.8 * h) / 2, cab / 2, w / 2, (0.8 * h - 0.25) / 2, *color,
         MAT_BODY],
        [-cab / 2, 0.0, (0.3 + h) / 2, (l - cab) / 2 - 0.1, w / 2, (h - 0.3) / 2, *cargo_color,
         MAT_BODY]])
  if cls == BUS:
    return np.array([
        [0.0, 0.0, (0.25 + h) / 2, l / 2, w / 2, (h - 0.25) / 2, *color, MAT_BUS],
        [0.0, 0.0, -10.0, 0.0, 0.0, 0.0, 0, 0, 0, -1]])  # unused part
  if cls == PEDESTRIAN:
    head = 0.25
    return np.array([
        [0.0, 0.0, (h - head) / 2, l / 2 * 0.8, w / 2 * 0.8, (h - head) / 2, *color, MAT_PERSON],
        [0.0, 0.0, h - head / 2, 0.11, 0.11, head / 2, 0.55, 0.40, 0.32, MAT_PERSON]])
  raise ValueError(f"no part template for class {CLASS_NAMES[cls]!r}")


_SIZES = {CAR: ((3.9, 4.9), (1.7, 1.95), (1.42, 1.7)), TRUCK: ((6.0, 8.5), (2.3, 2.55), (2.9, 3.6)),
          BUS: ((10.0, 12.5), (2.5, 2.6), (3.0, 3.4)),
          PEDESTRIAN: ((0.45, 0.7), (0.5, 0.75), (1.55, 1.9))}


def _sample_vehicle_class(rng):
  return rng.choice([CAR, TRUCK, BUS], p=[0.8, 0.12, 0.08])


def _size(rng, cls):
  return np.array([rng.uniform(*r) for r in _SIZES[cls]])


def make_scene(seed: int, domain: str | Domain = "boston", *, length: float = 400.0,
               num_side_roads: int = 3) -> SceneSpec:
  """Builds a procedural scene (deterministic from `seed`) in style `domain`.

  Args:
    seed: integer seed; the same seed and arguments give the same scene bit for bit.
    domain: a name in domains.DOMAINS or a Domain.
    length: main-road length in metres (the ego starts 30 m in and drives along +s).
    num_side_roads: at most this many perpendicular side roads (junctions) on straight pieces.
  """
  if isinstance(domain, str):
    domain = get_domain(domain)
  if length < 100:
    raise ValueError(f"length must be at least 100 m, got {length}")
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5eed]))
  d = domain
  lw, n_lanes = d.lane_width, d.lanes_per_direction
  pts, heads, s, pieces = _polyline_road(rng, length, d)
  main = Road(pts, heads, s, lw * n_lanes, lw, n_lanes, False)
  roads = [main]

  # Side roads crossing straight pieces at right angles.
  side_hw = lw + PARKING_WIDTH
  junctions = []
  candidates = [p for p in pieces if p[2] - p[1] > 40 and p[1] > 20]
  rng.shuffle(candidates)
  for _, s_a, s_b in candidates[:num_side_roads]:
    sj = rng.uniform(s_a + 15, s_b - 15)
    centre, h = main.at(sj)
    ext = rng.uniform(60, 90)
    hs = h + np.pi / 2
    direction = np.array([np.cos(hs), np.sin(hs)])
    ss = np.arange(-ext, ext + 0.5, 1.0)
    spts = centre[None] + ss[:, None] * direction[None]
    far = np.abs(main.s - sj) > 30
    if _point_polyline_distance(spts, main.points[far]).min() < main.half_width + side_hw + 10:
      continue
    roads.append(Road(spts, np.full(len(ss), hs), ss + ext, side_hw, lw, 1, True))
    junctions.append((sj, ext))

  # Zebra crossings on the main road either side of each junction.
  crossings = []
  for sj, _ in junctions:
    edge = side_hw + d.kerb_width + d.sidewalk_width
    crossings.append((0, sj - edge - 3.5, sj - edge - 0.5))
    crossings.append((0, sj + edge + 0.5, sj + edge + 3.5))
  crossings = np.asarray(crossings, np.float32).reshape(-1, 3)

  road_params = np.array([[r.half_width, r.lane_width, r.lanes_per_direction, float(r.parking)]
                          for r in roads], np.float32)

  def clear_of_roads(corners, margin):
    for road in roads:
      if _point_polyline_distance(corners, road.points).min() < road.half_width + margin:
        return False
    return True

  static = []
  placed = []  # building footprints (cx, cy, hl, hw, yaw) for overlap tests

  def overlaps(cx, cy, hl, hw, yaw):
    corners = _box_corners(cx, cy, hl, hw, yaw)
    for (bx, by, bl, bw, byaw) in placed:
      c, s_ = np.cos(byaw), np.sin(byaw)
      rel = corners - np.array([bx, by])
      lx = c * rel[:, 0] + s_ * rel[:, 1]
      ly = -s_ * rel[:, 0] + c * rel[:, 1]
      if np.any((np.abs(lx) < bl + 0.5) & (np.abs(ly) < bw + 0.5)):
        return True
      if np.hypot(cx - bx, cy - by) < 0.7 * (max(hl, hw) + max(bl, bw)):
        return True
    return False

  walk = d.kerb_width + d.sidewalk_width
  for road in roads:
    for side in (-1, 1):
      s_cur = rng.uniform(0, 10)
      while s_cur < road.s[-1] - 8:
        front = rng.uniform(10, 28)
        depth = rng.uniform(*d.building_depth)
        height = rng.uniform(*d.building_height)
        setback = road.half_width + walk + rng.uniform(0.5, 3.0)
        mid = s_cur + front / 2
        p, h = road.offset_points(mid, side * (setback + depth / 2))
        corners = _box_corners(p[0], p[1], front / 2, depth / 2, h)
        if clear_of_roads(corners, walk + 0.4) and not overlaps(p[0], p[1], front / 2, depth / 2, h):
          col = np.asarray(d.building_colors[rng.integers(len(d.building_colors))])
          col = np.clip(col * rng.uniform(0.85, 1.15), 0, 1)
          static.append([p[0], p[1], height / 2, front / 2, depth / 2, height / 2, h, *col,
                         MAT_BUILDING])
          placed.append((p[0], p[1], front / 2, depth / 2, h))
        s_cur += front + rng.uniform(*d.building_gap)

  # Street furniture on the outer part of the sidewalk.
  metal = (0.35, 0.36, 0.38)
  for road in roads:
    for side in (-1, 1):
      u_edge = side * (road.half_width + d.kerb_width + 0.5)
      for s_cur in np.arange(rng.uniform(3, d.pole_spacing), road.s[-1] - 3, d.pole_spacing):
        p, h = road.offset_points(s_cur, u_edge)
        if not clear_of_roads(p[None], d.kerb_width + 0.3):
          continue
        static.append([p[0], p[1], 3.5, 0.09, 0.09, 3.5, 0.0, *metal, MAT_METAL])
        arm, _ = road.offset_points(s_cur, u_edge - side * 0.9)
        static.append([arm[0], arm[1], 7.0, 0.12, 0.9, 0.08, h, *metal, MAT_METAL])
      if d.tree_spacing > 0:
        u_tree = side * (road.half_width + d.kerb_width + d.sidewalk_width - 0.6)
        for s_cur in np.arange(rng.uniform(1, d.tree_spacing), road.s[-1] - 2, d.tree_spacing):
          p, h = road.offset_points(s_cur + rng.uniform(-1, 1), u_tree)
          if not clear_of_roads(p[None], d.kerb_width + 1.2):
            continue
          trunk_h = rng.uniform(2.0, 3.0)
          crown = rng.uniform(1.2, 2.0)
          static.append([p[0], p[1], trunk_h / 2, 0.15, 0.15, trunk_h / 2, 0.0, 0.30, 0.22, 0.14,
                         MAT_METAL])
          green = np.clip(np.array([0.15, 0.38, 0.10]) * rng.uniform(0.7, 1.3), 0, 1)
          static.append([p[0], p[1], trunk_h + crown * 0.8, crown, crown, crown * 0.8,
                         rng.uniform(0, np.pi), *green, MAT_FOLIAGE])
  static = np.asarray(static, np.float32).reshape(-1, 11)

  # Actors.
  actors = []
  next_id = [1]

  def add_actor(cls, road_idx, u, s0, speed, moving, color=None):
    size = _size(rng, cls)
    if color is None:
      color = np.asarray(d.vehicle_colors[rng.integers(len(d.vehicle_colors))])
      color = np.clip(color * rng.uniform(0.85, 1.1), 0, 1)
    parts = _vehicle_parts(cls, size, color, rng)
    actors.append(Actor(next_id[0], int(cls), size, color, road_idx, float(u), float(s0),
                        float(speed), parts.astype(np.float32), moving))
    next_id[0] += 1

  ego_lane = int(rng.integers(n_lanes))
  ego_u = -d.traffic_side * (ego_lane + 0.5) * lw
  ego_s0 = 30.0
  ego_cruise = float(rng.uniform(*d.speed_range))
  for direction in (1, -1):
    for lane in range(n_lanes):
      u = -d.traffic_side * direction * (lane + 0.5) * lw
      lane_speed = float(rng.uniform(*d.speed_range))
      if direction == 1 and lane == ego_lane:
        lane_speed = max(lane_speed, ego_cruise)
      count = rng.poisson(d.vehicle_density * main.s[-1] / 100.0)
      s_cur = rng.uniform(0, 20)
      for _ in range(count):
        s_cur += rng.uniform(10, 60)
        if s_cur > main.s[-1]:
          break
        if direction == 1 and lane == ego_lane and s_cur < ego_s0 + 12:
          continue
        add_actor(_sample_vehicle_class(rng), 0, u, s_cur, direction * lane_speed, True)
        s_cur += 12
  for r, road in enumerate(roads):
    if road.parking:
      for side in (-1, 1):
        count = rng.poisson(d.parked_density * road.s[-1] / 100.0)
        for s_p in np.sort(rng.uniform(5, road.s[-1] - 5, count)):
          u = side * (road.half_width - PARKING_WIDTH / 2)
          p, _ = road.offset_points(s_p, u)
          if _point_polyline_distance(p[None], main.points).min() < main.half_width + 4:
            continue
          if actors and actors[-1].road == r and abs(actors[-1].s0 - s_p) < 5.5 \
              and actors[-1].u == u:
            continue
          add_actor(CAR, r, u, s_p, 0.0, False)
    for side in (-1, 1):
      count = rng.poisson(d.pedestrian_density * road.s[-1] / 100.0)
      for _ in range(count):
        u = side * (road.half_width + d.kerb_width + rng.uniform(0.5, d.sidewalk_width - 0.5))
        color = rng.uniform(0.1, 0.8, 3)
        add_actor(PEDESTRIAN, r, u, rng.uniform(0, road.s[-1]),
                  rng.choice([-1, 1]) * rng.uniform(1.0, 1.6), True, color)

  # Map lines (world frame, z = 0) for the layout image.
  lane_cls = MAP_LINE_CLASSES.index("lane_divider")
  edge_cls = MAP_LINE_CLASSES.index("road_edge")
  ped_cls = MAP_LINE_CLASSES.index("ped_crossing")
  map_lines = []
  for r, road in enumerate(roads):
    ss = np.arange(0.0, road.s[-1] + 1e-6, 2.0)
    offsets = [(-road.half_width, edge_cls), (road.half_width, edge_cls), (0.0, lane_cls)]
    offsets += [(k * road.lane_width * sgn, lane_cls) for k in range(1, road.lanes_per_direction)
                for sgn in (-1, 1)]
    if road.parking:
      offsets += [(sgn * road.lane_width, lane_cls) for sgn in (-1, 1)]
    for u, cls in offsets:
      p, _ = road.offset_points(ss, np.full(len(ss), u))
      if r > 0 or cls == lane_cls:
        # Drop the parts of a line that lie inside another road's asphalt (junction interiors).
        inside = np.zeros(len(p), bool)
        for q, other in enumerate(roads):
          if q != r:
            inside |= _point_polyline_distance(p, other.points) < other.half_width + \
                (0.0 if cls == edge_cls else d.kerb_width + d.sidewalk_width)
        # Split into runs outside other roads.
        runs = np.split(np.arange(len(p)), np.flatnonzero(np.diff(inside.astype(int))) + 1)
        for run in runs:
          if len(run) > 1 and not inside[run[0]]:
            map_lines.append((cls, np.concatenate([p[run], np.zeros((len(run), 1))], 1)))
      else:
        map_lines.append((cls, np.concatenate([p, np.zeros((len(p), 1))], 1)))
  for road_idx, s_a, s_b in crossings:
    road = roads[int(road_idx)]
    corners = [(s_a, -road.half_width), (s_b, -road.half_width), (s_b, road.half_width),
               (s_a, road.half_width), (s_a, -road.half_width)]
    p, _ = road.offset_points(np.array([c[0] for c in corners]), np.array([c[1] for c in corners]))
    map_lines.append((ped_cls, np.concatenate([p, np.zeros((len(p), 1))], 1)))

  wobble = (float(rng.uniform(0.3, 1.5)), float(rng.uniform(4.0, 10.0)),
            float(rng.uniform(0, 2 * np.pi)))
  return SceneSpec(int(seed), d, roads, _road_segments(roads), road_params, crossings, static,
                   actors, map_lines, float(ego_u), ego_s0, ego_cruise, wobble)


def actor_states(scene: SceneSpec, t: float):
  """Poses of all actors at time t: (xy [Na,2], yaw [Na], active [Na] bool)."""
  tab = scene.actor_table
  s = tab["s0"] + tab["speed"] * t
  xy = np.zeros((len(s), 2))
  yaw = np.zeros(len(s))
  active = np.zeros(len(s), bool)
  for r, road in enumerate(scene.roads):
    m = tab["road"] == r
    if m.any():
      xy[m], yaw[m] = road.offset_points(s[m], tab["u"][m])
      active[m] = (s[m] >= 0.0) & (s[m] <= road.s[-1])
  yaw = yaw + np.where(tab["speed"] < 0, np.pi, 0.0)
  return xy, yaw, active


def autopilot(scene: SceneSpec, num_frames: int, fps: float):
  """Speed and steering [T] that keep the ego in its lane on the main road.

  Pure pursuit on the lane centreline for steering; a cruise speed with a slow sinusoidal wobble,
  capped by the gap to the vehicle ahead in the lane, with accelerations limited to [-3, 2] m/s^2.
  The poses follow from the actions through ego.integrate (the same model the renderer uses).
  """
  dt = 1.0 / fps
  road = scene.roads[0]
  lane_s = road.s
  lane_pts, _ = road.offset_points(lane_s, np.full(len(lane_s), scene.ego_lane_u))
  amp, period, phase = scene.ego_speed_wobble
  state = scene.ego_start
  v = scene.ego_cruise
  speeds, steers = [], []
  same_lane = [a for a in scene.actors if a.road == 0 and a.speed > 0
               and abs(a.u - scene.ego_lane_u) < 0.5]
  for t in range(num_frames):
    time = t * dt
    i = int(np.argmin(np.sum((lane_pts - state[:2]) ** 2, axis=1)))
    s_ego = lane_s[i]
    lookahead = max(6.0, 1.2 * v)
    j = int(np.searchsorted(lane_s, s_ego + lookahead))
    j = min(j, len(lane_s) - 1)
    target = lane_pts[j] - state[:2]
    alpha = np.arctan2(target[1], target[0]) - state[2]
    dist = max(np.hypot(*target), 1.0)
    steer = float(np.clip(np.arctan2(2 * ego_lib.WHEELBASE * np.sin(alpha), dist),
                          -ego_lib.MAX_STEERING, ego_lib.MAX_STEERING))
    v_des = scene.ego_cruise + amp * np.sin(2 * np.pi * time / period + phase)
    gaps = [(a.s0 + a.speed * time) - s_ego - a.size[0] / 2 - 1.0 for a in same_lane]
    gaps = [(g, a.speed) for g, a in zip(gaps, same_lane) if g > 0]
    if gaps:
      gap, v_lead = min(gaps)
      v_des = min(v_des, v_lead + 0.5 * (gap - (6.0 + 1.2 * v_lead)))
    if t > 0:
      v = float(np.clip(v_des, v - 3.0 * dt, v + 2.0 * dt))
    else:
      v = float(np.clip(v_des, 0.0, None))
    v = max(v, 0.0)
    speeds.append(v)
    steers.append(steer)
    state = ego_lib.advance(state, v, steer, dt)
  return np.asarray(speeds), np.asarray(steers)
