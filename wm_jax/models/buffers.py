"""Variable kinds beyond nnx.Param."""

from flax import nnx


class Buffer(nnx.Variable):
  """A persistent, non-trainable array (PyTorch `register_buffer(..., persistent=True)`).

  Saved in checkpoints and converted like a parameter, never touched by the optimizer (e.g. the
  fixed 2-D sin-cos table `pos_embed.pos_embed`).
  """
