"""Reference sets of sample scores and their statistics files (``--mode=stats``,
``--config.eval.reference_stats``).

The reference of an evaluation (``reference_set``) is, for Table 3's translation protocol, the
held-out target images; else, by ``eval.metric``'s family: the FID Inception's,
``eval.num_reference`` training images drawn with the config's seed (0: the whole split); the
digit classifiers', the held-out images; MMD's, ``eval.num_reference`` fresh draws of the toy
distribution. The Inception's
statistics are cached in the workdir (``fid_stats_<data>_<n|test>[_uint8].npz``), computed once.

A statistics file (``save_stats``) is an ``.npz`` with pytorch-fid's keys ``mu`` and ``sigma``
(float64), plus ``count``, the ``features`` rows (float32, for KID and precision/recall) and
``logits`` where kept, and ``extractor``, ``quantize`` and ``data`` naming what was measured.
``load_stats`` also reads the published pytorch-fid and clean-fid files (``mu`` and ``sigma``
only: Inception pool3 statistics, no rows).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator

import jax
import ml_collections
import numpy as np

from fdrl_jax import bundled, datasets, features, files, parallel, workdir as workdirs
from fdrl_jax.features import Extractor, FeatureAccumulator, FeatureSet

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


def split_size(dataset: bundled.Dataset) -> int | None:
  """The number of training examples of a finite data set (None for the infinite toy sets)."""
  return len(dataset.train) if dataset.train is not None else dataset.num_train


def _training_batches(
  config: ml_collections.ConfigDict, dataset: bundled.Dataset, n: int, chunk: int = 1000
) -> Iterator[np.ndarray]:
  """``n`` distinct training images drawn with the config's seed, decoded ``chunk`` at a time."""
  for start in range(0, n, chunk):
    yield dataset.sample(np.random.default_rng(config.seed), n, slice(start, start + chunk))


def _held_out(dataset: bundled.Dataset, chunk: int = 1000) -> Iterator[np.ndarray]:
  if dataset.test is None or not len(dataset.test):
    raise ValueError(
      f"The reference of {dataset.name!r} is its held-out images, and it has none: "
      "set --config.data.test_path (a folder of held-out images)."
    )
  for start in range(0, len(dataset.test), chunk):
    yield dataset.test[start : start + chunk]


def reference_images(
  config: ml_collections.ConfigDict, dataset: bundled.Dataset, extractor: str, *, translation: bool
) -> tuple[Iterable[np.ndarray], str]:
  """The reference's images as batches, and a label for its cache file (see the module
  docstring); a one-line ValueError for more training images than the split has."""
  if translation or extractor in ("digits", "mnist"):
    return _held_out(dataset), "test"
  if extractor == "raw":
    draws = eval_sizes(config)[1]
    return [dataset.sample(np.random.default_rng([config.seed, 1]), draws)], str(draws)
  size = split_size(dataset)
  n = eval_sizes(config)[1] or size
  if n is None:
    raise ValueError(
      f"FID statistics of {config.data.name!r} need --config.eval.num_reference > "
      "0: the data set has no finite training split to use whole."
    )
  if size is not None and n > size:
    raise ValueError(
      f"FID statistics of {config.data.name!r} cannot be computed from {n} "
      f"training images: the split has {size}; set --config.eval.num_reference to "
      "at most that, or 0 for all of them."
    )
  return _training_batches(config, dataset, n), str(n)


def compute_set(
  extractor: Extractor,
  batches: Iterable[np.ndarray],
  *,
  keep_features: bool,
  keep_logits: bool,
  quantize: bool,
) -> FeatureSet:
  """The ``FeatureSet`` of image batches (every process holds each whole)."""
  accumulator = FeatureAccumulator(
    extractor, keep_features=keep_features, keep_logits=keep_logits, quantize=quantize
  )
  for batch in batches:
    accumulator.add(batch)
  return accumulator.result()


def _npz_arrays(feature_set: FeatureSet, *, extractor: str, quantize: bool, data: str) -> dict:
  arrays = {
    "mu": feature_set.mu,
    "sigma": feature_set.sigma,
    "count": feature_set.count,
    "extractor": extractor,
    "quantize": quantize,
    "data": data,
  }
  if feature_set.features is not None:
    arrays["features"] = feature_set.features
  if feature_set.logits is not None:
    arrays["logits"] = feature_set.logits
  return arrays


def _writer(arrays: dict):
  def write(path: str) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
      np.savez(f, **arrays)

  return write


def save_stats(
  path: str, feature_set: FeatureSet, *, extractor: str, quantize: bool, data: str
) -> str:
  """Writes ``feature_set`` to the new file ``path`` (see the module docstring; never overwrites,
  only the writing process)."""
  return files.write_new_file(
    path, _writer(_npz_arrays(feature_set, extractor=extractor, quantize=quantize, data=data))
  )


def load_stats(path: str) -> tuple[FeatureSet, dict]:
  """Reads a statistics file: (its ``FeatureSet``, {"extractor", "quantize", "data"}), the meta
  values None for a pytorch-fid / clean-fid file. One-line ValueErrors for anything else."""
  where = files.as_path(path)
  if not where.is_file():
    raise ValueError(
      f"The statistics file {path} does not exist; compute one with --mode=stats --output=FILE.npz."
    )
  try:
    with np.load(io.BytesIO(where.read_bytes())) as f:
      arrays = {key: f[key] for key in f.files}
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"{path} is not an .npz of feature statistics ({e}).") from None
  if not {"mu", "sigma"} <= arrays.keys():
    raise ValueError(
      f"{path} is not a statistics file: it has no mu and sigma (found "
      f"{', '.join(sorted(arrays)) or 'no arrays'})."
    )
  mu, sigma = np.asarray(arrays["mu"], np.float64), np.asarray(arrays["sigma"], np.float64)
  if mu.ndim != 1 or sigma.shape != mu.shape * 2:
    raise ValueError(
      f"{path} holds mu of shape {mu.shape} and sigma of shape {sigma.shape}, not (D,) and (D, D)."
    )
  meta = {
    key: (arrays[key].item() if key in arrays else None)
    for key in ("extractor", "quantize", "data")
  }
  return FeatureSet(
    mu, sigma, int(arrays.get("count", 0)), arrays.get("features"), arrays.get("logits")
  ), meta


def check_stats(
  path: str,
  feature_set: FeatureSet,
  meta: dict,
  *,
  extractor: str,
  quantize: bool,
  keep_features: bool,
) -> None:
  """One-line ValueErrors when a statistics file does not fit the evaluation: another extractor
  (a pytorch-fid / clean-fid file is the Inception's), another quantisation, or no rows for KID
  and precision/recall."""
  setting = "--config.eval.reference_stats"
  found = meta["extractor"] or "inception"
  if found != extractor:
    raise ValueError(
      f"{setting}={path} holds {found} features; this evaluation's are "
      f"{extractor}'s (compute them with --mode=stats)."
    )
  if meta["quantize"] is not None and bool(meta["quantize"]) != quantize:
    raise ValueError(
      f"{setting}={path} was computed with quantize={bool(meta['quantize'])}; set "
      f"--config.eval.quantize={bool(meta['quantize'])} or compute it again."
    )
  if keep_features and feature_set.features is None:
    raise ValueError(
      f"{setting}={path} has no feature rows, which KID and precision/recall need; "
      "compute the statistics with --mode=stats --output=FILE.npz."
    )


def reference_set(
  config: ml_collections.ConfigDict,
  dataset: bundled.Dataset,
  workdir: str,
  *,
  extractor: Extractor,
  translation: bool,
  keep_features: bool,
  keep_logits: bool,
  quantize: bool,
) -> FeatureSet:
  """The reference ``FeatureSet`` of an evaluation: ``eval.reference_stats`` if set (checked by
  ``check_stats``; its logits are None where the file has none), else the data's (see the module
  docstring), the Inception's cached in ``workdir``."""
  path = config.eval.get("reference_stats", "")
  if path:
    feature_set, meta = load_stats(path)
    check_stats(
      path,
      feature_set,
      meta,
      extractor=extractor.name,
      quantize=quantize,
      keep_features=keep_features,
    )
    return feature_set
  batches, label = reference_images(config, dataset, extractor.name, translation=translation)
  keep = {"keep_features": keep_features, "keep_logits": keep_logits, "quantize": quantize}
  if extractor.name != "inception":
    return compute_set(extractor, batches, **keep)
  cache = files.as_path(
    workdirs.join(
      workdir, f"fid_stats_{config.data.name}_{label}{'_uint8' if quantize else ''}.npz"
    )
  )
  if cache.exists():  # the data set's statistics are computed once per workdir
    cached, _ = load_stats(os.fspath(cache))
    if not ((keep_features and cached.features is None) or (keep_logits and cached.logits is None)):
      return cached
  feature_set = compute_set(extractor, batches, **keep)
  files.write_file(
    os.fspath(cache),
    _writer(
      _npz_arrays(feature_set, extractor=extractor.name, quantize=quantize, data=config.data.name)
    ),
  )
  return feature_set


def stats_to_file(config: ml_collections.ConfigDict, output: str) -> str:
  """``--mode=stats``: the reference ``FeatureSet`` of the config's data (``reference_images``,
  with the feature rows for KID/PR) written to the new file ``output``; every device of every
  process computes its rows."""
  files.refuse_existing(output)
  files.check_writable(output)
  dataset = datasets.build_dataset(config)
  mesh = parallel.data_mesh() if jax.device_count() > 1 else None
  extractor = features.extractor(config, dataset, mesh=mesh)
  quantize = bool(config.eval.get("quantize", False))
  batches, _ = reference_images(
    config, dataset, extractor.name, translation=datasets.is_translation(config)
  )
  feature_set = compute_set(
    extractor, batches, keep_features=True, keep_logits=False, quantize=quantize
  )
  return save_stats(
    output, feature_set, extractor=extractor.name, quantize=quantize, data=config.data.name
  )
