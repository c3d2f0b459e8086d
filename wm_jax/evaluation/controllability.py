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
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import scipy.stats


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


def _zoomed(img, scale, center):
  """img magnified by `scale` about `center` (bilinear): out(p) = img((p - c) / scale + c)."""
  h, w = img.shape
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  coords = [(yy - center[0]) / scale + center[0], (xx - center[1]) / scale + center[1]]
  return scipy.ndimage.map_coordinates(img, coords, order=1, mode="nearest")


def zoom_between(a, b, max_rate=0.3, steps=31, margin=0.15):
  """Magnification s - 1 about the image center that best maps frame a onto frame b (grid search
  over [-0.05, max_rate] on mean absolute difference inside the margins, parabolic refinement)."""
  a, b = _gray(a), _gray(b)
  h, w = a.shape
  center = ((h - 1) / 2, (w - 1) / 2)
  my, mx = int(h * margin), int(w * margin)
  inner = (slice(my, h - my), slice(mx, w - mx))
  rates = np.linspace(-0.05, max_rate, steps)
  err = np.array([np.mean(np.abs(_zoomed(a, 1 + r, center)[inner] - b[inner])) for r in rates])
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


def sweep(videos, actions, measure="horizontal_shift", expected_sign=1.0, threshold=0.0):
  """Controllability of one action swept over `actions` [S] for each scene.

  videos [N_scenes, S, T, H, W, 3]: scene n generated with action actions[s], same noise per scene.
  measure: 'horizontal_shift' (steering) or 'expansion_rate' (speed).
  threshold: a scene counts as 'detected' when its motion range over the sweep exceeds it.
  Returns spearman (pooled over scenes), spearman_p, per-scene median spearman, sign_correct
  (fraction of detected scenes whose motion rises with the action times expected_sign), detected
  scene count, and the measured motion [N, S]."""
  v = np.asarray(videos)
  a = np.asarray(actions, np.float64)
  if v.ndim != 6 or v.shape[1] != len(a):
    raise ValueError(f"expected videos [N, S={len(a)}, T, H, W, 3], got {v.shape}")
  if measure not in _MEASURES:
    raise ValueError(f"measure {measure!r} not in {sorted(_MEASURES)}")
  fn = _MEASURES[measure]
  motion = np.array([[fn(v[n, s]) for s in range(len(a))] for n in range(len(v))])
  pooled = scipy.stats.spearmanr(np.tile(a, len(v)), motion.reshape(-1))
  per_scene = [scipy.stats.spearmanr(a, m).statistic for m in motion]
  slope = np.array([np.polyfit(a, m, 1)[0] for m in motion]) * expected_sign
  detected = np.ptp(motion, axis=1) > threshold
  return {
      "measure": measure,
      "spearman": float(pooled.statistic),
      "spearman_p": float(pooled.pvalue),
      "spearman_scene_median": float(np.nanmedian(per_scene)),
      "sign_correct": float(np.mean(slope[detected] > 0)) if detected.any() else float("nan"),
      "detected_scenes": int(detected.sum()),
      "num_scenes": int(len(v)),
      "actions": a.tolist(),
      "motion": motion.tolist(),
  }


ACTION_INDEX = {"speed": 0, "steering": 1}   # columns of the schema's actions [B,T,A]


def sweep_batch(batch: dict, action: str, values):
  """Repeats every clip of a schema batch once per value, with `action` set to that value on every
  frame (the other actions kept): arrays [B,...] -> [B*S,...], clip-major, so generated frames
  reshape to [B, S, ...] for `sweep`. Sample with the same noise per clip (repeat the noise
  the same way) so the only difference within a clip's sweep is the action."""
  if action not in ACTION_INDEX:
    raise ValueError(f"action {action!r} not in {sorted(ACTION_INDEX)}")
  if "actions" not in batch:
    raise ValueError(f"sweep_batch needs batch['actions']; batch has {sorted(batch)}")
  values = np.asarray(values, np.float32)
  s = len(values)
  out = {k: np.repeat(np.asarray(v), s, axis=0) for k, v in batch.items()}
  acts = out["actions"].copy()
  acts[..., ACTION_INDEX[action]] = np.tile(values, len(acts) // s)[:, None]
  out["actions"] = acts
  return out
