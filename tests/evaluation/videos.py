"""Synthetic test videos with known content and motion (no model needed)."""
import numpy as np


def texture(seed, size, smooth=4):
  """A smooth random RGB texture [size, size, 3] in [0, 255] (float)."""
  rng = np.random.default_rng(seed)
  small = rng.uniform(0, 255, (size // smooth + 2, size // smooth + 2, 3))
  rep = np.repeat(np.repeat(small, smooth, 0), smooth, 1)
  k = np.ones(smooth) / smooth
  for ax in (0, 1):
    rep = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), ax, rep)
  return rep[:size, :size]


def translating(seed, frames, size, dx=0.0, dy=0.0, zoom=0.0):
  """Video [frames, size, size, 3] uint8 of a texture translating by (dx, dy) px/frame and zooming.

  The texture is sampled from a 2x larger canvas with wrap-around, bilinear sub-pixel shifts."""
  canvas = texture(seed, 2 * size)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  out = []
  for t in range(frames):
    s = 1.0 + zoom * t
    cx, cy = (xx - size / 2) / s + size / 2 + dx * t, (yy - size / 2) / s + size / 2 + dy * t
    x0, y0 = np.floor(cx).astype(int), np.floor(cy).astype(int)
    fx, fy = (cx - x0)[..., None], (cy - y0)[..., None]
    g = lambda y, x: canvas[y % (2 * size), x % (2 * size)]
    img = ((1 - fy) * ((1 - fx) * g(y0, x0) + fx * g(y0, x0 + 1)) +
           fy * ((1 - fx) * g(y0 + 1, x0) + fx * g(y0 + 1, x0 + 1)))
    out.append(img)
  return np.clip(np.stack(out), 0, 255).astype(np.uint8)
