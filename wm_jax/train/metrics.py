"""CLU metric writers, progress reports, sample videos and profiler capture.

TensorBoard + log on process 0 only (other processes only log); ReportProgress writes steps/s and
the ETA; videos go to DIR/samples/*.mp4 and *.gif and, as image strips, to TensorBoard.

clu's writers import TensorFlow, so clu is imported where a writer or hook is made: the train
step, the benchmarks and AOT compilation run on machines without TensorFlow (GPU images).
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np


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


def save_video(path_stem: str, frames: np.ndarray, fps: float = 5.0) -> list[str]:
  """frames uint8 [T,H,W,3] -> path_stem.mp4 and path_stem.gif; returns the paths written.

  mp4 needs imageio-ffmpeg; when it is missing only the gif is written."""
  import imageio.v2 as imageio
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"save_video wants uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
  os.makedirs(os.path.dirname(path_stem) or ".", exist_ok=True)
  out = []
  gif = path_stem + ".gif"
  imageio.mimsave(gif, list(frames), duration=1.0 / fps, loop=0)
  out.append(gif)
  try:
    # macro_block_size=1 lets odd tiny sizes through; yuv420p needs even sizes, so pad by edge.
    h, w = frames.shape[1:3]
    padded = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    mp4 = path_stem + ".mp4"
    imageio.mimsave(mp4, list(padded), fps=fps, macro_block_size=1)
    out.append(mp4)
  except Exception as e:  # no ffmpeg: the gif is still there
    print(f"[metrics] mp4 not written ({type(e).__name__}: {e}); gif at {gif}", flush=True)
  return out


def tile_views(video: np.ndarray) -> np.ndarray:
  """[T,V,H,W,3] -> [T,H,V*W,3]: the cameras side by side."""
  t, v, h, w, c = video.shape
  return np.transpose(video, (0, 2, 1, 3, 4)).reshape(t, h, v * w, c)


def write_samples(writer, workdir: str, step: int, videos: Mapping[str, np.ndarray],
                  fps: float = 5.0) -> list[str]:
  """videos: name -> uint8 [T,V,H,W,3] (or [T,H,W,3]). Files to DIR/samples, strips to TB."""
  paths, images = [], {}
  for name, video in videos.items():
    video = np.asarray(video)
    if video.ndim == 5:
      video = tile_views(video)
    paths += save_video(os.path.join(workdir, "samples", f"{name}_step{step:06d}"), video, fps)
    images[f"samples/{name}"] = np.concatenate(list(video), axis=0)[None]  # frames stacked
  if jax.process_index() == 0 and images:
    writer.write_images(step, images)
  return paths
