"""Folders of driving videos (mp4, as in OpenDV-YouTube) -> single-view clips per data/schema.py.

    source = VideoClipSource('/data/opendv', num_frames=25, fps=10, image_size=(288, 512))
    record = source[i]   # {'frames': [T,1,H,W,3] uint8, 'fps': (), 'view_adjacency': [1,1]}

Every `*.mp4` under the folder (sorted, recursive) is one video. Clip i starts at source time
start_i = k * clip_stride / fps within its video and samples frames at times start_i + t / fps,
each taken from the nearest frame (frame j of a video at rate r is shown at j / r), so a 30 fps
video read at 10 fps keeps every third frame; fps above the video's rate would repeat frames and
raises unless allow_upsample. Frames are resized to cover the target size, keeping the aspect
ratio, and centre-cropped.

Videos carry no ego motion: records have no actions, trajectory, goal_point or command (nor
poses or calibration), and a model that needs those keys refuses such a batch.

A file that cannot be read (truncated, not a video) raises ValueError naming it when the source is
built. With skip_bad_files (config.data.skip_bad_records) it is left out of the clips instead and
stands as one index after the clips whose reading raises that error, so the pipeline skips and
counts it like any other bad record (records.py, bad_records.py) once per epoch.

Also home of the image helpers the nuScenes reader shares: `resize_crop` and `crop_intrinsics`;
opendv.py reads its clips with `frame_rate`, `frame_at`, `read_frames` and `single_view`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import imageio.v2 as imageio
import numpy as np
from PIL import Image

from wm_jax.data import records
from wm_jax.data.splits import in_validation

VIDEO_EXTENSIONS = (".mp4",)


def calibration_scale(actual, calibrated, mismatch: str, sizes: str,
                      where: str = "") -> tuple[float, float]:
  """(sx, sy): an image's size `actual` (H, W) over the size (W, H) `calibrated` its intrinsics are
  for. A resized copy scales them (mismatch 'rescale') or raises (mismatch 'error'); another
  aspect ratio (a crop) always raises. `sizes` opens the error message ("image X is WxH but its
  calibration ... is for WxH"), `where` (if any) is put in parentheses after it."""
  h, w = actual
  cw, ch = calibrated
  if (w, h) == (cw, ch):
    return 1.0, 1.0
  at = f" ({where})" if where else ""
  if abs(w * ch / cw - h) > 1.0:  # more than rounding: cropped, not resized
    raise ValueError(f"{sizes}, another aspect ratio: a cropped image cannot be matched to its "
                     f"intrinsics{at}")
  if mismatch == "error":
    raise ValueError(f"{sizes}{at}; data.image_size_mismatch='rescale' scales the intrinsics to "
                     "the image size")
  return w / cw, h / ch


def resize_crop(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """Resizes `image` [h0,w0,3] uint8 to cover `size` (H, W) and centre-crops it.

  Returns (image [H,W,3] uint8, affine [2,3]) where a continuous pixel coordinate (u, v) of the
  input (pixel centres at +0.5) maps to affine @ (u, v, 1) in the output.
  """
  h0, w0 = image.shape[:2]
  h, w = size
  s = max(h / h0, w / w0)
  rh, rw = max(h, int(round(h0 * s))), max(w, int(round(w0 * s)))
  if (rh, rw) != (h0, w0):
    image = np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
  oy, ox = (rh - h) // 2, (rw - w) // 2
  affine = np.array([[rw / w0, 0.0, -ox], [0.0, rh / h0, -oy]], np.float64)
  return np.ascontiguousarray(image[oy:oy + h, ox:ox + w]), affine


def crop_intrinsics(k: np.ndarray, affine: np.ndarray) -> np.ndarray:
  """Intrinsics [3,3] of the image `resize_crop` produced (affine from it)."""
  a = np.vstack([affine, [0.0, 0.0, 1.0]])
  return (a @ np.asarray(k, np.float64)).astype(np.float32)


def nearest_indices(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Index of the entry of sorted `times` nearest to each of `targets`."""
  times = np.asarray(times, np.float64)
  right = np.clip(np.searchsorted(times, targets), 1, len(times) - 1) if len(times) > 1 else None
  if right is None:
    return np.zeros(len(targets), np.int64)
  left = right - 1
  return np.where(np.abs(targets - times[left]) <= np.abs(times[right] - targets), left, right)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  path: str
  fps: float
  num_frames: int


def probe(path: str) -> VideoInfo:
  """Frame rate and exact frame count of a video; raises ValueError naming an unreadable file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"video {path} does not exist")
  fps, n = _read_meta(path, count=True)
  if not fps > 0 or n <= 0:
    raise ValueError(f"video {path} reports fps={fps} and {n} frames")
  return VideoInfo(path, fps, n)


def frame_rate(path: str) -> float:
  """Frame rate of a video from its container (no frame is decoded); raises ValueError naming an
  unreadable file or one that reports no positive rate."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"video {path} does not exist")
  fps, _ = _read_meta(path, count=False)
  if not fps > 0:
    raise ValueError(f"video {path} reports fps={fps}")
  return fps


def _read_meta(path: str, *, count: bool) -> tuple[float, int]:
  """(fps, exact frame count if `count` else -1) of a video; ValueError naming an unreadable one."""
  try:
    reader = imageio.get_reader(path, "ffmpeg")
    try:
      fps = float(reader.get_meta_data()["fps"])
      n = int(reader.count_frames()) if count else -1
    finally:
      reader.close()
  except (OSError, RuntimeError, ValueError, KeyError, IndexError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
    detail = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"  # not ffmpeg's banner
    raise ValueError(f"cannot read video {path}: {type(e).__name__}: {detail}") from e
  return fps, n


def read_frames(path: str, indices: Sequence[int]) -> list[np.ndarray]:
  """Decodes frames `indices` (may repeat) of a video.

  ffmpeg seeks to the first wanted frame (frame-accurate) and decodes forward from there, so a
  clip deep inside an hour-long video costs about as much as one at its start.
  """
  frames = {}
  try:
    reader = imageio.get_reader(path, "ffmpeg")
    try:
      for i in sorted(set(int(i) for i in indices)):
        try:
          frames[i] = np.asarray(reader.get_data(i))
        except IndexError as e:
          raise ValueError(f"video {path} has no frame {i}: {e}") from e
    finally:
      reader.close()
  except (OSError, RuntimeError) as e:
    raise ValueError(f"cannot decode video {path}: {type(e).__name__}: {e}") from e
  return [frames[int(i)] for i in indices]


class VideoClipSource:
  """Random-access single-view clips from a folder of videos."""

  def __init__(self, root: str, *, num_frames: int, fps: float, image_size: tuple[int, int],
               clip_stride: int = 0, files: Sequence[str] | None = None,
               allow_upsample: bool = False, skip_bad_files: bool = False,
               name: str | None = None):
    if num_frames < 1 or fps <= 0:
      raise ValueError(f"need num_frames >= 1 and fps > 0, got {num_frames}, {fps}")
    self.root, self.num_frames, self.fps = root, int(num_frames), float(fps)
    self.image_size = tuple(int(s) for s in image_size)
    self.clip_stride = int(clip_stride) or self.num_frames
    self.name = name or f"video:{root}"
    if files is None:
      files = list_videos(root)
    if not files:
      raise ValueError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) under {root}")
    self.videos, self.bad_files = [], []  # bad_files: (path, message) of unreadable files
    for f in files:
      try:
        self.videos.append(probe(f))
      except (OSError, ValueError) as e:
        if not skip_bad_files:
          raise
        logging.warning("skipping unreadable video: %s", e)
        self.bad_files.append((f, str(e)))
    if not self.videos:
      raise ValueError(f"no readable videos under {root}; unreadable: "
                       f"{[path for path, _ in self.bad_files]}")
    self.clips = []  # (video index, start time in seconds)
    for vi, info in enumerate(self.videos):
      if self.fps > info.fps * 1.01 and not allow_upsample:
        raise ValueError(f"fps={self.fps} exceeds the frame rate {info.fps} of video {info.path}")
      span = (self.num_frames - 1) / self.fps
      k = 0
      while frame_at(k * self.clip_stride / self.fps + span, info.fps) < info.num_frames:
        self.clips.append((vi, k * self.clip_stride / self.fps))
        k += 1

  @classmethod
  def from_config(cls, config, split: str = "train"):
    files = list_videos(config.path)
    if split in ("validation", "val"):
      files = [f for f in files if in_validation(os.path.relpath(f, config.path),
                                                  config.val_fraction)]
    elif split == "train":
      files = [f for f in files if not in_validation(os.path.relpath(f, config.path),
                                                      config.val_fraction)]
    elif split != "all":
      raise ValueError(f"unknown split {split!r}; use 'train', 'validation' or 'all'")
    if not files:
      raise ValueError(f"split {split!r} of {config.path} has no videos "
                       f"(val_fraction={config.val_fraction})")
    return cls(config.path, num_frames=config.num_frames, fps=config.fps,
               image_size=(config.image_height, config.image_width),
               clip_stride=config.clip_stride, files=files,
               skip_bad_files=config.skip_bad_records, name=f"video:{config.path}:{split}")

  def __len__(self):
    return len(self.clips) + len(self.bad_files)

  def frame_indices(self, index: int) -> np.ndarray:
    vi, start = self.clips[index]
    info = self.videos[vi]
    return frame_at(start + np.arange(self.num_frames) / self.fps, info.fps)

  def __getitem__(self, index):
    index = records.good_index(self.name, index, len(self.clips), self.bad_files)
    info = self.videos[self.clips[index][0]]
    frames = single_view(read_frames(info.path, self.frame_indices(index)), self.image_size)
    return {"frames": frames, "fps": np.float32(self.fps),
            "view_adjacency": np.ones((1, 1), bool)}


def frame_at(time, video_fps):
  """Index of the frame shown at `time` seconds (frame j starts at j / video_fps), rounded."""
  return np.floor(np.asarray(time) * video_fps + 0.5 + 1e-6).astype(np.int64)


def single_view(frames: Sequence[np.ndarray], image_size: tuple[int, int]) -> np.ndarray:
  """Decoded frames (each [h0,w0,3] uint8) -> `frames` of one view [T,1,H,W,3] (resize_crop)."""
  return np.stack([resize_crop(f, image_size)[0] for f in frames])[:, None]


def list_videos(root: str) -> list[str]:
  if not os.path.isdir(root):
    raise FileNotFoundError(f"video folder {root} does not exist")
  out = []
  for dirpath, _, names in os.walk(root):
    out += [os.path.join(dirpath, n) for n in names if n.lower().endswith(VIDEO_EXTENSIONS)]
  return sorted(out)
