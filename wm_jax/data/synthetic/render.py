"""Renders clips of a procedural scene into records of the batch contract (data/schema.py).

    scene = world.make_scene(seed=0, domain="boston")
    record = render_clip(scene, "nuscenes6", num_frames=8, fps=12.0, image_size=(128, 256))
    schema.validate(record)

Frames of the record (all float32 unless noted):
  frames [T,V,H,W,3] uint8, depth [T,V,H,W] metres along each camera's optical axis (sky: FAR),
  actions [T,4] speed, steering, accel, yaw_rate (see data/actions.py; the poses integrate them
  exactly), trajectory [T,K,2], goal_point [T,2], command [T] int32 (data/actions.py
  future_actions of the ego simulated K frames past the clip, which are not rendered),
  ego_pose [T,4,4] world-from-ego (ego frame: x forward, y left, z up, origin at the rear axle on
  the ground), intrinsics [T,V,3,3] pixels, extrinsics [T,V,4,4] ego-from-camera (camera frame
  OpenCV: x right, y down, z forward), boxes [T,N,10] in the EGO frame of the same timestep
  (x, y, z box centre; l, w, h; yaw about z from ego x; class index into layout_render.CLASS_NAMES;
  track id >= 1; valid 1/0, invalid rows all zero; a track keeps its row through the clip),
  layout [T,V,H,W,6] uint8 (layout_render.py), fps [], view_adjacency [V,V] bool.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from wm_jax.data import actions as actions_lib
from wm_jax.data import layout_render, schema
from wm_jax.data.synthetic import ego as ego_lib
from wm_jax.data.synthetic import raycast
from wm_jax.data.synthetic import rig as rig_lib
from wm_jax.data.synthetic import world

MAX_CROSSINGS = 8
ANNOTATION_RANGE = 60.0  # metres from the ego within which boxes are valid


def actor_boxes(scene: world.SceneSpec, t: float):
  """World-frame annotation boxes [Na,10] of all actors at time t (valid = on their path)."""
  xy, yaw, active = world.actor_states(scene, t)
  tab = scene.actor_table
  size = tab["size"]
  return np.concatenate([xy, size[:, 2:3] / 2, size, yaw[:, None], tab["cls"][:, None],
                         tab["track_id"][:, None], active[:, None].astype(np.float64)], 1)


def actor_parts(scene: world.SceneSpec, boxes_world: np.ndarray) -> np.ndarray:
  """Renderer boxes [P,BOX_COLS] of the actors' parts, placed by their annotation boxes."""
  parts = scene.actor_table["parts"]  # [Na,2,10] local cx,cy,cz, hl,hw,hh, r,g,b, material
  if not len(parts):
    return np.zeros((0, raycast.BOX_COLS), np.float32)
  c = np.cos(boxes_world[:, 6])[:, None]
  s = np.sin(boxes_world[:, 6])[:, None]
  x = boxes_world[:, 0:1] + c * parts[..., 0] - s * parts[..., 1]
  y = boxes_world[:, 1:2] + s * parts[..., 0] + c * parts[..., 1]
  na, npart = parts.shape[:2]
  rep = lambda a: np.broadcast_to(a[:, None], (na, npart))
  out = np.stack([x, y, parts[..., 2], parts[..., 3], parts[..., 4], parts[..., 5],
                  rep(boxes_world[:, 6]), parts[..., 6], parts[..., 7], parts[..., 8],
                  parts[..., 9], rep(boxes_world[:, 8]),
                  rep(boxes_world[:, 9]) * (parts[..., 9] >= 0)], -1)
  return out.reshape(-1, raycast.BOX_COLS).astype(np.float32)


def static_boxes(scene: world.SceneSpec) -> np.ndarray:
  st = scene.static
  n = len(st)
  return np.concatenate([st, np.zeros((n, 1), np.float32), np.ones((n, 1), np.float32)], 1)


def select_boxes(boxes, origin, r_wc, k, image_size, per_tile, candidates=256):
  """Per-tile box lists [Ty*Tx, per_tile, BOX_COLS] for one camera (raycast.tile_grid tiles).

  Boxes whose bounding sphere lies outside the horizontal field of view are dropped; the nearest
  `candidates` others are projected (8 corners; a box reaching behind the camera covers every
  tile) and each tile keeps up to `per_tile` boxes whose projected rectangle overlaps it, the
  largest-looking first (actor parts weighted 16x).
  Unused rows are inactive.
  """
  h, w = image_size
  th, tw, ty, tx = raycast.tile_grid(h, w)
  rel = boxes[:, :3].astype(np.float64) - origin[None]
  cam = rel @ r_wc
  radius = np.linalg.norm(boxes[:, 3:6], axis=1)
  half_fov = np.arctan(w / 2.0 / k[0, 0])
  tan = np.tan(half_fov)
  slack = radius * np.sqrt(1 + tan * tan)
  visible = (boxes[:, 12] > 0) & (cam[:, 2] > -radius) & (np.abs(cam[:, 0]) < cam[:, 2] * tan + slack)
  dist = np.where(visible, np.linalg.norm(rel, axis=1) - radius, np.inf)
  order = np.argsort(dist, kind="stable")[:candidates]
  order = order[np.isfinite(dist[order])]
  out = np.zeros((ty * tx, per_tile, raycast.BOX_COLS), np.float32)
  out[..., 3:6] = 1.0
  if not len(order):
    return out
  sel = boxes[order]
  corners = layout_render.box_corners(sel[:, [0, 1, 2, 3, 4, 5, 6]] * [1, 1, 1, 2, 2, 2, 1])
  cc = (corners - origin) @ r_wc  # [N,8,3] camera frame
  behind = (cc[..., 2] < 0.05).any(1)
  z = np.maximum(cc[..., 2], 0.05)
  uu = k[0, 0] * cc[..., 0] / z + k[0, 2]
  vv = k[1, 1] * cc[..., 1] / z + k[1, 2]
  u0 = np.where(behind, -np.inf, uu.min(1))
  u1 = np.where(behind, np.inf, uu.max(1))
  v0 = np.where(behind, -np.inf, vv.min(1))
  v1 = np.where(behind, np.inf, vv.max(1))
  ys, xs = np.arange(ty) * th, np.arange(tx) * tw
  over_y = (v1[:, None] >= ys[None]) & (v0[:, None] <= ys[None] + th)  # [N,Ty]
  over_x = (u1[:, None] >= xs[None]) & (u0[:, None] <= xs[None] + tw)  # [N,Tx]
  over = (over_y[:, :, None] & over_x[:, None, :]).reshape(len(sel), ty * tx)
  # Where a tile has more candidates than rows, the boxes that look largest (projected rectangle
  # clipped to the image) win: near boxes look large, and only small far ones drop out.
  # Actors (annotated, id > 0) count 16x their area, so small far vehicles stay drawn.
  area = (np.clip(u1, 0, w) - np.clip(u0, 0, w)) * (np.clip(v1, 0, h) - np.clip(v0, 0, h))
  area = area * np.where(sel[:, 11] > 0, 16.0, 1.0)
  rank = np.argsort(-area, kind="stable")
  over = over[rank]
  for t in range(ty * tx):
    idx = rank[np.flatnonzero(over[:, t])[:per_tile]]
    out[t, :len(idx)] = sel[idx]
  return out


def select_segments(scene: world.SceneSpec, xy, k):
  """The k road segments [k,SEG_COLS] nearest to world point xy."""
  seg = scene.segments
  a, b = seg["a"].astype(np.float64), seg["b"].astype(np.float64)
  ab = b - a
  length = np.linalg.norm(ab, axis=1)
  unit = ab / np.maximum(length, 1e-9)[:, None]
  along = np.clip(np.sum((xy[None] - a) * unit, axis=1), 0, length)
  dist = np.linalg.norm(a + along[:, None] * unit - xy[None], axis=1)
  order = np.argsort(dist, kind="stable")[:k]
  rp = scene.road_params[seg["road"][order]]
  rows = np.concatenate([a[order], unit[order], length[order, None], seg["s0"][order, None],
                         seg["road"][order, None], rp, np.ones((len(order), 1))], 1)
  out = np.zeros((k, raycast.SEG_COLS), np.float32)
  out[:len(order)] = rows
  return out


def padded_crossings(scene):
  out = np.full((MAX_CROSSINGS, 3), -1.0, np.float32)
  n = min(len(scene.crossings), MAX_CROSSINGS)
  out[:n] = scene.crossings[:n]
  return out


def ego_poses(scene, speed, steering, fps):
  """World-from-ego [T,4,4] float64 by integrating the bicycle model from the scene's start."""
  return actions_lib.integrate_poses(scene.ego_start, speed, steering, 1.0 / fps)


def _to_ego(boxes_world, pose):
  inv = np.linalg.inv(pose)
  xyz = boxes_world[:, :3] @ inv[:3, :3].T + inv[:3, 3]
  ego_yaw = np.arctan2(pose[1, 0], pose[0, 0])
  yaw = np.mod(boxes_world[:, 6] - ego_yaw + np.pi, 2 * np.pi) - np.pi
  return np.concatenate([xyz, boxes_world[:, 3:6], yaw[:, None], boxes_world[:, 7:]], 1)


def _map_lines_ego(scene, pose, radius):
  inv = np.linalg.inv(pose)
  centre = pose[:2, 3]
  out = []
  for cls, pts in scene.map_lines:
    near = np.hypot(pts[:, 0] - centre[0], pts[:, 1] - centre[1]) < radius
    if near.sum() < 1:
      continue
    idx = np.flatnonzero(near)
    lo, hi = max(idx[0] - 1, 0), min(idx[-1] + 2, len(pts))
    seg = pts[lo:hi]
    if len(seg) >= 2:
      out.append((cls, seg @ inv[:3, :3].T + inv[:3, 3]))
  return out


def render_clip(scene: world.SceneSpec, rig="front", num_frames: int = 8, fps: float = 12.0,
                image_size=(128, 256), *, actions=None, trajectory_points: int = 6,
                max_boxes: int = 32, boxes_per_tile: int = 32, road_segments: int = 20,
                layout: bool = True, start_time: float = 0.0, return_hit_id: bool = False,
                supersample: int = 1, devices=None) -> dict:
  """A record (schema dict of numpy arrays) of `num_frames` frames of `scene`.

  Args:
    scene: from world.make_scene.
    rig: 'front', 'nuscenes6' or a rig.Rig (its image size must equal image_size).
    fps: frame rate; the ego and the traffic advance 1/fps seconds per frame.
    actions: None (the ego drives its plan, world.autopilot) or [T,2|4] / [T+K,2|4] speed (m/s)
      and steering (rad) for action-conditioned rendering; accel and yaw rate are always
      re-derived from them. Given T rows, the last speed and steering are held for the K frames
      past the clip that trajectory, goal_point and command look at. The ego starts at
      scene.ego_start (where its plan has it at frame 0; world.make_scene(...,
      manoeuvre='lane_keep') starts it on its lane, along the road).
    trajectory_points: K, the future frames of trajectory / goal_point / command (simulated,
      not rendered).
    max_boxes: N, rows of `boxes`.
    boxes_per_tile, road_segments: K and KR of the ray caster: each image tile tests the nearest
      K boxes that project onto it, each pixel the KR road segments nearest to the ego.
    layout: also render the layout image (else it is all zeros).
    start_time: time of frame 0 for the traffic (the ego always starts at the scene's start).
    return_hit_id: add 'hit_id' [T,V,H,W] int32 (track id seen per pixel, 0 = none); not a
      schema key, pop it before validation.
    supersample: s >= 1 rays per pixel side: the frames are cast at (s*H, s*W) and each pixel is
      the mean of its s x s rays (anti-aliasing, as a camera integrates over its pixel: thin
      structure such as window rows, lane markings and far poles no longer flickers between
      frames); depth is the mean of the s x s depths, hit_id the id of the pixel's first ray.
      Intrinsics, boxes, layout and actions are those of the (H, W) image.
    devices: None renders on the default device; a list of devices (e.g.
      jax.local_devices(backend="cpu") in a process started with one XLA CPU device per core)
      gets the frames round-robin, so they render in parallel. Each device compiles once.
  """
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if not fps > 0:
    raise ValueError(f"fps must be positive, got {fps}")
  h, w = (int(s) for s in image_size)
  if isinstance(rig, str):
    rig = rig_lib.make_rig(rig, (h, w))
  elif tuple(rig.image_size) != (h, w):
    raise ValueError(f"rig image size {rig.image_size} differs from image_size {(h, w)}")
  s = int(supersample)
  if s < 1:
    raise ValueError(f"supersample must be an int >= 1, got {supersample!r}")
  ray_rig = rig if s == 1 else dataclasses.replace(
      rig, image_size=(h * s, w * s),
      intrinsics=(np.diag([s, s, 1.0]) @ rig.intrinsics.astype(np.float64)).astype(np.float32))
  dt = 1.0 / fps
  k = int(trajectory_points)
  if k < 1:
    raise ValueError(f"trajectory_points must be >= 1, got {trajectory_points}")
  if actions is None:
    speed, steering = world.autopilot(scene, num_frames + k, fps)
  else:
    actions = np.asarray(actions, np.float64)
    if actions.ndim != 2 or actions.shape[0] not in (num_frames, num_frames + k) or \
        actions.shape[1] not in (2, 4):
      raise ValueError(f"actions must be [T={num_frames} or T+K={num_frames + k}, 2 or 4], got "
                       f"{actions.shape}")
    speed, steering = actions[:, 0], actions[:, 1]
    if len(speed) == num_frames:
      speed = np.concatenate([speed, np.full(k, speed[-1])])
      steering = np.concatenate([steering, np.full(k, steering[-1])])
  acts = ego_lib.make_actions(speed, steering, dt)[:num_frames]
  all_poses = ego_poses(scene, speed, steering, fps)
  poses = all_poses[:num_frames]

  k_inv = np.linalg.inv(ray_rig.intrinsics.astype(np.float64)).astype(np.float32)
  statics = static_boxes(scene)
  crossings = padded_crossings(scene)
  style = raycast.style_vector(scene.domain)
  devices = list(devices) if devices else [None]
  outs, world_boxes = [], []
  for t in range(num_frames):
    bw = actor_boxes(scene, start_time + t * dt)
    world_boxes.append(bw)
    prims = np.concatenate([statics, actor_parts(scene, bw)], 0)
    cam_world = poses[t][None] @ rig.extrinsics.astype(np.float64)  # [V,4,4] world-from-camera
    origins = cam_world[:, :3, 3]
    r_wc = cam_world[:, :3, :3]
    sel = np.stack([select_boxes(prims, origins[v], r_wc[v], ray_rig.intrinsics[v],
                                 ray_rig.image_size, boxes_per_tile)
                    for v in range(rig.num_views)])
    segs = select_segments(scene, poses[t][:2, 3], road_segments)
    inputs = (origins.astype(np.float32), r_wc.astype(np.float32), k_inv, sel, segs, crossings,
              style)
    device = devices[t % len(devices)]
    if device is not None:
      inputs = jax.device_put(inputs, device)
    outs.append(raycast.render_views(*inputs, height=h * s, width=w * s))
  frames = np.stack([np.asarray(o[0]) for o in outs])
  depth = np.stack([np.asarray(o[1]) for o in outs])
  if s > 1:
    pixel_mean = lambda a: a.reshape(a.shape[:-3] + (h, s, w, s) + a.shape[-1:]).mean((-4, -2))
    frames = np.round(pixel_mean(frames.astype(np.float32))).astype(np.uint8)
    depth = pixel_mean(depth[..., None].astype(np.float32))[..., 0]

  # Boxes in each timestep's ego frame; rows fixed per track for the whole clip.
  ego_boxes = [_to_ego(bw, poses[t]) for t, bw in enumerate(world_boxes)]
  dist = np.stack([np.hypot(b[:, 0], b[:, 1]) for b in ego_boxes]) if ego_boxes[0].size else \
      np.zeros((num_frames, 0))
  valid = np.stack([(b[:, 9] > 0) for b in ego_boxes]) & (dist < ANNOTATION_RANGE) if dist.size \
      else np.zeros((num_frames, 0), bool)
  ever = np.flatnonzero(valid.any(0))
  ever = ever[np.argsort(np.where(valid[:, ever], dist[:, ever], np.inf).min(0), kind="stable")]
  rows = ever[:max_boxes]
  boxes = np.zeros((num_frames, max_boxes, 10), np.float32)
  for t in range(num_frames):
    b = ego_boxes[t][rows]
    b[:, 9] = valid[t, rows]
    b[~valid[t, rows]] = 0.0
    boxes[t, :len(rows)] = b

  v = rig.num_views
  lay = np.zeros((num_frames, v, h, w, 6), np.uint8)
  if layout:
    for t in range(num_frames):
      lay[t] = layout_render.render_layout(boxes[t], _map_lines_ego(scene, poses[t], 90.0),
                                           rig.intrinsics, rig.extrinsics, (h, w))
  future = actions_lib.future_actions(all_poses, num_points=k, front_intrinsics=rig.intrinsics[0],
                                      front_extrinsics=rig.extrinsics[0], image_size=(h, w))
  record = {
      "frames": frames,
      "depth": depth.astype(np.float32),
      "actions": acts,
      **future,
      "ego_pose": poses.astype(np.float32),
      "intrinsics": np.broadcast_to(rig.intrinsics, (num_frames, v, 3, 3)).copy(),
      "extrinsics": np.broadcast_to(rig.extrinsics, (num_frames, v, 4, 4)).copy(),
      "boxes": boxes,
      "layout": lay,
      "fps": np.float32(fps),
      "view_adjacency": rig.view_adjacency.copy(),
  }
  schema.validate(record, source=f"synthetic:{scene.domain.name}:seed={scene.seed}")
  if return_hit_id:
    record["hit_id"] = np.stack([np.asarray(o[2]) for o in outs])[..., ::s, ::s]
  return record


def record_for_index(index: int, *, seed: int = 0, domains=("boston", "singapore"),
                     rig="front", num_frames: int = 8, fps: float = 12.0, image_size=(128, 256),
                     **kwargs) -> dict:
  """Record number `index` of a synthetic data set: a random-access source for data pipelines.

  Scene `index` uses domain domains[index % len(domains)] and scene seed (seed, index) hashed to
  one integer, with a main road long enough for the plan's pre-roll and the clip. Deterministic:
  the same arguments give the same record. Extra keyword arguments go to render_clip.
  """
  if index < 0:
    raise ValueError(f"index must be >= 0, got {index}")
  domain = domains[index % len(domains)]
  scene_seed = int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])
  duration = num_frames / fps
  length = max(250.0, 150.0 + 1.5 * 15.0 * duration)
  scene = world.make_scene(scene_seed, domain, length=length)
  return render_clip(scene, rig, num_frames=num_frames, fps=fps, image_size=image_size, **kwargs)
