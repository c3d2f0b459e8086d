"""Small mp4 folders for the video-source tests (random frames, libx264, 10 fps)."""

import imageio.v2 as imageio
import numpy as np


def write_random_clips(root, clips: int, frames: int, size=(16, 32), seed: int = 0) -> None:
  """root/clip0.mp4 .. clip{clips-1}.mp4, each `frames` random uint8 frames of `size` (H, W)."""
  rng = np.random.default_rng(seed)
  for i in range(clips):
    w = imageio.get_writer(f"{root}/clip{i}.mp4", fps=10, codec="libx264", quality=8,
                           macro_block_size=16)
    for _ in range(frames):
      w.append_data(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    w.close()
