"""Video-folder reader: clip indexing, fps resampling, resize/crop, errors."""

import os
import shutil

import imageio.v2 as imageio
import numpy as np
import pytest

from wm_jax import defaults
from wm_jax.data import pipeline, schema, sources, video
from tests.data import mp4


def _write(path, n, fps, size=(48, 64), offset=0):
  """Video whose frame j is uniform grey level 8 * (j + offset) (survives compression)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  w = imageio.get_writer(path, fps=fps, codec="libx264", quality=9, macro_block_size=16)
  for j in range(n):
    w.append_data(np.full((*size, 3), 8 * (j + offset), np.uint8))
  w.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("videos"))
  _write(f"{root}/a/one.mp4", 20, 10)
  _write(f"{root}/b/two.mp4", 9, 10, offset=2)
  with open(f"{root}/b/three.mp4", "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypmp42 truncated")
  return root


def _grey(clip):
  return np.round(clip["frames"].reshape(len(clip["frames"]), -1).mean(1) / 8).astype(int).tolist()


def test_clips_resample_fps_and_resize(folder):
  files = [f"{folder}/a/one.mp4", f"{folder}/b/two.mp4"]
  src = video.VideoClipSource(folder, num_frames=3, fps=5, image_size=(16, 32), files=files)
  # one.mp4: 20 frames @10 fps = 2 s; a 3-frame clip at 5 fps spans frames 0,2,4; stride 3
  # frames = 0.6 s -> starts at frames 0, 6, 12 (12+4=16 < 20; 18+4=22 is past the end).
  # two.mp4: 9 frames -> one clip (frames 0, 2, 4; the next would need frame 10).
  assert len(src) == 4
  clip = src[1]
  schema.validate(clip, source="t", index=1)
  assert clip["frames"].shape == (3, 1, 16, 32, 3) and clip["fps"] == 5
  assert not set(schema.EGO_KEYS) & set(clip)  # videos carry no ego motion
  assert _grey(clip) == [6, 8, 10]
  assert _grey(src[3]) == [2, 4, 6]  # two.mp4 starts at grey level 2


def test_resize_crop_keeps_aspect_and_maps_intrinsics():
  image = np.zeros((90, 160, 3), np.uint8)
  image[40:50, 70:90] = 255  # a bright block around the centre
  out, affine = video.resize_crop(image, (32, 32))
  assert out.shape == (32, 32, 3)
  # 90 -> 32 rows (scale 32/90), 160 -> 57 columns, centre crop of 32 from 57 drops 12 on the left.
  np.testing.assert_allclose(affine, [[57 / 160, 0, -12], [0, 32 / 90, 0]], atol=1e-9)
  k = np.array([[100.0, 0, 80], [0, 100, 45], [0, 0, 1]])
  k2 = video.crop_intrinsics(k, affine)
  np.testing.assert_allclose(k2[:2, 2], [80 * 57 / 160 - 12, 45 * 32 / 90], rtol=1e-6)
  ys, xs = np.nonzero(out[..., 0] > 128)
  assert abs(xs.mean() + 0.5 - (80 * 57 / 160 - 12)) < 1.0 and abs(ys.mean() + 0.5 - 16) < 1.0


def test_errors_name_the_file(folder):
  with pytest.raises(ValueError, match="three.mp4"):
    video.VideoClipSource(folder, num_frames=2, fps=5, image_size=(16, 16))
  with pytest.raises(ValueError, match=r"fps=30.0 exceeds .*one.mp4"):
    video.VideoClipSource(folder, num_frames=2, fps=30, image_size=(16, 16),
                          files=[f"{folder}/a/one.mp4"])
  with pytest.raises(FileNotFoundError, match="nowhere"):
    video.VideoClipSource(f"{folder}/nowhere", num_frames=2, fps=5, image_size=(16, 16))


def test_pipeline_reads_video_folder_with_split(folder, tmp_path):
  root = str(tmp_path)
  for i in range(2, 6):  # v3 and v5 hash into validation at val_fraction=0.5
    _write(f"{root}/v{i}.mp4", 4, 10, size=(16, 16), offset=i)
  c = defaults.data()
  c.update(source="video", path=root, num_frames=2, fps=10, image_height=8, image_width=8,
           val_fraction=0.5, shuffle=False, num_epochs=1, drop_remainder=False)
  train = sources.make_source(c, "train")
  val = sources.make_source(c, "validation")
  names = lambda s: {os.path.basename(v.path) for v in s.videos}
  assert names(train) | names(val) == {f"v{i}.mp4" for i in range(2, 6)}
  assert not names(train) & names(val) and names(train) and names(val)
  batches = list(pipeline.make_iterator(c, batch_size=2, process_index=0, process_count=1))
  assert sum(len(b["frames"]) for b in batches) == 2 * len(names(train))  # 2 clips per video
  assert batches[0]["frames"].shape[1:] == (2, 1, 8, 8, 3)


def test_clip_deep_in_a_video_is_read_by_seeking(tmp_path):
  path = str(tmp_path / "long.mp4")
  w = imageio.get_writer(path, fps=10, codec="libx264", quality=9, macro_block_size=16)
  for j in range(130):
    w.append_data(np.stack(np.broadcast_arrays(np.uint8(j % 32 * 8), np.uint8(j // 32 * 60),
                                               np.zeros((16, 16), np.uint8)), -1))
  w.close()
  src = video.VideoClipSource(str(tmp_path), num_frames=2, fps=5, image_size=(16, 16))
  assert len(src) == 32  # starts every 4 frames; the last clip (124, 126) ends before frame 130
  frames = src[28]["frames"][:, 0].reshape(2, -1, 3).mean(1)  # frames 112 and 114
  np.testing.assert_allclose(frames[:, 0], [112 % 32 * 8, 114 % 32 * 8], atol=3)
  np.testing.assert_allclose(frames[:, 1], [3 * 60, 3 * 60], atol=3)


def test_unreadable_videos_are_skipped_and_counted_or_named(tmp_path):
  root = str(tmp_path)
  _write(f"{root}/good.mp4", 6, 10, size=(16, 16))
  mp4.write_random_clips(root, 1, 6)
  data = open(f"{root}/clip0.mp4", "rb").read()
  open(f"{root}/truncated.mp4", "wb").write(data[:len(data) // 2])
  os.remove(f"{root}/clip0.mp4")
  open(f"{root}/notes.mp4", "w").write("not a video\n")
  c = defaults.data()
  c.update(source="video", path=root, num_frames=2, fps=10, image_height=8, image_width=8,
           shuffle=False, num_epochs=1, drop_remainder=False)
  with pytest.raises(ValueError, match=r"cannot read video .*notes.mp4"):
    sources.make_source(c, "all")
  c.skip_bad_records = True
  it = pipeline.make_iterator(c, batch_size=2, split="all", process_index=0, process_count=1)
  assert sum(len(b["frames"]) for b in it) == 3  # good.mp4: frames 0-1, 2-3, 4-5
  assert it.bad_records == 2
  notes = "\n".join(it.bad_record_notes)
  assert "notes.mp4" in notes and "truncated.mp4" in notes
  only_bad = str(tmp_path / "none")
  os.makedirs(only_bad)
  shutil.copy(f"{root}/notes.mp4", only_bad)
  with pytest.raises(ValueError, match=r"no readable videos under .*none.*notes.mp4"):
    video.VideoClipSource(only_bad, num_frames=2, fps=10, image_size=(8, 8), skip_bad_files=True)
