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

Sample scores (``--mode=eval``, ``--mode=stats``). ``extractor`` gives the ``Extractor`` of a
run's ``eval.metric`` family: ``fid`` the FID Inception (pool3, and the Inception Score's logits
when the weights hold ``fc``), ``fd_digits`` / ``fd_mnist`` the digit classifier (its penultimate
features and 10-way logits), ``mmd`` the raw points (no logits). With a mesh of several devices the
Inception and the classifier compute each device's rows of every batch, and every process gets
all the features (``parallel.to_host``); their moments are then summed in float64 on the host
(``scores.Moments``), so the statistics are the one-device ones up to the forward pass's rounding.
Gathering a batch's n·D features costs less than all-reducing its D² moments while n < D (50
images against 2 048 Inception features). ``FeatureAccumulator`` streams batches into a
``FeatureSet`` (mean, covariance, and the rows only where KID/PR or the Inception Score need
them). The reference sets and their statistics files are in ``feature_stats``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from fdrl_jax import (
  bundled,
  classifier,
  datasets,
  inception,
  inception_weights,
  parallel,
  registry,
  scores,
)

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
    return jnp.concatenate(
      [
        _apply_net({"params": self.params}, jnp.asarray(x[i : i + 1000]), features)
        for i in range(0, len(x), 1000)
      ]
    )  # bounded memory for 10k images

  def features(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(self._apply(x, True), np.float64)

  def probabilities(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(jax.nn.softmax(self._apply(x, False)))


_apply_net = jax.jit(classifier.ClassifierNet().apply, static_argnums=2)


def _outputs(variables: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The classifier's penultimate features and its logits, from one forward pass."""
  # flax types apply's result as maybe (out, state): that is with ``mutable`` only
  hidden: Any = classifier.ClassifierNet().apply(variables, x, True)
  dense = variables["params"]["Dense_1"]  # the output layer of ``ClassifierNet``
  return hidden, jnp.dot(hidden, dense["kernel"], precision=jax.lax.Precision.HIGHEST) + dense[
    "bias"
  ]


@functools.cache
def _outputs_fn(mesh: Mesh | None) -> Any:
  """The jitted ``_outputs``; with a mesh, the variables replicated and the rows split."""
  if mesh is None:
    return jax.jit(_outputs)
  rows = parallel.particles(mesh)
  return jax.jit(_outputs, in_shardings=(parallel.replicated(mesh), rows), out_shardings=rows)


def classifier_outputs(
  judge: Classifier, x: np.ndarray, *, mesh: Mesh | None = None, chunk: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
  """The penultimate features (N, 128) and logits (N, 10) of ``judge``, float64, ``chunk`` images
  per forward pass; with a mesh of several devices each device computes its rows (every process
  holds all of ``x`` and gets all the outputs)."""
  mesh = mesh if mesh is not None and mesh.devices.size > 1 else None
  n_dev = 1 if mesh is None else mesh.devices.size
  variables = {"params": judge.params}
  if mesh is not None:
    variables = jax.device_put(variables, parallel.replicated(mesh))
  x = np.asarray(x, np.float32)
  out: list[tuple[np.ndarray, ...]] = [(np.zeros((0, 128)), np.zeros((0, 10)))]
  for start in range(0, len(x), chunk):
    part = x[start : start + chunk]
    count = len(part)
    part = np.pad(part, ((0, -count % n_dev),) + ((0, 0),) * (part.ndim - 1))
    result = _outputs_fn(mesh)(
      variables, part if mesh is None else parallel.put_particles(part, mesh)
    )
    out.append(tuple(np.asarray(parallel.to_host(r), np.float64)[:count] for r in result))
  hidden, logits = (np.concatenate(parts) for parts in zip(*out))
  return hidden, logits


def train_classifier(
  train_x: np.ndarray,
  train_y: np.ndarray,
  test_x: np.ndarray,
  test_y: np.ndarray,
  *,
  seed: int,
  steps: int,
) -> Classifier:
  """Trains a ``ClassifierNet`` (Adam, batch 128, mild input noise, no attack) and measures its
  accuracy on the test images."""
  model, tx = classifier.ClassifierNet(), optax.adam(LEARNING_RATE)
  state = classifier.create_classifier_state(model, tx, jax.random.key(seed), train_x.shape[1:])
  step = jax.jit(
    classifier.make_classifier_step(
      model.apply, tx, epsilon=0.0, num_steps=0, step_size=0.0, noise=INPUT_NOISE
    )
  )
  key, rng = jax.random.key(seed), np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.choice(len(train_x), min(BATCH_SIZE, len(train_x)), replace=False)
    state, _ = step(state, (jnp.asarray(train_x[idx], jnp.float32), jnp.asarray(train_y[idx])), key)
  trained = Classifier(params=state.params, test_accuracy=0.0)
  accuracy = float(np.mean(np.argmax(trained.probabilities(test_x), -1) == test_y))
  return trained._replace(test_accuracy=accuracy)


@functools.lru_cache(maxsize=4)
def digits_classifier(seed: int = 0, steps: int = 600) -> Classifier:
  """Trains the FD-digits classifier on the digits training split of ``seed`` (a few seconds)."""
  return train_classifier(*bundled.digits_split(seed), seed=seed, steps=steps)


# FD-MNIST: the digit classifier trained on this many MNIST training images, for these steps.
MNIST_CLASSIFIER_IMAGES, MNIST_CLASSIFIER_STEPS = 20_000, 1_500


@functools.lru_cache(maxsize=2)
def mnist_classifier(seed: int = 0, data_dir: str | None = None) -> Classifier:
  """Trains the FD-MNIST classifier on 20 000 tfds MNIST training images (about a minute on a
  CPU); its accuracy is measured on the 10 000 test images."""
  mnist = datasets.labelled_images("mnist", data_dir=data_dir, max_train=MNIST_CLASSIFIER_IMAGES)
  train_x, train_y, test_x, test_y = mnist.train, mnist.train_labels, mnist.test, mnist.test_labels
  if train_x is None or train_y is None or test_x is None or test_y is None:
    raise ValueError("The FD-MNIST classifier needs MNIST's labelled training and test images.")
  return train_classifier(train_x, train_y, test_x, test_y, seed=seed, steps=MNIST_CLASSIFIER_STEPS)


def fd_digits(samples: np.ndarray, reference: np.ndarray, judge: Classifier) -> float:
  """FD-digits (FD-MNIST with an MNIST classifier): the Fréchet distance of the classifier's
  features of ``samples`` and ``reference``."""
  return scores.frechet_distance(
    *scores.feature_statistics(judge.features(samples)),
    *scores.feature_statistics(judge.features(reference)),
  )


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
  return inception_extractor(inception_weights.load_weights(weights)).features


def check_feature_space(config: ml_collections.ConfigDict) -> None:
  """A one-line ValueError when ``feature_extractor`` has no features for this run."""
  weights = config.eval.inception_weights
  if config.data.name != "digits" and not (weights and os.path.isfile(weights)):
    raise ValueError(
      f"--space=feature needs the bundled digits (FD-digits classifier) or "
      f"--config.eval.inception_weights=FILE.npz (found {weights!r}; see "
      "fdrl_jax/inception_weights.py); or use --space=pixel."
    )


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


# ----------------------------------------------------------------------------------------------
# Extractors, and feature sets streamed through them.


class Extractor(NamedTuple):
  """A feature extractor of sample scores.

  Attributes:
    name: "inception", "digits", "mnist" or "raw".
    features: images (n, H, W, C) in [-1, 1] → features (n, D), float64.
    logits: images → class logits (n, C), float64 (the Inception Score's); None when there are
      none (raw points, Inception weights without ``fc``).
    both: images → (features, logits) from one forward pass; None with ``logits``.
  """

  name: str
  features: Callable[[np.ndarray], np.ndarray]
  logits: Callable[[np.ndarray], np.ndarray] | None
  both: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None


def inception_extractor(
  variables: dict, *, mesh: Mesh | None = None, batch_size: int = 50, resize_input: bool = True
) -> Extractor:
  """The FID Inception of ``variables`` (``inception_weights.load_weights``) as an ``Extractor``:
  pool3 features, and the Inception Score's logits when the variables hold ``fc``; grey images
  are repeated to RGB; with a mesh, each device computes its rows."""

  def run(x: np.ndarray, logits: bool):
    return inception.features(
      variables, rgb(np.asarray(x)), batch_size, resize_input, logits=logits, mesh=mesh
    )

  if "fc" not in variables["params"]:
    return Extractor("inception", lambda x: run(x, False), None, None)
  return Extractor(
    "inception", lambda x: run(x, False), lambda x: run(x, True)[1], lambda x: run(x, True)
  )


def classifier_extractor(name: str, judge: Classifier, *, mesh: Mesh | None = None) -> Extractor:
  """A digit classifier (``name``: "digits" or "mnist") as an ``Extractor``: its penultimate
  features and its 10-way logits."""
  both = lambda x: classifier_outputs(judge, x, mesh=mesh)
  return Extractor(name, lambda x: both(x)[0], lambda x: both(x)[1], both)


def raw_extractor() -> Extractor:
  """The points themselves, flattened (MMD of the 2-D toy sets); no logits."""
  return Extractor("raw", lambda x: np.asarray(x, np.float64).reshape(len(x), -1), None, None)


def _fid_extractor(config: ml_collections.ConfigDict, mesh: Mesh | None) -> Extractor:
  weights = config.eval.inception_weights
  if not weights:
    raise ValueError(
      "FID needs --config.eval.inception_weights=FILE.npz: pytorch-fid's Inception "
      f"weights, converted once by `{inception.CONVERT_COMMAND} FILE.npz`."
    )
  return inception_extractor(inception_weights.load_weights(weights), mesh=mesh)


# eval.metric's family → (config, mesh) → its extractor.
EXTRACTORS: dict[str, Callable[[ml_collections.ConfigDict, Mesh | None], Extractor]] = {
  "fid": _fid_extractor,
  "fd_digits": lambda c, mesh: classifier_extractor("digits", digits_classifier(c.seed), mesh=mesh),
  "fd_mnist": lambda c, mesh: classifier_extractor(
    "mnist", mnist_classifier(c.seed, c.data.data_dir or None), mesh=mesh
  ),
  "mmd": lambda c, mesh: raw_extractor(),
}


def extractor(
  config: ml_collections.ConfigDict, dataset: bundled.Dataset, *, mesh: Mesh | None = None
) -> Extractor:
  """The ``Extractor`` of ``config.eval.metric``'s family (see the module docstring); a digit
  classifier is trained on first use (seconds for the digits, a minute for MNIST)."""
  del dataset  # every family's extractor is the config's; the data are scored by the caller
  return registry.lookup(EXTRACTORS, config.eval.metric, "--config.eval.metric")(config, mesh)


class FeatureSet(NamedTuple):
  """A feature set's statistics: mean mu (D,), covariance sigma (D, D) (float64) of ``count``
  rows; the rows (N, D) and class logits (N, C), float32, only where they were kept (else None).
  A pytorch-fid / clean-fid statistics file has no count (0)."""

  mu: np.ndarray
  sigma: np.ndarray
  count: int  # type: ignore[assignment]  # a field named count shadows tuple.count for mypy
  features: np.ndarray | None = None
  logits: np.ndarray | None = None


def quantize_images(x: np.ndarray) -> np.ndarray:
  """Images in [-1, 1] rounded to 8 bits as a saved PNG holds them, back in [-1, 1]."""
  return (np.clip(np.round((np.asarray(x, np.float32) + 1) * 127.5), 0, 255) / 127.5 - 1).astype(
    np.float32
  )


class FeatureAccumulator:
  """Streams image batches through an ``Extractor`` into a ``FeatureSet``: one forward pass per
  batch, the moments summed in float64 (``scores.Moments``), the rows and logits kept only if
  asked; with ``quantize`` each batch is first rounded to 8 bits (``quantize_images``)."""

  def __init__(
    self,
    extractor: Extractor,
    *,
    keep_features: bool = False,
    keep_logits: bool = False,
    quantize: bool = False,
  ):
    if keep_logits and extractor.both is None:
      raise ValueError(
        f"The {extractor.name} features have no class logits: the Inception Score "
        "needs the Inception's (weights with fc) or a digit classifier's."
      )
    self.extractor, self.quantize = extractor, quantize
    self.keep_features, self.keep_logits = keep_features, keep_logits
    self._moments = scores.Moments()
    self._rows: list[np.ndarray] = []
    self._logits: list[np.ndarray] = []

  def add(self, batch: np.ndarray) -> None:
    """Adds the images ``batch`` (n, H, W, C) in [-1, 1] (every process holds all of them)."""
    batch = quantize_images(batch) if self.quantize else np.asarray(batch, np.float32)
    if self.keep_logits and self.extractor.both is not None:  # both is set, as __init__ checks
      feats, logits = self.extractor.both(batch)
      self._logits.append(np.asarray(logits, np.float32))
    else:
      feats = self.extractor.features(batch)
    self._moments = scores.add_moments(self._moments, feats)
    if self.keep_features:
      self._rows.append(np.asarray(feats, np.float32))

  def result(self) -> FeatureSet:
    """The ``FeatureSet`` of the batches added so far (a one-line ValueError for fewer than 2
    rows)."""
    mu, sigma = scores.moments_statistics(self._moments)
    rows = np.concatenate(self._rows) if self.keep_features else None
    logits = np.concatenate(self._logits) if self.keep_logits else None
    return FeatureSet(mu, sigma, self._moments.count, rows, logits)
