"""Scores of samples against reference sets, as pure NumPy/SciPy functions (no config, no JAX).

``frechet_distance`` is the distance between two Gaussians fitted to feature sets
(``feature_statistics``),

    FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}),

computed in float64 on the host, with the standard FID code's safeguards: if the matrix square root
is not finite (a singular product), ε·I is added to both covariances; an imaginary part left by
``scipy.linalg.sqrtm`` is dropped only when it is negligible.

MMD (the 2-D toy sets): the kernel two-sample distance with a Gaussian kernel of bandwidth
``MMD_BANDWIDTH`` (``mmd``). ``nearest_neighbours``: the neighbours figure's (FDRL Fig. 10–11)
exact nearest training rows of samples.

KID (``kernel_inception_distance``), the Inception Score (``inception_score``) and improved
precision/recall (``precision_recall``) work on any extractor's features or class logits.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import scipy.linalg
import scipy.special


class Moments(NamedTuple):
  """Streamed sums of a feature set's rows x (float64): the count, and the sums of (x − c) and of
  the outer products (x − c)(x − c)ᵀ about a shift c, the first batch's mean (so a large common
  offset costs no precision). ``Moments()`` is the empty set."""

  count: int = 0  # type: ignore[assignment]  # a field named count shadows tuple.count for mypy
  shift: np.ndarray | None = None
  total: np.ndarray | float = 0.0
  outer: np.ndarray | float = 0.0


def add_moments(moments: Moments, batch: np.ndarray) -> Moments:
  """``moments`` with the rows of ``batch`` (n, D) added, in float64."""
  batch = np.asarray(batch, np.float64)
  if batch.ndim != 2:
    raise ValueError(f"Feature statistics need (N, D) arrays, got {batch.shape}.")
  if not len(batch):
    return moments
  shift = batch.mean(axis=0) if moments.shift is None else moments.shift
  centred = batch - shift
  return Moments(
    moments.count + len(batch),
    shift,
    moments.total + centred.sum(0),
    moments.outer + centred.T @ centred,
  )


def moments_statistics(moments: Moments) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64) of the rows behind ``moments``: with m = total / n,
  μ = c + m and Σ = (outer − n m mᵀ) / (n − 1)."""
  count, shift = moments.count, moments.shift
  if count < 2 or shift is None:  # a shift is set by the first batch
    raise ValueError(f"Feature statistics need (N, D) features with N >= 2, got N = {count}.")
  mean = moments.total / count
  return shift + mean, (moments.outer - count * np.outer(mean, mean)) / (count - 1)


def feature_statistics(
  features: np.ndarray | Iterable[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64, rows are samples) of a feature set (N, D), N ≥ 2, given whole
  or as an iterable of (n, D) batches (streamed through ``Moments``: memory D², not N·D)."""
  moments = Moments()
  for batch in [features] if isinstance(features, np.ndarray) else features:
    moments = add_moments(moments, batch)
  return moments_statistics(moments)


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
    raise ValueError(
      f"Mismatched statistics: means {mu1.shape} and {mu2.shape}, covariances "
      f"{sigma1.shape} and {sigma2.shape}."
    )
  with warnings.catch_warnings():  # singular products are handled here, not warned about
    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
      offset = eps * np.eye(sigma1.shape[0])
      covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(
        f"The covariance square root has an imaginary part of "
        f"{np.max(np.abs(covmean.imag)):.3g}; the statistics are not valid."
      )
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


MMD_BANDWIDTH = 0.2


def mmd(x: np.ndarray, y: np.ndarray, bandwidth: float = MMD_BANDWIDTH) -> float:
  """The maximum mean discrepancy between the samples x (N, D) and y (M, D): the square root of
  the biased (V-statistic) estimate of MMD² with k(a, b) = exp(−‖a − b‖² / (2 h²)), in float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

  def mean_kernel(a, b):
    d2 = np.sum(a * a, 1)[:, None] - 2.0 * a @ b.T + np.sum(b * b, 1)[None]
    return float(np.mean(np.exp(-np.maximum(d2, 0.0) / (2.0 * bandwidth**2))))

  return float(np.sqrt(max(mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y), 0.0)))


def nearest_neighbours(
  queries: np.ndarray, reference: np.ndarray, k: int, *, chunk_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
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
    raise ValueError(
      f"Queries of {queries.shape[1]} values cannot be compared with training "
      f"examples of {flat_ref.shape[1]}."
    )
  keep = min(m, k + max(k, 16))
  q_sq = np.sum(queries * queries, axis=1)
  best_d = np.zeros((len(queries), 0), np.float32)
  best_i = np.zeros((len(queries), 0), np.int64)
  for start in range(0, m, chunk_size):
    chunk = flat_ref[start : start + chunk_size].astype(np.float32)
    d = q_sq[:, None] - 2.0 * (queries @ chunk.T) + np.sum(chunk * chunk, axis=1)[None]
    all_d = np.concatenate([best_d, d], axis=1)
    all_i = np.concatenate(
      [best_i, np.broadcast_to(np.arange(start, start + len(chunk)), d.shape)], axis=1
    )
    if all_d.shape[1] > keep:
      part = np.argpartition(all_d, keep - 1, axis=1)[:, :keep]
      all_d, all_i = np.take_along_axis(all_d, part, 1), np.take_along_axis(all_i, part, 1)
    best_d, best_i = all_d, all_i
  exact = np.sum(
    (queries[:, None].astype(np.float64) - flat_ref[best_i].astype(np.float64)) ** 2, axis=-1
  )
  order = np.argsort(exact, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(best_i, order, 1), np.sqrt(np.take_along_axis(exact, order, 1))


# ----------------------------------------------------------------------------------------------
# KID, Inception Score and improved precision/recall: pure NumPy on features (N, D) / logits.


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """KID's kernel k(x, y) = (x·y / D + 1)³ between the rows of x (N, D) and y (M, D)."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def kernel_inception_distance(
  features: np.ndarray,
  reference: np.ndarray,
  *,
  num_subsets: int = 100,
  subset_size: int = 1000,
  seed: int = 0,
) -> tuple[float, float]:
  """KID (Bińkowski et al., 2018): the unbiased MMD² with ``polynomial_kernel`` between random
  subsets of the two feature sets, as (mean, standard deviation) over ``num_subsets`` subsets of
  ``min(subset_size, N, M)`` rows each (each subset drawn without replacement). Unbiased: its
  expectation does not depend on the number of samples, unlike the Fréchet distance's."""
  x, y = np.asarray(features, np.float64), np.asarray(reference, np.float64)
  m = min(subset_size, len(x), len(y))
  if m < 2:
    raise ValueError(f"KID needs at least 2 rows in each feature set, got {len(x)} and {len(y)}.")
  rng = np.random.default_rng(seed)
  values = np.empty(num_subsets)
  for i in range(num_subsets):
    a = x[rng.choice(len(x), m, replace=False)]
    b = y[rng.choice(len(y), m, replace=False)]
    k_aa, k_bb, k_ab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    values[i] = within - 2.0 * k_ab.mean()
  return float(values.mean()), float(values.std())


def inception_score(logits: np.ndarray, *, splits: int = 10) -> tuple[float, float]:
  """The Inception Score exp(E_x KL(p(y|x) ‖ p(y))) of class logits (N, C), as (mean, standard
  deviation) over ``splits`` consecutive equal parts (the usual protocol: 10 parts of 5 000)."""
  logits = np.asarray(logits, np.float64)
  if len(logits) < splits:
    raise ValueError(f"The Inception Score needs at least {splits} samples, got {len(logits)}.")
  log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  scores = []
  for part in np.array_split(log_p, splits):
    log_marginal = scipy.special.logsumexp(part, axis=0) - np.log(len(part))
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T, 0.0)


def _knn_radii(x: np.ndarray, k: int, chunk: int) -> np.ndarray:
  """The distance of each row of x to its k-th nearest other row (squared)."""
  radii = np.empty(len(x))
  for lo in range(0, len(x), chunk):
    d = _squared_distances(x[lo : lo + chunk], x)
    radii[lo : lo + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is the row itself
  return radii


def _covered(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int) -> np.ndarray:
  """Whether each query lies in at least one ball (centre, radius²)."""
  inside = np.zeros(len(queries), bool)
  for lo in range(0, len(queries), chunk):
    inside[lo : lo + chunk] = np.any(
      _squared_distances(queries[lo : lo + chunk], centres) <= radii[None], axis=1
    )
  return inside


def precision_recall(
  features: np.ndarray, reference: np.ndarray, *, k: int = 3, chunk: int = 1000
) -> tuple[float, float]:
  """Improved precision and recall (Kynkäänniemi et al., 2019): each set's manifold is the union
  of balls around its points reaching their k-th nearest neighbour in the same set; precision is
  the share of samples inside the reference's manifold, recall the share of reference points
  inside the samples'. Computed in float64 in chunks of ``chunk`` rows (memory chunk × N)."""
  x, y = np.asarray(features, np.float64), np.asarray(reference, np.float64)
  if min(len(x), len(y)) <= k:
    raise ValueError(
      f"Precision/recall with k={k} needs more than {k} rows in each feature set, "
      f"got {len(x)} and {len(y)}."
    )
  precision = _covered(x, y, _knn_radii(y, k, chunk), chunk).mean()
  recall = _covered(y, x, _knn_radii(x, k, chunk), chunk).mean()
  return float(precision), float(recall)
