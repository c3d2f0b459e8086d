"""Action controllability: does the ego motion implied by generated videos follow the actions?

As the compact world-action model's paper tests controllability (its sec. 5.5): sweep one action
over a range with the diffusion noise fixed, measure the scene motion each generated video
implies, and report the Spearman rank correlation between the commanded action and the measured
motion, plus the fraction of scenes whose motion has the expected sign among those whose motion
exceeds a detection threshold.

Motion is measured from the pixels only (no model internals), between consecutive frames:
  * horizontal shift (steering / yaw): whole-frame phase correlation (Hann window, parabolic
    sub-pixel peak) -> dx in pixels per frame; a left yaw moves the scene right (dx > 0) under the
    pinhole model, so `expected_sign` is +1 for steering positive-left.
  * expansion (speed / forward motion): the magnification about the image center that best maps
    each frame onto the next (grid search + parabolic refinement on mean absolute difference) ->
    zoom rate (1/frame); forward motion expands the image (> 0), more with speed.

A sweep of generated clips (`command_batch`, `sweep_videos`): the reference frames keep their
recorded actions; every predicted frame gets the commanded value of the swept action and its
recorded value of the other one, and every key the model conditions on (actions, trajectory,
goal_point, command) follows from those controls by the ego's bicycle model
(data/actions.py: controls_to_record_actions), so the actions the model sees agree with each
other. The motion is that of the forward-looking camera (`front_view`) from the last reference
frame through the predicted frames.
"""

from __future__ import annotations

import pathlib
from typing import Callable, Iterable

import numpy as np
import scipy.ndimage
import scipy.stats

from wm_jax.data import actions as actions_lib
from wm_jax.evaluation import report


def _gray(frame):
  f = np.asarray(frame, np.float64)
  return f @ np.array([0.299, 0.587, 0.114]) if f.ndim == 3 else f


def phase_correlation(a, b):
  """Shift (dy, dx) in pixels that moves image `a` onto image `b` (b(x) ~ a(x - d))."""
  a, b = _gray(a), _gray(b)
  if a.shape != b.shape:
    raise ValueError(f"frames differ in shape: {a.shape} vs {b.shape}")
  win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
  fa = np.fft.fft2((a - a.mean()) * win)
  fb = np.fft.fft2((b - b.mean()) * win)
  r = fb * np.conj(fa)
  r /= np.abs(r) + 1e-12
  corr = np.fft.ifft2(r).real
  peak = np.unravel_index(np.argmax(corr), corr.shape)
  out = []
  for axis, p in enumerate(peak):
    n = corr.shape[axis]
    idx = lambda k: tuple(((p + k) % n) if ax == axis else peak[ax] for ax in range(2))
    c0, cm, cp = corr[idx(0)], corr[idx(-1)], corr[idx(1)]
    denom = cm - 2 * c0 + cp
    frac = 0.5 * (cm - cp) / denom if abs(denom) > 1e-12 else 0.0
    s = p + frac
    out.append(s - n if s > n / 2 else s)
  return np.array(out)


def horizontal_shift(video):
  """Mean horizontal image shift dx (pixels/frame) over consecutive frames of [T,H,W,(3)]."""
  v = np.asarray(video)
  if len(v) < 2:
    raise ValueError(f"need at least 2 frames, got {len(v)}")
  return float(np.mean([phase_correlation(v[t], v[t + 1])[1] for t in range(len(v) - 1)]))


def _zoomed(img, scale, center, shift=(0.0, 0.0)):
  """img magnified by `scale` about `center` and moved by `shift` (dy, dx) (bilinear):
  out(p) = img((p - c - shift) / scale + c)."""
  h, w = img.shape
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  coords = [(yy - center[0] - shift[0]) / scale + center[0],
            (xx - center[1] - shift[1]) / scale + center[1]]
  return scipy.ndimage.map_coordinates(img, coords, order=1, mode="nearest")


def zoom_between(a, b, max_rate=0.3, steps=31, margin=0.15):
  """Magnification s - 1 about the image center that best maps frame a onto frame b (grid search
  over [-0.05, max_rate] on mean absolute difference inside the margins, parabolic refinement).
  Two hypotheses are fitted, no shift and the whole-frame shift between the frames (phase
  correlation: a turning ego's yaw), and the one that fits better is kept, so a yaw does not read
  as expansion while the parallax of a straight drive (which phase correlation can take for a
  shift) does not hide it."""
  shifts = [(0.0, 0.0), tuple(phase_correlation(a, b))]
  a, b = _gray(a), _gray(b)
  h, w = a.shape
  center = ((h - 1) / 2, (w - 1) / 2)
  my, mx = int(h * margin), int(w * margin)
  inner = (slice(my, h - my), slice(mx, w - mx))
  rates = np.linspace(-0.05, max_rate, steps)
  errs = [np.array([np.mean(np.abs(_zoomed(a, 1 + r, center, shift)[inner] - b[inner]))
                    for r in rates]) for shift in shifts]
  err = min(errs, key=np.min)
  k = int(np.argmin(err))
  if 0 < k < steps - 1:
    denom = err[k - 1] - 2 * err[k] + err[k + 1]
    if denom > 0:
      return float(rates[k] + 0.5 * (err[k - 1] - err[k + 1]) / denom * (rates[1] - rates[0]))
  return float(rates[k])


def expansion_rate(video):
  """Mean magnification rate (1/frame) between consecutive frames of [T,H,W,(3)]: forward motion
  expands the image about the focus of expansion (the center for a forward-looking camera)."""
  v = np.asarray(video)
  if len(v) < 2:
    raise ValueError(f"need at least 2 frames, got {len(v)}")
  return float(np.mean([zoom_between(v[t], v[t + 1]) for t in range(len(v) - 1)]))


_MEASURES = {"horizontal_shift": horizontal_shift, "expansion_rate": expansion_rate}


def summarize(actions, motion, measure="horizontal_shift", expected_sign=1.0, threshold=0.0):
  """Controllability of one action from the measured motion [N_scenes, S] of scenes swept over
  `actions` [S] (see `sweep`). A scene whose motion does not change over the sweep has Spearman
  0 (no dependence on the action), not NaN."""
  a = np.asarray(actions, np.float64)
  motion = np.asarray(motion, np.float64)
  if motion.ndim != 2 or motion.shape[1] != len(a):
    raise ValueError(f"expected motion [N, S={len(a)}], got {motion.shape}")
  if len(set(a.tolist())) < 2:
    raise ValueError(f"a sweep needs two distinct action values, got {a.tolist()}")
  if not np.all(np.isfinite(motion)):
    raise ValueError(f"measured motion is not finite: {motion.tolist()}")
  const = lambda x: bool(np.all(x == x.flat[0]))
  flat = motion.reshape(-1)
  pooled = (0.0, 1.0) if const(flat) else scipy.stats.spearmanr(np.tile(a, len(motion)), flat)
  per_scene = [0.0 if const(m) else float(scipy.stats.spearmanr(a, m).statistic) for m in motion]
  slope = np.array([np.polyfit(a, m, 1)[0] for m in motion])
  detected = np.ptp(motion, axis=1) > threshold
  right = detected & (slope * expected_sign > 0)
  return {
      "measure": measure,
      "expected_sign": float(expected_sign),
      "threshold": float(threshold),
      "spearman": float(pooled[0]),
      "spearman_p": float(pooled[1]),
      "spearman_scene_median": float(np.median(per_scene)),
      "sign_correct": float(np.mean(slope[detected] * expected_sign > 0)) if detected.any()
                      else float("nan"),
      "sign_correct_all": float(np.mean(right)),
      "detected_scenes": int(detected.sum()),
      "num_scenes": int(len(motion)),
      "actions": a.tolist(),
      "motion": motion.tolist(),
      "per_scene": [{"motion": m.tolist(), "spearman": r, "slope": float(k),
                     "detected": bool(d), "sign_correct": bool(c)}
                    for m, r, k, d, c in zip(motion, per_scene, slope, detected, right)],
  }


def sweep(videos, actions, measure="horizontal_shift", expected_sign=1.0, threshold=0.0):
  """Controllability of one action swept over `actions` [S] for each scene.

  videos [N_scenes, S, T, H, W, 3]: scene n generated with action actions[s], same noise per scene.
  measure: 'horizontal_shift' (steering) or 'expansion_rate' (speed).
  threshold: a scene counts as 'detected' when its motion range over the sweep exceeds it.
  Returns spearman (pooled over scenes), spearman_p, per-scene median spearman, sign_correct
  (fraction of detected scenes whose motion rises with the action times expected_sign),
  sign_correct_all (the same over all scenes, undetected ones counted as wrong), detected scene
  count, the measured motion [N, S] and per_scene (motion, spearman, slope, detected,
  sign_correct) (`summarize`)."""
  v = np.asarray(videos)
  a = np.asarray(actions, np.float64)
  if v.ndim != 6 or v.shape[1] != len(a):
    raise ValueError(f"expected videos [N, S={len(a)}, T, H, W, 3], got {v.shape}")
  if measure not in _MEASURES:
    raise ValueError(f"measure {measure!r} not in {sorted(_MEASURES)}")
  fn = _MEASURES[measure]
  motion = np.array([[fn(v[n, s]) for s in range(len(a))] for n in range(len(v))])
  return summarize(a, motion, measure, expected_sign, threshold)


ACTION_INDEX = {"speed": 0, "steering": 1}   # columns of the schema's actions [B,T,A]
# The image motion each action drives and its sign for a forward camera: a left (positive)
# steering turns the ego left and moves the scene right (dx > 0); more speed, more expansion.
MEASURE = {"steering": "horizontal_shift", "speed": "expansion_rate"}
EXPECTED_SIGN = {"steering": 1.0, "speed": 1.0}


def commanded_controls(actions, action: str, value: float, n_ref: int, num_points: int):
  """(speed, steering) [B, T+K] float64 (K = num_points) of a schema `actions` [B,T,A] with
  `action` set to `value` on every frame from n_ref on and on the K look-ahead frames past the
  clip; the reference frames keep their values and the other control its recorded values (held
  at the last frame's past the clip)."""
  if action not in ACTION_INDEX:
    raise ValueError(f"action {action!r} not in {sorted(ACTION_INDEX)}")
  if action == "steering" and not abs(value) < np.pi / 2:
    raise ValueError(f"commanded steering {value} rad: steering must lie in (-pi/2, pi/2)")
  if action == "speed" and not value >= 0:
    raise ValueError(f"commanded speed {value} m/s: speed must be >= 0")
  acts = np.asarray(actions, np.float64)
  if acts.ndim != 3 or acts.shape[-1] < 2:
    raise ValueError(f"actions must be [B,T,A>=2] (speed, steering, ...), got {acts.shape}")
  if not 0 < n_ref < acts.shape[1]:
    raise ValueError(f"n_ref={n_ref} reference frames of {acts.shape[1]}: no frame to command")
  controls = acts[..., :2]
  controls = np.concatenate([controls, np.repeat(controls[:, -1:], num_points, axis=1)], 1)
  controls[:, n_ref:, ACTION_INDEX[action]] = float(value)
  return controls[..., 0], controls[..., 1]


def command_batch(batch: dict, action: str, value: float, *, n_ref: int,
                  num_points: int) -> dict:
  """A copy of schema `batch` whose predicted frames (n_ref on) are driven by `action` = `value`.

  The controls (speed, steering) are commanded_controls'; data/actions.py's
  controls_to_record_actions turns them, at the clip's fps, with the front camera (view 0) of
  each frame and K = num_points look-ahead frames, into the keys the model conditions on:
  `actions` rows of the predicted frames (speed, steering, accel, yaw rate; the reference frames'
  rows stay the recorded ones), and `trajectory`, `goal_point`, `command` of every frame. At a
  reference frame these describe the motion to come, which is the commanded one, so they are
  recomputed too and agree with the predicted frames' actions. `ego_pose` stays as recorded (no
  model sees it: protocols.model_batch)."""
  for key in ("actions", "fps", "frames", "intrinsics", "extrinsics"):
    if key not in batch:
      raise ValueError(f"command_batch needs batch[{key!r}]; batch has {sorted(batch)}")
  speed, steering = commanded_controls(batch["actions"], action, value, n_ref, num_points)
  fps = np.asarray(batch["fps"], np.float64)
  image_size = tuple(np.shape(batch["frames"])[-3:-1])
  intrinsics = np.asarray(batch["intrinsics"])
  extrinsics = np.asarray(batch["extrinsics"])
  acts = np.array(batch["actions"], np.float32)
  keys = {"trajectory": [], "goal_point": [], "command": []}
  for b in range(len(acts)):
    if not fps[b] > 0:
      raise ValueError(f"batch['fps'][{b}] = {fps[b]}; commanding actions needs a frame rate > 0")
    rec = actions_lib.controls_to_record_actions(
        speed[b], steering[b], fps[b], num_points=num_points,
        front_intrinsics=intrinsics[b, :, 0], front_extrinsics=extrinsics[b, :, 0],
        image_size=image_size)
    acts[b, n_ref:, :rec["actions"].shape[1]] = rec["actions"][n_ref:]
    for key, values in keys.items():
      values.append(rec[key])
  return {**batch, "actions": acts, **{k: np.stack(v) for k, v in keys.items()}}


def front_view(batch: dict) -> int:
  """The view whose optical axis (extrinsics[:3, 2], ego frame) points most along the ego's
  forward x axis; 0 when the batch has no extrinsics."""
  if "extrinsics" not in batch:
    return 0
  forward = np.asarray(batch["extrinsics"], np.float64)[:, 0, :, 0, 2]   # [B,V]
  return int(np.argmax(forward.mean(0)))


def sweep_videos(sample: Callable, batches: Iterable, sweeps: dict, *, n_ref: int,
                 num_points: int, limit: int | None = None, keep: int = 0):
  """Generates and measures the sweeps of `sweeps` {action: values} on every scene of `batches`.

  sample(batch, i) -> uint8 frames [B,T,V,H,W,3] generated for schema batch `batch`, the i-th
  batch of scenes; it must draw the same noise for the same i, so a scene's videos differ only in
  the commanded action. Each batch is generated once per (action, value) (command_batch, with
  num_points look-ahead frames: config.data.trajectory_points).
  Returns ({action: motion [N, S]}, {action: videos [min(N, keep), S, T - n_ref + 1, H, W, 3]}):
  the motion (MEASURE[action]) of every scene and the frames of the forward camera from the last
  reference frame on of the first `keep` scenes."""
  motion = {a: [] for a in sweeps}
  videos = {a: [] for a in sweeps}
  seen = 0
  for i, batch in enumerate(batches):
    if limit is not None:
      batch = {k: v[:limit - seen] for k, v in batch.items()}
    view = front_view(batch)
    for action, values in sweeps.items():
      clips = []
      for value in values:
        commanded = command_batch(batch, action, value, n_ref=n_ref, num_points=num_points)
        frames = np.asarray(sample(commanded, i))
        if frames.dtype != np.uint8 or frames.ndim != 6:
          raise ValueError(f"sample gave {frames.dtype} {frames.shape}; expected uint8 "
                           "[B,T,V,H,W,3]")
        clips.append(frames[:, n_ref - 1:, view])
      clips = np.stack(clips, 1)   # [B, S, T', H, W, 3]
      fn = _MEASURES[MEASURE[action]]
      motion[action] += [[fn(c) for c in scene] for scene in clips]
      videos[action].append(clips[:max(keep - seen, 0)])
    seen += len(batch["actions"])
    if limit is not None and seen >= limit:
      break
  if not seen:
    raise ValueError("no scenes to sweep: the batches were empty")
  return ({a: np.array(m) for a, m in motion.items()},
          {a: np.concatenate(v) for a, v in videos.items()})


def evaluate_controllability(protocol, sample: Callable, batches: Iterable, *, workdir,
                             num_points: int, step: int = 0, extra: dict | None = None) -> dict:
  """Sweeps the actions of `protocol` (a protocols.Protocol of kind 'controllability') on the
  scenes of `batches` (schema batches with frames) and writes the results (sweep_videos,
  summarize). num_points: the look-ahead frames of the trajectory keys built for the commanded
  actions (config.data.trajectory_points).

  sample(batch, i) -> uint8 [B,T,V,H,W,3] generates the i-th batch with the same noise whatever
  its actions (evaluate.load_sampler's sample, or a stand-in). Per swept action: `<action>` in the
  JSON summary holds summarize's dict (spearman, spearman_p, spearman_scene_median, sign_correct,
  sign_correct_all, detected_scenes, num_scenes, actions, motion [N,S], per_scene); the scalars
  `<action>_spearman`, `<action>_sign_correct`, `<action>_sign_correct_all` and
  `<action>_detected_scenes` also go to TensorBoard. Files under
  WORKDIR/controllability/<protocol>/: `<action>_motion.png` (motion against command, one line
  per scene) and `strip_<action>_scene<NNN>.png` (one row of frames of the forward camera per
  command) for the first protocol.strip_scenes scenes; both go to TensorBoard as images. `files`
  lists the written paths."""
  if protocol.kind != "controllability":
    raise ValueError(f"protocol {protocol.name} is of kind {protocol.kind!r}, not "
                     "'controllability'")
  sweeps = {a: tuple(v) for a, v in (("steering", protocol.steering_values),
                                     ("speed", protocol.speed_values)) if v}
  thresholds = {"steering": protocol.steering_threshold, "speed": protocol.speed_threshold}
  print(f"[eval] {protocol.name}: sweeping " + ", ".join(
      f"{a} over {list(v)}" for a, v in sweeps.items()) + f" on {protocol.num_clips} scenes",
      flush=True)
  motion, clips = sweep_videos(sample, batches, sweeps, n_ref=protocol.reference_frames,
                               num_points=num_points, limit=protocol.num_clips,
                               keep=protocol.strip_scenes)
  out_dir = pathlib.Path(workdir) / "controllability" / protocol.name
  results = {"protocol": protocol.settings(), "kind": protocol.kind}
  files, images = [], {}
  for action, values in sweeps.items():
    measure = MEASURE[action]
    r = summarize(values, motion[action], measure, EXPECTED_SIGN[action], thresholds[action])
    results[action] = r
    for key in ("spearman", "sign_correct", "sign_correct_all", "detected_scenes"):
      results[f"{action}_{key}"] = r[key]
    path = out_dir / f"{action}_motion.png"
    images[f"{action}_motion"] = report.plot_motion(path, values, motion[action], action=action,
                                                    measure=measure)
    files.append(str(path))
    for n, scene in enumerate(clips[action]):
      path = out_dir / f"strip_{action}_scene{n:03d}.png"
      images[f"strip_{action}_scene{n:03d}"] = report.save_strip(path, scene, values, action)
      files.append(str(path))
  num_scenes = len(next(iter(motion.values())))
  if protocol.num_clips is not None and num_scenes < protocol.num_clips:
    print(f"[eval] WARNING: {num_scenes} scenes swept, fewer than the {protocol.num_clips} asked "
          "for", flush=True)
  results["num_scenes"] = num_scenes
  results["files"] = files
  results.update(extra or {})
  path = report.write_metrics(workdir, results, step=step, images=images)
  print(f"[eval] {protocol.name}: " + ", ".join(
      f"{a} spearman={results[a]['spearman']:.3f} sign_correct={results[a]['sign_correct']:.3f} "
      f"({results[a]['detected_scenes']}/{num_scenes} scenes respond)" for a in sweeps) +
      f"  -> {path}", flush=True)
  return results
