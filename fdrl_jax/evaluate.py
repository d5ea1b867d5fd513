"""``--mode=eval`` of a generative run (FDRL or a GAN): samples scored by ``eval.metrics``, in rows.

Scores are those of the metric table (``fdrl_jax.metric_table``: ``METRICS``, ``eval.metrics``,
``check_metric``).

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

from collections.abc import Iterable, Iterator

import jax
import ml_collections
import numpy as np

from fdrl_jax import (
  conditional,
  datasets,
  feature_stats,
  features,
  metric_table,
  parallel,
  sampling,
  scores,
)
from fdrl_jax.features import FeatureAccumulator, FeatureSet
from fdrl_jax.metric_table import NEEDS_LOGITS, NEEDS_ROWS, confident_share, score
from fdrl_jax.sampler import SamplerParts

# The floor's training images (at most; the digits' whole training split).
FLOOR_IMAGES = 10_000


def flow_lengths(
  config: ml_collections.ConfigDict, parts: SamplerParts | None
) -> tuple[int, ...] | None:
  """The lengths of the rows: ``eval.flow_lengths`` (with ``refine``: refinement steps, 0 added),
  or None for the run's own sampler alone (K + κ; a GAN's G(z); refine's ``refine.num_steps``)."""
  text = config.eval.get("flow_lengths", "")
  if config.sampling.name == "refine":
    given = metric_table.parse_lengths(text) if text else (config.refine.num_steps,)
    return tuple(sorted({0, *given}))
  if not text:
    return None
  if parts is None or parts.potential is None:
    raise ValueError(
      "--config.eval.flow_lengths needs a flow: an FDRL run, or a GAN with "
      "--config.sampling.name=refine."
    )
  lengths = metric_table.parse_lengths(text)
  if lengths[0] < 1:
    raise ValueError(
      f"--config.eval.flow_lengths={text!r}: a flow length is at least 1 step "
      "(the prior's draws are the rows' *_prior)."
    )
  return lengths


# ----------------------------------------------------------------------------------------------
# Rows.


class _Scoring:
  """One evaluation's extractor, metrics and accumulators (``new``), and its fixed references."""

  def __init__(self, config: ml_collections.ConfigDict, run, workdir: str, translation: bool):
    self.names = metric_table.metric_names(config)
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
  metric_table.check_metric(config)
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
