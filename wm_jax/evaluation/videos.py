"""Video frames: the uint8 check and the on-purpose float conversion of evaluation's inputs, and
one `save_video` for training samples, the demo and evaluation.

    check_frames(frames, name="gen.npz frames")                  # uint8, else a ValueError
    frames = to_uint8(frames, "unit", name="gen.npz frames")      # float [0, 1] -> round(x * 255)

    paths = save_video("out/clip0", frames, fps=5.0)                 # clip0.mp4 + clip0.gif
    paths = save_video("out/clip0", frames, fps=5.0, formats=("gif",))

Frames are uint8 in [0, 255]; the metrics refuse anything else, since float frames in [0, 1]
scored as if they were 0..255 give a meaningless FVD. Float frames are turned into uint8 only when
their range is declared (FLOAT_RANGES): round((x - low) * 255 / (high - low)), values further than
half a uint8 step outside the range refused rather than clipped.

save_video frames: uint8 [T,H,W,3]. GIF frame durations are written in milliseconds (imageio's
pillow plugin), so a GIF plays at `fps`; mp4 is H.264 through imageio-ffmpeg, padded by edge
pixels to even sizes (yuv420p). When ffmpeg is missing the mp4 is skipped with a message and the
other formats are still written.
"""

from __future__ import annotations

import os

import imageio.v2 as imageio
import numpy as np

FORMATS = ("mp4", "gif")
# The value ranges float frames may be declared in (evaluate's --float_frames): name -> (low, high).
FLOAT_RANGES = {"unit": (0.0, 1.0), "signed": (-1.0, 1.0), "byte": (0.0, 255.0)}


def _range_text(low, high) -> str:
  return f"[{low:.6g}, {high:.6g}]"


def value_range(frames) -> str:
  """'[min, max]' of an array, for messages ('no values' when it is empty)."""
  frames = np.asarray(frames)
  if frames.size == 0:
    return "no values"
  return _range_text(frames.min(), frames.max())


def check_frames(frames, float_range: str | None = None, *, name: str = "frames"):
  """Raises a ValueError naming `name`, the dtype and the value range unless `frames` are uint8,
  or, with `float_range` (a key of FLOAT_RANGES), finite floats inside that range to within half
  a uint8 step."""
  if float_range is not None and float_range not in FLOAT_RANGES:
    raise ValueError(f"float_frames {float_range!r}: choose from {list(FLOAT_RANGES)}")
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    return
  kind = f"{name}: {frames.dtype} frames"
  if not np.issubdtype(frames.dtype, np.floating):
    raise ValueError(f"{kind} with values in {value_range(frames)}; expected uint8 frames in "
                     f"[0, 255] (store them as uint8)")
  if frames.size and not np.all(np.isfinite(frames)):
    raise ValueError(f"{kind} hold non-finite values (NaN or inf)")
  if float_range is None:
    ranges = ", ".join(f"{k!r} {_range_text(*r)}" for k, r in FLOAT_RANGES.items())
    raise ValueError(f"{kind} with values in {value_range(frames)}; expected uint8 frames in "
                     f"[0, 255]. Float frames are converted only on purpose: declare their range "
                     f"with float_range / evaluate's --float_frames ({ranges}; e.g. "
                     f"--float_frames=unit for [0, 1])")
  low, high = FLOAT_RANGES[float_range]
  half_step = 0.5 * (high - low) / 255.0
  if frames.size and (frames.min() < low - half_step or frames.max() > high + half_step):
    raise ValueError(f"{kind} with values in {value_range(frames)} are outside the declared "
                     f"{float_range!r} range {_range_text(low, high)} (by more than half a uint8 "
                     f"step)")


def to_uint8(frames, float_range: str | None = None, *, name: str = "frames") -> np.ndarray:
  """uint8 frames as they are; float frames declared in FLOAT_RANGES[float_range] ->
  round((x - low) * 255 / (high - low)) as uint8 (float64 arithmetic; 'unit': round(x * 255)).
  Anything else raises check_frames' ValueError naming `name`."""
  check_frames(frames, float_range, name=name)
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    return frames
  low, high = FLOAT_RANGES[float_range]
  x = np.round((frames.astype(np.float64) - low) * (255.0 / (high - low)))
  return np.clip(x, 0, 255).astype(np.uint8)


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
  """One uint8 clip [T,V,H,W,3] generated and its ground truth -> [T, V*H+(V-1)*gap, 2W+gap, 3]
  uint8: generated left, ground truth right, one row per view, white gaps."""
  g, r = np.asarray(generated), np.asarray(reference)
  if g.dtype != np.uint8 or r.dtype != np.uint8:
    raise ValueError(f"side_by_side wants uint8 clips, got {g.dtype} and {r.dtype}")
  if g.shape != r.shape or g.ndim != 5:
    raise ValueError(f"expected two clips [T,V,H,W,3] of one shape, got {g.shape} and {r.shape}")
  t, v, h, w, _ = g.shape
  out = np.full((t, v * h + (v - 1) * gap, 2 * w + gap, 3), 255, np.uint8)
  for i in range(v):
    y = i * (h + gap)
    out[:, y:y + h, :w] = g[:, i]
    out[:, y:y + h, w + gap:] = r[:, i]
  return out
