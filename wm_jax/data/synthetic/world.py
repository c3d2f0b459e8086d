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

The ego drives a plan drawn per scene (`make_plan`, deterministic from the seed, in the shares
MANOEUVRE_WEIGHTS): lane keeping, a lane change, a swerve, a speed change, a stop, or a left or
right turn at a junction onto a side road. `autopilot(scene, num_frames, fps)` turns the plan
into speed and steering per frame (pure pursuit on the plan's route, the plan's speed, the gap to
traffic ahead); the poses follow from them through the bicycle model (data/actions.py).
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
  ego_s0: float            # main-road arc length of the ego at time 0
  ego_cruise: float        # m/s
  ego_speed_wobble: tuple  # (amplitude m/s, period s, phase)
  ego_plan: "EgoPlan"      # the ego's driving policy in this scene (make_plan)

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
    """(x, y, yaw) of the ego at time 0 (where the plan's pre-roll left it)."""
    return self.ego_plan.state0.copy()


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
               num_side_roads: int = 3, manoeuvre: str | None = None) -> SceneSpec:
  """Builds a procedural scene (deterministic from `seed`) in style `domain`.

  Args:
    seed: integer seed; the same seed and arguments give the same scene bit for bit.
    domain: a name in domains.DOMAINS or a Domain.
    length: main-road length in metres (the ego drives along +s; its plan has it 20 to 50 m in
      at time 0, or near the junction it turns at).
    num_side_roads: at most this many perpendicular side roads (junctions) on straight pieces.
    manoeuvre: None (drawn from the seed, see make_plan) or one of MANOEUVRES for the ego's plan;
      the rest of the scene is the same either way ('lane_keep' starts the ego on its lane's
      centre line, heading along the road, as a fixed start for action-conditioned rendering).
  """
  if isinstance(domain, str):
    domain = get_domain(domain)
  if length < 100:
    raise ValueError(f"length must be at least 100 m, got {length}")
  if manoeuvre is not None and manoeuvre not in MANOEUVRES:
    raise ValueError(f"unknown manoeuvre {manoeuvre!r}; choose one of {MANOEUVRES}")
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
  ego_cruise = float(rng.uniform(*d.speed_range))
  plan = make_plan(seed, d, roads, junctions, ego_lane, ego_cruise, manoeuvre)
  ego_s0 = plan.main_s0
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
        if direction == 1 and lane == ego_lane and s_cur < EGO_S0 + 12:
          continue
        add_actor(_sample_vehicle_class(rng), 0, u, s_cur, direction * lane_speed, True)
        s_cur += 12
  # Clear the ego's lane behind and just ahead of where the plan has it at time 0, and beside it
  # the lane it moves into (lane change, swerve). Removed after drawing, so the random stream
  # and all else in the scene do not depend on the plan.
  target_u = ego_u + plan.lateral[3] if plan.lateral[0] != "none" else None

  def in_the_way(a):
    if a.road != 0 or a.speed <= 0:
      return False
    if abs(a.u - ego_u) < 0.5 and a.s0 < ego_s0 + 12:
      return True
    return target_u is not None and abs(a.u - target_u) < 0.75 * lw and \
        ego_s0 - 15 < a.s0 < ego_s0 + 12

  actors = [a for a in actors if not in_the_way(a)]
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

  return SceneSpec(int(seed), d, roads, _road_segments(roads), road_params, crossings, static,
                   actors, map_lines, float(ego_u), ego_s0, ego_cruise, plan.wobble, plan)


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


# --------------------------------------------------------------------------------------------
# The ego's driving policy


@dataclasses.dataclass
class EgoPlan:
  """What the ego does in one scene: a route, a lateral and a speed profile, the state at time 0.

  Times are seconds from frame 0 of a clip; route arc lengths are metres along `route`.
  """
  manoeuvre: str           # one of MANOEUVRES
  route: np.ndarray        # [M,2] world polyline the ego follows (lane centres), ~1 m apart
  route_s: np.ndarray      # [M] arc length along the route
  route_heading: np.ndarray  # [M] unwrapped heading of the route
  route_main_s: np.ndarray   # [M] main-road arc length of route points on the main road, else NaN
  lane_u: float            # lateral offset of the ego lane on the main road
  lateral: tuple           # (kind 'none' | 'step' | 'bump', t_start, duration, offset m, + = left)
  speed: tuple             # (kind 'cruise' | 'change' | 'stop' | 'turn', t_start, v1, t_resume)
  turn: tuple | None       # (s_arc_start, s_arc_end, v_turn, radius) along the route, turns only
  cruise: float            # m/s
  wobble: tuple            # (amplitude m/s, period s, phase) of the cruise speed
  state0: np.ndarray = None  # (x, y, yaw) at time 0
  speed0: float = 0.0      # speed held over the last pre-roll step before time 0
  main_s0: float = 0.0     # main-road arc length of the ego at time 0


# Manoeuvres and the share of scenes that draws each (make_plan).
MANOEUVRES = ("lane_keep", "lane_change", "swerve", "speed_change", "stop", "turn_left",
              "turn_right")
MANOEUVRE_WEIGHTS = (0.16, 0.17, 0.15, 0.12, 0.14, 0.13, 0.13)
ACCEL_MAX, DECEL_MAX = 2.0, 4.0  # m/s^2: the ego's speed changes within these
TURN_DECEL = 2.5  # m/s^2: planned deceleration before a turn
SIDE_ROAD_SPEED = 9.0  # m/s: most the ego drives on a side road
PLAN_HZ = 20.0  # rate of the pre-roll (the plan's time-0 state does not depend on the clip's fps)
PRE_ROLL_SETTLE = 1.0  # s of plain driving before a timed manoeuvre starts in the pre-roll
EGO_S0 = 30.0  # m: where on the main road the pre-roll aims to leave the ego at time 0
ROUTE_TAIL = 200.0  # m of straight route past the end of the mapped road
LOOKAHEAD_MIN, LOOKAHEAD_TIME = 4.0, 0.8  # pure pursuit: max(4 m, 0.8 s of travel)
EGO_HALF_WIDTH = 1.0  # m: turns keep the ego's sides on asphalt


def road_margin(scene_or_roads, xy) -> np.ndarray:
  """Metres by which points [P,2] lie inside some road's asphalt (negative: off every road)."""
  roads = scene_or_roads.roads if isinstance(scene_or_roads, SceneSpec) else scene_or_roads
  xy = np.asarray(xy, np.float64).reshape(-1, 2)
  return np.max([road.half_width - _point_polyline_distance(xy, road.points) for road in roads], 0)


def _smoothstep(x):
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3 - 2 * x)


def lateral_offset(plan: EgoPlan, time) -> np.ndarray:
  """Offset (m, + = left) of the ego's path from the route at `time`."""
  kind, t0, duration, offset = plan.lateral
  x = (np.asarray(time, np.float64) - t0) / duration if duration > 0 else np.zeros_like(time)
  if kind == "step":
    return offset * _smoothstep(x)
  if kind == "bump":
    return offset * np.sin(np.pi * np.clip(x, 0.0, 1.0)) ** 2
  return np.zeros_like(np.asarray(time, np.float64))


def desired_speed(plan: EgoPlan, time: float, route_s: float) -> float:
  """The speed (m/s) the plan asks for at `time` and route position `route_s`, before traffic."""
  amp, period, phase = plan.wobble
  base = plan.cruise + amp * np.sin(2 * np.pi * time / period + phase)
  kind, t0, v1, t_resume = plan.speed
  if kind == "change":
    return v1 if time >= t0 else base
  if kind == "stop":
    return 0.0 if t0 <= time < t_resume else base
  if kind == "turn":
    s_in, s_out, v_turn, _ = plan.turn
    if route_s < s_in:
      return min(plan.cruise, float(np.sqrt(v_turn ** 2 + 2 * TURN_DECEL * (s_in - route_s))))
    return v_turn if route_s < s_out + 5.0 else min(plan.cruise, SIDE_ROAD_SPEED)
  return base


def _route(points, main_s):
  """Route arrays (points, s, heading, main_s) with a straight tail past its end."""
  points = np.asarray(points, np.float64)
  step = points[-1] - points[-2]
  step = step / np.linalg.norm(step)
  tail = points[-1] + np.arange(1.0, ROUTE_TAIL + 1.0)[:, None] * step
  points = np.concatenate([points, tail])
  main_s = np.concatenate([main_s, np.full(len(tail), np.nan)])
  d = np.diff(points, axis=0)
  s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(d, axis=1))])
  heading = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
  return points, s, np.concatenate([heading, heading[-1:]]), main_s


def _turn_route(main, side, s_j, lane_u, sign, radius, lane_width, traffic_side):
  """Route points and main-road s of a turn at main-road arc length s_j onto road `side`.

  Local frame of the junction: X along the main road, Y to its left; the side road runs along Y.
  sign = +1 turns left (onto the side road's +s direction), -1 right. The ego leaves its main lane
  (Y = lane_u) on a quarter circle of `radius` tangent to it and to the side road's lane for its
  direction of travel (X = x_side, on the side of the traffic), then follows that lane to the
  side road's end.
  """
  centre, h = main.at(s_j)
  ex, ey = np.array([np.cos(h), np.sin(h)]), np.array([-np.sin(h), np.cos(h)])
  x_side = sign * traffic_side * 0.5 * lane_width
  x_in = x_side - radius
  s_main = np.arange(0.0, s_j + x_in, 1.0)
  lane_pts, _ = main.offset_points(s_main, np.full(len(s_main), lane_u))
  theta = np.linspace(0.0, np.pi / 2, max(int(radius * np.pi / 2), 4) + 1)
  arc_local = np.stack([x_in + radius * np.sin(theta),
                        lane_u + sign * radius * (1 - np.cos(theta))], -1)
  y_end = sign * (side.s[-1] / 2.0)  # the side road reaches ext = s[-1] / 2 either way
  ys = np.arange(lane_u + sign * radius + sign, y_end, sign * 1.0)
  side_local = np.stack([np.full(len(ys), x_side), ys], -1)
  to_world = lambda q: centre + q[:, :1] * ex + q[:, 1:] * ey
  points = np.concatenate([lane_pts, to_world(arc_local), to_world(side_local)])
  main_s = np.concatenate([s_main, np.full(len(arc_local) + len(side_local), np.nan)])
  return points, main_s, len(lane_pts), len(lane_pts) + len(arc_local) - 1


def make_plan(seed: int, domain: Domain, roads, junctions, ego_lane: int, cruise: float,
              manoeuvre: str | None = None) -> EgoPlan:
  """The ego's plan in a scene: a manoeuvre drawn with MANOEUVRE_WEIGHTS (unless `manoeuvre`
  names one), deterministic per seed.

    lane_keep     16%  follow the ego lane of the main road at the cruise speed (slow wobble)
    lane_change   17%  move to the other lane of the same direction (one lane width) in 1.5-3 s
    swerve        15%  out by 1-1.8 m towards the other lane of the same direction and back in
                       1.5-2.5 s
    speed_change  12%  to 0.35-0.6 or 1.3-1.6 times the cruise speed (at most 16 m/s)
    stop          14%  brake to a standstill, stand 2-6 s, pull away to the cruise speed
    turn_left     13%  slow to 4-6.5 m/s and turn at a random junction onto the side road's lane
    turn_right    13%  for its direction, on a quarter circle of 4.5-11 m, then follow it

  Timed manoeuvres start at a random time between the manoeuvre's length before frame 0 and just
  after it, and a turn's time 0 finds the ego between 4 m before the bend and 2 m past it, so
  clips of any length catch a random phase of it: about a quarter of 8-frame clips at 12 fps
  steer more than 0.05 rad for 4 frames or longer (the turns nearly all, lane changes and swerves
  in part). To get there the ego drives the plan from a pre-roll start (time -t, or 40 m up the
  route for a turn) at PLAN_HZ without traffic; `state0` is where that leaves it, the same for
  every clip fps. The radius of a turn is the drawn one or the largest smaller one (down to
  4.5 m) whose path keeps both of the ego's sides (EGO_HALF_WIDTH) on asphalt; a turn with none
  (not seen in practice) becomes lane_keep. Lane changes and swerves stay on the main road's
  asphalt (with one lane per direction a lane change is a shift of 0.4 lanes towards the edge).
  A route ends with a straight past the end of its mapped road: an ego that drives that far (a
  long clip after a turn, side roads are 60-90 m from the junction) leaves the road.
  """
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xd71e]))
  main = roads[0]
  lw, n_lanes, side = domain.lane_width, domain.lanes_per_direction, domain.traffic_side
  lane_u = -side * (ego_lane + 0.5) * lw
  drawn = MANOEUVRES[int(rng.choice(len(MANOEUVRES), p=MANOEUVRE_WEIGHTS))]
  manoeuvre = drawn if manoeuvre is None else manoeuvre
  wobble = (float(rng.uniform(0.3, 1.5)), float(rng.uniform(4.0, 10.0)),
            float(rng.uniform(0, 2 * np.pi)))
  # Towards the other lane of the same direction (outwards from the inner lane, inwards from an
  # outer one); with one lane per direction, towards the road's edge.
  inward = -np.sign(lane_u)
  toward_other = inward if ego_lane == n_lanes - 1 and n_lanes > 1 else -inward
  lateral, speed, turn = ("none", 0.0, 0.0, 0.0), ("cruise", 0.0, 0.0, 0.0), None
  t_event = 0.0
  if manoeuvre == "lane_change":
    duration = float(rng.uniform(1.5, 3.0))
    offset = toward_other * lw if n_lanes > 1 else toward_other * 0.4 * lw
    t_event = -float(rng.uniform(-0.3, duration))
    lateral = ("step", t_event, duration, float(offset))
  elif manoeuvre == "swerve":
    duration = float(rng.uniform(1.5, 2.5))
    t_event = -float(rng.uniform(-0.3, duration))
    lateral = ("bump", t_event, duration, float(toward_other * rng.uniform(1.0, 1.8)))
  elif manoeuvre == "speed_change":
    if rng.uniform() < 0.5:
      v1 = cruise * rng.uniform(0.35, 0.6)
    else:
      v1 = min(cruise * rng.uniform(1.3, 1.6), 16.0)
    transition = abs(v1 - cruise) / (ACCEL_MAX if v1 > cruise else DECEL_MAX)
    t_event = -float(rng.uniform(-0.3, transition + 0.5))
    speed = ("change", t_event, float(v1), 0.0)
  elif manoeuvre == "stop":
    brake, hold = cruise / DECEL_MAX, float(rng.uniform(2.0, 6.0))
    t_event = -float(rng.uniform(-0.5, brake + hold + 2.0))
    speed = ("stop", t_event, 0.0, t_event + brake + hold)
  if manoeuvre.startswith("turn"):
    sign = 1 if manoeuvre == "turn_left" else -1
    junction = int(rng.integers(len(junctions)))
    s_j = junctions[junction][0]
    v_turn = float(rng.uniform(4.0, 6.5))
    radius = float(rng.uniform(6.0, 11.0))
    route = None
    for r in [radius] + [x for x in np.arange(10.0, 4.4, -0.5) if x < radius]:
      points, main_s, i_in, i_out = _turn_route(main, roads[1 + junction], s_j, lane_u, sign, r,
                                                lw, side)
      arc = points[i_in:i_out + 1]
      d = np.diff(arc, axis=0)
      normal = np.stack([-d[:, 1], d[:, 0]], -1) / np.linalg.norm(d, axis=1, keepdims=True)
      edges = np.concatenate([arc[:-1] + EGO_HALF_WIDTH * normal,
                              arc[:-1] - EGO_HALF_WIDTH * normal])
      if road_margin(roads, edges).min() >= 0.0:
        route = _route(points, main_s)
        radius = float(r)
        break
    if route is None:
      manoeuvre = "lane_keep"
    else:
      s_in, s_out = route[1][i_in], route[1][i_out]
      turn = (float(s_in), float(s_out), v_turn, radius)
      speed = ("turn", 0.0, 0.0, 0.0)
  if turn is None:
    s_main = main.s
    lane_pts, _ = main.offset_points(s_main, np.full(len(s_main), lane_u))
    route = _route(lane_pts, s_main.copy())
  plan = EgoPlan(manoeuvre, *route, float(lane_u), lateral, speed, turn, float(cruise), wobble)
  if turn is not None:
    s0 = turn[0] + float(rng.uniform(-4.0, turn[1] - turn[0] + 2.0))
    _pre_roll(plan, roads, s_start=max(0.0, s0 - 40.0), t_start=0.0, until_s=s0)
  else:
    t_pre = max(0.0, -t_event) + PRE_ROLL_SETTLE
    t_pre = np.ceil(t_pre * PLAN_HZ) / PLAN_HZ
    s_start = max(5.0, EGO_S0 - cruise * t_pre)
    _pre_roll(plan, roads, s_start=s_start, t_start=-t_pre, until_s=None)
  return plan


def _route_point(plan: EgoPlan, s):
  """Point [2] and heading of the route at arc length s (clamped to its ends)."""
  x = np.interp(s, plan.route_s, plan.route[:, 0])
  y = np.interp(s, plan.route_s, plan.route[:, 1])
  return np.array([x, y]), float(np.interp(s, plan.route_s, plan.route_heading))


def _nearest(plan: EgoPlan, xy, hint=None) -> int:
  """Index of the route point nearest to xy (within a window after `hint` when given)."""
  lo, hi = (0, len(plan.route)) if hint is None else (max(hint - 10, 0), hint + 80)
  d = np.sum((plan.route[lo:hi] - xy) ** 2, axis=1)
  return lo + int(np.argmin(d))


def _control(plan: EgoPlan, state, v_prev, time, dt, hint, traffic=None):
  """(speed, steering, route index) for one step: pure pursuit on the offset route, the plan's
  speed capped by the gap to traffic ahead in the lanes the ego is in, within the accel limits."""
  i = _nearest(plan, state[:2], hint)
  s_here = plan.route_s[i]
  look = max(LOOKAHEAD_MIN, LOOKAHEAD_TIME * v_prev)
  p, h = _route_point(plan, s_here + look)
  u = float(lateral_offset(plan, time + look / max(v_prev, 1.0)))
  target = p + u * np.array([-np.sin(h), np.cos(h)]) - state[:2]
  alpha = np.arctan2(target[1], target[0]) - state[2]
  dist = max(np.hypot(*target), 1.0)
  steer = float(np.clip(np.arctan2(2 * ego_lib.WHEELBASE * np.sin(alpha), dist),
                        -ego_lib.MAX_STEERING, ego_lib.MAX_STEERING))
  v_des = desired_speed(plan, time, s_here)
  s_main = plan.route_main_s[i]
  if traffic is not None and np.isfinite(s_main):
    u_now = plan.lane_u + float(lateral_offset(plan, time))
    gaps = [((a.s0 + a.speed * time) - s_main - a.size[0] / 2 - 1.0, a.speed) for a, lane_gap in
            traffic if abs(a.u - u_now) < lane_gap]
    gaps = [g for g in gaps if g[0] > 0]
    if gaps:
      gap, v_lead = min(gaps)
      v_des = min(v_des, v_lead + 0.5 * (gap - (6.0 + 1.2 * v_lead)))
  v = float(np.clip(v_des, v_prev - DECEL_MAX * dt, v_prev + ACCEL_MAX * dt))
  return max(v, 0.0), steer, i


def _pre_roll(plan: EgoPlan, roads, *, s_start, t_start, until_s):
  """Drives the plan (without traffic) from the route at s_start, time t_start, at PLAN_HZ until
  time 0 (until_s None) or route arc length until_s; sets state0, speed0 and main_s0."""
  p, h = _route_point(plan, s_start)
  state = np.array([p[0], p[1], h])
  time, dt = t_start, 1.0 / PLAN_HZ
  v = desired_speed(plan, time, s_start)
  hint = _nearest(plan, p)
  for _ in range(int(PLAN_HZ * 120)):
    if until_s is None and time > -0.5 * dt:
      break
    if until_s is not None and plan.route_s[hint] >= until_s:
      break
    v, steer, hint = _control(plan, state, v, time, dt, hint)
    state = ego_lib.advance(state, v, steer, dt)
    time += dt
  else:
    raise RuntimeError(f"the ego's pre-roll of plan {plan.manoeuvre!r} did not end")
  plan.state0, plan.speed0 = state, float(v)
  i = _nearest(plan, state[:2], hint)
  main_s = plan.route_main_s[i]
  plan.main_s0 = float(main_s) if np.isfinite(main_s) else float(np.nanmax(plan.route_main_s))


def autopilot(scene: SceneSpec, num_frames: int, fps: float):
  """Speed and steering [T] of the ego driving its plan (scene.ego_plan, make_plan) from frame 0.

  Pure pursuit on the plan's route shifted by its lateral profile for steering (at most
  ego.MAX_STEERING); the plan's speed profile, capped by the gap to the vehicle ahead in the
  main-road lanes the ego occupies, with accelerations limited to [-DECEL_MAX, ACCEL_MAX]. The
  poses follow from the actions through ego.integrate from scene.ego_start (the same model the
  renderer uses). Causal: the first frames of a longer clip equal a shorter clip's.
  """
  plan = scene.ego_plan
  dt = 1.0 / fps
  lw = scene.domain.lane_width
  traffic = [(a, 0.75 * lw) for a in scene.actors if a.road == 0 and a.speed > 0]
  state, v = scene.ego_start, plan.speed0
  hint = _nearest(plan, state[:2])
  speeds, steers = [], []
  for t in range(num_frames):
    v, steer, hint = _control(plan, state, v, t * dt, dt, hint, traffic)
    speeds.append(v)
    steers.append(steer)
    state = ego_lib.advance(state, v, steer, dt)
  return np.asarray(speeds), np.asarray(steers)


def takeover(speed, steering, seed: int, *, num_frames: int, max_steering: float):
  """The autopilot's controls (speed, steering [T+K]) with a steering takeover: from a frame j
  drawn uniformly in [1, num_frames - 1] on, steering is a value drawn uniformly in
  [-max_steering, max_steering] and held (the K look-ahead frames past the clip included); the
  speed stays the autopilot's. Deterministic per seed.

  It makes the steering of a clip's later frames independent of what its first frames show, as
  a commanded steering is in the controllability protocol: an ego that only follows its plan
  steers as the road and its manoeuvre already suggest, and a model can predict that motion
  from the context frames without reading the actions.
  """
  if num_frames < 2:
    raise ValueError(f"a steering takeover needs num_frames >= 2, got {num_frames}")
  if not 0 < max_steering <= ego_lib.MAX_STEERING:
    raise ValueError(f"takeover max_steering {max_steering} rad must lie in (0, "
                     f"{ego_lib.MAX_STEERING}]")
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7a4e]))
  j = int(rng.integers(1, num_frames))
  steering = np.array(steering, np.float64)
  steering[j:] = rng.uniform(-max_steering, max_steering)
  return np.asarray(speed, np.float64), steering
