"""Row-wise token masks for mask reconstruction (MaskGWM Sec. 3.3), with static shapes only.

Every token row of every (sample, frame, view) keeps exactly K = (1 - r) * W of its W tokens, so
the kept tokens form a dense [B, T, V, h, K] grid that the encoder runs on unchanged: spatial
attention over h*K tokens, temporal attention over T kept tokens of one (row, slot) -- which is the
paper's shifted temporal attention when masks differ between frames -- and cross-view attention
over rows of V*K tokens. Kept tokens stay in column order, so slot k of a row is always left of
slot k+1 (OpenDWM orders them randomly; that breaks the row geometry and is not copied here).

Two mask kinds, chosen per sample:
  M_spatial (is_time=False)  one row-wise mask per (sample, view), shared by all frames;
  M_time    (is_time=True)   an independent row-wise mask per (sample, frame, view).

Tokens move with `take_along_axis` gathers only: `gather_rows` picks kept columns,
`scatter_rows` is its inverse (a gather with the inverse permutation, no scatter op).
h and W are token rows/columns (latent size / patch size).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from wm_jax.parallel.shard import flat_uniform


@struct.dataclass
class RowMask:
  """keep_idx int32 [B,T,V,h,K] and drop_idx int32 [B,T,V,h,W-K], both ascending per row;
  is_time bool [B] (True: independent mask per frame, False: one mask shared by all frames)."""
  keep_idx: jax.Array
  drop_idx: jax.Array
  is_time: jax.Array

  @property
  def kept(self) -> int:
    return self.keep_idx.shape[-1]

  @property
  def width(self) -> int:
    return self.keep_idx.shape[-1] + self.drop_idx.shape[-1]


def kept_width(width: int, ratio: float) -> int:
  """K = (1 - ratio) * width; ValueError unless ratio * width is a whole number and K > 0."""
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"mask ratio must be in [0, 1), got ratio={ratio}")
  dropped = ratio * width
  if abs(dropped - round(dropped)) > 1e-6:
    raise ValueError(f"mask ratio {ratio} times row width {width} = {dropped} is not a whole "
                     f"number of tokens; choose a ratio with ratio*width integral")
  kept = width - int(round(dropped))
  if kept <= 0:
    raise ValueError(f"mask ratio {ratio} leaves K={kept} tokens of row width {width}")
  return kept


def sample_row_mask(rng, batch: int, frames: int, views: int, rows: int, width: int,
                    ratio: float, p_time: float) -> RowMask:
  """Draws a RowMask: per sample M_time with probability p_time, else M_spatial."""
  for name, value in (("batch", batch), ("frames", frames), ("views", views), ("rows", rows),
                      ("width", width)):
    if int(value) != value or value <= 0:
      raise ValueError(f"sample_row_mask needs a positive integer {name}, got {value!r}")
  if not 0.0 <= p_time <= 1.0:
    raise ValueError(f"p_time must be a probability in [0, 1], got {p_time}")
  kept = kept_width(width, ratio)
  return _sample(rng, jnp.float32(p_time), (batch, frames, views, rows, width), kept)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _sample(rng, p_time, shape, kept):
  batch, frames, views, rows, width = shape
  rng_kind, rng_time, rng_space = jax.random.split(rng, 3)
  is_time = jax.random.uniform(rng_kind, (batch,)) < p_time
  score_time = flat_uniform(rng_time, (batch, frames, views, rows, width))
  score_space = flat_uniform(rng_space, (batch, 1, views, rows, width))
  score = jnp.where(is_time[:, None, None, None, None], score_time, score_space)
  # The K lowest scores of a row are kept. One argsort of (column + W * dropped) lists the kept
  # columns first and the dropped ones after, each group ascending.
  rank = jnp.argsort(jnp.argsort(score, axis=-1), axis=-1)
  column = jnp.arange(width, dtype=jnp.int32)
  order = jnp.argsort(column + width * (rank >= kept).astype(jnp.int32), axis=-1)
  order = order.astype(jnp.int32)
  return RowMask(keep_idx=order[..., :kept], drop_idx=order[..., kept:], is_time=is_time)


def _check(x, mask: RowMask, width: int, name: str):
  lead = mask.keep_idx.shape[:4]
  if x.ndim < 5 or tuple(x.shape[:4]) != tuple(lead) or x.shape[4] != width:
    raise ValueError(f"{name} has shape {tuple(x.shape)}, but the mask needs [B,T,V,h,{width},...] "
                     f"with [B,T,V,h]={tuple(lead)}")


def _along(idx, x):
  """Index [B,T,V,h,n] expanded with singleton trailing dims to x's rank."""
  return idx.reshape(idx.shape + (1,) * (x.ndim - 5))


def gather_rows(x, mask: RowMask):
  """x [B,T,V,h,W,...] -> kept tokens [B,T,V,h,K,...] in column order."""
  _check(x, mask, mask.width, "gather_rows input")
  return jnp.take_along_axis(x, _along(mask.keep_idx, x), axis=4)


def gather_dropped(x, mask: RowMask):
  """x [B,T,V,h,W,...] -> dropped tokens [B,T,V,h,W-K,...] in column order."""
  _check(x, mask, mask.width, "gather_dropped input")
  return jnp.take_along_axis(x, _along(mask.drop_idx, x), axis=4)


def dropped_positions(mask: RowMask):
  """bool [B,T,V,h,W]: True where a token was dropped."""
  column = jnp.arange(mask.width, dtype=jnp.int32)
  return ~jnp.any(mask.keep_idx[..., :, None] == column, axis=-2)


def restore_index(mask: RowMask):
  """int32 [B,T,V,h,W]: for each column, its slot in concat([kept, dropped], axis=4).

  Kept and dropped columns are both ascending, so a column's slot is its rank among the kept
  columns, or K plus its rank among the dropped ones (a cumulative sum, no sort or scatter).
  """
  dropped = dropped_positions(mask).astype(jnp.int32)
  kept_rank = jnp.cumsum(1 - dropped, axis=-1) - 1
  drop_rank = jnp.cumsum(dropped, axis=-1) - 1
  return jnp.where(dropped == 1, mask.kept + drop_rank, kept_rank).astype(jnp.int32)


def scatter_rows(kept, dropped, mask: RowMask):
  """Inverse of gather_rows/gather_dropped: [B,T,V,h,K,...] + [B,T,V,h,W-K,...] -> [B,T,V,h,W,...]."""
  _check(kept, mask, mask.kept, "scatter_rows kept")
  _check(dropped, mask, mask.width - mask.kept, "scatter_rows dropped")
  if kept.shape[5:] != dropped.shape[5:]:
    raise ValueError(f"scatter_rows: kept {tuple(kept.shape)} and dropped {tuple(dropped.shape)} "
                     f"disagree after the token axis")
  both = jnp.concatenate([kept, dropped.astype(kept.dtype)], axis=4)
  return jnp.take_along_axis(both, _along(restore_index(mask), both), axis=4)


__all__ = ["RowMask", "sample_row_mask", "gather_rows", "gather_dropped", "scatter_rows",
           "dropped_positions", "restore_index", "kept_width"]
