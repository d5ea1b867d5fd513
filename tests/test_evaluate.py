"""Fréchet distance against closed forms; the FD-digits metric on real and fake digits."""

import jax
import numpy as np
import pytest

from fdrl_jax import bundled, features, prior_fit, scores


def psd_sqrt(m):
  w, v = np.linalg.eigh(m)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def closed_form(mu1, s1, mu2, s2):
  """‖Δμ‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}), by symmetric eigendecompositions."""
  r = psd_sqrt(s1)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * psd_sqrt(r @ s2 @ r)))


def random_cov(rng, d, rank=None):
  a = rng.standard_normal((d, rank or d))
  return a @ a.T / d


def test_matches_closed_form_for_general_gaussians():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
  s1, s2 = random_cov(rng, 5), random_cov(rng, 5)
  np.testing.assert_allclose(scores.frechet_distance(mu1, s1, mu2, s2),
                             closed_form(mu1, s1, mu2, s2), rtol=1e-6)


def test_diagonal_and_rank_deficient_cases():
  a, b = np.array([1.0, 4.0, 0.0]), np.array([4.0, 1.0, 0.0])  # singular covariances
  mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 2.0])
  expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # ‖Δμ‖² + Σ(√a − √b)²
  np.testing.assert_allclose(scores.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected,
                             rtol=1e-6)
  rng = np.random.default_rng(1)
  s1, s2 = random_cov(rng, 6, rank=2), random_cov(rng, 6, rank=3)
  np.testing.assert_allclose(scores.frechet_distance(mu1[:1].repeat(6), s1, mu1[:1].repeat(6),
                                                       s2), closed_form(np.zeros(6), s1,
                                                                        np.zeros(6), s2),
                             rtol=1e-4, atol=1e-6)


def test_a_set_against_itself_is_zero():
  features = np.random.default_rng(0).standard_normal((500, 16))
  stats = scores.feature_statistics(features)
  assert abs(scores.frechet_distance(*stats, *stats)) < 1e-8


def test_bad_statistics():
  with pytest.raises(ValueError, match="Mismatched statistics"):
    scores.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="N >= 2"):
    scores.feature_statistics(np.zeros((1, 3)))


def test_fd_digits_separates_real_from_prior_samples():
  classifier = features.digits_classifier(seed=0)
  assert classifier.test_accuracy > 0.9
  train_x, _, test_x, _ = bundled.digits_split(0)
  floor = features.fd_digits(train_x, test_x, classifier)
  prior = prior_fit.fit_gaussian(train_x)
  fake = np.asarray(prior.sample(jax.random.key(0), len(test_x)))
  assert features.fd_digits(fake, test_x, classifier) > 3 * floor
  assert features.confident_share(test_x, classifier) > 0.8
  noise = np.random.default_rng(0).uniform(-1, 1, test_x.shape).astype(np.float32)
  assert features.confident_share(noise, classifier) < features.confident_share(test_x, classifier)


def test_streamed_statistics_equal_the_whole_sets():
  features = 5.0 + np.random.default_rng(2).standard_normal((301, 7)) * [1, 2, 3, 4, 5, 6, 7]
  mu, sigma = scores.feature_statistics(features)
  np.testing.assert_allclose(mu, features.mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
  streamed = scores.feature_statistics(iter(np.array_split(features, [1, 50, 50, 200])))
  np.testing.assert_allclose(streamed[0], mu, rtol=1e-12)
  np.testing.assert_allclose(streamed[1], sigma, rtol=1e-10, atol=1e-12)


def test_mmd_against_closed_forms():
  x = np.random.default_rng(0).standard_normal((400, 2))
  assert scores.mmd(x, x) < 1e-6
  # One point each: MMD² = 2 − 2 k(a, b), k = exp(−d² / (2 h²)).
  d, h = 0.3, scores.MMD_BANDWIDTH
  np.testing.assert_allclose(scores.mmd(np.zeros((1, 2)), np.array([[d, 0.0]])),
                             np.sqrt(2 - 2 * np.exp(-d ** 2 / (2 * h ** 2))), rtol=1e-12)
  y = 0.2 * np.random.default_rng(1).standard_normal((1000, 2))  # the kernel's own scale
  same, shifted = scores.mmd(y[:500], y[500:]), scores.mmd(y[:500], y[500:] + [0.2, 0.0])
  assert same < 0.1 < 0.3 < shifted
