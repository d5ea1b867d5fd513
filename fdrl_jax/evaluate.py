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

MMD (the 2-D toy sets): the kernel two-sample distance with a Gaussian kernel of bandwidth
``MMD_BANDWIDTH`` (``mmd``), samples against fresh draws of the data distribution.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from typing import Callable, Iterable, Iterator, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy.linalg

from fdrl_jax import bundled, files, parallel, workdir as workdirs
from fdrl_jax.conv import conv_general_dilated


def feature_statistics(features: np.ndarray | Iterable[np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64, rows are samples) of a feature set (N, D), N ≥ 2, given whole
  or as an iterable of (n, D) batches (streamed: memory D², not N·D). Sums are taken about the
  first batch's mean, so a large common offset costs no precision."""
  batches = [features] if isinstance(features, np.ndarray) else features
  count, shift, total, outer = 0, None, 0.0, 0.0
  for batch in batches:
    batch = np.asarray(batch, np.float64)
    if batch.ndim != 2:
      raise ValueError(f"Feature statistics need (N, D) arrays, got {batch.shape}.")
    if not len(batch):
      continue
    shift = batch.mean(axis=0) if shift is None else shift
    centred = batch - shift
    count, total, outer = count + len(batch), total + centred.sum(0), outer + centred.T @ centred
  if count < 2:
    raise ValueError(f"Feature statistics need (N, D) features with N >= 2, got N = {count}.")
  mean = total / count
  return shift + mean, (outer - count * np.outer(mean, mean)) / (count - 1)


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
  return train_classifier(*bundled.digits_split(seed), seed=seed, steps=steps)


def fd_digits(samples: np.ndarray, reference: np.ndarray, classifier: Classifier) -> float:
  """FD-digits (FD-MNIST with an MNIST classifier): the Fréchet distance of the classifier's
  features of ``samples`` and ``reference``."""
  return frechet_distance(*feature_statistics(classifier.features(samples)),
                          *feature_statistics(classifier.features(reference)))


def confident_share(samples: np.ndarray, classifier: Classifier, threshold: float = 0.9) -> float:
  """Share of samples the classifier puts in one class with probability ≥ ``threshold``."""
  return float(np.mean(classifier.probabilities(samples).max(axis=1) >= threshold))


# ----------------------------------------------------------------------------------------------
# Nearest neighbours and feature spaces (the neighbours figure, FDRL Fig. 10–11).

MMD_BANDWIDTH = 0.2


def mmd(x: np.ndarray, y: np.ndarray, bandwidth: float = MMD_BANDWIDTH) -> float:
  """The maximum mean discrepancy between the samples x (N, D) and y (M, D): the square root of
  the biased (V-statistic) estimate of MMD² with k(a, b) = exp(−‖a − b‖² / (2 h²)), in float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

  def mean_kernel(a, b):
    d2 = np.sum(a * a, 1)[:, None] - 2.0 * a @ b.T + np.sum(b * b, 1)[None]
    return float(np.mean(np.exp(-np.maximum(d2, 0.0) / (2.0 * bandwidth ** 2))))

  return float(np.sqrt(max(mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y), 0.0)))


def nearest_neighbours(queries: np.ndarray, reference: np.ndarray, k: int, *,
                       chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """The ``k`` nearest rows of ``reference`` (M, ...) to each query (N, ...) in Euclidean distance.

  Candidates come from ‖q‖² − 2 q·x + ‖x‖² in float32 over chunks of ``chunk_size`` reference rows
  (memory N × chunk, never N × M × D); a few more candidates than ``k`` are kept and their exact
  distances recomputed in float64, so float32 cancellation cannot reorder close neighbours.

  Returns:
    indices (N, k) into ``reference``, nearest first, and their distances (N, k).
  """
  queries = np.asarray(queries, np.float32).reshape(len(queries), -1)
  m = len(reference)
  if not 1 <= k <= m:
    raise ValueError(f"Asked for {k} nearest neighbours among {m} training examples.")
  flat_ref = np.asarray(reference).reshape(m, -1)
  if flat_ref.shape[1] != queries.shape[1]:
    raise ValueError(f"Queries of {queries.shape[1]} values cannot be compared with training "
                     f"examples of {flat_ref.shape[1]}.")
  keep = min(m, k + max(k, 16))
  q_sq = np.sum(queries * queries, axis=1)
  best_d = np.zeros((len(queries), 0), np.float32)
  best_i = np.zeros((len(queries), 0), np.int64)
  for start in range(0, m, chunk_size):
    chunk = flat_ref[start:start + chunk_size].astype(np.float32)
    d = q_sq[:, None] - 2.0 * (queries @ chunk.T) + np.sum(chunk * chunk, axis=1)[None]
    all_d = np.concatenate([best_d, d], axis=1)
    all_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(chunk)),
                                                    d.shape)], axis=1)
    if all_d.shape[1] > keep:
      part = np.argpartition(all_d, keep - 1, axis=1)[:, :keep]
      all_d, all_i = np.take_along_axis(all_d, part, 1), np.take_along_axis(all_i, part, 1)
    best_d, best_i = all_d, all_i
  exact = np.sum((queries[:, None].astype(np.float64) - flat_ref[best_i].astype(np.float64)) ** 2,
                 axis=-1)
  order = np.argsort(exact, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(best_i, order, 1), np.sqrt(np.take_along_axis(exact, order, 1))


def check_feature_space(config: ml_collections.ConfigDict) -> None:
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
  from fdrl_jax import inception
  variables = inception.load_weights(config.eval.inception_weights)
  return lambda x: inception.features(variables, _rgb(np.asarray(x)))


def _rgb(x: np.ndarray) -> np.ndarray:
  """Grey images repeated to the three channels the Inception expects."""
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


# ----------------------------------------------------------------------------------------------
# --mode=eval of a generative run (FDRL or a GAN): sample, then score with ``eval.metric``.

# A metric is (config, dataset, samples, baseline, baseline_name, workdir) → scores, with the
# samples and the baseline (the prior's own draws, or the untranslated sources; may be None) given
# as iterables of host batches, drawn only as the metric consumes them.

def _whole(batches: Iterable[np.ndarray] | None) -> np.ndarray | None:
  return None if batches is None else np.concatenate(list(batches))


def _classifier_scores(name: str, classifier: Classifier, samples: Iterable[np.ndarray],
                       baseline: Iterable[np.ndarray] | None, baseline_name: str,
                       train: np.ndarray, test: np.ndarray) -> dict:
  """The Fréchet distance of a digit classifier's features (``name`` = fd_digits or fd_mnist) of
  the samples, of the baseline (the prior's own samples, or the untranslated sources) and of the
  real floor (training vs held-out images), and the share of confidently classified samples."""
  samples, baseline = _whole(samples), _whole(baseline)
  return {name: fd_digits(samples, test, classifier),
          **({} if baseline is None else {f"{name}_{baseline_name}": fd_digits(baseline, test,
                                                                              classifier)}),
          f"{name}_floor": fd_digits(train, test, classifier),
          "confident_share": confident_share(samples, classifier),
          "classifier_test_accuracy": classifier.test_accuracy}


def _fd_digits(config, dataset: bundled.Dataset, samples, baseline, baseline_name, workdir) -> dict:
  return _classifier_scores("fd_digits", digits_classifier(config.seed), samples, baseline,
                            baseline_name, dataset.train, dataset.test)


# FD-MNIST: the digit classifier trained on this many MNIST training images, for these steps.
MNIST_CLASSIFIER_IMAGES, MNIST_CLASSIFIER_STEPS = 20_000, 1_500


def _fd_mnist(config, dataset: bundled.Dataset, samples, baseline, baseline_name, workdir) -> dict:
  from fdrl_jax import datasets, tfds_sources
  size = datasets.TFDS_PRESETS["mnist"]["image_size"]
  data_dir = config.data.data_dir or None
  train_x, train_y = tfds_sources.tfds_labelled("mnist", "train", data_dir,
                                                MNIST_CLASSIFIER_IMAGES, image_size=size)
  test_x, test_y = tfds_sources.tfds_labelled("mnist", "test", data_dir, 10_000, image_size=size)
  classifier = train_classifier(train_x, train_y, test_x, test_y, seed=config.seed,
                                steps=MNIST_CLASSIFIER_STEPS)
  return _classifier_scores("fd_mnist", classifier, samples, baseline, baseline_name,
                            train_x[:len(test_x)], test_x)


def split_size(dataset: bundled.Dataset) -> int | None:
  """The number of training examples of a finite data set (None for the infinite toy sets)."""
  return len(dataset.train) if dataset.train is not None else dataset.num_train


def _reference_batches(config, dataset: bundled.Dataset, n: int, chunk: int = 1000
                       ) -> Iterator[np.ndarray]:
  """``n`` distinct training images drawn with the config's seed, decoded ``chunk`` at a time."""
  for start in range(0, n, chunk):
    yield dataset.sample(np.random.default_rng(config.seed), n, slice(start, start + chunk))


def _fid(config, dataset: bundled.Dataset, samples, baseline, baseline_name, workdir) -> dict:
  """FID against the training data's Inception statistics (``eval.num_reference`` images, 0: the
  whole split; cached in the workdir), or, for a translation run (Table 3), against the held-out
  target images, with the baseline's FID. Everything is streamed through the Inception in
  batches, so 50 000 samples never sit in host memory at once."""
  from fdrl_jax import inception
  variables = inception.load_weights(config.eval.inception_weights)
  stats = lambda batches: feature_statistics(inception.features(variables, _rgb(b))
                                             for b in batches)
  translation = baseline_name == "untranslated"
  size = split_size(dataset)
  n_ref = len(dataset.test) if translation else (eval_sizes(config)[1] or size)
  if not translation and size is not None and n_ref > size:
    raise ValueError(f"FID statistics of {config.data.name!r} cannot be computed from "
                     f"{n_ref} training images: the split has {size}; set "
                     "--config.eval.num_reference to at most that, or 0 for all of them.")
  cache = files.as_path(workdirs.join(
      workdir, f"fid_stats_{config.data.name}_{'test' if translation else n_ref}.npz"))
  if cache.exists():  # the data set's statistics are computed once per workdir
    with np.load(io.BytesIO(cache.read_bytes())) as f:
      mu, sigma = f["mu"], f["sigma"]
  else:
    mu, sigma = stats([dataset.test] if translation else
                      _reference_batches(config, dataset, n_ref))
    files.write_file(os.fspath(cache), lambda tmp: np.savez(tmp, mu=mu, sigma=sigma))
  result = {"fid": frechet_distance(*stats(samples), mu, sigma),
            "num_reference": n_ref,
            "fid_variant": "pytorch-fid's InceptionV3 pool3 (TF-FID weights), bilinear resize to "
                           "299, float samples (not quantised to uint8), reference = "
                           + ("held-out target images" if translation else "training data")}
  if translation:
    result["fid_untranslated"] = frechet_distance(*stats(baseline), mu, sigma)
  return result


def _mmd(config, dataset: bundled.Dataset, samples, baseline, baseline_name, workdir) -> dict:
  """MMD of the samples (and of the prior's own draws) to ``eval.num_reference`` fresh draws of
  the toy distribution."""
  reference = dataset.sample(np.random.default_rng([config.seed, 1]), config.eval.num_reference)
  return {"mmd": mmd(_whole(samples), reference), "mmd_bandwidth": MMD_BANDWIDTH,
          **({} if baseline is None else {f"mmd_{baseline_name}": mmd(_whole(baseline),
                                                                      reference)})}


METRICS = {"fd_digits": _fd_digits, "fd_mnist": _fd_mnist, "fid": _fid, "mmd": _mmd}
# The data sets each classifier metric applies to, and how to say so.
METRIC_DATA = {"fd_digits": (("digits", "digits_bold"), "FD-digits needs the bundled digits"),
               "fd_mnist": (("mnist",), "FD-MNIST needs tfds MNIST"),
               "mmd": (tuple(sorted(set(bundled.DATASETS) - {"digits", "digits_bold"})),
                       "MMD scores the 2-D toy sets")}


# --config.eval.fast=True: the quick FID of a run in progress (strongly biased: not comparable with
# the paper's numbers, which use 50 000 samples against the whole training split).
FAST_NUM_SAMPLES, FAST_NUM_REFERENCE = 1_000, 10_000


def eval_sizes(config) -> tuple[int, int]:
  """(samples, training images behind the reference statistics; 0: the whole split) of an
  evaluation: ``eval.num_samples`` and ``eval.num_reference``, or the fast setting's."""
  e = config.eval
  if e.get("fast", False):
    return FAST_NUM_SAMPLES, FAST_NUM_REFERENCE
  return e.num_samples, e.num_reference


def check_metric(config) -> None:
  """One-line ValueErrors for an unknown metric, one that does not fit the data, bad sizes, or FID
  weights that are not set, do not exist, cannot be read or are not the FID Inception's."""
  metric = config.eval.metric
  if metric not in METRICS:
    raise ValueError(f"Unknown --config.eval.metric={metric!r}; available: "
                     f"{', '.join(sorted(METRICS))}.")
  names, needs = METRIC_DATA.get(metric, ((config.data.name,), ""))
  if config.data.name not in names:
    fits = [m for m, (sets, _) in METRIC_DATA.items() if config.data.name in sets] or ["fid"]
    raise ValueError(f"{needs} (data.name={' or '.join(names)}), not {config.data.name!r}; use "
                     f"--config.eval.metric={fits[0]}.")
  for key, value in zip(("num_samples", "num_reference"), eval_sizes(config)):
    if value < 2 and not (key == "num_reference" and value == 0):
      raise ValueError(f"--config.eval.{key}={value}: a Fréchet distance needs the "
                       "statistics of at least 2 images (thousands for a meaningful value).")
  if metric != "fid":
    return
  from fdrl_jax import inception
  weights = config.eval.inception_weights
  if not weights:
    raise ValueError("FID needs --config.eval.inception_weights=FILE.npz: pytorch-fid's Inception "
                     f"weights, converted once by `{inception.CONVERT_COMMAND} FILE.npz`.")
  try:  # reads the array headers only: a missing, unreadable or foreign file fails before sampling
    inception.check_weights(weights)
  except ValueError as e:
    raise ValueError(f"--config.eval.inception_weights: {e}") from None


def evaluate_samples(config, run, state, workdir: str) -> dict:
  """``--mode=eval`` of FDRL and GAN runs (the ``evaluate`` hook of their method records).

  Generation: ``eval.num_samples`` samples by ``config.sampling`` (default Algorithm 2), scored by
  ``eval.metric`` with the prior's own samples as the baseline (FDRL). Translation (an
  ``empirical`` prior, Table 3's protocol): the held-out source images translated, scored against
  the held-out target images, with the untranslated sources' score beside it. ``eval.metric``:
  ``fd_digits`` (bundled digits), ``fd_mnist`` (tfds MNIST; the classifier trained on 20 000
  training images, about a minute on a CPU, scored against the 10 000 test images) or ``fid``.
  """
  from fdrl_jax import datasets, sampling
  check_metric(config)
  batch_size = config.eval.get("batch_size", 0) or config.data.batch_size
  key = run.sample_key_for(0)
  if config.prior.name == "empirical":
    _, sources = datasets.source_domain(config, run.dataset)
    if sources is None or run.dataset.test is None:
      raise ValueError("Translation is scored on held-out images of both domains: set "
                       "--config.prior.source_test_path and --config.data.test_path.")
    num = len(sources)
    samples = sampling.draw_batches(run.sampler("translate"), state, key, sources, batch_size)
    baseline, baseline_name = [sources], "untranslated"
  else:
    num = eval_sizes(config)[0]
    samples = sampling.draw_batches(run.sampler(), state, key, num, batch_size)
    parts = run.sampler_parts()
    baseline, baseline_name = None, "prior"
    if parts.potential is not None:  # a flow from a prior: score the prior's own draws too
      baseline = prior_batches(run, state, parts, num, batch_size)
  scores = METRICS[config.eval.metric](config, run.dataset, samples, baseline, baseline_name,
                                       workdir)
  return {"metric": config.eval.metric, "num_samples": num, **scores}


def prior_batches(run, state, parts, num: int, batch_size: int) -> Iterator[np.ndarray]:
  """The prior's own draws, ``num`` in batches, with keys of their own (drawn when consumed)."""
  start = jax.jit(parts.start, static_argnums=2)  # on every process: the prior is replicated
  key = run.sample_key_for(1 << 30)
  for i, lo in enumerate(range(0, num, batch_size)):
    yield parallel.to_host(start(state, jax.random.fold_in(key, i), min(batch_size, num - lo)))
