"""The metric table of ``--mode=eval`` and its checks: which scores a row holds and whether an
evaluation's settings can run.

Scores (``METRICS``) are computed on feature sets (``features.FeatureSet``) of the extractor of
``eval.metric``'s family (``features.extractor``): ``fd_digits`` / ``fd_mnist`` (a digit
classifier's features), ``fid`` (the FID Inception's) and ``mmd`` (the 2-D points); with them, on
the same features, ``kid`` (``kid``, ``kid_std``), ``is`` (``is``, ``is_std``; the extractor's
logits) and ``pr`` (``precision``, ``recall``). ``eval.metrics`` lists them (default:
``eval.metric`` alone); the family's own name must be ``eval.metric``. ``check_metric`` says, in
one line, why an evaluation cannot run, before anything is restored. ``score`` gives a row's
keys; ``fdrl_jax.evaluate`` draws the samples and makes the rows.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
import numpy as np

from fdrl_jax import bundled, feature_stats, inception, inception_weights, registry, scores
from fdrl_jax.features import FeatureSet

Scores = Callable[[FeatureSet, FeatureSet], dict]


def _frechet(name: str) -> Scores:
  return lambda s, ref: {name: scores.frechet_distance(s.mu, s.sigma, ref.mu, ref.sigma)}


def _kept(rows: np.ndarray | None, what: str) -> np.ndarray:
  """The feature rows or logits a metric needs (kept by its ``FeatureAccumulator``)."""
  if rows is None:
    raise ValueError(
      f"These statistics hold no {what}: compute them with the metric asked "
      "(a --mode=stats file for KID / precision-recall needs its rows)."
    )
  return rows


def _kid(s: FeatureSet, ref: FeatureSet) -> dict:
  mean, std = scores.kernel_inception_distance(
    _kept(s.features, "feature rows"), _kept(ref.features, "feature rows")
  )
  return {"kid": mean, "kid_std": std}


def _inception_score(s: FeatureSet, ref: FeatureSet) -> dict:
  del ref
  mean, std = scores.inception_score(_kept(s.logits, "class logits"))
  return {"is": mean, "is_std": std}


def _precision_recall(s: FeatureSet, ref: FeatureSet) -> dict:
  precision, recall = scores.precision_recall(
    _kept(s.features, "feature rows"), _kept(ref.features, "feature rows")
  )
  return {"precision": precision, "recall": recall}


# name → (samples' feature set, reference's) → the row's keys.
METRICS: dict[str, Scores] = {
  "fd_digits": _frechet("fd_digits"),
  "fd_mnist": _frechet("fd_mnist"),
  "fid": _frechet("fid"),
  "mmd": lambda s, ref: {
    "mmd": scores.mmd(_kept(s.features, "points"), _kept(ref.features, "points"))
  },
  "kid": _kid,
  "is": _inception_score,
  "pr": _precision_recall,
}
# The families: eval.metric, whose extractor every metric of the list uses; the Fréchet ones.
FRECHET = ("fd_digits", "fd_mnist", "fid")
FAMILIES = (*FRECHET, "mmd")
# Metrics that need the feature rows, or the class logits.
NEEDS_ROWS, NEEDS_LOGITS = {"mmd", "kid", "pr"}, {"is"}
# The data sets each family applies to, and how to say so.
METRIC_DATA = {
  "fd_digits": (("digits", "digits_bold"), "FD-digits needs the bundled digits"),
  "fd_mnist": (("mnist",), "FD-MNIST needs tfds MNIST"),
  "mmd": (
    tuple(sorted(set(bundled.DATASETS) - {"digits", "digits_bold"})),
    "MMD scores the 2-D toy sets",
  ),
}


def parse_lengths(text: str, setting: str = "--config.eval.flow_lengths") -> tuple[int, ...]:
  """A comma-separated list of step counts, increasing and unique (one-line ValueError)."""
  try:
    lengths = sorted({int(part) for part in text.split(",") if part.strip()})
  except ValueError:
    raise ValueError(
      f"{setting}={text!r} must be comma-separated step counts, e.g. 10,20,40."
    ) from None
  if not lengths or lengths[0] < 0:
    raise ValueError(f"{setting}={text!r} must be comma-separated step counts >= 0.")
  return tuple(lengths)


def metric_names(config: ml_collections.ConfigDict) -> list[str]:
  """``eval.metrics`` as a list, checked (one-line ValueErrors). Default ``[eval.metric]``; with
  ``eval.fast`` (and the reference's feature rows at hand: no ``eval.reference_stats`` file), a
  Fréchet family's 1 000 samples also get KID, which unlike the Fréchet distance is unbiased at
  that size."""
  family, e = config.eval.metric, config.eval
  fast_kid = e.get("fast", False) and family in FRECHET and not e.get("reference_stats", "")
  default = [family, "kid"] if fast_kid else [family]
  names = [n.strip() for n in e.get("metrics", "").split(",") if n.strip()] or default
  for name in names:
    registry.lookup(METRICS, name, "--config.eval.metrics")
    if name in FAMILIES and name != family:
      raise ValueError(
        f"--config.eval.metrics={name} scores {name}'s features; this evaluation's "
        f"are --config.eval.metric={family}'s (set that to {name})."
      )
  if "is" in names and family == "mmd":
    raise ValueError(
      "--config.eval.metrics=is needs class logits; the 2-D points of MMD have none."
    )
  return list(dict.fromkeys(names))


def check_metric(config: ml_collections.ConfigDict) -> None:
  """One-line ValueErrors for unknown metrics, a family that does not fit the data, bad sizes or
  lengths, a judge that is missing or is the guiding classifier, or FID weights that are not
  set, do not exist, cannot be read or are not the FID Inception's."""
  metric = config.eval.metric
  registry.lookup({name: None for name in FAMILIES}, metric, "--config.eval.metric")
  metric_names(config)
  if config.eval.get("flow_lengths", ""):
    parse_lengths(config.eval.flow_lengths)
  names, needs = METRIC_DATA.get(metric, ((config.data.name,), ""))
  if config.data.name not in names:
    fits = [m for m, (sets, _) in METRIC_DATA.items() if config.data.name in sets] or ["fid"]
    raise ValueError(
      f"{needs} (data.name={' or '.join(names)}), not {config.data.name!r}; use "
      f"--config.eval.metric={fits[0]}."
    )
  for key, value in zip(("num_samples", "num_reference"), feature_stats.eval_sizes(config)):
    if value < 2 and not (key == "num_reference" and value == 0):
      raise ValueError(
        f"--config.eval.{key}={value}: a Fréchet distance needs the "
        "statistics of at least 2 images (thousands for a meaningful value)."
      )
  if config.sampling.name == "conditional":
    judge = config.eval.get("judge_workdir", "")
    if not judge or judge == config.sampling.classifier_workdir:
      raise ValueError(
        "--config.sampling.name=conditional is judged by "
        "--config.eval.judge_workdir=DIR, a classifier run other than the guiding "
        "--config.sampling.classifier_workdir."
      )
  if metric != "fid":
    return
  weights = config.eval.inception_weights
  if not weights:
    raise ValueError(
      "FID needs --config.eval.inception_weights=FILE.npz: pytorch-fid's Inception "
      f"weights, converted once by `{inception.CONVERT_COMMAND} FILE.npz`."
    )
  try:  # reads the array headers only: a missing, unreadable or foreign file fails before sampling
    inception_weights.check_weights(weights)
  except ValueError as e:
    raise ValueError(f"--config.eval.inception_weights: {e}") from None


def score(names: list[str], s: FeatureSet, reference: FeatureSet, suffix: str = "") -> dict:
  """Every metric of ``names`` of the set ``s`` against ``reference``, keys suffixed. The
  Inception Score is of ``s`` alone; without logits (a statistics file) it is left out."""
  out = {}
  for name in names:
    if name in NEEDS_LOGITS and s.logits is None:
      continue
    out.update(METRICS[name](s, reference))
  return {f"{key}{suffix}": value for key, value in out.items()}


def confident_share(s: FeatureSet, threshold: float = 0.9) -> float:
  """Share of a digit classifier's rows it puts in one class with probability ≥ ``threshold``."""
  logits = np.asarray(s.logits, np.float64)
  p = np.exp(logits - logits.max(1, keepdims=True))
  return float(np.mean((p / p.sum(1, keepdims=True)).max(1) >= threshold))
