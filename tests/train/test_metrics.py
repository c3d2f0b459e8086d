"""Sample videos: mp4 + gif on disk (readable back, right size) and image strips in TensorBoard."""

import os

import imageio.v2 as imageio
import numpy as np
import pytest

from wm_jax.train import metrics


def test_write_samples_files_and_tensorboard(tmp_path):
  writer = metrics.create_writer(str(tmp_path))
  # 8 colours: exact in a GIF palette
  video = np.random.default_rng(0).integers(0, 2, size=(3, 2, 16, 24, 3), dtype=np.uint8) * 255
  paths = metrics.write_samples(writer, str(tmp_path), 7, {"clip0": video}, fps=4)
  writer.flush()
  assert sorted(os.path.basename(p) for p in paths) == ["clip0_step000007.gif", "clip0_step000007.mp4"]
  frames = imageio.mimread(paths[0])
  assert len(frames) == 3 and frames[0].shape[:2] == (16, 48)  # views side by side
  np.testing.assert_array_equal(np.asarray(frames[1])[..., :3], metrics.tile_views(video)[1])
  assert os.path.getsize(paths[1]) > 0
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  with pytest.raises(ValueError, match=r"uint8 \[T,H,W,3\]"):
    metrics.save_video(str(tmp_path / "bad"), np.zeros((2, 4, 4), np.float32))
