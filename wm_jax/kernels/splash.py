"""JAX's maintained TPU flash kernel (jax.experimental.pallas.ops.tpu.splash_attention) behind
wm_jax's attention entry (attention.py, impl 'splash'; 'splash_interpret' runs it in Pallas
interpret mode on any backend, which is how the CPU tests check it).

wm_jax's mask specs (masks.py) become splash masks:

  None                      FullMask
  BlockCausal(n)            BlockCausalMask(n): q // n >= k // n, evaluated inside the kernel
  BlockMask(n, table)       NumpyMask of the table expanded to tokens, when the table is concrete
                            (numpy or a non-traced array) and one for the whole batch
  SegmentIds(q, kv)         splash SegmentIds (traced, one row of ids per batch element)
  a tuple                   the static masks above joined with `&`, and at most one SegmentIds

Splash masks are static and shared by every element of the batch (one per head), so a BlockMask
whose table is traced or differs between batch elements cannot be translated, nor can two
SegmentIds; `unsupported_reason` says so and attention.py runs wm_jax's own kernel (flash.py)
for those calls, as it does for the gathered rows of the masked path.

Shapes: splash takes one example [H, S, D] (vmapped over the batch here) with S a multiple of its
blocks, so q and kv are padded to multiples of 128. Padded keys get segment id PAD_ID, which no
real query has (real segment ids must differ from it), so real rows never see them; padded
query rows (PAD_ID too) see padded keys and are sliced off. The softmax scale multiplies q
before the kernel. A query row with no allowed key comes out of splash as a mean of values;
wm_jax's convention is zeros, so such rows are zeroed (masks.dense_mask(...).any(-1), an XLA
comparison and reduction, computed only for masks that can empty a row: BlockMask and
SegmentIds). Blocks: the largest of 512, 256, 128 that divides the padded length, forward and
backward.

Under a mesh the kernel runs per shard (sharded.over_mesh, the logical axis rules): the batch
over ('data', 'fsdp'), heads over 'tensor', the whole sequence on every shard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

from wm_jax.kernels import masks as masks_lib
from wm_jax.kernels import sharded

PAD_ID = np.iinfo(np.int32).min       # segment id of padded tokens
ALIGN = 128                           # sequences are padded to a multiple of this
BLOCKS = (512, 256, 128)              # the kernel's block size: the first that divides the length


class BlockCausalMask(mask_lib._ComputableMask):  # pylint: disable=protected-access
  """q block i attends to kv blocks 0..i (blocks of `block_size` tokens), computed in-kernel."""

  def __init__(self, shape: tuple[int, int], block_size: int):
    self.block_size = int(block_size)
    super().__init__(shape=shape,
                     mask_function=lambda q, k: q // self.block_size >= k // self.block_size)

  def __eq__(self, other):
    if not isinstance(other, type(self)):
      return NotImplemented
    return self.shape == other.shape and self.block_size == other.block_size

  def __hash__(self):
    return hash((type(self), self.shape, self.block_size))


def _concrete(x):
  """x as a numpy array, or None when it is traced (unknown until the program runs)."""
  try:
    return np.asarray(x)
  except jax.errors.TracerArrayConversionError:
    return None


def _static_table(spec: masks_lib.BlockMask):
  """The [G, G] bool table of a BlockMask splash can take, or None."""
  table = _concrete(spec.allowed)
  if table is None:
    return None
  table = table.astype(bool)
  if table.ndim == 3:
    if not (table == table[:1]).all():
      return None
    table = table[0]
  return table


def unsupported_reason(mask) -> str | None:
  """Why splash cannot express `mask` (None if it can)."""
  specs = masks_lib.as_tuple(mask)
  for spec in specs:
    if isinstance(spec, masks_lib.BlockMask) and _static_table(spec) is None:
      return ("a BlockMask table that is traced or differs between batch elements (splash "
              "masks are static and shared by the batch)")
  if sum(isinstance(s, masks_lib.SegmentIds) for s in specs) > 1:
    return "more than one SegmentIds"
  return None


def _padded(n: int) -> int:
  return -(-n // ALIGN) * ALIGN


def _block(n: int) -> int:
  return next(b for b in BLOCKS if n % b == 0)


def _block_sizes(sq: int, sk: int):
  bq, bk = _block(sq), _block(sk)
  return splash_lib.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                               block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq,
                               block_kv_dq=bk)


def _numpy_block_mask(spec, table, sq, sk, sq_pad, sk_pad):
  """NumpyMask [sq_pad, sk_pad] of a BlockMask; the padded rows and columns all True (segment ids
  keep real rows off padded keys)."""
  dense = np.ones((sq_pad, sk_pad), bool)
  dense[:sq, :sk] = table[np.arange(sq)[:, None] // spec.block_size,
                          np.arange(sk)[None, :] // spec.block_size]
  return mask_lib.NumpyMask(dense)


def static_mask(mask, sq: int, sk: int):
  """The splash mask [sq_pad, sk_pad] of the static specs of `mask` (all but SegmentIds)."""
  sq_pad, sk_pad = _padded(sq), _padded(sk)
  out = None
  for spec in masks_lib.as_tuple(mask):
    if isinstance(spec, masks_lib.BlockCausal):
      part = BlockCausalMask((sq_pad, sk_pad), spec.block_size)
    elif isinstance(spec, masks_lib.BlockMask):
      part = _numpy_block_mask(spec, _static_table(spec), sq, sk, sq_pad, sk_pad)
    else:
      continue
    out = part if out is None else out & part
  return mask_lib.FullMask((sq_pad, sk_pad)) if out is None else out


def _segments(seg, b, sq, sk, sq_pad, sk_pad):
  """splash SegmentIds [B, S_pad] for the (optional) user SegmentIds, padding given PAD_ID; None
  when nothing needs them."""
  if seg is None and sq == sq_pad and sk == sk_pad:
    return None
  q_ids = jnp.zeros((b, sq), jnp.int32) if seg is None else jnp.asarray(seg.q, jnp.int32)
  kv_ids = jnp.zeros((b, sk), jnp.int32) if seg is None else jnp.asarray(seg.kv, jnp.int32)
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1])), constant_values=PAD_ID)
  return splash_lib.SegmentIds(q=pad(q_ids, sq_pad), kv=pad(kv_ids, sk_pad))


def _may_empty_rows(mask) -> bool:
  return any(isinstance(s, (masks_lib.BlockMask, masks_lib.SegmentIds))
             for s in masks_lib.as_tuple(mask))


def _local_attention(q, k, v, mask, *, scale, interpret):
  """splash on local data: q [B, Sq, H, D], k/v [B, Sk, H, D] -> [B, Sq, H, D]."""
  b, sq, h, d = q.shape
  sk = k.shape[1]
  sq_pad, sk_pad = _padded(sq), _padded(sk)
  kernel = splash_lib.make_splash_mha(
      mask_lib.MultiHeadMask([static_mask(mask, sq, sk)] * h), head_shards=1, q_seq_shards=1,
      block_sizes=_block_sizes(sq_pad, sk_pad), interpret=interpret)
  seg = next((s for s in masks_lib.as_tuple(mask) if isinstance(s, masks_lib.SegmentIds)), None)
  segments = _segments(seg, b, sq, sk, sq_pad, sk_pad)
  heads_major = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0))
                                     ).transpose(0, 2, 1, 3)
  qh = heads_major(q * jnp.asarray(scale, q.dtype), sq_pad)
  kh, vh = heads_major(k, sk_pad), heads_major(v, sk_pad)
  if segments is None:
    out = jax.vmap(kernel)(qh, kh, vh)
  else:
    out = jax.vmap(kernel)(qh, kh, vh, segment_ids=segments)
  out = out.transpose(0, 2, 1, 3)[:, :sq].astype(q.dtype)
  if _may_empty_rows(mask):
    has_key = masks_lib.dense_mask(mask, b, sq, sk).any(-1)
    out = jnp.where(has_key[:, :, None, None], out, jnp.zeros((), out.dtype))
  return out


def splash_attention(q, k, v, *, mask=None, scale: float | None = None, interpret: bool = False):
  """Attention by JAX's splash kernel, per shard of the current mesh. q [B, Sq, H, D], k/v
  [B, Sk, H, D] -> [B, Sq, H, D]. `mask` must be one unsupported_reason accepts."""
  reason = unsupported_reason(mask)
  if reason:
    raise ValueError(f"splash attention cannot take this mask: {reason}")
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  specs = masks_lib.as_tuple(mask)
  static = tuple(s for s in specs if not isinstance(s, masks_lib.SegmentIds))
  traced = tuple(s for s in specs if isinstance(s, masks_lib.SegmentIds)) or None

  def run(q, k, v, local_traced):
    local = static + masks_lib.as_tuple(local_traced)
    return _local_attention(q, k, v, local or None, scale=scale, interpret=interpret)

  return sharded.over_mesh(run, q, k, v, traced)
