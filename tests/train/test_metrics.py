"""Sample videos: mp4 + gif on disk (readable back, right size, GIF at the clip's fps) and image
strips in TensorBoard."""

import os

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from wm_jax.evaluation import videos
from wm_jax.train import metrics


def test_write_samples_files_and_tensorboard(tmp_path):
  writer = metrics.create_writer(str(tmp_path))
  # 8 colours: exact in a GIF palette
  video = np.random.default_rng(0).integers(0, 2, size=(3, 2, 16, 24, 3), dtype=np.uint8) * 255
  paths = metrics.write_samples(writer, str(tmp_path), 7, {"clip0": video}, fps=4)
  writer.flush()
  assert sorted(os.path.basename(p) for p in paths) == ["clip0_step000007.gif", "clip0_step000007.mp4"]
  gif = [p for p in paths if p.endswith(".gif")][0]
  frames = imageio.mimread(gif)
  assert len(frames) == 3 and frames[0].shape[:2] == (16, 48)  # views side by side
  np.testing.assert_array_equal(np.asarray(frames[1])[..., :3], videos.tile_views(video)[1])
  assert os.path.getsize([p for p in paths if p.endswith(".mp4")][0]) > 0
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))


@pytest.mark.parametrize("fps", [2.0, 5.0, 12.5])
def test_gif_plays_at_the_clips_fps(tmp_path, fps):
  frames = np.stack([np.full((8, 8, 3), 30 * i, np.uint8) for i in range(5)])  # all distinct
  (path,) = videos.save_video(tmp_path / "clip", frames, fps=fps, formats=("gif",))
  gif = Image.open(path)
  durations = []
  for i in range(gif.n_frames):
    gif.seek(i)
    durations.append(gif.info["duration"])
  assert len(durations) == 5
  # GIF durations are whole centiseconds
  assert all(abs(d - 1000.0 / fps) <= 10 for d in durations), (fps, durations)


def test_mp4_reads_back_at_the_clips_fps(tmp_path):
  frames = np.stack([np.full((16, 16, 3), 40 * i, np.uint8) for i in range(6)])
  (path,) = videos.save_video(tmp_path / "clip.mp4", frames, fps=8.0, formats=("mp4",))
  assert path.endswith("clip.mp4")
  reader = imageio.get_reader(path)
  assert reader.get_meta_data()["fps"] == pytest.approx(8.0)
  assert len([f for f in reader]) == 6


def test_save_video_names_bad_input(tmp_path):
  with pytest.raises(ValueError, match=r"uint8 \[T,H,W,3\]"):
    videos.save_video(str(tmp_path / "bad"), np.zeros((2, 4, 4), np.float32), fps=5)
  with pytest.raises(ValueError, match="fps > 0"):
    videos.save_video(str(tmp_path / "bad"), np.zeros((2, 4, 4, 3), np.uint8), fps=0)
  with pytest.raises(ValueError, match="choose from"):
    videos.save_video(str(tmp_path / "bad"), np.zeros((2, 4, 4, 3), np.uint8), fps=5,
                      formats=("avi",))
