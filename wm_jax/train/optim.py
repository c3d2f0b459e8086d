"""AdamW with linear warmup then cosine decay or a constant rate, and global-norm clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "constant")
MU_DTYPES = {"": None, "float32": jnp.float32, "bfloat16": jnp.bfloat16}  # '' = the params' dtype


def make_schedule(train_config) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate over warmup_steps, then cosine (to lr*end_lr_factor at
  num_steps) or constant."""
  c = train_config
  peak, warm, total = float(c.learning_rate), int(c.warmup_steps), int(c.num_steps)
  if c.schedule not in SCHEDULES:
    raise ValueError(f"config.train.schedule={c.schedule!r}; expected one of {SCHEDULES}")
  if warm < 0 or total < 1:
    raise ValueError(f"config.train.warmup_steps={warm} must be >= 0 and num_steps={total} >= 1")
  if c.schedule == "constant":
    after = optax.constant_schedule(peak)
  else:
    after = optax.cosine_decay_schedule(peak, max(total - warm, 1), alpha=float(c.end_lr_factor))
  if warm == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), after], [warm])


def _decay_mask(params):
  # No weight decay on vectors (norm scales, biases) and scalars.
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(train_config) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW. config.train.mu_dtype='bfloat16' stores Adam's first moment
  in bf16 (a quarter less optimizer-state memory with fp32 params; the second moment stays fp32)."""
  c = train_config
  mu_dtype = c.mu_dtype
  if mu_dtype not in MU_DTYPES:
    raise ValueError(f"config.train.mu_dtype={mu_dtype!r}; expected one of {sorted(MU_DTYPES)}")
  parts = []
  if float(c.grad_clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(c.grad_clip_norm)))
  parts.append(optax.adamw(make_schedule(c), b1=float(c.b1), b2=float(c.b2), eps=float(c.eps),
                           mu_dtype=MU_DTYPES[mu_dtype], weight_decay=float(c.weight_decay),
                           mask=_decay_mask))
  return optax.chain(*parts)
