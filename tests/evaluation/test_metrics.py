"""Protocol handling and the streamed FVD/FID/KID pipeline, with a tiny feature network."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from tests.evaluation import videos
from wm_jax.evaluation import frechet, metrics, protocols


def _tiny_video_features():
  """A fixed random conv net: videos uint8 [N,T,H,W,3] -> [N,32] (per-frame 2-D convs, then the
  time mean and time std of the pooled channels, so both appearance and motion count)."""
  rng = np.random.default_rng(0)
  k1 = jnp.asarray(rng.normal(0, 0.3, (3, 3, 3, 8)), jnp.float32)
  k2 = jnp.asarray(rng.normal(0, 0.2, (3, 3, 8, 16)), jnp.float32)
  dn = ("NHWC", "HWIO", "NHWC")

  @jax.jit
  def f(v):
    n, t = v.shape[:2]
    x = v.reshape((n * t,) + v.shape[2:]).astype(jnp.float32) / 127.5 - 1.0
    x = jax.nn.relu(jax.lax.conv_general_dilated(x, k1, (2, 2), "SAME", dimension_numbers=dn))
    x = jax.nn.relu(jax.lax.conv_general_dilated(x, k2, (2, 2), "SAME", dimension_numbers=dn))
    x = x.mean((1, 2)).reshape(n, t, 16)
    return jnp.concatenate([x.mean(1), x.std(1)], -1)
  return lambda v: np.asarray(f(np.asarray(v)))


_VIDEO_FEATURES = _tiny_video_features()   # built once: one compile per input shape


def _tiny_image_features():
  return lambda im: _VIDEO_FEATURES(np.asarray(im)[:, None])[:, :16]   # 1-frame clip, means only


@pytest.fixture(scope="module")
def clips():
  # 24 translating-texture clips, [B,T,V=1,H,W,3]
  return np.stack([videos.translating(s, 10, 32, dx=(s % 5) - 2, dy=(s % 3) - 1)
                   for s in range(24)])[:, :, None]


def _proto(**kw):
  base = protocols.get("synthetic")
  single = dict(num_views=1, views_as_videos=False, clip_frames=10, rollout_steps=1,
                kid_subsets=5, kid_subset_size=20)
  return dataclasses.replace(base, **{**single, **kw})


def _score(protocol, gen, ref, feats):
  acc = metrics.VideoMetrics(protocol, fvd_features=feats, fid_features=_tiny_image_features(),
                             fvd_dim=32, fid_dim=16)
  for i in range(0, len(gen), 8):   # streamed in batches
    acc.update(gen[i:i + 8], ref[i:i + 8])
  return acc.result()


def test_fvd_zero_on_itself_and_grows_with_noise_and_blur(clips):
  feats = _VIDEO_FEATURES
  p = _proto()
  same = _score(p, clips, clips, feats)
  assert abs(same["fvd"]) < 1e-9 and abs(same["fid"]) < 1e-9
  assert same["num_videos"] == 24 and same["frames_per_video"] == 9   # reference frame dropped
  rng = np.random.default_rng(1)
  noisy = [np.clip(clips + rng.normal(0, s, clips.shape), 0, 255).astype(np.uint8)
           for s in (4, 16, 48)]
  fvd_noise = [_score(p, n, clips, feats)["fvd"] for n in noisy]
  blurred = [scipy.ndimage.uniform_filter(clips.astype(np.float32), (1, 1, 1, s, s, 1)).astype(np.uint8)
             for s in (2, 3, 5)]
  fvd_blur = [_score(p, b, clips, feats)["fvd"] for b in blurred]
  assert 1e-6 < fvd_noise[0] < fvd_noise[1] < fvd_noise[2], fvd_noise
  assert 1e-6 < fvd_blur[0] < fvd_blur[1] < fvd_blur[2], fvd_blur


def test_protocol_settings_reported_and_complete():
  for name, p in protocols.PROTOCOLS.items():
    s = p.settings()
    assert s["name"] == name
    assert {f.name for f in dataclasses.fields(p)} <= set(s)
    if p.kind == "fidelity":
      assert s["metric_frames"] >= 9   # every FVD protocol's clips are long enough for I3D
  v = protocols.get("vista_nuscenes")
  assert (v.clip_frames, v.reference_frames, v.num_clips, v.metric_frames) == (25, 1, 5369, 25)
  w = protocols.get("waymo_zero_shot")
  assert w.num_clips * w.metric_frames == 15000 and not w.use_actions  # the paper's FID frames
  d = protocols.get("drivewm_mview")
  assert d.num_views * d.num_clips == 900 and d.fid_frames == 10000 and d.views_as_videos
  o = protocols.get("opendwm_nuscenes")
  assert (o.reference_frames, o.fvd_frames, o.views_as_videos) == (3, 16, True)
  with pytest.raises(ValueError, match="unknown protocol 'nope'"):
    protocols.get("nope")
  with pytest.raises(ValueError, match="fvd_frames 4"):
    dataclasses.replace(v, fvd_frames=4)


def test_protocol_model_inputs():
  """World-model protocols pass the model the reference latents, camera, text and (when they use
  actions) the actions; never frames, depth, ego poses, or layout and boxes unless future layout
  is allowed."""
  batch = {k: np.zeros(1) for k in ("frames", "latents", "depth", "ego_pose", "actions",
                                    "trajectory", "goal_point", "command", "intrinsics",
                                    "extrinsics", "fps", "view_adjacency", "boxes", "layout",
                                    "text_embeddings", "pooled_text")}
  camera_text = {"latents", "intrinsics", "extrinsics", "fps", "view_adjacency",
                 "text_embeddings", "pooled_text"}
  actions = {"actions", "trajectory", "goal_point", "command"}
  for name in ("synthetic", "controllability"):
    p = protocols.get(name)
    assert not p.future_layout
    assert set(protocols.model_batch(p, batch)) == camera_text | actions
  for name in ("vista_nuscenes", "drivewm_mview", "long_horizon"):
    p = protocols.get(name)
    assert not p.future_layout and not p.use_actions
    assert set(protocols.model_batch(p, batch)) == camera_text
    assert p.settings()["model_inputs"] == sorted(camera_text)
  opendwm = protocols.get("opendwm_nuscenes")
  assert set(protocols.model_batch(opendwm, batch)) == camera_text | {"layout", "boxes"}


def test_protocol_videos_cut_and_views():
  x = np.zeros((2, 5, 3, 4, 6, 3), np.uint8)
  x[:, :, 1] = 1   # mark view 1
  x[:, 0] = 9      # mark the reference frame
  p = dataclasses.replace(protocols.get("opendwm_nuscenes"), num_views=3, reference_frames=1,
                          clip_frames=5, fvd_frames=None)
  v = metrics.protocol_videos(p, x)
  assert v.shape == (6, 4, 4, 6, 3) and v.max() == 1   # reference frame gone, 2 clips x 3 views
  assert np.all(v[1] == 1) and np.all(v[0] == 0) and np.all(v[3] == 0)
  tiled = metrics.protocol_videos(dataclasses.replace(p, views_as_videos=False), x)
  assert tiled.shape == (2, 4, 4, 18, 3) and np.all(tiled[:, :, :, 6:12] == 1)
  with pytest.raises(ValueError, match="expects 3 views, got 1"):
    metrics.protocol_videos(p, x[:, :, :1])


def test_long_horizon_curve_follows_degradation(clips):
  """FVD per window rises when the generated rollout degrades with time."""
  long = np.concatenate([clips] * 3, axis=1)[:, :28]              # 28 frames
  p = _proto(clip_frames=28, window_frames=9)                    # 27 frames after ref -> 3 windows
  rng = np.random.default_rng(2)
  sigma = np.repeat([0.0, 12.0, 40.0], 9)[None, :, None, None, None, None]
  gen = long.astype(np.float32)
  gen[:, 1:] += rng.normal(size=gen[:, 1:].shape) * sigma
  gen = np.clip(gen, 0, 255).astype(np.uint8)
  r = _score(p, gen, long, _VIDEO_FEATURES)
  assert r["windows"] == [[0, 9], [9, 18], [18, 27]]
  c = r["fvd_curve"]
  assert abs(c[0]) < 1e-6 < c[1] < c[2], c
  assert len(r["fid_curve"]) == 3 and r["fid_curve"][2] > r["fid_curve"][1]


def test_random_frame_fid_uses_the_requested_count(clips):
  p = _proto(fid_frames=50)
  r = _score(p, clips, clips, None)
  assert r["fid_frames"] == 50 and "fvd" not in r and r["computed"] == ["fid", "kid"]


def test_reservoir_is_uniform():
  counts = np.zeros(20)
  for seed in range(300):
    res = metrics.Reservoir(5, seed)
    res.add(np.arange(20)[:, None])
    counts[res.array()[:, 0]] += 1
  assert counts.sum() == 1500 and counts.min() > 40 and counts.max() < 110   # ~75 each


def test_merged_reservoirs_sample_the_union_uniformly():
  # streams of 1000 zeros and 3000 ones, reservoirs of 400: a quarter of the merge is zeros
  k = 400
  parts = []
  for value, n, seed in ((0.0, 1000, 1), (1.0, 3000, 2)):
    res = metrics.Reservoir(k, seed)
    res.add(np.full((n, 2), value))
    parts.append((res.n, res.array()))
  fractions = [metrics.merge_reservoirs(parts, k, seed).mean() for seed in range(20)]
  assert all(len(metrics.merge_reservoirs(parts, k, s)) == k for s in range(3))
  assert abs(np.mean(fractions) - 0.75) < 0.01, np.mean(fractions)  # std of the mean ~0.005
  # fewer rows in all than k: every row is kept; an empty stream takes part
  small = [(3, np.arange(6.).reshape(3, 2)), (0, np.zeros((0, 2))), (2, np.ones((2, 2)))]
  merged = metrics.merge_reservoirs(small, k, 0)
  assert sorted(merged[:, 0].tolist()) == [0.0, 1.0, 1.0, 2.0, 4.0]
  with pytest.raises(ValueError, match="reservoir 0 holds 3 rows for a stream of 5"):
    metrics.merge_reservoirs([(5, np.zeros((3, 2)))], k, 0)


def test_reservoirs_merge_across_processes(monkeypatch):
  """Two processes' reservoirs (process_allgather simulated) give one sample of both streams."""
  import jax
  from jax.experimental import multihost_utils
  mine, theirs = metrics.Reservoir(50, 7), metrics.Reservoir(50, 7)
  mine.add(np.zeros((30, 3)))
  theirs.add(np.ones((90, 3)))
  other = {2: np.array([theirs.n, len(theirs.rows)]), 50: np.asarray(theirs.array(), np.float32)}
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: np.stack([x, other[len(x)]]))
  merged = mine.allgather_array(3)
  assert merged.shape == (50, 3)
  assert 0 < (merged[:, 0] == 0).sum() < 50 and set(np.unique(merged)) == {0.0, 1.0}
