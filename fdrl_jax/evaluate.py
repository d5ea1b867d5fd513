"""``--mode=eval`` of a generative run (FDRL or a GAN): samples, scored by ``eval.metric``.

``METRICS``: ``fd_digits`` (FD-digits on the bundled digits, ``fdrl_jax.features``), ``fd_mnist``
(the same with an MNIST classifier), ``fid`` (the FID Inception's Fréchet distance) and ``mmd``
(the 2-D toy sets, ``scores.mmd``). Generation is scored against the data, with the prior's own
draws as a baseline (FDRL); translation (an ``empirical`` prior, Table 3's protocol) scores the
translated held-out sources against the held-out targets, with the untranslated sources beside
them. Which of the two an evaluation is, is decided once (``evaluate_samples``) and handed to the
metric in its ``Scoring`` record.
"""

from __future__ import annotations

import io
import os
from typing import Callable, Iterable, Iterator, NamedTuple

import jax
import ml_collections
import numpy as np

from fdrl_jax import (bundled, datasets, features, files, inception, inception_weights, parallel,
                      registry, sampling, scores, workdir as workdirs)


class Scoring(NamedTuple):
  """What a metric scores.

  Attributes:
    config: the run's config.
    dataset: its data.
    samples: the samples, an iterable of host batches drawn only as the metric consumes them.
    baseline: the prior's own draws (FDRL) or the untranslated sources (translation), as batches;
      None when there is none (a GAN).
    translation: whether this is Table 3's translation protocol (the reference is then the
      held-out target images), decided once by ``evaluate_samples``.
    workdir: the run's workdir (FID caches its reference statistics there).
  """
  config: ml_collections.ConfigDict
  dataset: bundled.Dataset
  samples: Iterable[np.ndarray]
  baseline: Iterable[np.ndarray] | None
  translation: bool
  workdir: str

  @property
  def baseline_name(self) -> str:
    """The suffix of the baseline's scores: ``untranslated`` or ``prior``."""
    return "untranslated" if self.translation else "prior"


def _whole(batches: Iterable[np.ndarray] | None) -> np.ndarray | None:
  return None if batches is None else np.concatenate(list(batches))


def _classifier_scores(name: str, judge: features.Classifier, s: Scoring, train: np.ndarray,
                       test: np.ndarray) -> dict:
  """The Fréchet distance of a digit classifier's features (``name`` = fd_digits or fd_mnist) of
  the samples, of the baseline (the prior's own samples, or the untranslated sources) and of the
  real floor (training vs held-out images), and the share of confidently classified samples."""
  samples, baseline = _whole(s.samples), _whole(s.baseline)
  return {name: features.fd_digits(samples, test, judge),
          **({} if baseline is None else
             {f"{name}_{s.baseline_name}": features.fd_digits(baseline, test, judge)}),
          f"{name}_floor": features.fd_digits(train, test, judge),
          "confident_share": features.confident_share(samples, judge),
          "classifier_test_accuracy": judge.test_accuracy}


def _fd_digits(s: Scoring) -> dict:
  return _classifier_scores("fd_digits", features.digits_classifier(s.config.seed), s,
                            s.dataset.train, s.dataset.test)


# FD-MNIST: the digit classifier trained on this many MNIST training images, for these steps.
MNIST_CLASSIFIER_IMAGES, MNIST_CLASSIFIER_STEPS = 20_000, 1_500


def _fd_mnist(s: Scoring) -> dict:
  config = s.config
  mnist = datasets.labelled_images("mnist", data_dir=config.data.data_dir or None,
                                   max_train=MNIST_CLASSIFIER_IMAGES)
  judge = features.train_classifier(mnist.train, mnist.train_labels, mnist.test,
                                    mnist.test_labels, seed=config.seed,
                                    steps=MNIST_CLASSIFIER_STEPS)
  return _classifier_scores("fd_mnist", judge, s, mnist.train[:len(mnist.test)], mnist.test)


def split_size(dataset: bundled.Dataset) -> int | None:
  """The number of training examples of a finite data set (None for the infinite toy sets)."""
  return len(dataset.train) if dataset.train is not None else dataset.num_train


def _reference_batches(config: ml_collections.ConfigDict, dataset: bundled.Dataset, n: int,
                       chunk: int = 1000) -> Iterator[np.ndarray]:
  """``n`` distinct training images drawn with the config's seed, decoded ``chunk`` at a time."""
  for start in range(0, n, chunk):
    yield dataset.sample(np.random.default_rng(config.seed), n, slice(start, start + chunk))


def _fid(s: Scoring) -> dict:
  """FID against the training data's Inception statistics (``eval.num_reference`` images, 0: the
  whole split; cached in the workdir), or, for a translation run (Table 3), against the held-out
  target images, with the baseline's FID. Everything is streamed through the Inception in
  batches, so 50 000 samples never sit in host memory at once."""
  config, dataset, translation = s.config, s.dataset, s.translation
  extract = features.inception_features(config.eval.inception_weights)
  stats = lambda batches: scores.feature_statistics(extract(b) for b in batches)
  size = split_size(dataset)
  n_ref = len(dataset.test) if translation else (eval_sizes(config)[1] or size)
  if not translation and size is not None and n_ref > size:
    raise ValueError(f"FID statistics of {config.data.name!r} cannot be computed from "
                     f"{n_ref} training images: the split has {size}; set "
                     "--config.eval.num_reference to at most that, or 0 for all of them.")
  cache = files.as_path(workdirs.join(
      s.workdir, f"fid_stats_{config.data.name}_{'test' if translation else n_ref}.npz"))
  if cache.exists():  # the data set's statistics are computed once per workdir
    with np.load(io.BytesIO(cache.read_bytes())) as f:
      mu, sigma = f["mu"], f["sigma"]
  else:
    mu, sigma = stats([dataset.test] if translation else
                      _reference_batches(config, dataset, n_ref))
    files.write_file(os.fspath(cache), lambda tmp: np.savez(tmp, mu=mu, sigma=sigma))
  result = {"fid": scores.frechet_distance(*stats(s.samples), mu, sigma),
            "num_reference": n_ref,
            "fid_variant": "pytorch-fid's InceptionV3 pool3 (TF-FID weights), bilinear resize to "
                           "299, float samples (not quantised to uint8), reference = "
                           + ("held-out target images" if translation else "training data")}
  if translation:
    result["fid_untranslated"] = scores.frechet_distance(*stats(s.baseline), mu, sigma)
  return result


def _mmd(s: Scoring) -> dict:
  """MMD of the samples (and of the prior's own draws) to ``eval.num_reference`` fresh draws of
  the toy distribution."""
  reference = s.dataset.sample(np.random.default_rng([s.config.seed, 1]),
                               s.config.eval.num_reference)
  baseline = {} if s.baseline is None else {
      f"mmd_{s.baseline_name}": scores.mmd(_whole(s.baseline), reference)}
  return {"mmd": scores.mmd(_whole(s.samples), reference), "mmd_bandwidth": scores.MMD_BANDWIDTH,
          **baseline}


# name → Scoring → scores.
METRICS: dict[str, Callable[[Scoring], dict]] = {
    "fd_digits": _fd_digits, "fd_mnist": _fd_mnist, "fid": _fid, "mmd": _mmd}
# The data sets each classifier metric applies to, and how to say so.
METRIC_DATA = {"fd_digits": (("digits", "digits_bold"), "FD-digits needs the bundled digits"),
               "fd_mnist": (("mnist",), "FD-MNIST needs tfds MNIST"),
               "mmd": (tuple(sorted(set(bundled.DATASETS) - {"digits", "digits_bold"})),
                       "MMD scores the 2-D toy sets")}


# --config.eval.fast=True: the quick FID of a run in progress (strongly biased: not comparable with
# the paper's numbers, which use 50 000 samples against the whole training split).
FAST_NUM_SAMPLES, FAST_NUM_REFERENCE = 1_000, 10_000


def eval_sizes(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(samples, training images behind the reference statistics; 0: the whole split) of an
  evaluation: ``eval.num_samples`` and ``eval.num_reference``, or the fast setting's."""
  e = config.eval
  if e.get("fast", False):
    return FAST_NUM_SAMPLES, FAST_NUM_REFERENCE
  return e.num_samples, e.num_reference


def check_metric(config: ml_collections.ConfigDict) -> None:
  """One-line ValueErrors for an unknown metric, one that does not fit the data, bad sizes, or FID
  weights that are not set, do not exist, cannot be read or are not the FID Inception's."""
  metric = config.eval.metric
  registry.lookup(METRICS, metric, "--config.eval.metric")
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
  weights = config.eval.inception_weights
  if not weights:
    raise ValueError("FID needs --config.eval.inception_weights=FILE.npz: pytorch-fid's Inception "
                     f"weights, converted once by `{inception.CONVERT_COMMAND} FILE.npz`.")
  try:  # reads the array headers only: a missing, unreadable or foreign file fails before sampling
    inception_weights.check_weights(weights)
  except ValueError as e:
    raise ValueError(f"--config.eval.inception_weights: {e}") from None


def evaluate_samples(config: ml_collections.ConfigDict, run, state, workdir: str) -> dict:
  """``--mode=eval`` of FDRL and GAN runs (the ``evaluate`` hook of their method records).

  Generation: ``eval.num_samples`` samples by ``config.sampling`` (default Algorithm 2), scored by
  ``eval.metric`` with the prior's own samples as the baseline (FDRL). Translation (an
  ``empirical`` prior, Table 3's protocol): the held-out source images translated, scored against
  the held-out target images, with the untranslated sources' score beside it. ``eval.metric``:
  ``fd_digits`` (bundled digits), ``fd_mnist`` (tfds MNIST; the classifier trained on 20 000
  training images, about a minute on a CPU, scored against the 10 000 test images) or ``fid``.
  """
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
    baseline, translation = [sources], True
  else:
    num = eval_sizes(config)[0]
    samples = sampling.draw_batches(run.sampler(), state, key, num, batch_size)
    parts = run.sampler_parts()
    baseline, translation = None, False
    if parts.potential is not None:  # a flow from a prior: score the prior's own draws too
      baseline = prior_batches(run, state, parts, num, batch_size)
  result = METRICS[config.eval.metric](Scoring(config, run.dataset, samples, baseline,
                                               translation, workdir))
  return {"metric": config.eval.metric, "num_samples": num, **result}


def prior_batches(run, state, parts, num: int, batch_size: int) -> Iterator[np.ndarray]:
  """The prior's own draws, ``num`` in batches, with keys of their own (drawn when consumed)."""
  start = jax.jit(parts.start, static_argnums=2)  # on every process: the prior is replicated
  key = run.sample_key_for(1 << 30)
  for i, lo in enumerate(range(0, num, batch_size)):
    yield parallel.to_host(start(state, jax.random.fold_in(key, i), min(batch_size, num - lo)))
