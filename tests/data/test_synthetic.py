"""Acceptance tests of the procedural world (wm_jax/data/synthetic) and the layout renderer."""

import numpy as np
import pytest

from wm_jax.data import layout_render, schema
from wm_jax.data.synthetic import ego, render, rig as rig_lib, world

SIZE = (48, 96)  # one image size for every render in this file: one compile per rig


@pytest.fixture(scope="module")
def boston():
  return world.make_scene(3, "boston", length=250.0)


@pytest.fixture(scope="module")
def front_clip(boston):
  return render.render_clip(boston, "front", num_frames=6, fps=12.0, image_size=SIZE,
                            return_hit_id=True)


def test_record_follows_schema_both_rigs(boston, front_clip):
  rec = dict(front_clip)
  rec.pop("hit_id")
  sizes = schema.validate(rec, source="synthetic")
  assert (sizes["T"], sizes["V"], sizes["H"], sizes["W"]) == (6, 1, *SIZE)
  six = render.render_clip(boston, "nuscenes6", num_frames=2, image_size=SIZE)
  sizes = schema.validate(six, source="synthetic")
  assert sizes["V"] == 6
  adj = six["view_adjacency"]
  # nuScenes ring: each camera overlaps itself and its two neighbours only.
  assert np.array_equal(adj, adj.T) and adj.sum(1).tolist() == [3] * 6
  for v in range(6):
    assert adj[v, (v + 1) % 6] and adj[v, (v - 1) % 6]
  assert six["layout"][..., 3:].any() and six["layout"][..., :3].any()


def test_deterministic_from_seed(front_clip):
  again = render.render_clip(world.make_scene(3, "boston", length=250.0), "front", num_frames=6,
                             fps=12.0, image_size=SIZE, return_hit_id=True)
  for key, value in front_clip.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(again[key]), err_msg=key)
  other = render.render_clip(world.make_scene(4, "boston", length=250.0), "front", num_frames=6,
                             fps=12.0, image_size=SIZE)
  diff = np.abs(other["frames"].astype(int) - front_clip["frames"].astype(int)).max(-1)
  assert (diff > 8).mean() > 0.05  # another layout of buildings and traffic, not noise
  assert not np.array_equal(other["boxes"], front_clip["boxes"])
  assert not np.allclose(other["ego_pose"], front_clip["ego_pose"])


def _project(point_ego, k, e):
  cam = np.linalg.inv(e.astype(np.float64)) @ np.append(point_ego, 1.0)
  uvw = k.astype(np.float64) @ cam[:3]
  return uvw[:2] / uvw[2], cam[2]


def test_projected_boxes_land_on_their_vehicles():
  """Box centres projected with the record's own calibration hit that vehicle's pixels, at the
  right depth; every pixel of a vehicle lies inside its projected box."""
  scene = world.make_scene(11, "boston", length=250.0)
  rec = render.render_clip(scene, "front", num_frames=6, image_size=SIZE, return_hit_id=True)
  k, e = rec["intrinsics"][0, 0], rec["extrinsics"][0, 0]
  h, w = SIZE
  centre_hits = silhouettes = 0
  for t in range(6):
    for box in rec["boxes"][t]:
      if box[9] < 0.5:
        continue
      track = int(box[8])
      corners = layout_render.box_corners(box[None])[0]
      cams = [_project(c, k, e) for c in corners]
      (u, v), z = _project(box[:3], k, e)
      if z > 1.0 and 0 <= u < w and 0 <= v < h:
        iu, iv = int(u), int(v)
        seen, depth = rec["hit_id"][t, 0, iv, iu], rec["depth"][t, 0, iv, iu]
        half_diag = np.linalg.norm(box[3:6]) / 2
        if seen == track:
          assert abs(depth - z) <= half_diag, (t, track, depth, z)
          centre_hits += 1
        else:  # something nearer hides the centre
          assert depth < z, (t, track, seen, depth, z)
      mask = rec["hit_id"][t, 0] == track
      if mask.any() and all(c[1] > 0.5 for c in cams):
        uv = np.array([c[0] for c in cams])
        vs, us = np.nonzero(mask)
        assert us.min() + 0.5 >= uv[:, 0].min() - 1 and us.max() + 0.5 <= uv[:, 0].max() + 1
        assert vs.min() + 0.5 >= uv[:, 1].min() - 1 and vs.max() + 0.5 <= uv[:, 1].max() + 1
        silhouettes += 1
  assert centre_hits >= 3 and silhouettes >= 3, (centre_hits, silhouettes)


def _reference_integration(start, speed, steering, dt, substeps=400):
  """Independent integration of the bicycle ODE (RK4-free small-step Euler, midpoint heading)."""
  x, y, yaw = start
  out = [(x, y, yaw)]
  h = dt / substeps
  for v, delta in zip(speed[:-1], steering[:-1]):
    rate = v * np.tan(delta) / ego.WHEELBASE
    for _ in range(substeps):
      mid = yaw + 0.5 * h * rate
      x, y, yaw = x + h * v * np.cos(mid), y + h * v * np.sin(mid), yaw + h * rate
    out.append((x, y, yaw))
  return np.array(out)


@pytest.mark.parametrize("given_actions", [False, True])
def test_ego_trajectory_integrates_actions(boston, front_clip, given_actions):
  fps = 12.0
  if given_actions:
    t = np.arange(8)
    acts = np.stack([6.0 + 0.5 * t, 0.25 * np.sin(t / 2.0)], -1)
    rec = render.render_clip(boston, "front", num_frames=8, fps=fps, image_size=SIZE,
                             actions=acts, layout=False)
    np.testing.assert_allclose(rec["actions"][:, :2], acts, rtol=1e-6)
  else:
    rec = front_clip
  a = rec["actions"].astype(np.float64)
  speed, steering = a[:, 0], a[:, 1]
  np.testing.assert_allclose(a[:, 3], speed * np.tan(steering) / ego.WHEELBASE, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(a[:-1, 2], np.diff(speed) * fps, rtol=1e-4, atol=1e-4)
  pose = rec["ego_pose"].astype(np.float64)
  start = (pose[0, 0, 3], pose[0, 1, 3], np.arctan2(pose[0, 1, 0], pose[0, 0, 0]))
  ref = _reference_integration(start, speed, steering, 1.0 / fps)
  np.testing.assert_allclose(pose[:, 0, 3], ref[:, 0], atol=2e-3)
  np.testing.assert_allclose(pose[:, 1, 3], ref[:, 1], atol=2e-3)
  yaw = np.arctan2(pose[:, 1, 0], pose[:, 0, 0])
  np.testing.assert_allclose(np.unwrap(yaw), np.unwrap(ref[:, 2]), atol=1e-4)
  assert np.all(pose[:, 2, 3] == 0) and np.allclose(pose[:, 2, 2], 1.0)
  if given_actions:
    assert abs(yaw[-1] - yaw[0]) > 0.05  # the steering really turned the car


def _stats(domain, seed):
  """(mean saturation, blue minus red in the top quarter) of a short clip."""
  scene = world.make_scene(seed, domain, length=200.0)
  f = render.render_clip(scene, "front", num_frames=2, image_size=SIZE,
                         layout=False)["frames"].astype(np.float64) / 255.0
  top = f[:, :, : SIZE[0] // 4].mean(axis=(0, 1, 2, 3))
  return np.array([(f.max(-1) - f.min(-1)).mean(), top[2] - top[0]])


def test_domains_differ_in_image_statistics():
  """Each statistic separates the domains for every pair of seeds, with a margin."""
  b = np.stack([_stats("boston", s) for s in (0, 1, 2)])
  s = np.stack([_stats("singapore", s) for s in (0, 1, 2)])
  margin = s.min(0) - b.max(0)  # singapore: more saturated colours, a bluer sky
  assert np.all(margin > [0.01, 0.04]), (b, s)


def test_domains_differ_in_layout_statistics():
  b = world.make_scene(0, "boston")
  s = world.make_scene(0, "singapore")
  assert b.roads[0].half_width != s.roads[0].half_width
  count = lambda sc: int(np.sum(sc.static[:, 10] == world.MAT_BUILDING))
  height = lambda sc: float(np.mean(sc.static[sc.static[:, 10] == world.MAT_BUILDING, 5]))
  assert count(b) > 1.3 * count(s) and height(s) > 1.5 * height(b)


def test_layout_render_draws_boxes_and_lines():
  rig = rig_lib.make_rig("nuscenes6", (64, 112))
  box = np.array([[12.0, 0.0, 0.8, 4.0, 1.8, 1.6, 0.0, 0, 7, 1]])  # a car ahead
  lines = [(layout_render.MAP_LINE_CLASSES.index("lane_divider"),
            np.array([[3.0, -1.8, 0.0], [40.0, -1.8, 0.0]]))]
  lay = layout_render.render_layout(box, lines, rig.intrinsics, rig.extrinsics, (64, 112))
  assert lay.shape == (6, 64, 112, 6) and lay.dtype == np.uint8
  front, back = lay[0], lay[3]
  # Car edges in blue (OpenDWM colour) inside the projected box, only in the front camera.
  blue = np.argwhere(front[..., 2] == 255)
  corners = layout_render.box_corners(box)[0]
  uv = np.array([_project(c, rig.intrinsics[0], rig.extrinsics[0])[0] for c in corners])
  assert len(blue) > 20
  assert blue[:, 1].min() >= np.floor(uv[:, 0].min()) - 1 and blue[:, 1].max() <= uv[:, 0].max() + 1
  assert not front[..., 0].any() and not back[..., :3].any()
  assert front[..., 4].any() and not front[..., 3].any() and not front[..., 5].any()
  # Invalid boxes and far boxes are skipped.
  off = box.copy()
  off[0, 9] = 0
  assert not layout_render.render_layout(off, None, rig.intrinsics, rig.extrinsics,
                                         (64, 112))[..., :3].any()


def test_category_mapping():
  assert layout_render.class_index("vehicle.bus.rigid") == layout_render.CLASS_NAMES.index("bus")
  assert layout_render.class_index("human.pedestrian.adult") == 5
  assert layout_render.class_index("animal") == -1
  for name, cat in layout_render.CLASS_TO_NUSCENES_CATEGORY.items():
    assert layout_render.CLASS_NAMES[layout_render.class_index(cat)] == name


def _scale_intrinsics(k, from_size, to_size):
  """Intrinsics [...,3,3] for an image resized from `from_size` to `to_size` (both (H, W)).

  Rows 0 and 1 scale by W and H ratios separately (the pixel-centre convention of rig.py).
  """
  sy = to_size[0] / from_size[0]
  sx = to_size[1] / from_size[1]
  k = np.array(k, dtype=np.float32, copy=True)
  k[..., 0, :] *= sx
  k[..., 1, :] *= sy
  return k


def test_rig_scaling_keeps_field_of_view():
  small, big = rig_lib.make_rig("nuscenes6", (32, 64)), rig_lib.make_rig("nuscenes6", (256, 512))
  np.testing.assert_allclose(small.intrinsics[:, 0, 0] * 8, big.intrinsics[:, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(small.extrinsics, big.extrinsics)
  r = small.extrinsics[:, :3, :3]
  np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape),
                             atol=1e-6)
  # CAM_FRONT looks along ego +x with image-down = ego -z (OpenCV camera axes).
  np.testing.assert_allclose(r[0][:, 2], [1, 0, 0], atol=1e-6)
  np.testing.assert_allclose(r[0][:, 1], [0, 0, -1], atol=1e-6)
  k = _scale_intrinsics(big.intrinsics[0], (256, 512), (128, 512))
  assert k[1, 1] == big.intrinsics[0, 1, 1] / 2 and k[0, 0] == big.intrinsics[0, 0, 0]


def test_supersampling_averages_the_rays_of_a_finer_image(boston):
  """supersample=2 at (H, W) is the 2x2 pixel mean of the (2H, 2W) render (the same rays), keeps
  the (H, W) intrinsics, and smooths the frames (less energy between neighbouring pixels)."""
  half = (SIZE[0] // 2, SIZE[1] // 2)
  fine = render.render_clip(boston, "front", num_frames=2, image_size=SIZE, layout=False,
                            return_hit_id=True)
  ss = render.render_clip(boston, "front", num_frames=2, image_size=half, layout=False,
                          supersample=2, return_hit_id=True)
  plain = render.render_clip(boston, "front", num_frames=2, image_size=half, layout=False)
  f = fine["frames"].astype(np.float32).reshape(2, 1, half[0], 2, half[1], 2, 3).mean((3, 5))
  np.testing.assert_array_equal(ss["frames"], np.round(f).astype(np.uint8))
  assert ss["frames"].shape == plain["frames"].shape and ss["hit_id"].shape == (2, 1) + half
  np.testing.assert_array_equal(ss["hit_id"], fine["hit_id"][..., ::2, ::2])
  np.testing.assert_array_equal(ss["intrinsics"], plain["intrinsics"])
  np.testing.assert_array_equal(ss["actions"], plain["actions"])
  jump = lambda x: np.abs(np.diff(x["frames"].astype(np.float32), axis=-2)).mean()
  assert jump(ss) < jump(plain)
  with pytest.raises(ValueError, match="supersample"):
    render.render_clip(boston, "front", num_frames=1, image_size=half, supersample=0)


def test_bad_inputs_raise():
  scene = world.make_scene(0, "boston", length=150.0)
  with pytest.raises(ValueError, match="unknown rig"):
    render.render_clip(scene, "fisheye", num_frames=1, image_size=SIZE)
  with pytest.raises(ValueError, match="unknown domain"):
    world.make_scene(0, "paris")
  with pytest.raises(ValueError, match="actions must be"):
    render.render_clip(scene, "front", num_frames=3, image_size=SIZE, actions=np.zeros((2, 2)))
  with pytest.raises(ValueError, match="steering"):
    ego.make_actions([1.0, 1.0], [0.0, 2.0], 0.1)


def test_record_for_index_is_a_deterministic_source():
  a = render.record_for_index(3, seed=1, num_frames=2, image_size=SIZE, layout=False)
  b = render.record_for_index(3, seed=1, num_frames=2, image_size=SIZE, layout=False)
  c = render.record_for_index(4, seed=1, num_frames=2, image_size=SIZE, layout=False)
  np.testing.assert_array_equal(a["frames"], b["frames"])
  assert not np.array_equal(a["frames"], c["frames"])  # other index: other domain and scene
  with pytest.raises(ValueError, match="index"):
    render.record_for_index(-1)
