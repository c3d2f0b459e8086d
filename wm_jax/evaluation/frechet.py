"""Frechet distance (FID/FVD), KID, streaming feature statistics and sharded feature extraction.

Frechet distance between N(mu1, C1) and N(mu2, C2):
    |mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^{1/2})
The trace term is computed in float64 through the symmetric form
    tr((C1 C2)^{1/2}) = sum_i sqrt(lambda_i(S1 C2 S1)),  S1 = C1^{1/2}
(C1 C2 is similar to S1 C2 S1, which is symmetric PSD), with S1 and the eigenvalues from `eigh` and
tiny negative eigenvalues (round-off) clipped to 0. Unlike scipy.linalg.sqrtm of the non-symmetric
C1 C2 this never returns complex values or fails on singular covariances (fewer samples than
feature dims), so no eps-offset retry is needed; on well-conditioned inputs it agrees with the
sqrtm form to round-off (tested).

The distance is >= 0 in exact arithmetic. Round-off (mostly the square roots of eigenvalues that
are 0 but come out as ~eps * |C|^2) can take it below 0 by at most about
dim * sqrt(eps) * (tr(C1) + tr(C2)); such a value is returned as 0. Anything further below 0 is
no round-off (a covariance that is not positive semi-definite, corrupt statistics) and raises.

KID (Binkowski et al. 2018): unbiased MMD^2 with the polynomial kernel k(x,y) = (x.y/d + 1)^3,
averaged over `num_subsets` random subsets of `subset_size` rows of each set (defaults 100 x 1000
as torch-fidelity / the KID paper's code); mean and std over subsets are returned.

Streaming: `RunningStats` keeps (n, mean, M2 = sum of centered outer products) in float64 and
folds batches in with Chan et al.'s pairwise update, so features never sit in memory together, and
two stats (other hosts, other shards of a dataset) merge exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


# ---------------------------------------------------------------------------------------------
# Frechet distance


def _psd_sqrt(c):
  w, v = np.linalg.eigh(c)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _input_eps(*arrays) -> float:
  """Machine epsilon of the least precise float input (float64's for non-float inputs)."""
  eps = [np.finfo(np.asarray(a).dtype).eps for a in arrays
         if np.issubdtype(np.asarray(a).dtype, np.floating)]
  return float(max(eps, default=np.finfo(np.float64).eps))


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """Frechet distance between two Gaussians, in float64 (symmetric eigen form, see module doc).
  A round-off negative is returned as 0; a larger negative raises ValueError with the numbers."""
  eps = _input_eps(mu1, cov1, mu2, cov2)
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
    raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, cov {cov1.shape} vs "
                     f"{cov2.shape}")
  for name, a in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{name} has non-finite values")
  s1 = _psd_sqrt((cov1 + cov1.T) / 2)
  m = s1 @ cov2 @ s1
  eig = np.linalg.eigvalsh((m + m.T) / 2)
  tr_covmean = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  diff = mu1 - mu2
  tr1, tr2 = np.trace(cov1), np.trace(cov2)
  dist = float(diff @ diff + tr1 + tr2 - 2.0 * tr_covmean)
  if dist >= 0.0:
    return dist
  tol = len(mu1) * np.sqrt(eps) * (abs(tr1) + abs(tr2))
  if -dist <= tol:
    return 0.0
  raise ValueError(f"Frechet distance {dist:.6g} is negative beyond round-off (tolerance "
                   f"{tol:.3g} for dim {len(mu1)}, tr(cov1) {tr1:.6g}, tr(cov2) {tr2:.6g}): a "
                   f"covariance is not positive semi-definite or the statistics are corrupt")


def frechet_from_stats(a: "RunningStats", b: "RunningStats") -> float:
  return frechet_distance(a.mean, a.covariance(), b.mean, b.covariance())


def frechet_from_features(x, y) -> float:
  return frechet_from_stats(RunningStats.from_features(x), RunningStats.from_features(y))


# ---------------------------------------------------------------------------------------------
# KID


def _poly_kernel(x, y):
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
  """Unbiased MMD^2 between row sets x [m,d], y [n,d] with the cubic polynomial kernel (float64)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  m, n = len(x), len(y)
  kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
  return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) +
               (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2.0 * kxy.mean())


def kid(x, y, *, num_subsets=100, subset_size=1000, seed=0):
  """KID of feature sets x [m,d], y [n,d] -> (mean, std) of unbiased MMD^2 over random subsets.

  subset_size is capped at min(m, n); the size used is returned beside the numbers.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"KID needs [m,d] and [n,d] features, got {x.shape} and {y.shape}")
  size = min(subset_size, len(x), len(y))
  if size < 2:
    raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
  rng = np.random.default_rng(seed)
  vals = np.array([
      mmd2_unbiased(x[rng.choice(len(x), size, replace=False)],
                    y[rng.choice(len(y), size, replace=False)]) for _ in range(num_subsets)])
  return {"mean": float(vals.mean()), "std": float(vals.std()), "subset_size": size,
          "num_subsets": num_subsets}


# ---------------------------------------------------------------------------------------------
# Streaming statistics


@dataclasses.dataclass
class RunningStats:
  """Mean and covariance of a stream of feature rows (float64, Chan's parallel update)."""
  dim: int
  n: int = 0
  mean: np.ndarray = None
  m2: np.ndarray = None

  def __post_init__(self):
    if self.mean is None:
      self.mean = np.zeros(self.dim, np.float64)
    if self.m2 is None:
      self.m2 = np.zeros((self.dim, self.dim), np.float64)

  @classmethod
  def from_features(cls, x):
    x = np.asarray(x, np.float64)
    s = cls(x.shape[1])
    s.update(x)
    return s

  def update(self, x):
    """Folds feature rows x [b, dim] into the statistics."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"expected features [b, {self.dim}], got {x.shape}")
    if len(x) == 0:
      return self
    mb = x.mean(0)
    xc = x - mb
    self.merge(RunningStats(self.dim, len(x), mb, xc.T @ xc))
    return self

  def merge(self, other: "RunningStats"):
    """Folds another RunningStats (another host / shard) into this one, exactly."""
    if other.dim != self.dim:
      raise ValueError(f"cannot merge stats of dim {other.dim} into dim {self.dim}")
    if other.n == 0:
      return self
    n = self.n + other.n
    delta = other.mean - self.mean
    self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
    self.mean = self.mean + delta * (other.n / n)
    self.n = n
    return self

  def covariance(self):
    if self.n < 2:
      raise ValueError(f"covariance needs at least 2 samples, have {self.n}")
    return self.m2 / (self.n - 1)

  def allgather_merge(self) -> "RunningStats":
    """Merges the stats of every JAX process (multi-host); identity with one process."""
    if jax.process_count() == 1:
      return self
    from jax.experimental import multihost_utils
    ns = multihost_utils.process_allgather(np.array([self.n], np.int64))
    means = multihost_utils.process_allgather(self.mean)
    m2s = multihost_utils.process_allgather(self.m2)
    out = RunningStats(self.dim)
    for n, mu, m2 in zip(np.asarray(ns).reshape(-1), np.asarray(means), np.asarray(m2s)):
      out.merge(RunningStats(self.dim, int(n), np.asarray(mu, np.float64),
                             np.asarray(m2, np.float64)))
    return out


# ---------------------------------------------------------------------------------------------
# Sharded feature extraction


def data_mesh(devices=None):
  """A 1-D ('data',) mesh over all (or the given) devices: feature extraction is data parallel."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))


def _local_rows(arr):
  if arr.is_fully_addressable:
    return np.asarray(arr)
  shards = {s.index[0].start or 0: np.asarray(s.data) for s in arr.addressable_shards}
  return np.concatenate([shards[k] for k in sorted(shards)])


class ShardedExtractor:
  """Runs `fn(params, x)` on batches split over every device of `mesh` (params replicated).

  `fn` maps a batch [b, ...] to features [b, d]; the batch is padded to a multiple of the device
  count and the padding rows are dropped from the result. One compile per distinct batch shape.
  In multi-process runs each process passes its local batch and gets its local features back.
  """

  def __init__(self, fn: Callable, params, mesh=None):
    self.mesh = data_mesh() if mesh is None else mesh
    self.batch_spec = P(tuple(self.mesh.axis_names))
    replicated = NamedSharding(self.mesh, P())
    self.params = jax.device_put(params, replicated)
    self.data_sharding = NamedSharding(self.mesh, self.batch_spec)
    self._fn = jax.jit(fn, in_shardings=(replicated, self.data_sharding),
                       out_shardings=self.data_sharding)

  def __call__(self, x):
    x = np.asarray(x)
    b = len(x)
    per = self.mesh.size // jax.process_count()
    pad = (-b) % per
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    arr = jax.make_array_from_process_local_data(self.data_sharding, x)
    return _local_rows(self._fn(self.params, arr))[:b]


def module_extractor(model, feature_fn: Callable, mesh=None) -> ShardedExtractor:
  """ShardedExtractor for an NNX module: feature_fn(model, batch) -> [b, d] features."""
  from flax import nnx
  graphdef, state = nnx.split(model)
  return ShardedExtractor(lambda st, x: feature_fn(nnx.merge(graphdef, st), x), state, mesh)
