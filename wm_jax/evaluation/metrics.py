"""FVD / FID / KID of generated against reference videos under a `Protocol`, streamed batch by batch.

    acc = VideoMetrics(protocol, fvd_features=..., fid_features=...)
    for gen, ref in batches:           # uint8 [B,T,V,H,W,3] each, the schema's frame layout
      acc.update(gen, ref)
    results = acc.result()             # {'fvd': ..., 'fid': ..., 'kid': ..., 'protocol': {...}}

Both sides must be uint8 (`videos.check_frames`; a ValueError naming the side, the dtype and the
value range otherwise): float frames would be scored as if they were 0..255. Feature functions
map uint8 videos [N,T,H,W,3] -> [N,400] (FVD) and uint8 images [N,H,W,3] -> [N,2048] (FID); in
practice `frechet.ShardedExtractor`s over the mesh around `i3d.fvd_features`
and `inception.fid_features`. Either may be None (that metric is then not computed and the
result says so). FVD/FID statistics stream through `frechet.RunningStats`; only the FID frames
drawn at random (protocols with `fid_frames`) and the KID pools are kept as features, by reservoir
sampling, so memory does not grow with the number of clips. With several JAX processes each scores
its own clips; statistics and reservoirs are merged across processes in `result()`.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from wm_jax.evaluation import frechet, videos as videos_lib
from wm_jax.evaluation.protocols import Protocol

KID_POOL = 10000  # feature rows per side kept for KID (reservoir)


class Reservoir:
  """Uniform random sample of at most k rows of a stream (Algorithm R, seeded)."""

  def __init__(self, k: int, seed: int):
    self.k, self.n, self.rows, self.seed = k, 0, [], seed
    self.rng = np.random.default_rng(seed)

  def add(self, rows):
    for row in np.asarray(rows):
      if len(self.rows) < self.k:
        self.rows.append(row)
      else:
        j = self.rng.integers(0, self.n + 1)
        if j < self.k:
          self.rows[j] = row
      self.n += 1

  def array(self):
    return np.stack(self.rows) if self.rows else np.zeros((0, 0))

  def allgather_array(self, dim: int) -> np.ndarray:
    """A uniform sample of at most k rows of the union of every JAX process's stream (the same
    on every process); this process's rows with one process. `dim`: the row width (so that an
    empty reservoir still takes part in the gather)."""
    import jax
    if jax.process_count() == 1:
      return self.array()
    from jax.experimental import multihost_utils
    rows = np.zeros((self.k, dim), np.float32)
    if self.rows:
      rows[:len(self.rows)] = self.array()
    counts = np.asarray(multihost_utils.process_allgather(np.array([self.n, len(self.rows)])))
    gathered = np.asarray(multihost_utils.process_allgather(rows))
    parts = [(int(n), g[:int(kept)]) for (n, kept), g in zip(counts.reshape(-1, 2), gathered)]
    return merge_reservoirs(parts, self.k, seed=self.seed)  # the same seed on every process


def merge_reservoirs(parts, k: int, seed: int) -> np.ndarray:
  """A uniform sample of at most k rows of the union of streams, from their reservoirs.

  parts: [(rows seen in the stream n_p, its reservoir rows [min(k, n_p), D])]. How many rows
  come from each stream is a multivariate hypergeometric draw of min(k, sum n_p) from the n_p;
  each stream's share is then a uniform subset of its reservoir (itself a uniform sample)."""
  parts = [(int(n), np.asarray(rows)) for n, rows in parts]
  for i, (n, rows) in enumerate(parts):
    if len(rows) != min(k, n):
      raise ValueError(f"reservoir {i} holds {len(rows)} rows for a stream of {n} with k={k}; "
                       f"expected {min(k, n)}")
  total = sum(n for n, _ in parts)
  kept = [rows for n, rows in parts if n]
  if not kept:
    return np.zeros((0, 0))
  rng = np.random.default_rng(seed)
  take = rng.multivariate_hypergeometric([n for n, _ in parts], min(k, total))
  out = [rows[rng.choice(len(rows), size=c, replace=False)] for (n, rows), c in zip(parts, take)
         if c]
  return np.concatenate(out)


def protocol_videos(protocol: Protocol, videos) -> np.ndarray:
  """Schema videos [B,T,V,H,W,3] -> the videos the metrics score [N,T',H,W',3].

  Drops the reference frames (when the protocol excludes them); splits views into separate videos
  (views_as_videos) or tiles them left to right into one wide video."""
  x = np.asarray(videos)
  if x.ndim != 6 or x.shape[-1] != 3:
    raise ValueError(f"expected videos [B,T,V,H,W,3], got shape {x.shape}")
  if x.shape[2] != protocol.num_views:
    raise ValueError(f"protocol {protocol.name} expects {protocol.num_views} views, got "
                     f"{x.shape[2]}")
  if protocol.exclude_reference:
    x = x[:, protocol.reference_frames:]
  if protocol.views_as_videos:
    b, t, v, h, w, c = x.shape
    return x.transpose(0, 2, 1, 3, 4, 5).reshape(b * v, t, h, w, c)
  b, t, v, h, w, c = x.shape
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, t, h, v * w, c)


def windows(protocol: Protocol, num_frames: int):
  """[(start, stop)] frame windows the metrics are computed on (one window unless long_horizon)."""
  if protocol.window_frames:
    n = num_frames // protocol.window_frames
    if n == 0:
      raise ValueError(f"protocol {protocol.name}: {num_frames} frames < one window of "
                       f"{protocol.window_frames}")
    return [(i * protocol.window_frames, (i + 1) * protocol.window_frames) for i in range(n)]
  stop = num_frames if protocol.fvd_frames is None else protocol.fvd_frames
  if stop > num_frames:
    raise ValueError(f"protocol {protocol.name}: fvd_frames {stop} > {num_frames} frames")
  return [(0, stop)]


class VideoMetrics:
  """Streams generated/reference video batches into FVD, FID and KID statistics."""

  def __init__(self, protocol: Protocol, fvd_features: Optional[Callable] = None,
               fid_features: Optional[Callable] = None, fvd_dim: int = 400,
               fid_dim: int = 2048, kid_pool: int = KID_POOL):
    self.protocol = protocol
    self.fvd_features, self.fid_features = fvd_features, fid_features
    self.fvd_dim, self.fid_dim, self.kid_pool = fvd_dim, fid_dim, kid_pool
    self.windows = None
    self.num_videos = 0

  def _init(self, num_frames):
    p = self.protocol
    self.windows = windows(p, num_frames)
    self.num_frames = num_frames
    w = len(self.windows)
    side = ("gen", "ref")
    self.fvd = {s: [frechet.RunningStats(self.fvd_dim) for _ in range(w)] for s in side}
    self.fid = {s: [frechet.RunningStats(self.fid_dim) for _ in range(w)] for s in side}
    # Random-frame FID (fid_frames) and KID keep sampled feature rows, per window.
    seed = lambda s, i: p.seed * 1000 + 10 * i + (s == "ref")
    self.fid_pool = {s: [Reservoir(p.fid_frames, seed(s, i)) for i in range(w)] for s in side} \
        if p.fid_frames else None
    self.kid_rows = {s: [Reservoir(self.kid_pool, seed(s, i) + 500) for i in range(w)]
                     for s in side}

  def update(self, generated, reference):
    generated, reference = np.asarray(generated), np.asarray(reference)
    videos_lib.check_frames(generated, name="generated videos")
    videos_lib.check_frames(reference, name="reference videos")
    gen, ref = protocol_videos(self.protocol, generated), protocol_videos(self.protocol, reference)
    if gen.shape != ref.shape:
      raise ValueError(f"generated {gen.shape} and reference {ref.shape} videos differ in shape")
    if self.windows is None:
      self._init(gen.shape[1])
    elif gen.shape[1] != self.num_frames:
      raise ValueError(f"clips must keep one length: got {gen.shape[1]} frames, earlier "
                       f"{self.num_frames}")
    for side, vids in (("gen", gen), ("ref", ref)):
      for i, (a, b) in enumerate(self.windows):
        clip = vids[:, a:b]
        if self.fvd_features is not None:
          self.fvd[side][i].update(self.fvd_features(clip))
        if self.fid_features is not None:
          feats = np.asarray(self.fid_features(clip.reshape((-1,) + clip.shape[2:])))
          if self.fid_pool is None:
            self.fid[side][i].update(feats)
          else:
            self.fid_pool[side][i].add(feats)
          self.kid_rows[side][i].add(feats)
    self.num_videos += len(gen)

  def result(self) -> dict:
    if self.windows is None:
      raise ValueError("no videos were given")
    p = self.protocol
    out = {"protocol": p.settings(), "num_videos": self.num_videos,
           "frames_per_video": self.windows[-1][1] - self.windows[0][0],
           "windows": [list(w) for w in self.windows]}
    per_window = []
    for i in range(len(self.windows)):
      r = {}
      if self.fvd_features is not None:
        g, f = (self.fvd[s][i].allgather_merge() for s in ("gen", "ref"))
        r["fvd"] = frechet.frechet_from_stats(g, f)
      if self.fid_features is not None:
        if self.fid_pool is None:
          g, f = (self.fid[s][i].allgather_merge() for s in ("gen", "ref"))
          r["fid"] = frechet.frechet_from_stats(g, f)
          r["fid_frames"] = g.n
        else:
          g, f = (self.fid_pool[s][i].allgather_array(self.fid_dim) for s in ("gen", "ref"))
          r["fid"] = frechet.frechet_from_features(g, f)
          r["fid_frames"] = len(g)
        kg, kr = (self.kid_rows[s][i].allgather_array(self.fid_dim) for s in ("gen", "ref"))
        kid = frechet.kid(kg, kr, num_subsets=p.kid_subsets, subset_size=p.kid_subset_size,
                          seed=p.seed)
        r["kid"], r["kid_std"], r["kid_subset_size"] = kid["mean"], kid["std"], kid["subset_size"]
      per_window.append(r)
    if len(per_window) == 1:
      out.update(per_window[0])
    else:
      out["per_window"] = per_window
      for key in ("fvd", "fid", "kid"):
        if key in per_window[0]:
          out[key + "_curve"] = [r[key] for r in per_window]
    out["computed"] = sorted(k for k in ("fvd", "fid", "kid") if k in (per_window[0]))
    return out
