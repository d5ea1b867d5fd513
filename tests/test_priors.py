"""Priors: the data-dependent Gaussian (Eq. 8), full and low-rank, uniform, standard normal and
empirical."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdrl_jax import prior_fit
from fdrl_jax.prior_fit import fit_gaussian, fit_low_rank_gaussian
from fdrl_jax.priors import (
  EmpiricalPrior,
  GaussianPrior,
  LowRankGaussianPrior,
  NormalPrior,
  UniformPrior,
)

COV = np.array([[0.20, 0.05, 0.00], [0.05, 0.10, -0.03], [0.00, -0.03, 0.15]])
MEAN = np.array([0.1, -0.2, 0.3])


def data(n=5000, seed=0):
  return np.random.default_rng(seed).multivariate_normal(MEAN, COV, size=n).astype(np.float32)


def test_fit_stores_data_mean_and_covariance_plus_jitter():
  x = data()
  prior = fit_gaussian(x, jitter=1e-3)
  np.testing.assert_allclose(prior.mean, x.mean(0), atol=1e-6)
  cov = np.asarray(prior.scale_tril, np.float64) @ np.asarray(prior.scale_tril, np.float64).T
  np.testing.assert_allclose(cov, np.cov(x.T) + 1e-3 * np.eye(3), atol=1e-5)
  assert np.allclose(np.triu(prior.scale_tril, 1), 0)


def test_sample_moments_match_data():
  x = data(20_000)
  prior = fit_gaussian(x, clip=None)
  s = np.asarray(prior.sample(jax.random.key(0), 40_000))
  np.testing.assert_allclose(s.mean(0), x.mean(0), atol=0.01)
  np.testing.assert_allclose(np.cov(s.T), np.cov(x.T), atol=0.01)


def test_images_are_flattened_reshaped_and_clipped():
  x = np.random.default_rng(0).uniform(-1, 1, size=(300, 4, 4, 3)).astype(np.float32)
  prior = fit_gaussian(x)
  assert prior.mean.shape == (48,) and prior.scale_tril.shape == (48, 48)
  s = prior.sample(jax.random.key(0), 7)
  assert s.shape == (7, 4, 4, 3)
  assert float(s.min()) >= -1.0 and float(s.max()) <= 1.0


def test_priors_are_pytrees_that_pass_through_jit():
  prior = fit_gaussian(data(100))
  assert len(jax.tree.leaves(prior)) == 2
  draw = jax.jit(lambda p, key: p.sample(key, 4))
  np.testing.assert_allclose(draw(prior, jax.random.key(0)), prior.sample(jax.random.key(0), 4),
                             rtol=1e-6)
  moved = jax.tree.map(lambda a: a + 1.0, prior)
  assert isinstance(moved, GaussianPrior) and moved.event_shape == (3,)


def test_uniform_standard_normal_empirical():
  u = UniformPrior(event_shape=(2, 3)).sample(jax.random.key(0), 10_000)
  assert u.shape == (10_000, 2, 3)
  assert float(u.min()) >= -1 and float(u.max()) <= 1 and abs(float(u.mean())) < 0.02
  z = NormalPrior(event_shape=(4,)).sample(jax.random.key(1), 20_000)
  assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
  z = NormalPrior(event_shape=(2,), loc=6.0, scale=0.5).sample(jax.random.key(1), 20_000)
  assert abs(float(z.mean()) - 6) < 0.02 and abs(float(z.std()) - 0.5) < 0.01
  source = jnp.arange(12.0).reshape(6, 2)
  empirical = EmpiricalPrior(data=source)
  drawn = empirical.sample(jax.random.key(2), 50)
  assert empirical.event_shape == (2,)
  assert all(any(np.array_equal(row, s) for s in np.asarray(source)) for row in np.asarray(drawn))


def test_nan_in_data_is_one_clear_error():
  x = data(50)
  x[17, 1] = np.nan
  with pytest.raises(ValueError, match="non-finite values.*first in sample 17"):
    fit_gaussian(x)


def test_too_few_samples():
  with pytest.raises(ValueError, match="N >= 2"):
    fit_gaussian(np.zeros((1, 3)))


def test_covariance_too_large_for_memory_is_refused(monkeypatch):
  monkeypatch.setattr(prior_fit, "_available_memory_bytes", lambda: 2**20)
  with pytest.raises(ValueError, match=r"d=3072 needs about 0\.2 GiB .* only 0\.0 GiB"):
    fit_gaussian(np.zeros((4, 32, 32, 3), np.float32))


# Spiked covariance: variances 4, 2, 1 along three orthonormal directions plus 0.05·I.
SPIKES = np.array([4.0, 2.0, 1.0])
NOISE = 0.05


@pytest.fixture(scope="module")
def spiked():
  """Data (20 000, 200) with the spiked covariance, its true directions and its PCA (descending)."""
  rng = np.random.default_rng(0)
  d, n = 200, 20_000
  directions = np.linalg.qr(rng.standard_normal((d, 3)))[0]
  x = (0.3 + (rng.standard_normal((n, 3)) * np.sqrt(SPIKES)) @ directions.T
       + np.sqrt(NOISE) * rng.standard_normal((n, d))).astype(np.float32)
  eigvals, eigvecs = np.linalg.eigh(np.cov(x.T))
  return x, directions, eigvals[::-1], eigvecs[:, ::-1]


@pytest.fixture(scope="module")
def low_rank(spiked):
  return fit_low_rank_gaussian(spiked[0], 3, clip=None)


def sin_largest_angle(a, b):
  """The sine of the largest principal angle between the column spans of a and b."""
  qa, qb = np.linalg.qr(np.asarray(a, np.float64))[0], np.linalg.qr(np.asarray(b, np.float64))[0]
  return np.linalg.norm(qb - qa @ (qa.T @ qb), 2)


def low_rank_covariance(prior):
  c = np.asarray(prior.components, np.float64)
  return c @ c.T + float(prior.residual_scale) ** 2 * np.eye(c.shape[0])


def test_low_rank_samples_match_the_data_top_principal_variances(spiked, low_rank):
  x, _, eigvals, eigvecs = spiked
  s = np.asarray(low_rank.sample(jax.random.key(0), 40_000), np.float64)
  np.testing.assert_allclose(s.mean(0), x.mean(0), atol=0.03)
  np.testing.assert_allclose(((s - x.mean(0)) @ eigvecs[:, :3]).var(0), eigvals[:3], rtol=0.03)


def test_low_rank_fit_finds_top_directions_and_residual(spiked, low_rank):
  x, directions, eigvals, eigvecs = spiked
  assert low_rank.components.shape == (200, 3) and low_rank.residual_scale.shape == ()
  assert sin_largest_angle(low_rank.components, eigvecs[:, :3]) < 1e-3
  assert sin_largest_angle(low_rank.components, directions) < 0.05
  np.testing.assert_allclose(float(low_rank.residual_scale) ** 2, NOISE + 1e-4, rtol=0.02)
  top = np.linalg.norm(np.asarray(low_rank.components, np.float64), axis=0) ** 2
  np.testing.assert_allclose(top + float(low_rank.residual_scale) ** 2, eigvals[:3] + 1e-4,
                             rtol=1e-3)
  np.testing.assert_allclose(low_rank.mean, x.mean(0), atol=1e-5)


def test_low_rank_streaming_matches_whole_array(spiked, low_rank):
  x = spiked[0]
  streamed = fit_low_rank_gaussian(lambda: (c for c in np.split(x, 10)), 3, clip=None)
  np.testing.assert_allclose(streamed.mean, low_rank.mean, atol=1e-6)
  np.testing.assert_allclose(low_rank_covariance(streamed), low_rank_covariance(low_rank),
                             atol=1e-4)


def test_low_rank_at_rank_d_minus_1_is_the_full_covariance():
  rng = np.random.default_rng(1)
  x = (rng.standard_normal((3000, 6)) @ rng.standard_normal((6, 6))).astype(np.float32)
  full = np.asarray(fit_gaussian(x).scale_tril, np.float64)
  np.testing.assert_allclose(low_rank_covariance(fit_low_rank_gaussian(x, 5)), full @ full.T,
                             atol=1e-4)


def test_low_rank_images_are_reshaped_and_clipped():
  x = np.random.default_rng(0).uniform(-1, 1, size=(300, 8, 8, 3)).astype(np.float32)
  prior = fit_low_rank_gaussian(x, 5)
  assert prior.mean.shape == (192,) and prior.components.shape == (192, 5)
  s = prior.sample(jax.random.key(0), 7)
  assert s.shape == (7, 8, 8, 3)
  assert float(s.min()) >= -1.0 and float(s.max()) <= 1.0


def test_low_rank_prior_is_a_pytree_that_passes_through_jit(low_rank):
  assert len(jax.tree.leaves(low_rank)) == 3
  draw = jax.jit(lambda p, key: p.sample(key, 4))
  np.testing.assert_allclose(draw(low_rank, jax.random.key(0)),
                             low_rank.sample(jax.random.key(0), 4), rtol=1e-5, atol=1e-6)
  moved = jax.tree.map(lambda a: a + 1.0, low_rank)
  assert isinstance(moved, LowRankGaussianPrior) and moved.event_shape == (200,)


def test_low_rank_bad_inputs_are_one_clear_error():
  x = data(50)
  with pytest.raises(ValueError, match="rank >= 1, got 0"):
    fit_low_rank_gaussian(x, 0)
  with pytest.raises(ValueError, match="rank < d = 3, got 3"):
    fit_low_rank_gaussian(x, 3)
  with pytest.raises(ValueError, match="N >= 2 samples, got 1"):
    fit_low_rank_gaussian(x[:1], 1)
  x[37, 1] = np.nan
  with pytest.raises(ValueError, match="non-finite values.*first in sample 37"):
    fit_low_rank_gaussian(lambda: np.split(x, 5), 1)
  with pytest.raises(ValueError, match=r"batch of shape \(5, 4\) after batches of samples of shape "
                     r"\(3,\)"):
    fit_low_rank_gaussian(lambda: [x[:10], np.zeros((5, 4))], 1)
  once = iter(np.split(data(50), 5))
  with pytest.raises(ValueError, match="saw 0 samples on a later pass.*fresh iterable"):
    fit_low_rank_gaussian(lambda: once, 1)


def test_low_rank_working_memory_too_large_is_refused(monkeypatch):
  monkeypatch.setattr(prior_fit, "_available_memory_bytes", lambda: 2**20)
  with pytest.raises(ValueError, match=r"rank-64 .* d=49152 .* about 0\.1 GiB .* only 0\.0 GiB"):
    fit_low_rank_gaussian(np.zeros((2, 128, 128, 3), np.float32), 64, chunk_size=2)
