"""``--mode=eval`` of a generative run (FDRL or a GAN): samples scored by ``eval.metrics``, in rows.

Scores (``METRICS``) are computed on feature sets (``features.FeatureAccumulator``) of the
extractor of ``eval.metric``'s family (``features.extractor``): ``fd_digits`` / ``fd_mnist`` (a
digit classifier's features), ``fid`` (the FID Inception's) and ``mmd`` (the 2-D points); with
them, on the same features, ``kid`` (``kid``, ``kid_std``), ``is`` (``is``, ``is_std``; the
extractor's logits) and ``pr`` (``precision``, ``recall``). ``eval.metrics`` lists them
(default: ``eval.metric`` alone); the family's own name must be ``eval.metric``.

The result holds a list ``rows``, one per flow length (``flow_length``: the K + κ′ of its samples;
a GAN's own samples: 0), each with ``step``, every metric's keys, the baseline's as
``<key>_prior`` (the prior's own draws; for translation, Table 3's protocol, the untranslated
held-out sources, the empirical prior's draws) and the floor's as ``<key>_floor`` (the digit
classifiers' families: training images against the held-out reference; ``is``: the Inception
Score of the reference images themselves). ``eval.flow_lengths`` (totals K + κ′) flows once to the
longest, each length's batches streamed into its own accumulator (``sampling.build_sampler``'s
``lengths``); the baseline and the reference are computed once. With ``sampling.name=refine`` the
lengths are refinement steps and the row of length 0 is G(z) before refinement (DGflow's table).
With ``sampling.name=conditional`` the rows are per class (``class``) and for all classes
together (``class`` = "all"), each with ``on_class``, the share of samples that the judge
(``eval.judge_workdir``, never the guiding classifier) puts in the requested class, scored
against that class's held-out images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np

from fdrl_jax import (
  bundled,
  conditional,
  datasets,
  feature_stats,
  features,
  inception,
  inception_weights,
  parallel,
  registry,
  sampling,
  scores,
)
from fdrl_jax.features import FeatureAccumulator, FeatureSet
from fdrl_jax.sampler import SamplerParts

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
# The families: eval.metric, whose extractor every metric of the list uses.
FAMILIES = ("fd_digits", "fd_mnist", "fid", "mmd")
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
# The floor's training images (at most; the digits' whole training split).
FLOOR_IMAGES = 10_000


def metric_names(config: ml_collections.ConfigDict) -> list[str]:
  """``eval.metrics`` as a list (default ``[eval.metric]``), checked (one-line ValueErrors)."""
  family = config.eval.metric
  names = [n.strip() for n in config.eval.get("metrics", "").split(",") if n.strip()] or [family]
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


def flow_lengths(
  config: ml_collections.ConfigDict, parts: SamplerParts | None
) -> tuple[int, ...] | None:
  """The lengths of the rows: ``eval.flow_lengths`` (with ``refine``: refinement steps, 0 added),
  or None for the run's own sampler alone (K + κ; a GAN's G(z); refine's ``refine.num_steps``)."""
  text = config.eval.get("flow_lengths", "")
  if config.sampling.name == "refine":
    given = parse_lengths(text) if text else (config.refine.num_steps,)
    return tuple(sorted({0, *given}))
  if not text:
    return None
  if parts is None or parts.potential is None:
    raise ValueError(
      "--config.eval.flow_lengths needs a flow: an FDRL run, or a GAN with "
      "--config.sampling.name=refine."
    )
  lengths = parse_lengths(text)
  if lengths[0] < 1:
    raise ValueError(
      f"--config.eval.flow_lengths={text!r}: a flow length is at least 1 step "
      "(the prior's draws are the rows' *_prior)."
    )
  return lengths


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


# ----------------------------------------------------------------------------------------------
# Rows.


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


class _Scoring:
  """One evaluation's extractor, metrics and accumulators (``new``), and its fixed references."""

  def __init__(self, config: ml_collections.ConfigDict, run, workdir: str, translation: bool):
    self.names = metric_names(config)
    self.extractor = features.extractor(config, run.dataset, mesh=run.mesh)
    self.classifier = self.extractor.name in ("digits", "mnist")
    self.keep = {
      "keep_features": bool(NEEDS_ROWS & set(self.names)),
      "quantize": bool(config.eval.get("quantize", False)),
    }
    self.logits = bool(NEEDS_LOGITS & set(self.names))
    # FD-MNIST's reference and floor are labelled MNIST's held-out and training images (a tfds
    # MNIST run reads no held-out split of its own).
    self.data = (
      run.dataset
      if self.extractor.name != "mnist"
      else datasets.labelled_images(
        "mnist",
        seed=config.seed,
        data_dir=config.data.data_dir or None,
        max_train=features.MNIST_CLASSIFIER_IMAGES,
      )
    )
    self.reference = feature_stats.reference_set(
      config,
      self.data,
      workdir,
      extractor=self.extractor,
      translation=translation,
      keep_logits=self.logits,
      **self.keep,
    )

  def new(self) -> FeatureAccumulator:
    return FeatureAccumulator(
      self.extractor, keep_logits=self.logits or self.classifier, **self.keep
    )

  def of(self, batches: Iterable[np.ndarray]) -> FeatureSet:
    accumulator = self.new()
    for batch in batches:
      accumulator.add(batch)
    return accumulator.result()

  def row(self, s: FeatureSet, reference: FeatureSet | None = None) -> dict:
    row = score(self.names, s, self.reference if reference is None else reference)
    return {**row, "confident_share": confident_share(s)} if self.classifier else row


def _floor(config: ml_collections.ConfigDict, scoring: _Scoring) -> dict:
  """The floor's keys: the digit classifiers' training images against the held-out reference,
  and the Inception Score of the reference itself."""
  out = {}
  if scoring.classifier:
    n = min(feature_stats.split_size(scoring.data) or FLOOR_IMAGES, FLOOR_IMAGES)
    train = scoring.of(feature_stats._training_batches(config, scoring.data, n))
    out = score(
      [m for m in scoring.names if m not in NEEDS_LOGITS], train, scoring.reference, "_floor"
    )
  if "is" in scoring.names and scoring.reference.logits is not None:
    out.update(score(["is"], scoring.reference, scoring.reference, "_floor"))
  return out


def _stream(
  batches: Iterable[np.ndarray], accumulators: list[FeatureAccumulator], stacked: bool
) -> None:
  """Each batch (``stacked``: one per length, (k, n, ...)) into its length's accumulator."""
  for batch in batches:
    for i, accumulator in enumerate(accumulators):
      accumulator.add(batch[i] if stacked else batch)


def _extras(config: ml_collections.ConfigDict, scoring: _Scoring) -> dict:
  name = scoring.extractor.name
  if scoring.classifier:
    judge = (
      features.digits_classifier(config.seed)
      if name == "digits"
      else features.mnist_classifier(config.seed, config.data.data_dir or None)
    )
    return {"classifier_test_accuracy": judge.test_accuracy}
  if name == "inception":
    return {
      "fid_variant": "pytorch-fid's InceptionV3 pool3 (TF-FID weights), bilinear resize to "
      "299, samples "
      + ("quantised to 8 bits" if scoring.keep["quantize"] else "as floats (not quantised to uint8")
      + "), reference = "
      + ("held-out target images" if datasets.is_translation(config) else "training data")
    }
  return {"mmd_bandwidth": scores.MMD_BANDWIDTH}


def evaluate_samples(
  config: ml_collections.ConfigDict,
  run,
  state,
  workdir: str,
  judge: conditional.Guide | None = None,
) -> dict:
  """``--mode=eval`` of FDRL and GAN runs (the ``evaluate`` hook of their method records; see the
  module docstring): {"metrics", "num_samples", "flow_lengths", "quantize", "num_reference", …,
  "rows"}. ``judge``: the classifier of ``eval.judge_workdir`` (conditional sampling)."""
  check_metric(config)
  batch_size = config.eval.get("batch_size", 0) or config.data.batch_size
  key, step = run.sample_key_for(0), int(jax.device_get(state.step))
  parts = run.sampler_parts()
  lengths = flow_lengths(config, parts)
  translation = datasets.is_translation(config)
  scoring = _Scoring(config, run, workdir, translation)
  default_length = (
    0 if parts.potential is None else parts.spec.num_steps + parts.spec.num_refine_steps
  )
  row_lengths = lengths or (default_length,)
  arg: int | np.ndarray
  baseline: Iterable[np.ndarray] | None
  if translation:
    _, sources = datasets.source_domain(config, run.dataset)
    if sources is None or run.dataset.test is None:
      raise ValueError(
        "Translation is scored on held-out images of both domains: set "
        "--config.prior.source_test_path and --config.data.test_path."
      )
    num, arg, name, baseline = len(sources), sources, "translate", [sources]
  else:
    num, arg, name = feature_stats.eval_sizes(config)[0], feature_stats.eval_sizes(config)[0], None
    baseline = (
      None
      if parts.potential is None or config.sampling.name == "refine"
      else prior_batches(run, state, parts, num, batch_size)
    )
  if config.sampling.name == "conditional":
    rows = _conditional_rows(
      config, run, state, parts, judge, scoring, lengths, row_lengths, num, batch_size
    )
  else:
    sampler = run.sampler(name, lengths)
    accumulators = [scoring.new() for _ in row_lengths]
    _stream(
      sampling.draw_batches(sampler, state, key, arg, batch_size),
      accumulators,
      stacked=lengths is not None,
    )
    rows = [scoring.row(a.result()) for a in accumulators]
  # The baseline and the floor, once; in every row that is scored against the whole reference.
  common = {
    **(
      {}
      if baseline is None
      else score(scoring.names, scoring.of(baseline), scoring.reference, "_prior")
    ),
    **_floor(config, scoring),
  }
  rows = [
    {
      "step": step,
      "flow_length": length,
      **row,
      **(common if row.get("class", "all") == "all" else {}),
    }
    for length, row in zip(row_lengths * (len(rows) // len(row_lengths)), rows)
  ]
  return {
    "metrics": scoring.names,
    "num_samples": num,
    "flow_lengths": list(row_lengths),
    "quantize": scoring.keep["quantize"],
    "num_reference": scoring.reference.count,
    **_extras(config, scoring),
    "rows": rows,
  }


def _conditional_rows(
  config,
  run,
  state,
  parts,
  judge: conditional.Guide | None,
  scoring: _Scoring,
  lengths,
  row_lengths,
  num: int,
  batch_size: int,
) -> list[dict]:
  """Per class n (ceil(num / N) samples each, key fold_in(key, n)) and all classes together:
  the on-class share by ``judge`` and the scores against the class's held-out images."""
  if judge is None:
    raise ValueError(
      "--config.sampling.name=conditional is judged by --config.eval.judge_workdir "
      "(its classifier is loaded by --mode=eval)."
    )
  for_class, num_classes = conditional.conditional_sampler(parts, run.guide, run.mesh, lengths)
  labelled = datasets.labelled_images(
    config.data.name, seed=config.seed, data_dir=config.data.data_dir or None
  )
  judged = jax.jit(judge.log_probs(judge.params))
  per_class = -(-num // num_classes)
  pooled = [scoring.new() for _ in row_lengths]
  rows, hits = [], np.zeros(len(row_lengths))
  for n in range(num_classes):
    sampler = for_class(n, config.sampling.classifier_weight)
    accumulators = [scoring.new() for _ in row_lengths]
    class_hits = np.zeros(len(row_lengths))
    key = jax.random.fold_in(run.sample_key_for(0), n)
    for batch in sampling.draw_batches(sampler, state, key, per_class, batch_size):
      batch = batch if lengths is not None else batch[None]
      for i in range(len(row_lengths)):
        accumulators[i].add(batch[i])
        pooled[i].add(batch[i])
        class_hits[i] += np.sum(np.argmax(np.asarray(judged(batch[i])), -1) == n)
    hits += class_hits
    if labelled.test is None or labelled.test_labels is None:
      raise ValueError(f"Per-class scores need held-out labelled {config.data.name} images.")
    reference = scoring.of([labelled.test[labelled.test_labels == n]])
    rows += [
      {"class": n, "on_class": float(h / per_class), **scoring.row(a.result(), reference)}
      for a, h in zip(accumulators, class_hits)
    ]
  rows += [
    {"class": "all", "on_class": float(h / (per_class * num_classes)), **scoring.row(a.result())}
    for a, h in zip(pooled, hits)
  ]
  return rows


def prior_batches(run, state, parts, num: int, batch_size: int) -> Iterator[np.ndarray]:
  """The prior's own draws, ``num`` in batches, with keys of their own (drawn when consumed)."""
  start = jax.jit(parts.start, static_argnums=2)  # on every process: the prior is replicated
  key = run.sample_key_for(1 << 30)
  for i, lo in enumerate(range(0, num, batch_size)):
    yield parallel.to_host(start(state, jax.random.fold_in(key, i), min(batch_size, num - lo)))
