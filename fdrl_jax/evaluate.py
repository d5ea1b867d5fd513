"""Sample quality: the Fréchet distance, and FD-digits, a Fréchet distance that runs here.

``frechet_distance`` is the distance between two Gaussians fitted to feature sets,

    FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}),

computed in float64 on the host, with the standard FID code's safeguards: if the matrix square root
is not finite (a singular product), ε·I is added to both covariances; an imaginary part left by
``scipy.linalg.sqrtm`` is dropped only when it is negligible.

FD-digits: the same distance on the penultimate features of a small classifier trained here on the
bundled 8×8 digits' training split (``digits_classifier``); it is *not* FID and its numbers are not
comparable to FID. ``confident_share`` is the classifier-based check: the share of samples that
the classifier assigns to one class with probability ≥ 0.9.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg

from fdrl_jax import data
from fdrl_jax.conv import conv_general_dilated


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64, rows are samples) of a feature set (N, D), N ≥ 2."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"Feature statistics need an (N, D) array with N >= 2, got {features.shape}.")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (see the module docstring).

  Raises:
    ValueError: for mismatched shapes, or when the square root keeps a non-negligible imaginary
      part (the covariances are then not valid).
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"Mismatched statistics: means {mu1.shape} and {mu2.shape}, covariances "
                     f"{sigma1.shape} and {sigma2.shape}.")
  with warnings.catch_warnings():  # singular products are handled here, not warned about
    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
      offset = eps * np.eye(sigma1.shape[0])
      covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"The covariance square root has an imaginary part of "
                       f"{np.max(np.abs(covmean.imag)):.3g}; the statistics are not valid.")
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


class DigitsClassifier(nn.Module):
  """Small conv classifier for low-resolution grey digits (the bundled 8×8 ones, MNIST 28²);
  ``features`` are its 128-d penultimate activations."""

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    for features, stride in ((32, 1), (64, 2), (64, 1 if x.shape[1] <= 8 else 2)):
      x = nn.relu(nn.Conv(features, (3, 3), strides=stride,
                          conv_general_dilated=conv_general_dilated)(x))
    features = nn.relu(nn.Dense(128)(x.reshape((x.shape[0], -1))))
    return features, nn.Dense(10)(features)


class Classifier(NamedTuple):
  """A trained DigitsClassifier: ``features(x)`` (N, 128) and ``probabilities(x)`` (N, 10)."""
  params: dict
  test_accuracy: float

  def _apply(self, x: np.ndarray) -> tuple[jax.Array, jax.Array]:
    x = np.asarray(x, np.float32)
    chunks = [_apply_classifier(self.params, jnp.asarray(x[i:i + 1000]))
              for i in range(0, len(x), 1000)]  # bounded memory for 10k MNIST images
    return tuple(jnp.concatenate(parts) for parts in zip(*chunks))

  def features(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(self._apply(x)[0], np.float64)

  def probabilities(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(jax.nn.softmax(self._apply(x)[1]))


@jax.jit
def _apply_classifier(params, x):
  return DigitsClassifier().apply(params, x)


def train_classifier(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                     test_y: np.ndarray, *, seed: int, steps: int) -> Classifier:
  """Trains a DigitsClassifier (Adam, batch 128, mild input noise) and measures its accuracy."""
  model, tx = DigitsClassifier(), optax.adam(2e-3)
  params = model.init(jax.random.key(seed), jnp.zeros((1, *train_x.shape[1:])))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x)[1], y).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.choice(len(train_x), min(128, len(train_x)), replace=False)
    # Mild noise so that the features are defined on slightly off-manifold samples too.
    x = train_x[idx] + 0.03 * rng.standard_normal(train_x[idx].shape).astype(np.float32)
    params, opt_state = step(params, opt_state, x, train_y[idx])
  classifier = Classifier(params=params, test_accuracy=0.0)
  accuracy = float(np.mean(np.argmax(classifier.probabilities(test_x), -1) == test_y))
  return classifier._replace(test_accuracy=accuracy)


@functools.lru_cache(maxsize=4)
def digits_classifier(seed: int = 0, steps: int = 600) -> Classifier:
  """Trains the FD-digits classifier on the digits training split of ``seed`` (a few seconds)."""
  return train_classifier(*data.digits_split(seed), seed=seed, steps=steps)


def fd_digits(samples: np.ndarray, reference: np.ndarray, classifier: Classifier) -> float:
  """FD-digits (FD-MNIST with an MNIST classifier): the Fréchet distance of the classifier's
  features of ``samples`` and ``reference``."""
  return frechet_distance(*feature_statistics(classifier.features(samples)),
                          *feature_statistics(classifier.features(reference)))


def confident_share(samples: np.ndarray, classifier: Classifier, threshold: float = 0.9) -> float:
  """Share of samples the classifier puts in one class with probability ≥ ``threshold``."""
  return float(np.mean(classifier.probabilities(samples).max(axis=1) >= threshold))
