"""Defaults for the config sections the train helper owns: train, mesh, checkpoint.

A config file adds them with one line each:
  config.train = wm_jax.train.config.defaults()
  config.mesh = wm_jax.train.config.mesh_defaults()
  config.checkpoint = wm_jax.train.config.checkpoint_defaults()
`wm_jax.train.config.fill(config)` adds any section a config left out, so older configs still run.
"""

from __future__ import annotations

import ml_collections


def defaults() -> ml_collections.ConfigDict:
  """config.train: optimisation and loop settings."""
  c = ml_collections.ConfigDict()
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
  c.log_every = 10                # scalars to the CLU writer
  c.sample_every = 0              # sample videos every N steps; 0 = only at the end if sample_at_end
  c.sample_at_end = False
  c.sample_steps = 4              # Euler steps for the periodic samples
  c.profile_steps = 0             # >0: capture a profiler trace of that many steps after step 5
  c.peak_flops = 0.0              # per-device peak FLOP/s for MFU; 0 = look up by device kind
  return c


def mesh_defaults() -> ml_collections.ConfigDict:
  """config.mesh: axis sizes (-1 = fill with the devices left) and multi-slice DCN sizes."""
  c = ml_collections.ConfigDict()
  c.data = -1
  c.fsdp = 1
  c.tensor = 1
  c.context = 0                   # 0 = no context axis; >=1 (or -1) adds one
  c.dcn_data = 1                  # multi-slice: data parallelism across slices (DCN)
  c.dcn_fsdp = 1
  c.axis_type = "auto"            # 'auto' | 'explicit' (jax.sharding.AxisType)
  return c


def checkpoint_defaults() -> ml_collections.ConfigDict:
  """config.checkpoint: Orbax CheckpointManager settings."""
  c = ml_collections.ConfigDict()
  c.every_steps = 50
  c.keep = 3                      # keep the last N
  c.best_metric = ""              # e.g. 'loss': also keep the best `keep_best` by this metric
  c.best_mode = "min"
  c.keep_best = 1
  c.async_save = True
  c.save_ema = True
  return c


SECTIONS = {"train": defaults, "mesh": mesh_defaults, "checkpoint": checkpoint_defaults}


def fill(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the train/mesh/checkpoint sections (and missing keys in them) that `config` lacks."""
  with config.unlocked():
    for name, make in SECTIONS.items():
      base = make()
      if name not in config or config[name] is None:
        config[name] = base
        continue
      for key, value in base.items():
        if key not in config[name]:
          with config[name].unlocked():
            config[name][key] = value
  return config
