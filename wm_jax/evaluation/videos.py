"""Writing videos: one `save_video` for training samples, the demo and evaluation.

    paths = save_video("out/clip0", frames, fps=5.0)                 # clip0.mp4 + clip0.gif
    paths = save_video("out/clip0", frames, fps=5.0, formats=("gif",))

frames: uint8 [T,H,W,3]. GIF frame durations are written in milliseconds (imageio's pillow
plugin), so a GIF plays at `fps`; mp4 is H.264 through imageio-ffmpeg, padded by edge pixels to
even sizes (yuv420p). When ffmpeg is missing the mp4 is skipped with a message and the other
formats are still written.
"""

from __future__ import annotations

import os

import imageio.v2 as imageio
import numpy as np

FORMATS = ("mp4", "gif")


def save_video(path: str | os.PathLike, frames, *, fps: float,
               formats: tuple[str, ...] = FORMATS) -> list[str]:
  """Writes `frames` to path.<format> for each format (a suffix of `path` is replaced); returns
  the paths written."""
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"save_video wants uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
  if not fps > 0:
    raise ValueError(f"save_video needs fps > 0, got {fps}")
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ValueError(f"video formats {list(formats)}: choose from {FORMATS}")
  stem = os.path.splitext(os.fspath(path))[0]
  os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
  out = []
  for fmt in formats:
    target = f"{stem}.{fmt}"
    if fmt == "gif":
      imageio.mimsave(target, list(frames), duration=1000.0 / fps, loop=0)
    else:
      h, w = frames.shape[1:3]
      padded = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
      try:
        imageio.mimsave(target, list(padded), fps=fps, macro_block_size=1)
      except Exception as e:  # no ffmpeg binary: the other formats are still written
        print(f"[video] {target} not written ({type(e).__name__}: {e})", flush=True)
        continue
    out.append(target)
  return out


def tile_views(video) -> np.ndarray:
  """[T,V,H,W,3] -> [T,H,V*W,3]: the cameras side by side."""
  video = np.asarray(video)
  t, v, h, w, c = video.shape
  return np.transpose(video, (0, 2, 1, 3, 4)).reshape(t, h, v * w, c)


def side_by_side(generated, reference, gap: int = 4) -> np.ndarray:
  """One clip [T,V,H,W,3] generated and its ground truth -> [T, V*H+(V-1)*gap, 2W+gap, 3] uint8:
  generated left, ground truth right, one row per view, white gaps."""
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
