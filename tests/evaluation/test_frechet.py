"""Frechet distance, KID, streaming stats and sharded extraction against float64 references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx

from wm_jax.evaluation import frechet


def _features(seed, n, d, shift=0.0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(d, d)) / np.sqrt(d)
  return rng.normal(size=(n, d)) @ a + shift


def _reference_fd(x, y):
  """The textbook formula with scipy.linalg.sqrtm, float64."""
  mu1, mu2 = x.mean(0), y.mean(0)
  c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(c1 @ c2)
  covmean = covmean.real
  return np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("d", [8, 64])
def test_frechet_matches_scipy_reference(d):
  x, y = _features(0, 500, d), _features(1, 400, d, shift=0.3)
  got = frechet.frechet_from_features(x, y)
  np.testing.assert_allclose(got, _reference_fd(x, y), rtol=1e-6)
  assert got > 0.1


def test_frechet_of_identical_sets_is_zero_and_singular_cov_ok():
  x = _features(2, 20, 64)   # fewer samples than dims: singular covariance
  scale = np.trace(np.cov(x, rowvar=False))
  assert abs(frechet.frechet_from_features(x, x)) < 1e-6 * scale
  y = _features(3, 20, 64)
  assert np.isfinite(frechet.frechet_from_features(x, y))


def test_frechet_rejects_bad_shapes():
  with pytest.raises(ValueError, match="shape mismatch"):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def _reference_mmd(x, y):
  d = x.shape[1]
  k = lambda a, b: (a @ b / d + 1.0) ** 3
  m, n = len(x), len(y)
  sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return sxx + syy - 2 * sxy


def test_kid_matches_reference():
  x, y = _features(4, 30, 6), _features(5, 25, 6, shift=0.5)
  np.testing.assert_allclose(frechet.mmd2_unbiased(x, y), _reference_mmd(x, y), rtol=1e-6)
  # Subsets: replay the same subset draws and average the reference.
  out = frechet.kid(x, y, num_subsets=3, subset_size=10, seed=7)
  rng = np.random.default_rng(7)
  ref = []
  for _ in range(3):
    ix, iy = rng.choice(30, 10, replace=False), rng.choice(25, 10, replace=False)
    ref.append(_reference_mmd(x[ix], y[iy]))
  np.testing.assert_allclose(out["mean"], np.mean(ref), rtol=1e-6)
  np.testing.assert_allclose(out["std"], np.std(ref), rtol=1e-6)
  assert out["subset_size"] == 10
  # Same distribution -> KID near 0 (unbiased), shifted -> clearly positive.
  same = frechet.kid(_features(6, 200, 6), _features(7, 200, 6), num_subsets=5, subset_size=100)
  assert abs(same["mean"]) < 0.2 * out["mean"]


def test_streaming_stats_equal_one_shot():
  x = _features(8, 1000, 16, shift=3.0)
  s = frechet.RunningStats(16)
  for chunk in np.array_split(x, [1, 7, 300, 301, 999]):   # includes uneven and size-1 batches
    s.update(chunk)
  np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(s.covariance(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
  # Merging per-"host" stats equals the stats of everything.
  a = frechet.RunningStats.from_features(x[:123])
  b = frechet.RunningStats.from_features(x[123:])
  a.merge(b)
  assert a.n == 1000
  np.testing.assert_allclose(a.covariance(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
  with pytest.raises(ValueError, match=r"\[b, 16\]"):
    s.update(np.zeros((2, 3)))


class _TinyNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.dense = nnx.Linear(4, 5, rngs=rngs)

  def __call__(self, x):
    return self.dense(jnp.mean(jax.nn.relu(self.conv(x)), axis=(1, 2)))


def _stream_stats(extract, batches, dim):
  """Every batch through `extract`, its features folded into RunningStats (per process);
  returns (stats merged over processes, number of batches)."""
  stats = frechet.RunningStats(dim)
  count = 0
  for count, batch in enumerate(batches, 1):
    stats.update(extract(batch))
  return stats.allgather_merge(), count


def test_sharded_extraction_on_8_devices(cpu_devices):
  net = _TinyNet(nnx.Rngs(0))
  ext = frechet.module_extractor(net, lambda m, x: m(x), frechet.data_mesh(cpu_devices))
  x = np.random.default_rng(0).normal(size=(11, 6, 6, 3)).astype(np.float32)  # 11: pads to 16
  got = ext(x)
  assert got.shape == (11, 5)
  np.testing.assert_allclose(got, np.asarray(net(jnp.asarray(x))), rtol=1e-5, atol=1e-5)
  stats, n_batches = _stream_stats(ext, [x[:8], x[8:]], dim=5)
  assert n_batches == 2 and stats.n == 11
  np.testing.assert_allclose(stats.mean, got.mean(0), rtol=1e-5, atol=1e-6)


def test_round_off_below_zero_is_clamped_to_exactly_zero():
  # Fewer samples than dims: the matrix square root's round-off made this about -3e-6.
  x = _features(2, 20, 64)
  assert frechet.frechet_from_features(x, x) == 0.0
  s = frechet.RunningStats.from_features(x)
  merged = frechet.RunningStats(64)
  for chunk in np.array_split(x, 3):
    merged.update(chunk)
  assert frechet.frechet_from_stats(s, merged) == 0.0


def test_a_clearly_negative_distance_is_an_error():
  # A covariance with a negative eigenvalue is no covariance: tr(C) + tr(C) - 2 tr(C) < 0.
  bad = np.diag([1.0, -1.0])
  with pytest.raises(ValueError, match=r"Frechet distance -2 is negative beyond round-off"):
    frechet.frechet_distance(np.zeros(2), bad, np.zeros(2), bad)
