"""Writing evaluation results: CLU metric writers (TensorBoard), a JSON summary, sample videos.

Every written number sits beside its protocol's settings: the JSON summary holds the full result
dict (which contains `protocol`), and TensorBoard gets the settings as hparams.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np


def _flat_scalars(results, prefix):
  out = {}
  for key, value in results.items():
    if key in ("protocol", "per_window", "windows", "computed"):
      continue
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
      out[f"{prefix}/{key}"] = float(value)
  return out


def write_metrics(workdir, results: dict, step: int = 0, name: str | None = None):
  """Writes scalars (and per-window curves) with CLU's default writer + `eval_<name>.json`.

  Curves (`*_curve`) are written as one scalar series `<name>/<metric>_by_window` whose step is the
  window index, so TensorBoard draws the long-horizon curve. Returns the JSON path."""
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
  writer.flush()
  writer.close()
  path = workdir / f"eval_{name}.json"
  summary = {"step": step, **results}
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=float))
  os.replace(tmp, path)
  return path


def side_by_side(generated, reference, gap=4):
  """One clip [T,V,H,W,3] generated and its ground truth -> [T, V*H+(V-1)*gap, 2W+gap, 3] uint8:
  generated left, ground truth right, one row per view."""
  g, r = np.asarray(generated, np.uint8), np.asarray(reference, np.uint8)
  if g.shape != r.shape or g.ndim != 5:
    raise ValueError(f"expected two clips [T,V,H,W,3] of one shape, got {g.shape} and {r.shape}")
  t, v, h, w, _ = g.shape
  out = np.full((t, v * h + (v - 1) * gap, 2 * w + gap, 3), 255, np.uint8)
  for i in range(v):
    y = i * (h + gap)
    out[:, y:y + h, :w] = g[:, i]
    out[:, y:y + h, w + gap:] = r[:, i]
  return out


def _pad_to(frames, multiple):
  t, h, w, c = frames.shape
  ph, pw = (-h) % multiple, (-w) % multiple
  return np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0))) if ph or pw else frames


def save_video(path, frames, fps):
  """Writes frames [T,H,W,3] uint8 as mp4 (H.264 via imageio-ffmpeg) or, failing that, a gif.
  Returns the path written."""
  import imageio
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".mp4":
    try:
      frames16 = _pad_to(np.asarray(frames, np.uint8), 16)
      with imageio.get_writer(path, fps=fps, codec="libx264", quality=8,
                              macro_block_size=16) as w:
        for f in frames16:
          w.append_data(f)
      return path
    except Exception as e:  # no ffmpeg binary: fall back to gif
      print(f"[eval] mp4 writing failed ({e}); writing a gif instead", flush=True)
      path = path.with_suffix(".gif")
  imageio.mimsave(path, list(np.asarray(frames, np.uint8)), duration=1000.0 / fps, loop=0)
  return path


def save_samples(out_dir, generated, reference, fps, start_index=0, fmt="mp4"):
  """Saves each clip of a batch [B,T,V,H,W,3] side by side with its ground truth."""
  paths = []
  for i, (g, r) in enumerate(zip(generated, reference)):
    paths.append(save_video(pathlib.Path(out_dir) / f"sample_{start_index + i:05d}.{fmt}",
                            side_by_side(g, r), fps))
  return paths
