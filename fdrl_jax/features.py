"""Feature extractors for sample quality: a small digit classifier's, and the FID Inception's.

FD-digits: the Fréchet distance (``scores.frechet_distance``) of the penultimate features of a small
classifier trained here on the bundled 8×8 digits' training split (``digits_classifier``); it is
*not* FID and its numbers are not comparable to FID. FD-MNIST is the same with the classifier
trained on MNIST. The classifier is ``classifier.ClassifierNet`` (the network that guides
conditional sampling), trained by ``classifier.make_classifier_step`` without an attack.
``confident_share`` is the classifier-based check: the share of samples that the classifier
assigns to one class with probability ≥ 0.9.

``feature_extractor`` picks the features of ``--space=feature`` (the neighbours figure): the
digits classifier's for the bundled digits, else the FID Inception's pool3.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fdrl_jax import bundled, classifier, inception, scores

# The feature classifier's training: Adam's step, the batch, and the σ of the mild input noise
# that defines its features on slightly off-manifold samples too.
LEARNING_RATE, BATCH_SIZE, INPUT_NOISE = 2e-3, 128, 0.03


class Classifier(NamedTuple):
  """A trained ``classifier.ClassifierNet``: ``features(x)`` (N, 128) and ``probabilities(x)``
  (N, 10)."""
  params: dict
  test_accuracy: float

  def _apply(self, x: np.ndarray, features: bool) -> jax.Array:
    x = np.asarray(x, np.float32)
    return jnp.concatenate([_apply_net({"params": self.params}, jnp.asarray(x[i:i + 1000]),
                                       features)
                            for i in range(0, len(x), 1000)])  # bounded memory for 10k images

  def features(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(self._apply(x, True), np.float64)

  def probabilities(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(jax.nn.softmax(self._apply(x, False)))


_apply_net = jax.jit(classifier.ClassifierNet().apply, static_argnums=2)


def train_classifier(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                     test_y: np.ndarray, *, seed: int, steps: int) -> Classifier:
  """Trains a ``ClassifierNet`` (Adam, batch 128, mild input noise, no attack) and measures its
  accuracy on the test images."""
  model, tx = classifier.ClassifierNet(), optax.adam(LEARNING_RATE)
  state = classifier.create_classifier_state(model, tx, jax.random.key(seed), train_x.shape[1:])
  step = jax.jit(classifier.make_classifier_step(model.apply, tx, epsilon=0.0, num_steps=0,
                                                 step_size=0.0, noise=INPUT_NOISE))
  key, rng = jax.random.key(seed), np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.choice(len(train_x), min(BATCH_SIZE, len(train_x)), replace=False)
    state, _ = step(state, (jnp.asarray(train_x[idx], jnp.float32), jnp.asarray(train_y[idx])),
                    key)
  trained = Classifier(params=state.params, test_accuracy=0.0)
  accuracy = float(np.mean(np.argmax(trained.probabilities(test_x), -1) == test_y))
  return trained._replace(test_accuracy=accuracy)


@functools.lru_cache(maxsize=4)
def digits_classifier(seed: int = 0, steps: int = 600) -> Classifier:
  """Trains the FD-digits classifier on the digits training split of ``seed`` (a few seconds)."""
  return train_classifier(*bundled.digits_split(seed), seed=seed, steps=steps)


def fd_digits(samples: np.ndarray, reference: np.ndarray, judge: Classifier) -> float:
  """FD-digits (FD-MNIST with an MNIST classifier): the Fréchet distance of the classifier's
  features of ``samples`` and ``reference``."""
  return scores.frechet_distance(*scores.feature_statistics(judge.features(samples)),
                                 *scores.feature_statistics(judge.features(reference)))


def confident_share(samples: np.ndarray, judge: Classifier, threshold: float = 0.9) -> float:
  """Share of samples the classifier puts in one class with probability ≥ ``threshold``."""
  return float(np.mean(judge.probabilities(samples).max(axis=1) >= threshold))


# ----------------------------------------------------------------------------------------------
# The Inception's features, and the choice of ``--space=feature``.

def rgb(x: np.ndarray) -> np.ndarray:
  """Grey images repeated to the three channels the Inception expects."""
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def inception_features(weights: str) -> Callable[[np.ndarray], np.ndarray]:
  """Images (N, H, W, C) in [-1, 1] → the FID Inception's 2048-d pool3 features, with the
  weights of ``weights`` (grey images repeated to RGB)."""
  variables = inception.load_weights(weights)
  return lambda x: inception.features(variables, rgb(np.asarray(x)))


def check_feature_space(config: ml_collections.ConfigDict) -> None:
  """A one-line ValueError when ``feature_extractor`` has no features for this run."""
  weights = config.eval.inception_weights
  if config.data.name != "digits" and not (weights and os.path.isfile(weights)):
    raise ValueError(f"--space=feature needs the bundled digits (FD-digits classifier) or "
                     f"--config.eval.inception_weights=FILE.npz (found {weights!r}; see "
                     "fdrl_jax/inception.py); or use --space=pixel.")


def feature_extractor(config: ml_collections.ConfigDict) -> Callable[[np.ndarray], np.ndarray]:
  """Images (N, H, W, C) in [-1, 1] → features (N, D) for ``--space=feature``.

  The bundled digits use the FD-digits classifier's 128-d penultimate features (trained on the
  run's own training split, ``digits_classifier(config.seed)``); other data the FID
  Inception's 2048-d pool3 features, from ``config.eval.inception_weights`` (grey images repeated
  to RGB). Raises a ValueError naming what to set when neither is available.
  """
  check_feature_space(config)
  if config.data.name == "digits":
    return digits_classifier(config.seed).features  # trained on first use (seconds)
  return inception_features(config.eval.inception_weights)
