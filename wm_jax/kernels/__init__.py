"""wm_jax.kernels: the attention entry every model attention calls, and its kernels.

  attention.py    attention(q, k, v, *, mask, impl, scale) / attention_gathered(...): impl dispatch,
                  fallback to XLA, and the XLA reference (xla_attention)
  masks.py        mask specs (BlockMask, SegmentIds, BlockCausal) and their dense form for tests
  block_table.py  specs -> per-block SKIP/PARTIAL/FULL table + small arrays for in-kernel masks
  flash.py        wm_jax's Pallas flash kernels (forward, dq, dk/dv; gathered loads), TPU and GPU
  splash.py       JAX's maintained TPU splash kernel, with wm_jax's mask specs translated to its masks
  sharded.py      shard_map over the mesh by the logical axis rules
"""
