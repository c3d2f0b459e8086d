"""The defaults of every config section, in one place: `config()` is a whole config.

    config = defaults.config()           # every section, every key, locked
    config.model.update(num_layers=24)   # a config file changes values, never adds keys
    config = defaults.from_dict(saved)   # a saved config.json back on top of the defaults

Sections: model (the CTSD DiT; maskgwm_tiny's sizes), mask (mask reconstruction), diffusion
(rectified flow), data (the source and the clip shape), vae, train, mesh, checkpoint, eval.
A config is locked once built: setting a key the defaults do not have raises, naming it, and code
reads every key as an attribute (there is no second default anywhere).

This module imports nothing of wm_jax: every layer may read it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

ConfigDict = ml_collections.ConfigDict


def model() -> ConfigDict:
  """config.model: the CTSD spatio-temporal cross-view DiT (maskgwm_tiny's sizes)."""
  m = ConfigDict()
  m.patch_size = 2
  m.in_channels = 4                    # latent channels
  m.out_channels = 4
  m.num_layers = 4                     # joint (MMDiT) blocks
  m.num_heads = 2
  m.head_dim = 32
  m.joint_attention_dim = 32           # text embedding width
  m.pooled_projection_dim = 32
  m.pos_embed_max_size = 16
  m.sample_size = 16                   # latent size the positional table is centred for
  m.dual_attention_layers = (0, 1)     # SD3.5 MMDiT-X: a second self-attention in these blocks
  m.qk_norm = "rms_norm"
  m.temporal_block_layers = (0, 2)     # a temporal block after these joint blocks
  m.crossview_block_layers = (1, 3)    # a cross-view block after these joint blocks
  m.temporal_attention_type = "pointwise"
  m.crossview_attention_type = "rowwise"
  m.merge_factor = 2.0                 # AlphaBlender's initial logit
  m.time_modulation = True             # the paper's Eq. 5 in the temporal blocks
  m.camera_scalars = 11                # 11: camera only; 13: camera + (speed, steering); 0: none
  m.action_module = None               # None: no action module; action_module() for MaskGWM's
  m.layout_adapter = ConfigDict(dict(  # None: no layout input
      in_channels=6, channels=[64, 64], is_downblocks=[True, False], num_res_blocks=1,
      downscale_factor=8, use_zero_convs=True))
  m.num_frames = 4
  m.num_views = 2
  m.latent_height = 8
  m.latent_width = 16
  m.text_tokens = 8
  m.dtype = "float32"                  # compute dtype
  m.param_dtype = "float32"
  m.attention_impl = "auto"            # wm_jax.kernels.attention implementation
  m.remat_policy = "none"              # models.ctsd_dit.REMAT_POLICIES
  m.scan_layers = False                # True: runs of identical layers stacked and scanned
  return m


def action_module() -> ConfigDict:
  """A config.model.action_module: MaskGWM's unified action conditioning (models.action_module).

  groups: the action groups the model sees, from 'speed', 'steering' (batch 'actions'),
  'trajectory', 'goal_point', 'command' (batch keys of those names); fourier_features: sin/cos
  features per action value (even); trajectory_points: K, the trajectory's points (equal to
  config.data.trajectory_points); dropout: per group, the probability that training leaves the
  group out of a sample (so the model learns every subset of the groups, and action-free).
  """
  return ConfigDict(dict(
      groups=("speed", "steering", "trajectory", "goal_point", "command"),
      fourier_features=16,
      trajectory_points=6,
      dropout=dict(speed=0.15, steering=0.15, trajectory=0.15, goal_point=0.15, command=0.15)))


def mask() -> ConfigDict:
  """config.mask: row-wise mask reconstruction (training only)."""
  c = ConfigDict()
  c.enabled = True
  c.ratio = 0.25          # r: each token row keeps K = (1 - r) * W tokens
  c.p_time = 0.5          # probability a sample gets M_time (else M_spatial)
  c.decode_layers = 1     # final joint blocks run at full width after the module (of the tiny
                          # model's 4; OpenDWM's 24-layer models: 5)
  c.side_blocks = 1       # blocks per branch (OpenDWM interpolater_layer)
  # position of the mask tokens: '3d_sincos' = OpenDWM's (frame, row, column) table; 'backbone' =
  # the table the backbone passes as pos_embed
  c.pos_table = "3d_sincos"
  return c


def diffusion() -> ConfigDict:
  """config.diffusion: rectified flow with SD3's conventions.

  tau ~ shift(sigmoid(N(logit_mean, logit_std))); `shift` s maps tau -> s*tau / (1 + (s-1)*tau)
  for training and for the sampler's sigma schedule. 1.0 suits the tiny CPU configs; the real
  sizes set 3.0 as SD3/SD3.5 do.
  """
  c = ConfigDict()
  c.logit_mean = 0.0
  c.logit_std = 1.0
  c.shift = 1.0
  c.max_reference_frames = 3     # clean leading frames per sample drawn from
  c.min_reference_frames = 0     # [min, max] (MaskGWM, after Vista: 0 to 3)
  c.feature_loss_weight = 0.0    # lambda of the auxiliary feature-reconstruction loss
  c.uncond_prob = 0.1            # per-sample probability of dropping all conditions in training
  c.loss_target = "velocity"     # 'velocity' (MSE on v) or 'x0' (MSE on z_tau - tau*v)
  c.sample_steps = 30            # Euler steps
  c.cfg_scale = 4.0              # classifier-free guidance
  return c


def data() -> ConfigDict:
  """config.data: which source, where, and the clip shape."""
  c = ConfigDict()
  c.source = "synthetic"  # 'synthetic' | 'nuscenes' | 'waymo' | 'video' | 'opendv' | 'tfds'
  c.path = ""  # nuScenes root (with the version folder) / video folder / TFDS data_dir
  c.version = "v1.0-trainval"  # nuScenes: table folder under path
  c.tfds_name = ""  # tfds source: 'wm_synthetic/NAME' etc. (see data/tfds_builders.py)
  c.opendv_index = "opendv_index.json"  # opendv source: the clip index, relative to path
  # source='mixture' (data/mixture.py): entries dict(source=NAME, weight=W, name=LABEL (optional),
  # FIELD=VALUE, ...) overriding fields of config.data, e.g. (dict(source='nuscenes',
  # weight=1.0, path=NUSCENES), dict(source='opendv', weight=1.0, path=OPENDV)); weights > 0
  c.mixture = ()
  c.mixture_keys = ()  # mixture: the record keys kept; () = all (the entries must give the same)
  # clip shape
  c.num_frames = 8
  c.views = ("CAM_FRONT",)  # nuScenes camera channels, in view order (synthetic: see `rig`)
  # Waymo: its camera names, e.g. ("FRONT",) or waymo.CAMERA_RING; `path` = the v2 root holding
  # training/ validation/ testing/ (data/waymo.py); `wheelbase` also sets Waymo's steering
  c.image_height = 64
  c.image_width = 128
  c.fps = 12.0  # frame rate of a clip (resampled from the source's rate)
  c.clip_stride = 0  # frames between clip starts (source frames at `fps`); 0 = num_frames
  # content
  c.layout = True  # render the 6-channel layout image
  c.depth = False  # synthetic: also return depth [T,V,H,W] (metres)
  c.supersample = 1  # synthetic: s x s rays per pixel, averaged (anti-aliasing; s^2 the cost)
  c.max_boxes = 32  # N: boxes per frame (nearest first, padded with valid=0)
  c.trajectory_points = 6  # K: future ego positions per frame (trajectory, goal_point, command)
  # synthetic world
  c.rig = "front"  # 'front' (1 view) | 'front2' (2 views) | 'nuscenes6' (6 views)
  c.domain = "boston"  # style domain of training scenes
  c.val_domain = ""  # domain of validation scenes ('' = same as domain): a domain split
  c.num_train = 1024  # scenes (= clips) per split
  c.num_val = 64
  c.scene_seed = 0  # scene of index i is seeded with scene_seed + i (+ offset for validation)
  c.render_device = "cpu"  # JAX platform the renderer runs on ('' = JAX's default)
  c.steer_takeover = 0.0  # share of clips whose steering leaves the plan at a random frame
  c.takeover_steering = 0.3  # rad: most |steering| of a takeover (world.takeover)
  # nuScenes
  c.keyframes_only = False  # True: 2 Hz annotated samples; False: all 12 Hz camera sweeps
  c.box_mode = "interpolate"  # sweeps: 'interpolate' between keyframes | 'nearest' keyframe
  c.use_can_bus = True  # actions from can_bus/*.json when present, else from ego poses
  c.map_lines = True  # layout map channels from maps/expansion/<location>.json when present
  c.wheelbase = 2.588  # m (Renault Zoe, nuScenes); steering from yaw rate when no CAN bus
  c.steering_ratio = 16.0  # CAN steering-wheel angle / road-wheel angle
  c.image_size_mismatch = "rescale"  # image size != sample_data width/height (a downscaled copy):
                                    # 'rescale' the intrinsics to the image | 'error'
  c.locations = ()  # keep only logs from these locations (e.g. 'boston-seaport'); () = all
  c.val_locations = ()  # domain split: validation from these locations instead
  c.val_fraction = 0.15  # nuScenes/video without location split: share of scenes/files in val
  # pipeline
  c.shuffle = True
  c.num_epochs = 0  # 0 = repeat forever
  c.drop_remainder = True
  c.skip_bad_records = False
  c.read_threads = 4  # grain.ReadOptions
  c.read_buffer = 16
  c.worker_count = 0  # >0: grain mp_prefetch with that many processes
  c.worker_buffer_size = 2  # batches' worth of records each worker process queues
  return c


# VAE architecture fields: None takes the preset's value (models/vae.py PRESETS).
VAE_ARCH_TYPES = {"block_out_channels": tuple, "layers_per_block": int, "norm_num_groups": int,
                  "latent_channels": int, "scaling_factor": float, "shift_factor": float,
                  "use_quant_conv": bool, "use_post_quant_conv": bool,
                  "mid_block_add_attention": bool}


def vae() -> ConfigDict:
  """config.vae: the AutoencoderKL that maps frames to latents."""
  c = ConfigDict()
  c.preset = "tiny"              # 'tiny' | 'sd' | 'sd3'
  c.checkpoint = ""              # diffusers AutoencoderKL (.safetensors file or folder) or an
                                 # Orbax params folder; '' = none (main.py trains a tiny one)
  c.dtype = "float32"            # compute dtype
  c.param_dtype = "float32"
  c.attention_impl = "auto"      # wm_jax.kernels.attention impl for the mid-block attention
  c.batch_slice = 8              # images per encoder/decoder call (0: all at once)
  c.tile_size = 0                # spatial tile in pixels, multiple of 8 (0: no tiling)
  c.tile_overlap = 0.25          # fraction of a tile shared with its neighbour
  for key, kind in VAE_ARCH_TYPES.items():
    c[key] = config_dict.placeholder(kind)
  return c


def train() -> ConfigDict:
  """config.train: optimisation and loop settings."""
  c = ConfigDict()
  c.seed = 0
  c.batch_size = 2                # global batch (all hosts)
  c.num_steps = 100
  c.learning_rate = 1e-4          # peak
  c.warmup_steps = 10
  c.schedule = "cosine"           # 'cosine' | 'constant' (both after linear warmup)
  c.end_lr_factor = 0.1           # cosine ends at learning_rate * end_lr_factor
  c.weight_decay = 0.01
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8
  c.mu_dtype = ""                 # Adam first-moment dtype: '' = params' (fp32) | 'bfloat16'
  c.grad_clip_norm = 1.0          # global-norm clipping; 0 disables
  c.ema_decay = 0.0               # 0 disables the EMA copy of the params
  c.nan_guard = True              # skip updates whose loss or grads are not finite (counted)
  c.max_nonfinite_steps = 50      # stop after this many consecutive non-finite steps; 0 = never
  c.log_every = 10                # scalars to the CLU writer
  c.sample_every = 0              # sample videos every N steps; 0 = only at the end if sample_at_end
  c.sample_at_end = False
  c.sample_steps = 4              # Euler steps for the periodic samples
  c.sample_clips = 2              # clips per periodic sample
  c.profile_steps = 0             # >0: capture a profiler trace of that many steps after step 5
  c.peak_flops = 0.0              # per-device peak FLOP/s for MFU; 0 = look up by device kind
  c.vae_steps = 300               # main.py trains a tiny VAE this long when vae.checkpoint is ''
  return c


def mesh() -> ConfigDict:
  """config.mesh: axis sizes (-1 = fill with the devices left) and multi-slice DCN sizes."""
  c = ConfigDict()
  c.data = -1
  c.fsdp = 1
  c.tensor = 1
  c.context = 0                   # 0 = no context axis; >=1 (or -1) adds one
  c.dcn_data = 1                  # multi-slice: data parallelism across slices (DCN)
  c.dcn_fsdp = 1
  c.axis_type = "auto"            # 'auto' | 'explicit' (jax.sharding.AxisType)
  return c


def checkpoint() -> ConfigDict:
  """config.checkpoint: Orbax CheckpointManager settings."""
  c = ConfigDict()
  c.every_steps = 50
  c.keep = 3                      # keep the last N
  c.best_metric = ""              # e.g. 'loss': also keep the best `keep_best` by this metric
  c.best_mode = "min"
  c.keep_best = 1
  c.async_save = True
  c.save_ema = True
  return c


def eval() -> ConfigDict:  # noqa: A001  (the section's name)
  """config.eval: what `python -m wm_jax.evaluate` runs (its flags override these)."""
  c = ConfigDict()
  c.protocol = "synthetic"     # a name in wm_jax.evaluation.protocols.PROTOCOLS
  c.num_clips = config_dict.placeholder(int)  # None: the protocol's clip count
  c.fid_weights = ""           # path to pytorch-fid's pt_inception-2015-12-05-6726825d.pth
  c.batch_size = 8             # clips per sampling / feature batch (split over all devices)
  c.save_videos = 4            # clips saved side by side with ground truth
  c.video_format = "mp4"       # 'mp4' or 'gif'
  c.params = "auto"            # 'auto' (EMA when the run kept one) | 'ema' | 'params'
  return c


SECTIONS = {"model": model, "mask": mask, "diffusion": diffusion, "data": data, "vae": vae,
            "train": train, "mesh": mesh, "checkpoint": checkpoint, "eval": eval}

# Fields whose value is a free-form section (None, or a dict of its own keys).
FREE_FORM = {("model", "layout_adapter"), ("model", "action_module")}


def config() -> ConfigDict:
  """A whole config: every section at its defaults, locked (unknown keys raise)."""
  c = ConfigDict({name: make() for name, make in SECTIONS.items()})
  c.lock()
  return c


def from_dict(values: Mapping[str, Any], *, what: str = "config") -> ConfigDict:
  """The defaults updated by a nested dict (a saved config.json, a test's overrides).

  A key the defaults lack raises ValueError naming its path (`what` names the source)."""
  c = config()
  _update(c, values, (), what)
  return c


def _update(target: ConfigDict, values: Mapping[str, Any], path: tuple, what: str) -> None:
  for key, value in values.items():
    here = path + (key,)
    if key not in target:
      raise ValueError(f"{what}: unknown key {'.'.join(here)!r}; known keys of "
                       f"{'.'.join(path) or 'the config'}: {sorted(target)}")
    old = target[key]
    if here[:2] in FREE_FORM or len(here) > 2:
      with target.unlocked():
        target[key] = ConfigDict(value) if isinstance(value, Mapping) else value
    elif isinstance(old, ConfigDict) and isinstance(value, Mapping):
      _update(old, value, here, what)
    else:
      with target.ignore_type():
        target[key] = tuple(value) if isinstance(value, list) and isinstance(old, tuple) else value


_AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
_ABOVE_0 = (lambda v: v > 0, "> 0")
_FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")

# Values that cannot work, refused by `check` before anything is built or compiled.
VALUE_RULES = {
    "train.num_steps": _AT_LEAST_0, "train.batch_size": _ABOVE_0,
    "train.learning_rate": _AT_LEAST_0, "train.warmup_steps": _AT_LEAST_0,
    "train.end_lr_factor": _AT_LEAST_0, "train.weight_decay": _AT_LEAST_0,
    "train.b1": _FRACTION, "train.b2": _FRACTION, "train.eps": _ABOVE_0,
    "train.grad_clip_norm": _AT_LEAST_0, "train.ema_decay": _FRACTION,
    "train.max_nonfinite_steps": _AT_LEAST_0, "train.log_every": _ABOVE_0,
    "train.sample_every": _AT_LEAST_0, "train.sample_steps": _ABOVE_0,
    "train.sample_clips": _ABOVE_0, "train.profile_steps": _AT_LEAST_0,
    "train.vae_steps": _AT_LEAST_0,
    "train.schedule": (lambda v: v in ("cosine", "constant"), "'cosine' or 'constant'"),
    "diffusion.min_reference_frames": _AT_LEAST_0, "diffusion.max_reference_frames": _AT_LEAST_0,
    "checkpoint.every_steps": _ABOVE_0, "checkpoint.keep": _ABOVE_0,
    "checkpoint.keep_best": _AT_LEAST_0,
    "checkpoint.best_mode": (lambda v: v in ("min", "max"), "'min' or 'max'"),
    "data.image_size_mismatch": (lambda v: v in ("rescale", "error"), "'rescale' or 'error'"),
    "data.worker_count": _AT_LEAST_0, "data.trajectory_points": _ABOVE_0,
    "data.supersample": (lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
    "data.steer_takeover": (lambda v: 0.0 <= v <= 1.0, "a share in [0, 1]"),
    "data.takeover_steering": (lambda v: 0.0 < v <= 0.6, "in (0, 0.6] rad"),
}


def check(c: ConfigDict, *, what: str = "config") -> None:
  """Raises ValueError naming every missing or unknown key of `c` against the defaults, and every
  value VALUE_RULES refuses."""
  base = config()
  problems = []
  for name in sorted(set(base) | set(c)):
    if name not in base:
      problems.append(f"unknown section {name!r}")
    elif name not in c:
      problems.append(f"missing section {name!r}")
    elif isinstance(c[name], ConfigDict):
      have, want = set(c[name]), set(base[name])
      problems += [f"unknown key {name}.{k}" for k in sorted(have - want)]
      problems += [f"missing key {name}.{k}" for k in sorted(want - have)]
  for key, (ok, want) in VALUE_RULES.items():
    section, field = key.split(".")
    value = c[section][field] if section in c and field in c[section] else None
    if value is not None and not ok(value):
      problems.append(f"{key}={value!r} (must be {want})")
  if problems:
    raise ValueError(f"{what} does not pass wm_jax.defaults.check: " + "; ".join(problems))


def load_file(spec: str) -> ConfigDict:
  """The config of a config file 'path/to/file.py[:arg]' (its get_config(arg)), checked against
  the defaults; as `--config=` reads it, for tools that take a config path."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config file {path!r}")
  module_spec = importlib.util.spec_from_file_location(
      "wm_jax_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} has no get_config(arg)")
  c = module.get_config(arg or None)
  check(c, what=f"config file {spec}")
  return c


def variant_flags(arg: str | None, allowed: tuple[str, ...], name: str) -> set[str]:
  """The set of comma-separated flags of a config argument ('layout,nomask'), each in `allowed`."""
  flags = {f for f in (arg or "").split(",") if f}
  unknown = sorted(flags - set(allowed))
  if unknown:
    raise ValueError(f"{name}: unknown variant flag(s) {unknown} in {arg!r}; the argument after "
                     f"':' is a comma-separated subset of {list(allowed)}")
  return flags


def set_model_inputs(config: ConfigDict, flags: set[str]) -> None:
  """The inputs a world-model config's model takes, by its variant flags: the layout adapter (and
  the layout image in the data) only with 'layout' (it sees the layout of the predicted frames);
  the action module unless 'noactions', with K = config.data.trajectory_points."""
  if "layout" not in flags:
    config.model.layout_adapter = None
  config.data.layout = "layout" in flags
  if "noactions" not in flags:
    config.model.action_module = action_module()
    config.model.action_module.trajectory_points = config.data.trajectory_points
