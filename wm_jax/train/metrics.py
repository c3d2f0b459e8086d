"""CLU metric writers, progress reports, sample videos and profiler capture.

TensorBoard + log on process 0 only (other processes only log); ReportProgress writes steps/s and
the ETA; videos go to DIR/samples/*.mp4 and *.gif (evaluation/videos.py) and, as image strips,
to TensorBoard.

clu's writers import TensorFlow, so clu is imported where a writer or hook is made: the train
step, the benchmarks and AOT compilation run on machines without TensorFlow (GPU images).
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np

from wm_jax.evaluation import videos as videos_lib


def create_writer(workdir: str):
  from clu import metric_writers
  return metric_writers.create_default_writer(os.path.join(workdir, "tensorboard"),
                                              just_logging=jax.process_index() > 0,
                                              asynchronous=True)


def progress_hooks(workdir: str, num_steps: int, writer, *, every_steps: int, profile_steps: int = 0):
  """[ReportProgress] plus a profiler capture of `profile_steps` steps (process 0) when asked."""
  from clu import periodic_actions
  hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=every_steps)]
  if profile_steps and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(num_profile_steps=profile_steps, first_profile=5,
                                          logdir=os.path.join(workdir, "profile")))
  return hooks


def write_samples(writer, workdir: str, step: int, videos: Mapping[str, np.ndarray],
                  fps: float = 5.0) -> list[str]:
  """videos: name -> uint8 [T,V,H,W,3] (or [T,H,W,3]). Files to DIR/samples, strips to TB."""
  paths, images = [], {}
  for name, video in videos.items():
    video = np.asarray(video)
    if video.ndim == 5:
      video = videos_lib.tile_views(video)
    paths += videos_lib.save_video(os.path.join(workdir, "samples", f"{name}_step{step:06d}"),
                                   video, fps=fps)
    images[f"samples/{name}"] = np.concatenate(list(video), axis=0)[None]  # frames stacked
  if jax.process_index() == 0 and images:
    writer.write_images(step, images)
  return paths
