"""Writing evaluation results: CLU metric writers (TensorBoard), a JSON summary, sample videos
(side by side with ground truth, through evaluation/videos.py), controllability figures (a PNG
strip of frames per commanded value, a PNG plot of motion against command).

Every written number sits beside its protocol's settings: the JSON summary holds the full result
dict (which contains `protocol`), and TensorBoard gets the settings as hparams.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from wm_jax.evaluation import videos


def _flat_scalars(results, prefix):
  out = {}
  for key, value in results.items():
    if key in ("protocol", "per_window", "windows", "computed"):
      continue
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
      out[f"{prefix}/{key}"] = float(value)
  return out


def write_metrics(workdir, results: dict, step: int = 0, name: str | None = None,
                  images: dict | None = None):
  """Writes scalars (and per-window curves) with CLU's default writer + `eval_<name>.json`.

  Curves (`*_curve`) are written as one scalar series `<name>/<metric>_by_window` whose step is the
  window index, so TensorBoard draws the long-horizon curve. `images` {tag: uint8 [H,W,3]} go to
  TensorBoard as `<name>/<tag>`. Returns the JSON path."""
  from clu import metric_writers
  name = name or results["protocol"]["name"]
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  writer = metric_writers.create_default_writer(str(workdir / "eval"), asynchronous=False)
  writer.write_hparams({f"protocol/{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
                        for k, v in results["protocol"].items() if v is not None})
  writer.write_scalars(step, _flat_scalars(results, name))
  for key, curve in results.items():
    if key.endswith("_curve"):
      for i, value in enumerate(curve):
        writer.write_scalars(i, {f"{name}/{key[:-6]}_by_window": float(value)})
  if images:
    writer.write_images(step, {f"{name}/{tag}": np.asarray(im)[None] for tag, im in images.items()})
  writer.flush()
  writer.close()
  path = workdir / f"eval_{name}.json"
  summary = {"step": step, **results}
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=float))
  os.replace(tmp, path)
  return path


def save_samples(out_dir, generated, reference, fps, start_index=0, fmt="mp4"):
  """Saves each clip of a batch [B,T,V,H,W,3] side by side with its ground truth."""
  paths = []
  for i, (g, r) in enumerate(zip(generated, reference)):
    paths += videos.save_video(pathlib.Path(out_dir) / f"sample_{start_index + i:05d}",
                               videos.side_by_side(g, r), fps=fps, formats=(fmt,))
  return paths


def save_strip(path, clips, values, label: str = "") -> np.ndarray:
  """Writes one PNG of frames [S,T,H,W,3] uint8: row s holds the T frames generated for
  values[s], labelled `label`=value on its left. Returns the image (uint8 [H',W',3])."""
  from PIL import Image, ImageDraw
  clips = np.asarray(clips)
  if clips.ndim != 5 or clips.dtype != np.uint8 or len(clips) != len(values):
    raise ValueError(f"save_strip needs uint8 frames [S={len(values)},T,H,W,3], got "
                     f"{clips.dtype} {clips.shape}")
  s, t, h, w, _ = clips.shape
  gap, margin = 2, 96
  out = np.full((s * (h + gap) - gap, margin + t * (w + gap) - gap, 3), 255, np.uint8)
  for i in range(s):
    for j in range(t):
      y, x = i * (h + gap), margin + j * (w + gap)
      out[y:y + h, x:x + w] = clips[i, j]
  image = Image.fromarray(out)
  draw = ImageDraw.Draw(image)
  for i, value in enumerate(values):
    draw.text((4, i * (h + gap) + h // 2 - 5), f"{label}={value:+.3g}", fill=(0, 0, 0))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path)
  return np.asarray(image)


def plot_motion(path, values, motion, *, action: str, measure: str) -> np.ndarray:
  """Writes a PNG plot (matplotlib, no global backend) of the measured motion [N,S] against the
  commanded values [S]: one line per scene, the mean over scenes in black. Returns the image
  (uint8 [H,W,3])."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  values = np.asarray(values, np.float64)
  motion = np.asarray(motion, np.float64)
  fig = Figure(figsize=(5, 3.5), dpi=100)
  canvas = FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for n, m in enumerate(motion):
    ax.plot(values, m, "o-", alpha=0.4, lw=1, label="scenes" if n == 0 else None)
  ax.plot(values, motion.mean(0), "ko-", lw=2, label="mean")
  ax.axhline(0.0, color="gray", lw=0.5)
  ax.set_xlabel(f"commanded {action}")
  ax.set_ylabel({"horizontal_shift": "horizontal shift (px/frame)",
                 "expansion_rate": "expansion (1/frame)"}.get(measure, measure))
  ax.legend(loc="best", fontsize=8)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()
