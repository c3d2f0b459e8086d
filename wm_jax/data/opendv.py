"""OpenDV-style driving videos with a JSON clip index -> single-view clips with a command label.

    source = OpenDVSource('/data/opendv', index='opendv_index.json', num_frames=25, fps=10,
                          image_size=(288, 512), split='train')
    record = source[i]           # {'frames' [T,1,H,W,3] uint8, 'command' [T] int32, 'fps',
                                 #  'view_adjacency' [1,1]}
    source.clip_info(i)          # entry number, video, times, cmd, caption ('blip') of record i

The real data (what this format follows). OpenDV-YouTube (GenAD, CVPR 2024; the OpenDriveLab
DriveAGI repository, opendv/) ships no frames, only metadata and annotations:
  - meta/OpenDV-YouTube.json (scripts/meta_preprocess.py of the project's sheet): one object per
    video with the sheet's columns lower-cased and renamed, among them "id", "youtuber",
    "videoid", "split" ("Train" / "Val"), "subset" ("Mini" marks OpenDV-mini), "area",
    "state", "duration" ("HH:MM:SS"), "length" (seconds), "start_discard" and "end_discard"
    (seconds cut from the start and end of the video). Videos download to
    videos/<youtuber, spaces as _>/<videoid>.{mp4,webm,mkv} and are cut (scripts/video2img.py)
    into 10 Hz JPEG frames <split image root>/<youtuber>/<videoid>/<9-digit index>.jpg, index 0
    at start_discard.
  - OpenDV-YouTube-Language (Hugging Face; 10hz_YouTube_train_split{0..9}.json and
    10hz_YouTube_val.json): a JSON list with one object per clip: "cmd" (int, the ego's command
    over the clip), "blip" (str, a BLIP-2 caption of the clip's centre frame), "folder" (the image
    folder, relative to the data root; Vista's loader calls it "folder_name"), "first_frame" and
    "last_frame" (file names in that folder, both frames part of the clip).
  - The "cmd" vocabulary (DriveAGI opendv/utils/cmd2caption.py): 0 go straight, 1 pass the
    intersection, 2 turn left, 3 turn right, 4 change to the left lane, 5 change to the right
    lane, 6 take the left lane branch, 7 take the right lane branch, 8 pass the crosswalk,
    9 pass the railroad, 10 merge, 11 make a U-turn, 12 stop, 13 deviate.
  Vista (OpenDriveLab/Vista vwm/data/subsets/youtube.py) makes one sample per annotation: the
  num_frames consecutive 10 Hz frames from first_frame on.

This index: the language annotations' list, with the image folder replaced by the video it was cut
from, so no frames need extracting. ROOT/<index> (config.data.path, config.data.opendv_index) is
a JSON list of objects, one per clip (entry n = position n in the list, from 0):

  field          type, unit           meaning
  video          str                  the video file (any format ffmpeg reads), relative to
                                      ROOT or absolute; OpenDV: videos/<youtuber>/<videoid>.<ext>
  first_frame    int >= 0, or a       first frame of the clip, counted at `fps` from
                 name "000000123.jpg" start_discard (the real annotations' file names are
                                      accepted: their digits are the index)
  last_frame     as first_frame       last frame of the clip (part of it); > first_frame
  fps            number > 0, Hz       the rate first_frame / last_frame count at (OpenDV: 10)
  cmd            int in 0..13         the OpenDV command of the clip (table below)
  blip           str, optional        a caption of the clip (OpenDV: of its centre frame)
  start_discard  number >= 0, s,      where frame 0 of the count lies in the video (OpenDV:
                 optional (0)         the video's start_discard in OpenDV-YouTube.json)
  split          "train" / "val",     the clip's split, any case ("Train" / "Val" as in
                 optional             OpenDV-YouTube.json; "validation" too); without it the
                                      split is splits.in_validation of `video` (val_fraction),
                                      so every clip of a video lands in the same split
Other fields are allowed and ignored. Frame i of an entry is at time start_discard + i / fps s
of its video. (video2img.py took video frame int(start_discard * r) + round(i * r / 10) of a
video at r fps; the nearest frame, used here, is the same frame or its neighbour.)

Records: one per window of num_frames frames at config fps (data.fps) inside an entry, as
VideoClipSource cuts a video: window k starts at t0 + k * clip_stride / fps (t0 the time of
first_frame; clip_stride 0 = num_frames) and takes the video frame nearest to each of its times
start + t / fps (video.frame_at), t < T; a window is kept when its last time is at most that of
last_frame. An entry shorter than (num_frames - 1) / fps gives none and is a bad entry. Real
clips shorter than two windows give one record each, Vista's sample. fps above a video's frame
rate would repeat frames and raises unless allow_upsample. Frames are resized to cover image_size
and centre-cropped (video.resize_crop).

`command` [T] int32 is the entry's label mapped to schema.COMMANDS, the same for every frame
(OpenDV labels clips, not frames; wm_jax's per-frame command looks K frames ahead, data/actions.py):

  cmd  OpenDV label           command    cmd  OpenDV label              command
   0   go straight            straight    7   right lane branch         right
   1   pass the intersection  straight    8   pass the crosswalk        straight
   2   turn left              left        9   pass the railroad         straight
   3   turn right             right      10   merge                     straight (no side given)
   4   change to left lane    left       11   U-turn                    left (right-hand traffic)
   5   change to right lane   right      12   stop                      stop
   6   left lane branch       left       13   deviate                   straight (no side given)

Lane changes and branches map to left / right as actions.py's thresholds see them (the end point
of the trajectory lies off to that side). A video carries no ego motion: records have no actions,
trajectory, goal_point, poses or calibration; schema.validate accepts `command` without them. The
schema has no string key, so captions stay out of the records: clip_info(i)['caption'].

Reading. The index is read and checked once, when the source is built; no video is opened (nor
looked for) until a record of it is read. A bad entry (not an object, a field missing, of the
wrong type or out of range, first_frame >= last_frame, an unknown cmd or split, too short for a
window) raises ValueError naming the index file, the entry number and the field with its value,
when the source is built. A missing or unreadable video, or a window past the video's end, raises
the same way (field 'video') when a record of that entry is read. With skip_bad_entries
(config.data.skip_bad_records) a bad entry is left out of the windows and stands as one index
after them whose reading raises its error, so the pipeline skips and counts it as a bad record
(records.py, bad_records.py), as video.py does an unreadable file; a bad entry whose split cannot
be told (no usable split or video field) stands in every split. Records of a missing video are
skipped and counted one by one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re

import numpy as np

from wm_jax.data import records, schema, video
from wm_jax.data.splits import in_validation

INDEX_NAME = "opendv_index.json"  # default index file name, in the data set root

# OpenDV-YouTube's "cmd" vocabulary (DriveAGI opendv/utils/cmd2caption.py), as
# (label, schema.COMMANDS name); see the module docstring for the choices.
OPENDV_COMMANDS = (
    ("go straight", "straight"),
    ("pass the intersection", "straight"),
    ("turn left", "left"),
    ("turn right", "right"),
    ("change to the left lane", "left"),
    ("change to the right lane", "right"),
    ("take the left lane branch", "left"),
    ("take the right lane branch", "right"),
    ("pass the crosswalk", "straight"),
    ("pass the railroad", "straight"),
    ("merge", "straight"),
    ("make a U-turn", "left"),
    ("stop", "stop"),
    ("deviate", "straight"),
)
# cmd -> index into schema.COMMANDS
COMMAND_OF_CMD = tuple(schema.COMMANDS.index(name) for _, name in OPENDV_COMMANDS)
# schema.COMMANDS index -> the cmd a writer labels it with (the first cmd that maps to it)
CMD_OF_COMMAND = tuple(COMMAND_OF_CMD.index(c) for c in range(len(schema.COMMANDS)))

REQUIRED = ("video", "first_frame", "last_frame", "fps", "cmd")
SPLITS = {"train": "train", "val": "val", "validation": "val"}
_FRAME_NAME = re.compile(r"^(\d+)(\.[A-Za-z0-9]+)?$")


class BadEntry(ValueError):
  """An index entry that cannot be read; the message names the index file, entry and field."""


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def frame_number(value):
  """A frame index from an int >= 0 or a frame file name such as '000000123.jpg'; None if not."""
  if isinstance(value, int) and not isinstance(value, bool):
    return value if value >= 0 else None
  if isinstance(value, str):
    m = _FRAME_NAME.match(value)
    return int(m.group(1)) if m else None
  return None


def parse_entry(entry, where: str) -> dict:
  """The checked fields of one index entry (see the module docstring); `where` ('FILE: entry N')
  starts every error message. Returns {'video', 'first', 'last', 'fps', 'cmd', 'caption',
  'start_discard', 'split' (None when absent)}; raises BadEntry."""
  if not isinstance(entry, dict):
    raise BadEntry(f"{where}: is {type(entry).__name__} {entry!r:.80}, not an object with "
                   f"fields {list(REQUIRED)}")
  for field in REQUIRED:
    if field not in entry:
      raise BadEntry(f"{where}: missing field {field!r} (it has {sorted(entry)})")
  bad = lambda field, why: BadEntry(f"{where}: field {field!r} = {entry[field]!r} {why}")
  if not isinstance(entry["video"], str) or not entry["video"]:
    raise bad("video", "is not a file path")
  first, last = frame_number(entry["first_frame"]), frame_number(entry["last_frame"])
  for field, value in (("first_frame", first), ("last_frame", last)):
    if value is None:
      raise bad(field, "is not a frame index >= 0 or a frame file name like '000000123.jpg'")
  if first >= last:
    raise bad("last_frame", f"is not after first_frame = {entry['first_frame']!r} "
                            "(start >= end)")
  if not _number(entry["fps"]) or entry["fps"] <= 0:
    raise bad("fps", "is not a positive frame rate")
  cmd = entry["cmd"]
  if not isinstance(cmd, int) or isinstance(cmd, bool) or not 0 <= cmd < len(OPENDV_COMMANDS):
    raise bad("cmd", f"is not an OpenDV command 0..{len(OPENDV_COMMANDS) - 1}")
  caption = entry.get("blip", "")
  if not isinstance(caption, str):
    raise bad("blip", "is not a string")
  discard = entry.get("start_discard", 0)
  if not _number(discard) or discard < 0:
    raise bad("start_discard", "is not a time >= 0 s")
  split = entry.get("split")
  if split is not None:
    if not isinstance(split, str) or split.lower() not in SPLITS:
      raise bad("split", f"is not one of {sorted(SPLITS)} (any case)")
    split = SPLITS[split.lower()]
  return {"video": entry["video"], "first": first, "last": last, "fps": float(entry["fps"]),
          "cmd": cmd, "caption": caption, "start_discard": float(discard), "split": split}


def read_index(path: str) -> list:
  """The index file's list of entries (the whole file, read once)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"OpenDV index {path} does not exist")
  try:
    with open(path, encoding="utf-8") as f:
      entries = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"cannot read OpenDV index {path}: {type(e).__name__}: {e}") from e
  if not isinstance(entries, list):
    raise ValueError(f"OpenDV index {path} holds a {type(entries).__name__}, not a list of "
                     "clip objects")
  return entries


def _guess_split(entry, val_fraction: float):
  """The split of a bad entry where it can be told from its fields, else None (every split)."""
  if isinstance(entry, dict):
    split = entry.get("split")
    if isinstance(split, str) and split.lower() in SPLITS:
      return SPLITS[split.lower()]
    if split is None and isinstance(entry.get("video"), str):
      return "val" if in_validation(entry["video"], val_fraction) else "train"
  return None


class OpenDVSource:
  """Random-access single-view clips of the entries of an OpenDV-style index (module docstring)."""

  def __init__(self, root: str, *, num_frames: int, fps: float, image_size: tuple[int, int],
               index: str = INDEX_NAME, clip_stride: int = 0, split: str = "all",
               val_fraction: float = 0.15, allow_upsample: bool = False,
               skip_bad_entries: bool = False, name: str | None = None):
    if num_frames < 1 or fps <= 0:
      raise ValueError(f"need num_frames >= 1 and fps > 0, got {num_frames}, {fps}")
    if split not in ("train", "validation", "val", "all"):
      raise ValueError(f"unknown split {split!r}; use 'train', 'validation' or 'all'")
    self.root, self.num_frames, self.fps = root, int(num_frames), float(fps)
    self.image_size = tuple(int(s) for s in image_size)
    self.clip_stride = int(clip_stride) or self.num_frames
    self.allow_upsample = bool(allow_upsample)
    self.index_path = index if os.path.isabs(index) else os.path.join(root, index)
    self.name = name or f"opendv:{self.index_path}:{split}"
    want = {"train": "train", "all": None}.get(split, "val")
    entries = read_index(self.index_path)
    self.entries = []  # (entry number, parsed fields) of the good entries of the split
    self.windows = []  # (position in self.entries, start time in seconds)
    self.bad_entries = []  # (entry number, message) of the bad entries of the split
    for n, entry in enumerate(entries):
      where = f"{self.index_path}: entry {n}"
      try:
        e = parse_entry(entry, where)
        e_split = e["split"] or ("val" if in_validation(e["video"], val_fraction) else "train")
        if want is not None and e_split != want:
          continue
        e["split"] = e_split
        starts = self._window_starts(e, where)
      except BadEntry as err:
        if not skip_bad_entries:
          raise
        e_split = _guess_split(entry, val_fraction)
        if want is None or e_split in (None, want):
          logging.warning("skipping bad OpenDV index entry: %s", err)
          self.bad_entries.append((n, str(err)))
        continue
      self.windows += [(len(self.entries), s) for s in starts]
      self.entries.append((n, e))
    if not self.windows and not self.bad_entries:
      raise ValueError(f"split {split!r} of OpenDV index {self.index_path} has no clips "
                       f"({len(entries)} entries, val_fraction={val_fraction})")
    self._video_fps = {}  # video path -> frame rate, filled as records are read

  @classmethod
  def from_config(cls, config, split: str = "train"):
    return cls(config.path, num_frames=config.num_frames, fps=config.fps,
               image_size=(config.image_height, config.image_width),
               index=config.opendv_index, clip_stride=config.clip_stride, split=split,
               val_fraction=config.val_fraction, skip_bad_entries=config.skip_bad_records)

  def _window_starts(self, e: dict, where: str) -> list[float]:
    t0 = e["start_discard"] + e["first"] / e["fps"]
    span = (e["last"] - e["first"]) / e["fps"]
    need = (self.num_frames - 1) / self.fps
    if span + 1e-6 < need:
      raise BadEntry(f"{where}: field 'last_frame' = {e['last']} gives a clip of {span:.6g} s "
                     f"(frames {e['first']}..{e['last']} at {e['fps']:g} fps), shorter than the "
                     f"{need:.6g} s of num_frames={self.num_frames} at fps={self.fps:g}")
    count = int(math.floor((span - need) * self.fps / self.clip_stride + 1e-6)) + 1
    return [t0 + k * self.clip_stride / self.fps for k in range(count)]

  def __len__(self):
    return len(self.windows) + len(self.bad_entries)

  def _window(self, index: int):
    index = records.good_index(self.name, index, len(self.windows), self.bad_entries, BadEntry)
    position, start = self.windows[index]
    n, e = self.entries[position]
    return n, e, start

  def clip_info(self, index: int) -> dict:
    """What the index says of record `index`: {'entry' (number in the index), 'video' (path),
    'start' (s, the window's first time in the video), 'cmd', 'label' (OpenDV's), 'command'
    (schema.COMMANDS name), 'caption' (the entry's blip), 'split'}. Opens no video."""
    n, e, start = self._window(index)
    label, command = OPENDV_COMMANDS[e["cmd"]]
    return {"entry": n, "video": self.video_path(e), "start": start, "cmd": e["cmd"],
            "label": label, "command": command, "caption": e["caption"], "split": e["split"]}

  def video_path(self, e: dict) -> str:
    return e["video"] if os.path.isabs(e["video"]) else os.path.join(self.root, e["video"])

  def frame_times(self, index: int) -> np.ndarray:
    """Times [T] (s) in its video of the frames of record `index`."""
    _, _, start = self._window(index)
    return start + np.arange(self.num_frames) / self.fps

  def __getitem__(self, index):
    n, e, _ = self._window(index)
    where = f"{self.index_path}: entry {n}: field 'video' = {e['video']!r}"
    path = self.video_path(e)
    if not os.path.isfile(path):
      raise ValueError(f"{where}: no such file {path}")
    try:
      if path not in self._video_fps:
        self._video_fps[path] = video.frame_rate(path)
      rate = self._video_fps[path]
      if self.fps > rate * 1.01 and not self.allow_upsample:
        raise ValueError(f"fps={self.fps:g} exceeds the frame rate {rate:g} of video {path}")
      frames = video.read_frames(path, video.frame_at(self.frame_times(index), rate))
    except (OSError, ValueError) as err:
      raise ValueError(f"{where}: {err}") from err
    return {"frames": video.single_view(frames, self.image_size), "fps": np.float32(self.fps),
            "command": np.full(self.num_frames, COMMAND_OF_CMD[e["cmd"]], np.int32),
            "view_adjacency": np.ones((1, 1), bool)}
