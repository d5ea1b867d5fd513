"""Priors: the data-dependent Gaussian (Eq. 8), uniform, standard normal and empirical."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdrl_jax import priors
from fdrl_jax.priors import (EmpiricalPrior, GaussianPrior, NormalPrior, UniformPrior,
                             fit_gaussian)

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
  monkeypatch.setattr(priors, "_available_memory_bytes", lambda: 2**20)
  with pytest.raises(ValueError, match=r"d=3072 needs about 0\.2 GiB .* only 0\.0 GiB"):
    fit_gaussian(np.zeros((4, 32, 32, 3), np.float32))
