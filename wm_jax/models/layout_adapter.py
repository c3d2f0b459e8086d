"""Layout (condition image) adapter: OpenDWM's ImageAdapter, channels last.

  layout [N, H, W, Cin] -> pixel-unshuffle by f (PyTorch channel order c*f*f + i*f + j)
  -> for each body block i: [2x2 average pool if is_downblocks[i]] -> [in_conv 1x1 if the width
     changes] -> num_res_blocks x (x + block2(relu(block1(x))), block1 3x3, block2 1x1)
  -> zero_convs[i] (1x1, zero-initialised) -> residual i [N, H/(f*2^d), W/(f*2^d), C_i].

The backbone adds residual i to its hidden states before joint block i, so the residual grid
must equal the token grid: f * 2^downblocks == conditioning.VAE_FACTOR * patch_size.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from wm_jax.models import layers


def pixel_unshuffle(x, factor: int):
  """[N, H, W, C] -> [N, H/f, W/f, C*f*f] in PyTorch's PixelUnshuffle channel order."""
  n, hh, ww, c = x.shape
  if hh % factor or ww % factor:
    raise ValueError(f"layout size {hh}x{ww} is not divisible by downscale_factor={factor}")
  x = x.reshape(n, hh // factor, factor, ww // factor, factor, c)
  x = x.transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(n, hh // factor, ww // factor, c * factor * factor)


def avg_pool2(x):
  """2x2 / stride 2 average pool; odd sizes average the partial edge windows (ceil_mode)."""
  n, hh, ww, c = x.shape
  ph, pw = hh % 2, ww % 2
  if ph or pw:
    ones = jax.numpy.ones((1, hh, ww, 1), x.dtype)
    pad = ((0, 0), (0, ph), (0, pw), (0, 0))
    total = jax.lax.reduce_window(jax.numpy.pad(x, pad), 0.0, jax.lax.add, (1, 2, 2, 1),
                                  (1, 2, 2, 1), "VALID")
    count = jax.lax.reduce_window(jax.numpy.pad(ones, pad), 0.0, jax.lax.add, (1, 2, 2, 1),
                                  (1, 2, 2, 1), "VALID")
    return total / count
  return x.reshape(n, hh // 2, 2, ww // 2, 2, c).mean((2, 4))


class ResBlock(nnx.Module):

  def __init__(self, channels: int, *, rngs: nnx.Rngs, prec: layers.Precision):
    self.block1 = layers.conv(channels, channels, 3, padding=((1, 1), (1, 1)), rngs=rngs,
                              prec=prec)
    self.block2 = layers.conv(channels, channels, 1, rngs=rngs, prec=prec)

  def __call__(self, x):
    return x + self.block2(jax.nn.relu(self.block1(x)))


class AdapterBlock(nnx.Module):

  def __init__(self, din: int, dout: int, num_res_blocks: int, down: bool, *, rngs: nnx.Rngs,
               prec: layers.Precision):
    self.down = down
    self.in_conv = layers.conv(din, dout, 1, rngs=rngs, prec=prec) if din != dout else None
    self.resnets = nnx.List([ResBlock(dout, rngs=rngs, prec=prec) for _ in range(num_res_blocks)])

  def __call__(self, x):
    if self.down:
      x = avg_pool2(x)
    if self.in_conv is not None:
      x = self.in_conv(x)
    for block in self.resnets:
      x = block(x)
    return x


class ImageAdapter(nnx.Module):

  def __init__(self, in_channels: int, channels: Sequence[int], is_downblocks: Sequence[bool],
               num_res_blocks: int, downscale_factor: int, use_zero_convs: bool = True, *,
               rngs: nnx.Rngs, prec: layers.Precision):
    if len(channels) != len(is_downblocks):
      raise ValueError(f"layout adapter: {len(channels)} channels but {len(is_downblocks)} "
                       "is_downblocks entries")
    self.factor = downscale_factor
    widths = [in_channels * downscale_factor ** 2, *channels]
    self.body = nnx.List([
        AdapterBlock(widths[i], widths[i + 1], num_res_blocks, bool(is_downblocks[i]), rngs=rngs,
                     prec=prec) for i in range(len(channels))])
    self.zero_convs = (nnx.List([layers.conv(c, c, 1, zero_init=True, rngs=rngs, prec=prec)
                                 for c in channels]) if use_zero_convs else None)

  def __call__(self, layout):
    """layout [..., H, W, Cin] -> list of residuals [..., H', W', C_i]."""
    lead = layout.shape[:-3]
    x = pixel_unshuffle(layout.reshape(-1, *layout.shape[-3:]), self.factor)
    out = []
    for i, block in enumerate(self.body):
      x = block(x)
      y = x if self.zero_convs is None else self.zero_convs[i](x)
      out.append(y.reshape(*lead, *y.shape[1:]))
    return out
