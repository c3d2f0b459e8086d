"""TFDS ArrayRecord caches: build, read back through tfds_cache.data_source, feed the pipeline."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.data import mp4
from wm_jax import defaults
from wm_jax.data import pipeline, sources, tfds_builders, tfds_cache


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("videos"))
  mp4.write_random_clips(root, clips=3, frames=6)
  return root


def _config(root):
  c = defaults.data()
  c.update(source="video", path=root, num_frames=2, fps=5, image_height=8, image_width=16,
           val_fraction=0.0)
  return c


def _pool8(frames):
  """A real (if trivial) encoder: 8x8 mean pooling to one float channel per colour."""
  t, v, h, w, _ = frames.shape
  return frames.reshape(t, v, h // 8, 8, w // 8, 8, 3).mean((3, 5)).astype(np.float32) / 255.0


def test_build_and_read_back_equals_source_records(videos, tmp_path):
  config = _config(videos)
  data_dir = str(tmp_path)
  builder = tfds_builders.make_builder("video", config, name="tiny", data_dir=data_dir,
                                       splits=("train",))
  builder.download_and_prepare()
  assert any(f.endswith(tuple(f"{i:05d}" for i in range(100))) and "array_record" in f
             for f in os.listdir(builder.data_dir))
  cached = tfds_cache.data_source("wm_video/tiny", split="train", data_dir=data_dir)
  source = sources.make_source(config, "train")
  assert len(cached) == len(source) == 3  # one 2-frame clip at 5 fps per 6-frame video
  for i in range(len(source)):
    want, got = source[i], cached[i]
    assert sorted(got) == sorted(want)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
      assert got[key].dtype == np.asarray(want[key]).dtype, key
  # The pipeline reads the cache as a random-access Grain source.
  c = config.copy_and_resolve_references()
  c.update(source="tfds", tfds_name="wm_video/tiny", path=data_dir, shuffle=False, num_epochs=1,
           drop_remainder=False)
  batches = list(pipeline.make_iterator(c, batch_size=2, process_index=0, process_count=1))
  np.testing.assert_array_equal(batches[1]["frames"][0], source[2]["frames"])


def test_latent_cache_holds_encoded_frames(videos, tmp_path):
  config = _config(videos)
  builder = tfds_builders.make_builder("video", config, name="lat", data_dir=str(tmp_path),
                                       splits=("train",), max_examples=2, encode_fn=_pool8)
  builder.download_and_prepare()
  cached = tfds_cache.data_source("wm_video/lat", split="train", data_dir=str(tmp_path))
  source = sources.make_source(config, "train")
  assert len(cached) == 2
  got = cached[1]
  assert "frames" not in got and got["latents"].shape == (2, 1, 1, 2, 3)
  np.testing.assert_allclose(got["latents"], _pool8(source[1]["frames"]), rtol=1e-6)


def test_missing_cache_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="wm_video/none"):
    tfds_cache.data_source("wm_video/none", split="train", data_dir=str(tmp_path))


def test_make_dataset_tool_builds_a_readable_cache(videos, tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run(
      [sys.executable, os.path.join(repo, "tools", "make_dataset.py"), "--builder=video",
       "--name=tool", f"--data_dir={tmp_path}", f"--data.path={videos}", "--data.num_frames=2",
       "--data.fps=5", "--data.image_height=8", "--data.image_width=16",
       "--data.val_fraction=0", "--splits=train"],
      capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert "train: 3 records" in out.stdout and "wm_video/tool" in out.stdout
  cached = tfds_cache.data_source("wm_video/tool", split="train", data_dir=str(tmp_path))
  assert cached[2]["frames"].shape == (2, 1, 8, 16, 3)
