"""Writes synthetic scenes as an OpenDV-style data set: front-camera videos and a JSON clip index.

    scenes = [world.make_scene(0, "boston", manoeuvre="turn_left"), world.make_scene(2, "boston")]
    write_opendv("/tmp/opendv_syn", scenes, image_size=(64, 128), num_frames=40, fps=10.0,
                 clip_frames=10)

Layout on disk (what data/opendv.py reads; OpenDV-YouTube keeps videos/<youtuber>/<videoid>):

  OUT/videos/synthetic_<domain>/scene<NNNN>_seed<seed>.mp4   one video per scene: num_frames
                                                             frames at fps, front camera
  OUT/<index_name> (opendv.INDEX_NAME)                       the clip index, a JSON list

Videos: render.render_clip of the scene with rig 'front' at image_size (H, W), the ego driving its
plan (world.autopilot), encoded by imageio's ffmpeg writer with libx264 at `quality` (imageio's
0..10 scale) in `pixel_format` ('yuv420p', as YouTube's videos, halves the chroma resolution;
'yuv444p' keeps it). H and W must be even.

Index: each video is cut into consecutive clips of clip_frames frames (num_frames // clip_frames
clips; frames left over at the end belong to none, as OpenDV leaves video ends unannotated). The
entry of a clip of video frames a..b: video, first_frame a, last_frame b, fps, start_discard 0,
cmd, blip, split (when given), plus youtuber / videoid as in OpenDV-YouTube.json. Its command is
the clip's own: clip_command of the ego poses of frames a..b (actions.trajectory_commands of the
trajectory from frame a through frame b), written as the OpenDV cmd opendv.CMD_OF_COMMAND gives
it (straight 0, left 2, right 3, stop 12), so a reader maps it back to the same command. The
caption names the domain, its traffic side, the scene's planned manoeuvre and the clip's command.
"""

from __future__ import annotations

import json
import os

import imageio.v2 as imageio
import numpy as np

from wm_jax.data import actions as actions_lib
from wm_jax.data import opendv, schema
from wm_jax.data.synthetic import render, world


def clip_command(poses) -> int:
  """schema.COMMANDS index of a clip from its ego poses [n,4,4] (n >= 2, world-from-ego): the
  command actions.py gives the trajectory of frames 1..n-1 seen from frame 0."""
  poses = np.asarray(poses, np.float64)
  if poses.ndim != 3 or len(poses) < 2:
    raise ValueError(f"a clip's command needs poses [n>=2,4,4], got {list(poses.shape)}")
  trajectory = actions_lib.relative_trajectory(poses, len(poses) - 1)  # [1,n-1,2]
  return int(actions_lib.trajectory_commands(trajectory)[0])


def caption(scene: world.SceneSpec, command: int) -> str:
  """A short description of a clip of `scene` whose command is `command`."""
  side = "right" if scene.domain.traffic_side > 0 else "left"
  plan = scene.ego_plan.manoeuvre.replace("_", " ")
  return (f"a drive in {scene.domain.name} ({side}-hand traffic), planned manoeuvre: {plan}; "
          f"this clip: {schema.COMMANDS[command]}")


def write_video(path: str, frames: np.ndarray, fps: float, *, quality: int = 9,
                pixel_format: str = "yuv420p") -> None:
  """frames [T,H,W,3] uint8 -> an H.264 mp4 at `path` (folders made as needed)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  writer = imageio.get_writer(path, fps=fps, codec="libx264", quality=quality,
                              pixelformat=pixel_format, macro_block_size=2)
  try:
    for frame in frames:
      writer.append_data(np.asarray(frame, np.uint8))
  finally:
    writer.close()


def write_opendv(out_dir, scenes, *, image_size=(64, 128), num_frames: int = 40,
                 fps: float = 10.0, clip_frames: int | None = None, split=None,
                 index_name: str = opendv.INDEX_NAME, quality: int = 9,
                 pixel_format: str = "yuv420p", verbose: bool = False) -> dict:
  """Renders `scenes` (world.SceneSpec list) to videos and writes their clip index.

  Args:
    image_size: (H, W), both even.
    num_frames: frames per video, 1 / fps apart.
    clip_frames: frames per index entry (>= 2; None = num_frames: one clip per video).
    split: None (entries carry no split: the reader hashes the video path), 'train' / 'val' for
      every entry, or a sequence with one per scene.
  Returns {'out_dir', 'index' (path), 'videos' (paths relative to out_dir, one per scene),
  'entries' (the index's list), 'num_frames', 'fps'}.
  """
  h, w = (int(s) for s in image_size)
  if h <= 0 or w <= 0 or h % 2 or w % 2:
    raise ValueError(f"image_size must be positive and even (H.264), got {image_size}")
  if num_frames < 2 or not fps > 0:
    raise ValueError(f"need num_frames >= 2 and fps > 0, got {num_frames}, {fps}")
  clip_frames = int(clip_frames or num_frames)
  if not 2 <= clip_frames <= num_frames:
    raise ValueError(f"clip_frames must lie in [2, num_frames={num_frames}], got {clip_frames}")
  scenes = list(scenes)
  splits = [split] * len(scenes) if split is None or isinstance(split, str) else list(split)
  if len(splits) != len(scenes):
    raise ValueError(f"split has {len(splits)} values for {len(scenes)} scenes")
  for s in splits:
    if s is not None and s.lower() not in opendv.SPLITS:
      raise ValueError(f"split {s!r} is not one of {sorted(opendv.SPLITS)}")
  videos, entries = [], []
  for si, (scene, scene_split) in enumerate(zip(scenes, splits)):
    youtuber, videoid = f"synthetic_{scene.domain.name}", f"scene{si:04d}_seed{scene.seed}"
    rel = f"videos/{youtuber}/{videoid}.mp4"
    if verbose:
      print(f"[export_opendv] {rel}: {num_frames} frames at {h}x{w}, {fps:g} fps", flush=True)
    speed, steering = world.autopilot(scene, num_frames, fps)
    poses = render.ego_poses(scene, speed, steering, fps)
    rec = render.render_clip(scene, "front", num_frames=num_frames, fps=fps, image_size=(h, w),
                             actions=np.stack([speed, steering], -1), layout=False)
    write_video(os.path.join(out_dir, rel), rec["frames"][:, 0], fps, quality=quality,
                pixel_format=pixel_format)
    videos.append(rel)
    for a in range(0, num_frames - clip_frames + 1, clip_frames):
      b = a + clip_frames - 1
      command = clip_command(poses[a:b + 1])
      entry = {"video": rel, "first_frame": a, "last_frame": b, "fps": float(fps),
               "start_discard": 0.0, "cmd": opendv.CMD_OF_COMMAND[command],
               "blip": caption(scene, command), "youtuber": youtuber, "videoid": videoid}
      if scene_split is not None:
        entry["split"] = scene_split
      entries.append(entry)
  index = os.path.join(out_dir, index_name)
  os.makedirs(os.path.dirname(index) or ".", exist_ok=True)
  with open(index, "w", encoding="utf-8") as f:
    json.dump(entries, f, indent=1)
  return {"out_dir": str(out_dir), "index": index, "videos": videos, "entries": entries,
          "num_frames": int(num_frames), "fps": float(fps)}
