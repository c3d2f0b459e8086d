"""Writes synthetic scenes as a nuScenes v1.0 data set (tables, images, CAN bus).

    scenes = [world.make_scene(seed, domain) for seed, domain in [(0, "boston"), (1, "singapore")]]
    write_nuscenes("/tmp/nusc_syn", scenes, rig="nuscenes6", image_size=(225, 400), num_samples=8)

Layout on disk (the real nuScenes layout, so one reader serves both):

  OUT/VERSION/{scene,sample,sample_data,ego_pose,calibrated_sensor,sensor,sample_annotation,
               instance,category,attribute,visibility,log,map}.json
  OUT/samples/CAM_*/LOG__CAM_*__UTIME.jpg    key frames, 2 Hz (every 6th camera frame)
  OUT/sweeps/CAM_*/LOG__CAM_*__UTIME.jpg     the other camera frames, 12 Hz in all
  OUT/maps/<token>.png                       map stubs (1x1 image; there is no raster map)
  OUT/maps/expansion/<location>.json         vector map (nuScenes map expansion v1.3) of the
                                             scenes logged at that location (see below)
  OUT/can_bus/scene-XXXX_pose.json           50 Hz: utime, pos, orientation, vel, accel,
                                             rotation_rate
  OUT/can_bus/scene-XXXX_steeranglefeedback.json   100 Hz: utime, value
  OUT/can_bus/scene-XXXX_vehicle_monitor.json      2 Hz: utime, vehicle_speed (km/h), steering
                                             (deg), yaw_rate (deg/s)

Field names and conventions as in nuScenes: 32-hex tokens (md5 of a readable key, so a re-export
gives the same tokens), timestamps in microseconds, translations in metres, rotations as
quaternions (w, x, y, z); ego_pose = global-from-ego; calibrated_sensor = ego-from-sensor with
camera_intrinsic in pixels of the written images; annotation size = (w, l, h) and annotation
translation/rotation in the global frame. Every camera sample_data gets its own ego_pose at its own
timestamp (all cameras of a frame share the frame's time here). Sweeps point to the nearest key
frame's sample, as in nuScenes.

Synthetic specifics: annotations exist only on key frames (as in nuScenes), for actors within
ANNOTATION_RANGE of the ego. visibility_token buckets the fraction of 9 points of the box (centre
and corners pulled 20% inwards) that some camera sees on that object; num_lidar_pts holds the
number of camera PIXELS showing the object (there is no lidar), num_radar_pts 0. CAN-bus steering
(`value`, `steering`) is the steering-WHEEL angle = STEERING_RATIO x road-wheel angle; divide by
STEERING_RATIO to recover the action's steering. The ego moves on the ground plane (z = 0) and
drives its scene's plan (world.make_plan: lane changes, swerves, speed changes, stops, turns).
The reader derives trajectory, goal_point and command from the exported ego poses, so a clip read
back needs K (trajectory_points) camera frames after it in the scene: choose num_samples to fit.

Global frame and vector maps. A scene's global frame is its world frame (world.make_scene: the
main road starts at the origin) shifted by (j * scene_spacing, 0) metres for the j-th scene of its
location (j = 0, 1, ...; default spacing 0: every scene at its world origin), the same shift for
ego poses, annotations, CAN-bus positions and map nodes. OUT/maps/expansion/<location>.json
holds the scene.map_lines of all scenes of that location in the layer structure of the real map
expansion (layers and fields as wm_jax/data/nuscenes_map.py documents and reads them, every
layer nuscenes-devkit's NuScenesMap loads present, most of them empty; version "1.3",
canvas_edge = the largest node x, y rounded up):
  node          one per map-line point, x, y global (the scenes' map lines are on the ground);
                written in scene.map_lines order, so a reader drawing lines in node order
                draws them in the synthetic renderer's order
  lane_divider  map lines of class lane_divider -> line + road_divider record where the line
                lies on a road's centre line (between the directions), else line + lane_divider
                record (lane_divider_segments: every node, segment_type DOUBLE_DASHED_WHITE)
  ped_crossing  the closed outline -> polygon (the 4 corners) + ped_crossing record
  road_edge     the synthetic kerbs are open polylines (a side road's kerbs stop at the main
                road, the main road's kerbs run past junction mouths), not the boundary of a
                closed area: each becomes a zero-area drivable_area polygon whose ring runs out
                along the kerb's nodes and back (t0..tn..t1), whose boundary is the kerb;
                one drivable_area record per scene lists them (polygon_tokens)
road_segment_token fields are "" (no road_segment polygons are written). Where two scenes of a
location would come within nuscenes_map.RADIUS of each other in the global frame (always with
scene_spacing 0 and several scenes of one location), no file is written for that location (the
reader then leaves the map channels empty there) and the summary lists it under
map_expansion_skipped; a spacing of ~1000 m keeps default-length scenes apart.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from PIL import Image

from wm_jax.data import layout_render
from wm_jax.data import nuscenes_map
from wm_jax.data.synthetic import ego as ego_lib
from wm_jax.data.synthetic import render, rig as rig_lib, world

CAMERA_HZ = 12.0
KEYFRAME_EVERY = 6            # 12 Hz / 6 = 2 Hz key frames
STEERING_RATIO = 16.0         # steering-wheel angle / road-wheel angle
POSE_HZ, STEER_HZ = 50.0, 100.0
ANNOTATION_RANGE = 50.0
BASE_UTIME = 1767225600000000  # 2026-01-01T00:00:00Z
VISIBILITY = (("1", "v0-40", "visibility of whole object is between 0 and 40%"),
              ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
              ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
              ("4", "v80-100", "visibility of whole object is between 80 and 100%"))
ATTRIBUTES = ("vehicle.moving", "vehicle.parked", "vehicle.stopped", "pedestrian.moving",
              "pedestrian.standing")
MAP_VERSION = "1.3"  # map expansion version written (the devkit refuses maps older than 1.3)
LANE_SEGMENT_TYPE = "DOUBLE_DASHED_WHITE"  # a nuScenes lane_divider segment_type


def token(*key) -> str:
  return hashlib.md5("/".join(str(k) for k in key).encode()).hexdigest()


def quat_from_matrix(r) -> list:
  """Quaternion (w, x, y, z), w >= 0, of a 3x3 rotation matrix."""
  r = np.asarray(r, np.float64)
  w = np.sqrt(max(0.0, 1 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
  x = np.sqrt(max(0.0, 1 + r[0, 0] - r[1, 1] - r[2, 2])) / 2
  y = np.sqrt(max(0.0, 1 - r[0, 0] + r[1, 1] - r[2, 2])) / 2
  z = np.sqrt(max(0.0, 1 - r[0, 0] - r[1, 1] + r[2, 2])) / 2
  x = np.copysign(x, r[2, 1] - r[1, 2])
  y = np.copysign(y, r[0, 2] - r[2, 0])
  z = np.copysign(z, r[1, 0] - r[0, 1])
  q = np.array([w, x, y, z])
  return (q / np.linalg.norm(q)).tolist()


def quat_yaw(yaw) -> list:
  return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def _visibility(track, box_world, cam_from_world, intrinsics, hit_id):
  """(fraction of 9 box points seen on this object, pixel count of the object) over all views."""
  corners = layout_render.box_corners(box_world[None])[0]
  centre = box_world[:3]
  pts = np.concatenate([centre[None], centre + 0.8 * (corners - centre)], 0)
  seen = np.zeros(len(pts), bool)
  v_count, h, w = hit_id.shape
  for v in range(v_count):
    cam = pts @ cam_from_world[v, :3, :3].T + cam_from_world[v, :3, 3]
    ok = cam[:, 2] > 0.1
    uvw = cam @ intrinsics[v].T
    u = np.floor(uvw[:, 0] / np.maximum(uvw[:, 2], 1e-6)).astype(np.int64)
    vv = np.floor(uvw[:, 1] / np.maximum(uvw[:, 2], 1e-6)).astype(np.int64)
    ok &= (u >= 0) & (u < w) & (vv >= 0) & (vv < h)
    idx = np.flatnonzero(ok)
    seen[idx] |= hit_id[v, vv[idx], u[idx]] == track
  return seen.mean(), int((hit_id == track).sum())


def _visibility_token(frac):
  return VISIBILITY[min(int(np.searchsorted([0.4, 0.6, 0.8], frac, side="right")), 3)][0]


def _write_json(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f, indent=0)


def write_nuscenes(out_dir, scenes, *, rig: str = "nuscenes6", image_size=(225, 400),
                   num_samples: int = 10, version: str = "v1.0-synthetic",
                   image_format: str = "jpg", jpeg_quality: int = 95, verbose: bool = True,
                   scene_spacing: float = 0.0, map_expansion: bool = True) -> dict:
  """Renders `scenes` (world.SceneSpec list) at 12 Hz and writes them in the nuScenes format.

  Each scene gives one nuScenes scene of `num_samples` key frames (2 Hz) and the sweeps between
  them: (num_samples - 1) * 6 + 1 camera frames per camera. Returns counts per table and paths.
  scene_spacing: metres between the global origins of consecutive scenes of one location;
  map_expansion: write OUT/maps/expansion/<location>.json (module docstring). The summary lists
  the map files written (map_expansion) and the locations left without one
  (map_expansion_skipped).
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if image_format not in ("jpg", "png"):
    raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
  scenes = list(scenes)
  h, w = (int(s) for s in image_size)
  the_rig = rig_lib.make_rig(rig, (h, w))
  meta = os.path.join(out_dir, version)
  os.makedirs(meta, exist_ok=True)
  for sub in ("samples", "sweeps"):
    for ch in the_rig.channels:
      os.makedirs(os.path.join(out_dir, sub, ch), exist_ok=True)
  os.makedirs(os.path.join(out_dir, "maps"), exist_ok=True)
  os.makedirs(os.path.join(out_dir, "can_bus"), exist_ok=True)

  tables = {k: [] for k in ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor",
                            "sensor", "sample_annotation", "instance", "category", "attribute",
                            "visibility", "log", "map")}
  for ch in the_rig.channels:
    tables["sensor"].append({"token": token("sensor", ch), "channel": ch, "modality": "camera"})
  for name in layout_render.CLASS_NAMES:
    cat = layout_render.CLASS_TO_NUSCENES_CATEGORY[name]
    tables["category"].append({"token": token("category", cat), "name": cat,
                               "description": f"synthetic {name}"})
  for name in ATTRIBUTES:
    tables["attribute"].append({"token": token("attribute", name), "name": name,
                                "description": name.replace(".", " ")})
  for tok, level, desc in VISIBILITY:
    tables["visibility"].append({"token": tok, "level": level, "description": desc})
  map_logs = {}
  offsets = _scene_offsets(scenes, scene_spacing)

  num_frames = (num_samples - 1) * KEYFRAME_EVERY + 1
  dt = 1.0 / CAMERA_HZ
  for si, scene in enumerate(scenes):
    name = f"scene-{si + 1:04d}"
    log_name = f"syn-{scene.domain.name}-{scene.seed:06d}"
    if verbose:
      print(f"[export] {name}: domain={scene.domain.name} seed={scene.seed} "
            f"{num_frames} frames x {the_rig.num_views} cameras at {h}x{w}", flush=True)
    rec = render.render_clip(scene, the_rig, num_frames=num_frames, fps=CAMERA_HZ,
                             image_size=(h, w), layout=False, return_hit_id=True)
    t0 = BASE_UTIME + si * 3_600_000_000
    utimes = [t0 + int(round(i * 1e6 / CAMERA_HZ)) for i in range(num_frames)]
    poses = render.ego_poses(scene, rec["actions"][:, 0], rec["actions"][:, 1], CAMERA_HZ)
    if offsets[si].any():
      poses[:, :2, 3] += offsets[si]
    log_tok = token(name, "log")
    tables["log"].append({"token": log_tok, "logfile": log_name, "vehicle": "wm_jax-synthetic",
                          "date_captured": "2026-01-01", "location": scene.domain.location})
    map_logs.setdefault(scene.domain.location, []).append(log_tok)
    calib = {}
    for v, ch in enumerate(the_rig.channels):
      e = the_rig.extrinsics[v].astype(np.float64)
      calib[ch] = token(name, "calibrated_sensor", ch)
      tables["calibrated_sensor"].append({
          "token": calib[ch], "sensor_token": token("sensor", ch),
          "translation": e[:3, 3].tolist(), "rotation": quat_from_matrix(e[:3, :3]),
          "camera_intrinsic": the_rig.intrinsics[v].astype(np.float64).tolist()})

    key_idx = list(range(0, num_frames, KEYFRAME_EVERY))
    sample_tok = [token(name, "sample", k) for k in range(len(key_idx))]
    for k, i in enumerate(key_idx):
      tables["sample"].append({"token": sample_tok[k], "timestamp": utimes[i],
                               "prev": sample_tok[k - 1] if k else "",
                               "next": sample_tok[k + 1] if k + 1 < len(key_idx) else "",
                               "scene_token": token(name, "scene")})
    tables["scene"].append({"token": token(name, "scene"), "log_token": log_tok,
                            "nbr_samples": len(key_idx), "first_sample_token": sample_tok[0],
                            "last_sample_token": sample_tok[-1], "name": name,
                            "description": f"synthetic {scene.domain.name}, seed {scene.seed}"})

    for v, ch in enumerate(the_rig.channels):
      sd_tok = [token(name, "sample_data", ch, i) for i in range(num_frames)]
      for i in range(num_frames):
        key = i % KEYFRAME_EVERY == 0
        folder = "samples" if key else "sweeps"
        fname = f"{folder}/{ch}/{log_name}__{ch}__{utimes[i]}.{image_format}"
        image = Image.fromarray(rec["frames"][i, v])
        if image_format == "jpg":
          image.save(os.path.join(out_dir, fname), quality=jpeg_quality)
        else:
          image.save(os.path.join(out_dir, fname))
        ep_tok = token(name, "ego_pose", ch, i)
        tables["ego_pose"].append({"token": ep_tok, "timestamp": utimes[i],
                                   "rotation": quat_from_matrix(poses[i][:3, :3]),
                                   "translation": poses[i][:3, 3].tolist()})
        nearest = min(int(np.floor(i / KEYFRAME_EVERY + 0.5)), len(key_idx) - 1)
        tables["sample_data"].append({
            "token": sd_tok[i], "sample_token": sample_tok[nearest], "ego_pose_token": ep_tok,
            "calibrated_sensor_token": calib[ch], "timestamp": utimes[i],
            "fileformat": image_format, "is_key_frame": key, "height": h, "width": w,
            "filename": fname, "prev": sd_tok[i - 1] if i else "",
            "next": sd_tok[i + 1] if i + 1 < num_frames else ""})

    # Annotations on key frames.
    ann_by_track = {}
    cls_names = layout_render.CLASS_NAMES
    for k, i in enumerate(key_idx):
      boxes = render.actor_boxes(scene, i * dt)
      if offsets[si].any():
        boxes[:, :2] += offsets[si]
      ego_xy = poses[i][:2, 3]
      cam_from_world = np.linalg.inv(poses[i][None] @ the_rig.extrinsics.astype(np.float64))
      for a, box in zip(scene.actors, boxes):
        if box[9] < 0.5 or np.hypot(*(box[:2] - ego_xy)) > ANNOTATION_RANGE:
          continue
        frac, pixels = _visibility(a.track_id, box, cam_from_world,
                                   the_rig.intrinsics.astype(np.float64), rec["hit_id"][i])
        is_ped = cls_names[a.cls] == "pedestrian"
        attr = ("pedestrian.moving" if a.moving else "pedestrian.standing") if is_ped else \
            ("vehicle.moving" if a.moving else "vehicle.parked")
        ann_by_track.setdefault(a.track_id, []).append({
            "token": token(name, "sample_annotation", a.track_id, k),
            "sample_token": sample_tok[k], "instance_token": token(name, "instance", a.track_id),
            "visibility_token": _visibility_token(frac),
            "attribute_tokens": [token("attribute", attr)],
            "translation": box[:3].tolist(), "size": [box[4], box[3], box[5]],
            "rotation": quat_yaw(box[6]), "num_lidar_pts": pixels, "num_radar_pts": 0})
    for a in scene.actors:
      anns = ann_by_track.get(a.track_id)
      if not anns:
        continue
      for j, ann in enumerate(anns):
        ann["prev"] = anns[j - 1]["token"] if j else ""
        ann["next"] = anns[j + 1]["token"] if j + 1 < len(anns) else ""
        tables["sample_annotation"].append(ann)
      cat = layout_render.CLASS_TO_NUSCENES_CATEGORY[cls_names[a.cls]]
      tables["instance"].append({"token": token(name, "instance", a.track_id),
                                 "category_token": token("category", cat),
                                 "nbr_annotations": len(anns),
                                 "first_annotation_token": anns[0]["token"],
                                 "last_annotation_token": anns[-1]["token"]})
    _write_can_bus(os.path.join(out_dir, "can_bus", name), scene, rec["actions"], utimes,
                   offset=offsets[si])

  for location, logs in map_logs.items():
    tok = token("map", location)
    Image.new("L", (1, 1)).save(os.path.join(out_dir, "maps", f"{tok}.png"))
    tables["map"].append({"token": tok, "log_tokens": logs, "category": "semantic_prior",
                          "filename": f"maps/{tok}.png"})
  for table, rows in tables.items():
    _write_json(os.path.join(meta, f"{table}.json"), rows)
  summary = {"out_dir": str(out_dir), "version": version,
             **{f"num_{k}": len(v) for k, v in tables.items()}}
  if map_expansion:
    summary.update(_write_map_expansions(out_dir, scenes, offsets, verbose))
  if verbose:
    print(f"[export] wrote {summary}", flush=True)
  return summary


def _write_can_bus(prefix, scene, actions, utimes, offset=(0.0, 0.0)):
  """pose (50 Hz), steeranglefeedback (100 Hz), vehicle_monitor (2 Hz) from the exact ego model."""
  actions = np.asarray(actions, np.float64)
  speed, steer, accel, yaw_rate = actions.T
  dt = 1.0 / CAMERA_HZ
  states = ego_lib.integrate(scene.ego_start, speed, steer, dt)
  if np.any(offset):
    states[:, :2] += np.asarray(offset, np.float64)  # the scene's place in the global frame
  t_end = (len(utimes) - 1) * dt

  def at(time):
    i = min(int(np.floor(time / dt + 1e-9)), len(states) - 1)
    return i, ego_lib.advance(states[i], speed[i], steer[i], time - i * dt)

  pose_rows, steer_rows, monitor_rows = [], [], []
  for time in np.arange(0.0, t_end + 1e-9, 1.0 / POSE_HZ):
    i, (x, y, yaw) = at(time)
    pose_rows.append({"utime": utimes[0] + int(round(time * 1e6)), "pos": [x, y, 0.0],
                      "orientation": quat_yaw(yaw), "vel": [speed[i], 0.0, 0.0],
                      "accel": [accel[i], speed[i] * yaw_rate[i], 0.0],
                      "rotation_rate": [0.0, 0.0, yaw_rate[i]]})
  for time in np.arange(0.0, t_end + 1e-9, 1.0 / STEER_HZ):
    i, _ = at(time)
    steer_rows.append({"utime": utimes[0] + int(round(time * 1e6)),
                       "value": STEERING_RATIO * steer[i]})
  for time in np.arange(0.0, t_end + 1e-9, 0.5):
    i, _ = at(time)
    monitor_rows.append({"utime": utimes[0] + int(round(time * 1e6)),
                         "vehicle_speed": speed[i] * 3.6,
                         "steering": float(np.rad2deg(STEERING_RATIO * steer[i])),
                         "yaw_rate": float(np.rad2deg(yaw_rate[i]))})
  _write_json(prefix + "_pose.json", pose_rows)
  _write_json(prefix + "_steeranglefeedback.json", steer_rows)
  _write_json(prefix + "_vehicle_monitor.json", monitor_rows)


# --------------------------------------------------------------------------------------------
# vector maps (module docstring: "Global frame and vector maps")


def _scene_offsets(scenes, spacing) -> list:
  """Global-from-world shift [2] (metres) of each scene: (j * spacing, 0) for the j-th scene of
  its location."""
  if not (np.isfinite(spacing) and spacing >= 0):
    raise ValueError(f"scene_spacing must be a finite number >= 0, got {spacing!r}")
  seen, out = {}, []
  for scene in scenes:
    j = seen.get(scene.domain.location, 0)
    seen[scene.domain.location] = j + 1
    out.append(np.array([j * float(spacing), 0.0]))
  return out


def _maps_overlap(items) -> bool:
  """Whether the map lines of two of `items` (name, scene, offset) come within
  nuscenes_map.RADIUS of each other (bounding boxes in the global frame)."""
  boxes = []
  for _, scene, offset in items:
    if scene.map_lines:
      xy = np.concatenate([np.asarray(p, np.float64)[:, :2] for _, p in scene.map_lines]) + offset
      boxes.append((xy.min(0), xy.max(0)))
  for a, (lo_a, hi_a) in enumerate(boxes):
    for lo_b, hi_b in boxes[:a]:
      gap = np.maximum(np.maximum(lo_a - hi_b, lo_b - hi_a), 0.0)
      if np.hypot(*gap) < nuscenes_map.RADIUS:
        return True
  return False


def _on_polyline(points, poly, tol=1e-6) -> bool:
  """Whether every point [P,2] lies within `tol` metres of the polyline `poly` [M,2]."""
  a, ab = poly[:-1], np.diff(poly, axis=0)
  t = np.einsum("pmk,mk->pm", points[:, None] - a[None], ab) / np.maximum((ab * ab).sum(1), 1e-12)
  foot = a[None] + np.clip(t, 0.0, 1.0)[..., None] * ab[None]
  return bool(np.linalg.norm(foot - points[:, None], axis=-1).min(1).max() < tol)


def expansion_json(location: str, items) -> dict:
  """The map-expansion JSON object of the scenes at one location (module docstring).

  items: (scene name, world.SceneSpec, global-from-world shift [2]) per scene.
  """
  layers = {name: [] for name in nuscenes_map.LIST_LAYERS}
  layers.update({name: {} for name in nuscenes_map.DICT_LAYERS})
  ped, lane, edge = (layout_render.MAP_LINE_CLASSES.index(c)
                     for c in ("ped_crossing", "lane_divider", "road_edge"))
  for name, scene, offset in items:
    area = []
    for li, (cls, pts) in enumerate(scene.map_lines):
      key = (location, name, "map_line", li)
      world_xy = np.asarray(pts, np.float64)[:, :2]
      closed = cls == ped and len(world_xy) > 3 and np.array_equal(world_xy[0], world_xy[-1])
      xy = (world_xy[:-1] if closed else world_xy) + offset
      nodes = [token(*key, "node", k) for k in range(len(xy))]
      layers["node"] += [{"token": t, "x": float(x), "y": float(y)} for t, (x, y) in zip(nodes, xy)]
      if cls == lane:
        line = token(*key, "line")
        layers["line"].append({"token": line, "node_tokens": nodes})
        if any(_on_polyline(world_xy, road.points) for road in scene.roads):
          layers["road_divider"].append({"token": token(*key, "road_divider"), "line_token": line,
                                         "road_segment_token": ""})
        else:
          layers["lane_divider"].append({
              "token": token(*key, "lane_divider"), "line_token": line,
              "lane_divider_segments": [{"node_token": t, "segment_type": LANE_SEGMENT_TYPE}
                                        for t in nodes]})
        continue
      if cls not in (ped, edge):
        raise ValueError(f"scene {name}: map line {li} has class {cls}, not an index into "
                         f"{layout_render.MAP_LINE_CLASSES}")
      polygon = token(*key, "polygon")
      ring = nodes if closed else nodes + nodes[-2:0:-1]  # an open line: out and back
      layers["polygon"].append({"token": polygon, "exterior_node_tokens": ring, "holes": []})
      if cls == ped:
        layers["ped_crossing"].append({"token": token(*key, "ped_crossing"),
                                       "polygon_token": polygon, "road_segment_token": ""})
      else:
        area.append(polygon)
    if area:
      layers["drivable_area"].append({"token": token(location, name, "drivable_area"),
                                      "polygon_tokens": area})
  xy = np.array([[n["x"], n["y"]] for n in layers["node"]]).reshape(-1, 2)
  canvas = np.ceil(np.maximum(xy.max(0), 0.0)) if len(xy) else np.zeros(2)
  return {"version": MAP_VERSION, "canvas_edge": canvas.tolist(), **layers}


def _write_map_expansions(out_dir, scenes, offsets, verbose) -> dict:
  """Writes OUT/maps/expansion/<location>.json per location; the summary's map keys."""
  by_location = {}
  for si, scene in enumerate(scenes):
    by_location.setdefault(scene.domain.location, []).append(
        (f"scene-{si + 1:04d}", scene, offsets[si]))
  written, skipped = [], []
  for location, items in by_location.items():
    if _maps_overlap(items):
      skipped.append(location)
      if verbose:
        print(f"[export] no map expansion for {location}: its {len(items)} scenes overlap in "
              "the global frame (set scene_spacing)", flush=True)
      continue
    path = nuscenes_map.expansion_path(str(out_dir), location)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_json(path, expansion_json(location, items))
    written.append(os.path.relpath(path, str(out_dir)))
  return {"map_expansion": written, "map_expansion_skipped": skipped}
