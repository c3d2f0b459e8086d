"""A schema batch (numpy or abstract) of the shapes a config's model expects, for benchmarks,
ahead-of-time compilation and FLOP counts. Values are random but valid (identity-ish cameras)."""

from __future__ import annotations

import jax
import numpy as np

from wm_jax.data.schema import COMMANDS, LAYOUT_CHANNELS
from wm_jax.models.conditioning import VAE_FACTOR


def shapes(config, batch_size: int | None = None) -> dict[str, tuple[tuple[int, ...], str]]:
  """key -> (shape, dtype) of a training batch with latents for config.model."""
  m = config.model
  b = int(config.train.batch_size if batch_size is None else batch_size)
  t, v = int(m.num_frames), int(m.num_views)
  h, w, c = int(m.latent_height), int(m.latent_width), int(m.in_channels)
  out = {
      "latents": ((b, t, v, h, w, c), "float32"),
      "actions": ((b, t, 4), "float32"),
      "intrinsics": ((b, t, v, 3, 3), "float32"),
      "extrinsics": ((b, t, v, 4, 4), "float32"),
      "fps": ((b,), "float32"),
      "view_adjacency": ((b, v, v), "bool"),
  }
  text = int(m.text_tokens)
  if text:
    out["text_embeddings"] = ((b, t, v, text, int(m.joint_attention_dim)), "float32")
    out["pooled_text"] = ((b, t, v, int(m.pooled_projection_dim)), "float32")
  if m.layout_adapter is not None:
    out["layout"] = ((b, t, v, h * VAE_FACTOR, w * VAE_FACTOR, LAYOUT_CHANNELS), "uint8")
  if m.action_module is not None:
    k = int(m.action_module.trajectory_points)
    out["trajectory"] = ((b, t, k, 2), "float32")
    out["goal_point"] = ((b, t, 2), "float32")
    out["command"] = ((b, t), "int32")
  return out


def abstract(config, batch_size: int | None = None, sharding=None) -> dict:
  return {k: jax.ShapeDtypeStruct(s, np.dtype(d), sharding=sharding)
          for k, (s, d) in shapes(config, batch_size).items()}


def random(config, batch_size: int | None = None, seed: int = 0) -> dict:
  r = np.random.default_rng(seed)
  out = {}
  for k, (s, d) in shapes(config, batch_size).items():
    if k == "intrinsics":
      hh, ww = config.model.latent_height * VAE_FACTOR, config.model.latent_width * VAE_FACTOR
      k_mat = np.array([[ww, 0, ww / 2], [0, ww, hh / 2], [0, 0, 1]], np.float32)
      out[k] = np.broadcast_to(k_mat, s).copy()
    elif k == "extrinsics":
      out[k] = np.broadcast_to(np.eye(4, dtype=np.float32), s).copy()
    elif k == "fps":
      out[k] = np.full(s, 10.0, np.float32)
    elif k == "view_adjacency":
      out[k] = np.ones(s, bool)
    elif k == "command":
      out[k] = r.integers(0, len(COMMANDS), size=s).astype(np.int32)
    elif k == "actions":   # speed >= 0 and steering within the schema's range
      out[k] = np.abs(r.normal(size=s)).astype(np.float32) * np.array([5, 0.1, 1, 0.1], np.float32)
    elif d == "uint8":
      out[k] = r.integers(0, 2, size=s, dtype=np.uint8) * 255
    else:
      out[k] = r.normal(size=s).astype(d)
  return out
