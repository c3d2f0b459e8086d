"""Vector maps: the exporter's map expansion -> nuscenes_map.py -> the layout's map channels.

Two boston scenes (one map file, boston-seaport.json; the second scene 1000 m along x in the
global frame) are written by wm_jax/data/synthetic/export.py with the 6-camera rig and read back
with wm_jax/data/nuscenes.py. Ground truth is the world's own scene.map_lines and what the
synthetic renderer draws from them (render.py), not the exported files.
"""

import copy
import json
import os
import re
import shutil

import numpy as np
import pytest

from wm_jax import defaults
from wm_jax.data import layout_render, nuscenes, nuscenes_map, pipeline, records
from wm_jax.data.synthetic import ego as ego_lib
from wm_jax.data.synthetic import export, render, rig as rig_lib, world

SIZE, SAMPLES, FPS, SPACING = (32, 64), 3, 12.0, 1000.0
N = (SAMPLES - 1) * export.KEYFRAME_EVERY + 1  # 13 camera frames per scene
VERSION = "v1.0-synthetic"
MAP = os.path.join("maps", "expansion", "boston-seaport.json")
PED, LANE, EDGE = (layout_render.MAP_LINE_CLASSES.index(c)
                   for c in ("ped_crossing", "lane_divider", "road_edge"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("nusc_map"))
  # Seeds with zebra crossings within sight of the ego's start.
  scenes = [world.make_scene(seed, "boston", length=200.0) for seed in (7, 9)]
  summary = export.write_nuscenes(root, scenes, rig="nuscenes6", image_size=SIZE,
                                  num_samples=SAMPLES, version=VERSION, image_format="png",
                                  verbose=False, scene_spacing=SPACING)
  return root, scenes, summary


def _world_poses(scene):
  """World-from-ego [N,4,4]: as the synthetic renderer drives (float64 speeds), and as the
  exporter wrote them before the global shift (from the record's float32 actions)."""
  speed, steering = world.autopilot(scene, N + 6, FPS)
  rendered = render.ego_poses(scene, speed, steering, FPS)[:N]
  actions = ego_lib.make_actions(speed, steering, 1.0 / FPS)[:N]
  return rendered, render.ego_poses(scene, actions[:, 0], actions[:, 1], FPS)


def _source(root, **kw):
  args = dict(version=VERSION, views=rig_lib.make_rig("nuscenes6", SIZE).channels,
              num_frames=N - 1, fps=FPS, image_size=SIZE, trajectory_points=1)
  args.update(kw)
  return nuscenes.ClipSource(root, **args)


def _read_pose(src, clip, t):
  tb = src.tables
  sd = src.scenes[src.clips[clip][0]]["timeline"][t][src.views[0]]
  return tb.finite_transform("ego_pose", tb.ref("sample_data", sd, "ego_pose_token", "ego_pose"))


def test_export_writes_the_real_layer_structure(exported):
  root, scenes, summary = exported
  assert summary["map_expansion"] == [MAP] and summary["map_expansion_skipped"] == []
  obj = json.load(open(os.path.join(root, MAP)))
  assert obj["version"] == "1.3" and len(obj["canvas_edge"]) == 2
  for name in nuscenes_map.LIST_LAYERS:
    assert isinstance(obj[name], list), name
  for name in nuscenes_map.DICT_LAYERS:
    assert obj[name] == {}, name
  tokens = {name: {r["token"]: r for r in obj[name]} for name in nuscenes_map.LIST_LAYERS}
  # Every reference resolves (the devkit looks each of them up).
  for line in obj["line"]:
    assert all(t in tokens["node"] for t in line["node_tokens"])
  for poly in obj["polygon"]:
    assert all(t in tokens["node"] for t in poly["exterior_node_tokens"]) and poly["holes"] == []
  for rec in obj["drivable_area"]:
    assert all(t in tokens["polygon"] for t in rec["polygon_tokens"])
  for rec in obj["ped_crossing"]:
    assert rec["polygon_token"] in tokens["polygon"]
  for rec in obj["road_divider"] + obj["lane_divider"]:
    assert rec["line_token"] in tokens["line"]
  for rec in obj["lane_divider"]:
    nodes = tokens["line"][rec["line_token"]]["node_tokens"]
    assert [s["node_token"] for s in rec["lane_divider_segments"]] == nodes
  # One record per map line, by class; centre lines of the roads are road dividers.
  classes = [c for s in scenes for c, _ in s.map_lines]
  assert len(obj["ped_crossing"]) == classes.count(PED)
  assert sum(len(r["polygon_tokens"]) for r in obj["drivable_area"]) == classes.count(EDGE)
  assert len(obj["road_divider"]) + len(obj["lane_divider"]) == classes.count(LANE)
  # Road dividers lie on a road's centre line (road.points: vertices 1 m apart), lane dividers
  # a lane or more off every centre line.
  roads = [r.points + [SPACING * k, 0.0] for k, s in enumerate(scenes) for r in s.roads]
  def centre_distance(rec):
    xy = np.array([[tokens["node"][t]["x"], tokens["node"][t]["y"]]
                   for t in tokens["line"][rec["line_token"]]["node_tokens"]])
    return min(world._point_polyline_distance(xy, r).max() for r in roads), \
        min(world._point_polyline_distance(xy, r).min() for r in roads)
  assert obj["road_divider"] and obj["lane_divider"]
  assert all(centre_distance(r)[0] < 0.6 for r in obj["road_divider"])
  assert all(centre_distance(r)[1] > 2.5 for r in obj["lane_divider"])
  # Nodes: the world's points in map_lines order, the second scene shifted by SPACING in x;
  # a crossing's closed outline keeps its 4 corners.
  want = [(p[:-1] if c == PED else p)[:, :2] + [SPACING * k, 0.0]
          for k, s in enumerate(scenes) for c, p in s.map_lines]
  got = np.array([[n["x"], n["y"]] for n in obj["node"]])
  np.testing.assert_array_equal(got, np.concatenate(want))
  # The poses were shifted with the map: scene-0002's ego poses are the world's + (SPACING, 0).
  src = _source(root)
  for k, scene in enumerate(scenes):
    shifted = _world_poses(scene)[1]
    shifted[:, 0, 3] += SPACING * k
    np.testing.assert_allclose([_read_pose(src, k, t) for t in range(N - 1)], shifted[:N - 1],
                               atol=1e-9)


def test_map_lines_in_the_ego_frame_are_the_worlds(exported):
  """lines_near on the read map and pose == scene.map_lines moved into the ego frame."""
  root, scenes, _ = exported
  src = _source(root)
  vmap = nuscenes_map.parse(json.load(open(os.path.join(root, MAP))), os.path.join(root, MAP))
  seen = set()
  for k, scene in enumerate(scenes):
    exported_poses = _world_poses(scene)[1]
    for t in (0, 6, N - 2):
      got = nuscenes_map.lines_near(vmap, _read_pose(src, k, t))
      want = render._map_lines_ego(scene, exported_poses[t], nuscenes_map.RADIUS)
      assert [c for c, _ in got] == [c for c, _ in want]
      for (_, g), (_, w) in zip(got, want):
        # float64 rounding of the 1000 m shift and of the pose's quaternion round trip
        np.testing.assert_allclose(g, w, atol=1e-8)
      seen |= {c for c, _ in got}
  assert seen == {PED, LANE, EDGE}


def test_layout_map_channels_equal_the_synthetic_renderers(exported):
  """The read layout's map channels are pixel for pixel what render_clip draws from
  scene.map_lines at the same frames (its poses, its rig); the box channels do not change."""
  root, scenes, _ = exported
  rig = rig_lib.make_rig("nuscenes6", SIZE)
  src, plain = _source(root), _source(root, map_lines=False)
  assert len(src) == 2
  for k, scene in enumerate(scenes):
    got, without = src[k]["layout"], plain[k]["layout"]
    rendered = _world_poses(scene)[0]
    # render_clip's map channels: render_layout of _map_lines_ego(scene, pose, 90 m) (the box
    # channels are drawn apart and do not touch them).
    want = np.stack([layout_render.render_layout(
        None, render._map_lines_ego(scene, rendered[t], 90.0), rig.intrinsics, rig.extrinsics,
        SIZE)[..., 3:] for t in range(N - 1)])
    assert (want.reshape(-1, 3) > 0).any(0).all()  # every map class is in view
    np.testing.assert_array_equal(got[..., 3:], want)
    assert not without[..., 3:].any()
    np.testing.assert_array_equal(got[..., :3], without[..., :3])


def test_without_a_map_expansion_the_map_channels_stay_empty(exported, tmp_path):
  root = str(tmp_path / "nomap")
  shutil.copytree(exported[0], root)
  shutil.rmtree(os.path.join(root, "maps", "expansion"))
  got, full = _source(root)[1], _source(exported[0])[1]
  assert full["layout"][..., 3:].any() and not got["layout"][..., 3:].any()
  np.testing.assert_array_equal(got["layout"][..., :3], full["layout"][..., :3])
  for key in ("frames", "boxes", "ego_pose", "actions"):
    np.testing.assert_array_equal(got[key], full[key])


def test_overlapping_scenes_of_a_location_get_no_map(tmp_path):
  """At scene_spacing 0 two boston scenes share the global origin: no boston map (their lines
  would mix); the singapore scene alone gets one."""
  scenes = [world.make_scene(seed, domain, length=200.0)
            for seed, domain in ((7, "boston"), (9, "boston"), (4, "singapore"))]
  summary = export.write_nuscenes(tmp_path, scenes, image_size=(16, 32), num_samples=1,
                                  image_format="png", verbose=False)
  assert summary["map_expansion_skipped"] == ["boston-seaport"]
  assert summary["map_expansion"] == [os.path.join("maps", "expansion", "singapore-onenorth.json")]
  assert sorted(os.listdir(tmp_path / "maps" / "expansion")) == ["singapore-onenorth.json"]


def _node_index(obj, token):
  return next(i for i, n in enumerate(obj["node"]) if n["token"] == token)


def _break(obj, what):
  """Breaks a copy of map `obj`; returns it and the pattern its error must match."""
  obj = copy.deepcopy(obj)
  div = obj["lane_divider"][0]
  j = next(j for j, l in enumerate(obj["line"]) if l["token"] == div["line_token"])
  where = rf"lane_divider\[0\] \(token {div['token']}\)\.line_token -> line\[{j}\]\.node_tokens"
  if what == "missing node":
    obj["line"][j]["node_tokens"][1] = "no-such-node"
    return obj, rf"{where} refers to node token 'no-such-node', which the file does not hold"
  if what == "non-finite":
    i = _node_index(obj, obj["line"][j]["node_tokens"][2])
    obj["node"][i]["x"] = float("nan")
    return obj, rf"{where}: node\[{i}\] \(token \w+\) has a non-finite coordinate \(x=nan"
  if what == "one node":
    obj["line"][j]["node_tokens"] = obj["line"][j]["node_tokens"][:1]
    return obj, rf"{where}: a line needs at least 2 nodes, got 1"
  if what == "missing layer":
    del obj["lane_divider"]
    return obj, r"has no layer 'lane_divider'"
  if what == "missing polygon":
    obj["drivable_area"][1]["polygon_tokens"][0] = "gone"
    return obj, (rf"drivable_area\[1\] \(token \w+\)\.polygon_tokens\[0\] refers to polygon "
                 r"token 'gone'")
  crossing = obj["ped_crossing"][0]
  p = next(p for p in obj["polygon"] if p["token"] == crossing["polygon_token"])
  p["exterior_node_tokens"] = p["exterior_node_tokens"][:1]
  return obj, (r"ped_crossing\[0\] \(token \w+\)\.polygon_token -> polygon\[\d+\]"
               r"\.exterior_node_tokens: a polygon ring needs at least 2 nodes, got 1")


@pytest.mark.parametrize("what", ["missing node", "non-finite", "one node", "missing layer",
                                  "missing polygon", "short ring"])
def test_malformed_map_raises_naming_file_and_record(exported, what):
  path = os.path.join(exported[0], MAP)
  obj, pattern = _break(json.load(open(path)), what)
  path_re = re.escape(path)
  with pytest.raises(ValueError, match=rf"nuScenes map {path_re}:? {pattern}"):
    nuscenes_map.parse(obj, path)


def test_malformed_map_is_a_bad_record_of_each_clip_there(exported, tmp_path):
  root = str(tmp_path / "bad")
  shutil.copytree(exported[0], root)
  path = os.path.join(root, MAP)
  obj, pattern = _break(json.load(open(path)), "missing node")
  json.dump(obj, open(path, "w"))
  with pytest.raises(ValueError, match=rf"nuScenes map {re.escape(path)}: {pattern}"):
    _source(root)[0]
  c = defaults.data()
  c.update(source="nuscenes", path=root, version=VERSION, views=("CAM_FRONT",), num_frames=4,
           fps=FPS, clip_stride=12, image_height=16, image_width=32, trajectory_points=1,
           val_fraction=0.0, shuffle=False, num_epochs=1, drop_remainder=False)
  with pytest.raises(records.BadRecordError, match=r"index=0: ValueError: nuScenes map"):
    pipeline.make_dataset(c, split="train")[0]
  c.skip_bad_records = True
  it = pipeline.make_iterator(c, batch_size=1, process_index=0, process_count=1)
  assert len(list(it)) == 0 and it.bad_records == 2
  c.update(skip_bad_records=False, map_lines=False)  # the switch: no map read, clips are fine
  assert len(list(pipeline.make_iterator(c, batch_size=1, process_index=0, process_count=1))) == 2


def test_reading_rules_on_a_hand_written_map():
  """Rings: closed, explicitly closed, out-and-back (an open line); holes; empty lines; order by
  first node; the crop to the span around the near points."""
  xs = [0.0, 10.0, 20.0, 30.0, 200.0, 400.0, 5.0, 6.0]
  obj = {name: [] for name in nuscenes_map.LIST_LAYERS}
  obj["node"] = [{"token": f"n{i}", "x": x, "y": float(i)} for i, x in enumerate(xs)]
  obj["polygon"] = [
      {"token": "slit", "exterior_node_tokens": ["n0", "n1", "n2", "n1"], "holes": []},
      {"token": "tri", "exterior_node_tokens": ["n6", "n1", "n2"],
       "holes": [{"node_tokens": []}, {"node_tokens": ["n7", "n0", "n1", "n7"]}]},
      {"token": "cross", "exterior_node_tokens": ["n1", "n0", "n6", "n7"], "holes": []}]
  obj["line"] = [{"token": "far", "node_tokens": ["n2", "n3", "n4", "n5"]},
                 {"token": "empty", "node_tokens": []}]
  obj["drivable_area"] = [{"token": "da", "polygon_tokens": ["slit", "tri"]}]
  obj["ped_crossing"] = [{"token": "pc", "polygon_token": "cross", "road_segment_token": ""}]
  obj["lane_divider"] = [{"token": "ld", "line_token": "far", "lane_divider_segments": []},
                         {"token": "ld2", "line_token": "empty", "lane_divider_segments": []}]
  vmap = nuscenes_map.parse(obj, "hand.json")
  nodes = np.array([[n["x"], n["y"]] for n in obj["node"]])
  want = [(EDGE, [0, 1, 2]),           # slit n0 n1 n2 n1: the open line n0..n2
          (PED, [1, 0, 6, 7, 1]),      # closed ring, first node n1
          (LANE, [2, 3, 4, 5]),        # first node n2
          (EDGE, [6, 1, 2, 6]),        # closed triangle, first node n6
          (EDGE, [7, 0, 1, 7])]        # its hole, explicitly closed (n7 repeated); empty skipped
  assert vmap.classes.tolist() == [c for c, _ in want] and vmap.empty_lines == 1
  assert len(vmap.lines) == len(want)
  for got, (_, idx) in zip(vmap.lines, want):
    np.testing.assert_array_equal(got, nodes[idx])
  # Ego at (100, 0) heading +y, radius 75 m: only n3 (70 m away) is near, so only the line
  # n2..n5 is kept, cut to n3 and its neighbours n2, n4.
  pose = np.eye(4)
  pose[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]
  pose[:2, 3] = [100.0, 0.0]
  near = nuscenes_map.lines_near(vmap, pose, radius=75.0)
  assert [c for c, _ in near] == [LANE]
  ego = near[0][1]
  world_xy = ego[:, :2] @ pose[:2, :2].T + pose[:2, 3]
  np.testing.assert_allclose(world_xy, nodes[[2, 3, 4]], atol=1e-12)
  np.testing.assert_allclose(ego[:, 0], [2.0, 3.0, 4.0], atol=1e-12)  # ahead = world +y
  np.testing.assert_allclose(ego[:, 2], 0.0)
