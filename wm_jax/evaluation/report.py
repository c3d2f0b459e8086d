"""Writing evaluation results: CLU metric writers (TensorBoard), a JSON summary, sample videos
(side by side with ground truth, through evaluation/videos.py).

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


def save_samples(out_dir, generated, reference, fps, start_index=0, fmt="mp4"):
  """Saves each clip of a batch [B,T,V,H,W,3] side by side with its ground truth."""
  paths = []
  for i, (g, r) in enumerate(zip(generated, reference)):
    paths += videos.save_video(pathlib.Path(out_dir) / f"sample_{start_index + i:05d}",
                               videos.side_by_side(g, r), fps=fps, formats=(fmt,))
  return paths
