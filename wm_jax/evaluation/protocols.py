"""Named evaluation protocols: every choice that changes an FVD/FID number, written down as data.

A published FVD/FID is only comparable when the protocol matches; each `Protocol` below carries its
source and the settings that define it, and `settings()` is reported beside every number.

Sources (MaskGWM sec. 4.1 and appendix 7.3; OpenDWM's configs/ctsd):
  vista_nuscenes    MaskGWM single-view, following Vista: 25-frame clips with 1 reference frame on
                    the full nuScenes val set (5369 clips), 30 Euler steps, CFG 4.0; all generated
                    videos for FVD and their frames for FID. The reference (condition) frame is
                    excluded from both.
  drivewm_mview     MaskGWM multi-view, following Drive-WM: one 6-view video per nuScenes val
                    scene (150 scenes -> 900 single-view videos); FVD on the 900 videos, FID on 10K
                    frames drawn at random from them.
  opendwm_nuscenes  OpenDWM CTSD nuScenes eval: 3 reference frames, FVD on the first 16 generated
                    frames of each view as a separate video, FID on every generated frame; 256x448.
  waymo_zero_shot   MaskGWM Tab. 2: zero-shot generalisation, the nuScenes-trained model sampled on
                    600 Waymo validation clips of the front camera (data/waymo.py), 1 reference
                    frame, no actions; clip length, resolution, steps and CFG of vista_nuscenes.
  long_horizon      MaskGWM Fig. 6/7: autoregressive rollout (3 condition frames per step, no
                    action) on 300 videos; FVD/FID per 2.5 s window of 25 frames, giving the curve.
  synthetic         the built-in procedural world at configs/maskgwm_tiny.py's shapes (2 views x 4
                    frames, 64x128; a 3-step rollout reaches I3D's 9 frames), small counts for CPU.
  controllability   action sweeps on held-out synthetic scenes (kind 'controllability', see
                    evaluation/controllability.py): steering from hard right to hard left with the
                    noise fixed per scene -> image motion -> Spearman and sign-correct per action.

What the model sees: a world model predicts the future from the past and the actions, so every
protocol passes the model only the reference frames (as latents), the camera (intrinsics,
extrinsics, fps, view adjacency), text and, when `use_actions`, the actions (`actions` and the
trajectory / goal point / command derived from the ego's motion): `model_batch`. Inputs from the
frames being predicted (layout, boxes) pass only where `future_layout` is set, which only OpenDWM's
layout-to-video setting does; `check_model` refuses a model that needs an input its protocol
forbids (a layout adapter under a world-model protocol, action scalars under an action-free one).

Frame counts are in frames *generated per clip* (`clip_frames`, reference frames included);
`metric_frames` slices the frames the metrics see after the reference frames are dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from wm_jax.diffusion import rollout
from wm_jax.models import conditioning

KINDS = ("fidelity", "controllability")   # FVD/FID/KID of sampled clips | action sweeps


@dataclasses.dataclass(frozen=True)
class Protocol:
  name: str
  source: str
  dataset: str
  num_views: int                 # views generated per clip
  views_as_videos: bool          # each view is scored as its own video (multi-view protocols)
  clip_frames: int               # frames per generated clip, reference frames included
  reference_frames: int          # condition frames given to the sampler (tau = 0)
  exclude_reference: bool        # drop the reference frames before computing metrics
  num_clips: Optional[int]       # clips generated (None: every clip of the split)
  image_size: tuple              # (H, W) generated resolution
  fps: float
  sample_steps: int
  cfg_scale: float
  use_actions: bool
  # FVD (I3D Kinetics-400 logits, 224x224 TF1-bilinear, [-1, 1])
  fvd_frames: Optional[int]      # frames per FVD video after the reference cut (None: all)
  fvd_resize: str = "tf1"
  # FID (pytorch-fid InceptionV3 pool3, 299x299 torch-bilinear)
  fid_frames: Optional[int] = None   # random frames for FID (None: every frame)
  fid_resize: str = "torch"
  # KID on the FID features
  kid_subsets: int = 100
  kid_subset_size: int = 1000
  # long-horizon curve: FVD/FID per window of `window_frames` frames (0: one window = whole clip)
  window_frames: int = 0
  rollout_steps: int = 1
  seed: int = 0
  notes: str = ""
  # the model may see the layout (projected boxes, map) and boxes of the frames it predicts
  future_layout: bool = False
  kind: str = "fidelity"
  # controllability: commanded values swept on every predicted frame (() skips that action)
  steering_values: tuple = ()        # rad, positive = left
  speed_values: tuple = ()           # m/s
  steering_threshold: float = 0.5    # a scene responds when its shift ranges over more (px/frame)
  speed_threshold: float = 0.005     # ... when its expansion ranges over more (1/frame)
  strip_scenes: int = 3              # scenes whose frames are saved as one strip per action

  def __post_init__(self):
    if self.reference_frames >= self.clip_frames:
      raise ValueError(f"protocol {self.name}: reference_frames {self.reference_frames} must be < "
                       f"clip_frames {self.clip_frames}")
    if self.fvd_frames is not None and self.fvd_frames < 9:
      raise ValueError(f"protocol {self.name}: fvd_frames {self.fvd_frames} < 9, the fewest I3D "
                       "accepts")
    if self.kind not in KINDS:
      raise ValueError(f"protocol {self.name}: kind {self.kind!r} not in {KINDS}")
    if self.kind == "controllability":
      if not self.use_actions:
        raise ValueError(f"protocol {self.name}: a controllability protocol commands actions; "
                         "use_actions=False")
      if not (self.steering_values or self.speed_values):
        raise ValueError(f"protocol {self.name}: controllability sweeps nothing (steering_values "
                         "and speed_values are both empty)")
      for key in ("steering_values", "speed_values"):
        values = getattr(self, key)
        if values and len(set(values)) < 2:
          raise ValueError(f"protocol {self.name}: {key} {values} needs two distinct values or "
                           "none")

  @property
  def horizon_frames(self) -> int:
    """Frames of one generated clip, reference frames included (a whole rollout when
    rollout_steps > 1): the frames each held-out reference clip must hold."""
    return rollout.horizon_frames(self.rollout_steps, self.clip_frames, self.reference_frames)

  @property
  def metric_frames(self) -> int:
    """Frames per clip that the metrics see."""
    return self.horizon_frames - (self.reference_frames if self.exclude_reference else 0)

  def settings(self) -> dict:
    """Every setting, flat, to be written beside the numbers."""
    out = dataclasses.asdict(self)
    out["image_size"] = list(self.image_size)
    out["steering_values"] = list(self.steering_values)
    out["speed_values"] = list(self.speed_values)
    out["metric_frames"] = self.metric_frames
    out["model_inputs"] = sorted(self.model_inputs)
    return out

  @property
  def model_inputs(self) -> frozenset:
    """The batch keys the model may see under this protocol (see the module docstring)."""
    keys = set(CONTEXT_KEYS + CAMERA_KEYS + TEXT_KEYS)
    if self.use_actions:
      keys |= set(ACTION_KEYS)
    if self.future_layout:
      keys |= set(LAYOUT_KEYS)
    return frozenset(keys)


CONTEXT_KEYS = ("latents",)          # the reference frames; generate replaces the rest with noise
CAMERA_KEYS = ("intrinsics", "extrinsics", "fps", "view_adjacency")
TEXT_KEYS = ("text_embeddings", "pooled_text")
ACTION_KEYS = ("actions", "trajectory", "goal_point", "command")   # the ego's motion
LAYOUT_KEYS = ("layout", "boxes")    # of every frame, the predicted ones included


def model_batch(protocol: Protocol, batch: dict) -> dict:
  """The entries of `batch` the model may see under `protocol` (Protocol.model_inputs); frames,
  depth, ego poses and, unless the protocol allows them, actions and future layout stay out."""
  return {k: v for k, v in batch.items() if k in protocol.model_inputs}


def check_model(protocol: Protocol, model_config) -> None:
  """Refuses a model (config.model) that needs an input `protocol` forbids, naming both."""
  if not protocol.future_layout and model_config.layout_adapter is not None:
    raise ValueError(f"protocol {protocol.name!r} forbids future layout; the model has a layout "
                     "adapter (model.layout_adapter) and would see the layout of the frames it "
                     "predicts. Evaluate a model without it (model.layout_adapter=None), or under "
                     "a protocol with future_layout=True (a layout-to-video setting such as "
                     "opendwm_nuscenes)")
  embeds_actions = int(model_config.camera_scalars) == conditioning.CAMERA_WITH_ACTIONS
  if not protocol.use_actions and embeds_actions:
    raise ValueError(f"protocol {protocol.name!r} evaluates without actions, but the model embeds "
                     f"actions (model.camera_scalars={conditioning.CAMERA_WITH_ACTIONS}); use "
                     "--protocol_set use_actions=true or a model without action scalars")


PROTOCOLS = {
    "vista_nuscenes": Protocol(
        name="vista_nuscenes", source="MaskGWM sec. 4.1 + app. 7.3 (Vista setting)",
        dataset="nuscenes/val front camera", num_views=1, views_as_videos=False, clip_frames=25,
        reference_frames=1, exclude_reference=False, num_clips=5369, image_size=(576, 1024),
        fps=10.0, sample_steps=30, cfg_scale=4.0, use_actions=False, fvd_frames=None,
        fid_frames=None,
        notes="all generated videos for FVD and all their frames for FID: 25-frame videos "
              "'containing one reference frame', which the metrics keep (the paper's Waymo count, "
              "15K FID frames of 600 videos, is 600 x 25); Vista's eval drops actions (the "
              "paper's 'aligned' row also trains without)"),
    "drivewm_mview": Protocol(
        name="drivewm_mview", source="MaskGWM app. 7.3 (Drive-WM setting)",
        dataset="nuscenes/val 6 cameras", num_views=6, views_as_videos=True, clip_frames=25,
        reference_frames=1, exclude_reference=True, num_clips=150, image_size=(576, 1024),
        fps=10.0, sample_steps=30, cfg_scale=4.0, use_actions=False, fvd_frames=None,
        fid_frames=10000,
        notes="one 6-view video per val scene -> 900 single-view videos; FID on 10K random frames "
              "of them. Clip length and resolution are not stated for the multi-view model; those "
              "of the single-view model are used"),
    "opendwm_nuscenes": Protocol(
        name="opendwm_nuscenes", source="OpenDWM configs/ctsd/single_dataset/ctsd_35_tirda_bm_nusc_a",
        dataset="nuscenes/val 6 cameras (12 Hz interp, keyframes)", num_views=6,
        views_as_videos=True, clip_frames=19, reference_frames=3, exclude_reference=True,
        num_clips=None, image_size=(256, 448), fps=10.0, sample_steps=40, cfg_scale=4.0,
        use_actions=False, fvd_frames=16, fid_frames=None,
        notes="FVD on the first 16 generated frames after the 3 reference frames, each view a "
              "separate video; FID on every generated frame of every view. OpenDWM scores FVD with "
              "TATS' PyTorch I3D; here the Kinetics-400 weights of the original FVD are used. "
              "OpenDWM's CTSD conditions every frame on projected boxes and map (the 'bm' of the "
              "config name): a layout-to-video setting, so future layout is allowed",
        future_layout=True),
    "waymo_zero_shot": Protocol(
        name="waymo_zero_shot", source="MaskGWM Tab. 2 (zero-shot on Waymo; data.source='waymo')",
        dataset="waymo/validation front camera", num_views=1, views_as_videos=False,
        clip_frames=25, reference_frames=1, exclude_reference=False, num_clips=600,
        image_size=(576, 1024), fps=10.0, sample_steps=30, cfg_scale=4.0, use_actions=False,
        fvd_frames=None, fid_frames=None,
        notes="the model trained on nuScenes is sampled without fine-tuning on 600 clips of the "
              "Waymo v2 validation split's FRONT camera (config.data: source='waymo', "
              "views=('FRONT',)), 1 condition frame, no actions. From the paper: the 600 videos "
              "for FVD and 15K frames for FID (= 600 x 25: every frame, the reference included), "
              "the zero-shot setting; clip length (25 frames), resolution (576x1024: Waymo's "
              "1920x1280 front images resized to 1024x683 and centre-cropped), Euler steps and "
              "CFG are those of vista_nuscenes, whose 10 fps is Waymo's native rate"),
    "long_horizon": Protocol(
        name="long_horizon", source="MaskGWM sec. 4.3 Fig. 6, app. Fig. 7 + 7.4",
        dataset="opendv/val", num_views=1, views_as_videos=False, clip_frames=25,
        reference_frames=3, exclude_reference=True, num_clips=300, image_size=(576, 1024),
        fps=10.0, sample_steps=30, cfg_scale=4.0, use_actions=False, fvd_frames=None,
        fid_frames=None, window_frames=25, rollout_steps=7,
        notes="autoregressive: each step conditions on the last 3 generated frames; metrics per "
              "25-frame (2.5 s) window of the rollout -> FVD/FID against time"),
    "synthetic": Protocol(
        name="synthetic", source="wm_jax built-in procedural world",
        dataset="synthetic/val", num_views=2, views_as_videos=True, clip_frames=4,
        reference_frames=1, exclude_reference=True, num_clips=16, image_size=(64, 128), fps=10.0,
        sample_steps=8, cfg_scale=1.0, use_actions=True, fvd_frames=None, fid_frames=None,
        rollout_steps=3, kid_subsets=10, kid_subset_size=100,
        notes="shapes of configs/maskgwm_tiny.py (2 views x 4 frames, 64x128): a 3-step rollout "
              "(1 condition frame) gives the 9 frames I3D needs per view; small counts for CPU; "
              "numbers track the demo model and are not comparable to published nuScenes ones"),
    "controllability": Protocol(
        name="controllability", source="compact world-action model sec. 5.5 (action sweeps)",
        dataset="synthetic/val", num_views=2, views_as_videos=True, clip_frames=4,
        reference_frames=1, exclude_reference=True, num_clips=8, image_size=(64, 128), fps=10.0,
        sample_steps=8, cfg_scale=1.0, use_actions=True, fvd_frames=None, fid_frames=None,
        kind="controllability", steering_values=(-0.3, -0.15, 0.0, 0.15, 0.3),
        notes="num_clips held-out scenes at configs/maskgwm_tiny.py's shapes, noise fixed per "
              "scene; steering (rad, + left) from hard right to hard left commanded on every "
              "predicted frame, speed kept as recorded (speed_values=2,5,10,20 adds a speed "
              "sweep); motion of the forward camera from the last reference frame on: horizontal "
              "shift (phase correlation) for steering, expansion for speed"),
}


def get(name: str) -> Protocol:
  try:
    return PROTOCOLS[name]
  except KeyError:
    raise ValueError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}") from None


def replace(protocol: Protocol, **changes) -> Protocol:
  """A copy with some settings changed (the name gets a '+changed' suffix so reports show it;
  a tuple reads as its values joined by '_', image_size as HxW)."""
  if not changes:
    return protocol
  text = lambda k, v: (("x" if k == "image_size" else "_").join(f"{x:g}" for x in v)
                       if isinstance(v, tuple) else v)
  tag = ",".join(f"{k}={text(k, v)}" for k, v in sorted(changes.items()))
  return dataclasses.replace(protocol, name=f"{protocol.name}+{tag}", **changes)
