"""OpenDV-style index: write_opendv (synthetic videos + index) -> OpenDVSource round trip, lazy
video reading, bad entries named or skipped and counted.

Two synthetic scenes (a left turn in boston, a stop in singapore), 40 frames each at 10 fps and
32x64, cut into 4 clips of 10 frames per video. Ground truth comes from the world (autopilot
controls, integrated poses, render_clip's frames), not from the written files.
"""

import copy
import json
import os
import shutil

import numpy as np
import pytest

from wm_jax import defaults
from wm_jax.data import actions as actions_lib
from wm_jax.data import opendv, pipeline, schema, sources, video
from wm_jax.data.synthetic import export_opendv, render, world

SIZE, FRAMES, FPS, CLIP = (32, 64), 40, 10.0, 10
# H.264 (yuv420p, imageio quality 9) on these 32x64 renders, measured per clip: mean |error|
# 1.9-2.4 levels and PSNR 35-38 dB (boston), 3.4-3.7 levels and 32 dB (singapore's sunlit contrast).
MAX_MEAN_ERROR, MIN_PSNR = 5.0, 30.0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("opendv_syn"))
  scenes = [world.make_scene(0, "boston", manoeuvre="turn_left"),
            world.make_scene(2, "singapore", manoeuvre="stop")]
  out = export_opendv.write_opendv(root, scenes, image_size=SIZE, num_frames=FRAMES, fps=FPS,
                                   clip_frames=CLIP, split=["train", "Val"])
  truth = []
  for scene in scenes:
    speed, steering = world.autopilot(scene, FRAMES, FPS)
    rec = render.render_clip(scene, "front", num_frames=FRAMES, fps=FPS, image_size=SIZE,
                             actions=np.stack([speed, steering], -1), layout=False)
    truth.append((rec["frames"][:, 0], render.ego_poses(scene, speed, steering, FPS)))
  return root, out, truth


def _source(root, **kw):
  args = dict(num_frames=CLIP, fps=FPS, image_size=SIZE)
  args.update(kw)
  return opendv.OpenDVSource(root, **args)


def _close(got, want):
  """Asserts decoded frames [T,H,W,3] match rendered ones within the compression tolerance."""
  err = got.astype(np.float64) - want
  assert np.abs(err).mean() <= MAX_MEAN_ERROR, np.abs(err).mean()
  assert 10 * np.log10(255.0**2 / (err**2).mean()) >= MIN_PSNR


def _write_index(root, name, entries):
  with open(os.path.join(root, name), "w") as f:
    json.dump(entries, f)
  return name


def test_roundtrip_frames_commands_fps_and_captions(exported):
  root, out, truth = exported
  src = _source(root)
  assert len(src) == 8  # 2 videos x 4 entries of 10 frames, one 10-frame window each
  commands = set()
  for i in range(len(src)):
    r = src[i]
    schema.validate(r, source="roundtrip", index=i)
    assert set(r) == {"frames", "fps", "command", "view_adjacency"}  # no ego motion but command
    assert r["frames"].shape == (CLIP, 1, *SIZE, 3) and r["fps"] == FPS
    frames, poses = truth[i // 4]
    a = (i % 4) * CLIP
    _close(r["frames"][:, 0], frames[a:a + CLIP])
    # The clip's command, from the world's poses of its frames a..a+9 (trajectory of frame a).
    trajectory = actions_lib.relative_trajectory(poses[a:a + CLIP], CLIP - 1)
    want = int(actions_lib.trajectory_commands(trajectory)[0])
    np.testing.assert_array_equal(r["command"], np.full(CLIP, want, np.int32))
    commands.add(want)
    info = src.clip_info(i)
    assert info["entry"] == i and info["command"] == schema.COMMANDS[want]
    assert info["cmd"] == out["entries"][i]["cmd"] == opendv.CMD_OF_COMMAND[want]
    assert ("boston" if i < 4 else "singapore") in info["caption"]
    assert ("turn left" if i < 4 else "stop") in info["caption"]
  assert commands == {schema.COMMANDS.index(c) for c in ("straight", "left", "stop")}


def test_fps_resampling_and_windows(exported):
  root, _, truth = exported
  half = _source(root, num_frames=5, fps=5.0)  # 5 frames 0.2 s apart fit a 0.9 s entry once
  assert len(half) == 8
  frames, _ = truth[0]
  got = half[1]["frames"][:, 0]
  _close(got, frames[10:20:2])
  # Each decoded frame is nearest to the rendered frame it stands for (the ego moves ~0.5 m per
  # frame here, so neighbours differ by 9-12 levels against ~2 for the right frame).
  nearest = [int(np.argmin(np.abs(frames.astype(float) - g).mean((1, 2, 3)))) for g in got]
  assert nearest == [10, 12, 14, 16, 18]
  np.testing.assert_allclose(half.frame_times(1), [1.0, 1.2, 1.4, 1.6, 1.8], atol=1e-9)
  windows = _source(root, num_frames=4, clip_stride=3)  # starts 0, 0.3, 0.6 s into each entry
  assert len(windows) == 24
  np.testing.assert_allclose(windows.frame_times(4)[[0, -1]], [1.3, 1.6], atol=1e-9)
  _close(windows[4]["frames"][:, 0], frames[13:17])
  with pytest.raises(ValueError, match=r"entry 0: field 'last_frame' = 9 .*shorter than"):
    _source(root, num_frames=11)
  with pytest.raises(ValueError, match=r"entry 0: field 'video' .*fps=20 exceeds .* rate 10"):
    _source(root, num_frames=4, fps=20.0)[0]


def test_start_discard_and_frame_file_names(exported):
  root, out, _ = exported
  entries = copy.deepcopy(out["entries"][:2])
  entries[1].update(first_frame="000000005.jpg", last_frame="000000014.jpg", start_discard=0.5)
  src = _source(root, index=_write_index(root, "discard.json", entries))
  ref = _source(root)
  np.testing.assert_array_equal(src[1]["frames"], ref[1]["frames"])  # the same video frames


def test_splits_from_entries_or_by_video(exported):
  root, out, _ = exported
  train, val = _source(root, split="train"), _source(root, split="validation")
  assert [train.clip_info(i)["entry"] for i in range(len(train))] == [0, 1, 2, 3]
  assert [val.clip_info(i)["entry"] for i in range(len(val))] == [4, 5, 6, 7]
  entries = copy.deepcopy(out["entries"])
  for e in entries:
    del e["split"]
  name = _write_index(root, "nosplit.json", entries)
  videos = lambda s: {s.clip_info(i)["video"] for i in range(len(s))}
  # splits.in_validation: CRC32 of the video path mod 10000 is 3161 for boston's, 1266 for
  # singapore's, so at val_fraction 0.2 the singapore video is in validation, boston's in train.
  a = _source(root, index=name, split="train", val_fraction=0.2)
  b = _source(root, index=name, split="validation", val_fraction=0.2)
  assert len(a) == len(b) == 4
  assert videos(a) == {os.path.join(root, out["videos"][0])}
  assert videos(b) == {os.path.join(root, out["videos"][1])}


def test_videos_are_opened_only_when_read(exported, monkeypatch):
  root, out, _ = exported
  entries = copy.deepcopy(out["entries"][:2])
  entries[1]["video"] = "videos/nowhere/missing.mp4"
  name = _write_index(root, "lazy.json", entries)
  opened = []
  real_rate, real_read = video.frame_rate, video.read_frames
  monkeypatch.setattr(video, "frame_rate", lambda p: opened.append(p) or real_rate(p))
  monkeypatch.setattr(video, "read_frames", lambda p, i: opened.append(p) or real_read(p, i))
  src = _source(root, index=name)  # a missing video does not fail the build
  assert len(src) == 2 and opened == []
  assert src[0]["frames"].shape == (CLIP, 1, *SIZE, 3) and len(opened) == 2
  with pytest.raises(ValueError, match=r"lazy\.json: entry 1: field 'video' = "
                                       r"'videos/nowhere/missing\.mp4': no such file"):
    src[1]
  with open(os.path.join(root, "videos", "notes.mp4"), "w") as f:
    f.write("not a video\n")
  entries += [dict(entries[0], video="videos/notes.mp4"),
              dict(entries[0], first_frame=35, last_frame=44)]  # past the 40-frame video's end
  src = _source(root, index=_write_index(root, "lazy2.json", entries))
  with pytest.raises(ValueError, match=r"lazy2\.json: entry 2: field 'video' = "
                                       r"'videos/notes\.mp4': cannot read video"):
    src[2]
  with pytest.raises(ValueError, match=r"lazy2\.json: entry 3: field 'video' = .* has no frame 40"):
    src[3]


BAD = [  # (mutation of entry 1, what the error names)
    (lambda e: e.pop("cmd"), r"missing field 'cmd'"),
    (lambda e: e.pop("video"), r"missing field 'video'"),
    (lambda e: e.update(cmd=14), r"field 'cmd' = 14 is not an OpenDV command"),
    (lambda e: e.update(cmd="left"), r"field 'cmd' = 'left' is not"),
    (lambda e: e.update(first_frame=9, last_frame=9), r"field 'last_frame' = 9 .*start >= end"),
    (lambda e: e.update(first_frame="frame.jpg"), r"field 'first_frame' = 'frame\.jpg'"),
    (lambda e: e.update(fps=0), r"field 'fps' = 0 is not a positive"),
    (lambda e: e.update(split="test"), r"field 'split' = 'test'"),
    (lambda e: e.update(start_discard=-1), r"field 'start_discard' = -1"),
    (lambda e: e.update(blip=3), r"field 'blip' = 3"),
]


@pytest.mark.parametrize("mutate,message", BAD)
def test_bad_entries_name_index_entry_and_field(exported, mutate, message):
  root, out, _ = exported
  entries = copy.deepcopy(out["entries"][:3])
  mutate(entries[1])
  name = _write_index(root, "bad.json", entries)
  with pytest.raises(ValueError, match=r"bad\.json: entry 1: " + message):
    _source(root, index=name)


def test_bad_index_files(exported):
  root, out, _ = exported
  with pytest.raises(ValueError, match=r"notalist\.json holds a dict"):
    _source(root, index=_write_index(root, "notalist.json", {"clips": out["entries"]}))
  with pytest.raises(ValueError, match=r"scalar\.json: entry 0: is int 7, not an object"):
    _source(root, index=_write_index(root, "scalar.json", [7]))
  with pytest.raises(FileNotFoundError, match=r"absent\.json"):
    _source(root, index="absent.json")


def test_bad_entries_skipped_and_counted(exported, tmp_path):
  root, out, _ = exported
  data = str(tmp_path / "data")
  shutil.copytree(os.path.join(root, "videos"), os.path.join(data, "videos"))
  entries = copy.deepcopy(out["entries"][:4])  # scene 0: 4 good entries
  entries[1]["cmd"] = 99
  del entries[2]["fps"]
  entries.append(dict(entries[0], video="videos/synthetic_boston/gone.mp4"))
  _write_index(data, opendv.INDEX_NAME, entries)
  c = defaults.data()
  c.update(source="opendv", path=data, num_frames=CLIP, fps=FPS, image_height=SIZE[0],
           image_width=SIZE[1], shuffle=False, num_epochs=1, drop_remainder=False)
  with pytest.raises(ValueError, match=r"opendv_index\.json: entry 1: field 'cmd' = 99"):
    sources.make_source(c, "train")
  c.skip_bad_records = True
  src = sources.make_source(c, "train")
  assert len(src) == 5 and [n for n, _ in src.bad_entries] == [1, 2]  # 3 windows + 2 bad
  it = pipeline.make_iterator(c, batch_size=2, split="train", process_index=0, process_count=1)
  assert sum(len(b["frames"]) for b in it) == 2  # entries 0 and 3
  assert it.bad_records == 3  # entries 1 and 2 (index), entry 4 (its video is missing)
  notes = "\n".join(it.bad_record_notes)
  for part in ("entry 1: field 'cmd' = 99", "entry 2: missing field 'fps'",
               "entry 4: field 'video' = 'videos/synthetic_boston/gone.mp4': no such file"):
    assert part in notes
