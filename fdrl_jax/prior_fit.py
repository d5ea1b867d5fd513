"""Priors fitted to data and built from a config: FDRL's data-dependent Gaussian N(μ_D, Σ_D)
(Eq. 8), full (``fit_gaussian``) or its streaming low-rank approximation
(``fit_low_rank_gaussian``), and ``build_prior``, the configured prior of a run (``PRIORS`` names
them for the configs; the only function here that reads a config). The priors themselves are
``fdrl_jax.priors``'s records.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fdrl_jax import registry
from fdrl_jax.priors import (
  DATA_RANGE,
  EmpiricalPrior,
  GaussianPrior,
  LowRankGaussianPrior,
  NormalPrior,
  Prior,
  SourcelessPrior,
  UniformPrior,
)

Array = jax.Array


def _available_memory_bytes() -> int | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def _check_memory(needed: int, what: str, advice: str) -> None:
  """Raises a ValueError if ``needed`` bytes of host memory exceed what is available."""
  available = _available_memory_bytes()
  if available is not None and needed > available:
    raise ValueError(
      f"{what} needs about {needed / 2**30:.1f} GiB of host memory but only "
      f"{available / 2**30:.1f} GiB is available; {advice}."
    )


def _check_finite(flat: np.ndarray, caller: str, offset: int = 0) -> None:
  """Raises a ValueError naming the first sample (counted from ``offset``) with a NaN or inf."""
  finite = np.all(np.isfinite(flat), axis=1)
  if not np.all(finite):
    raise ValueError(
      f"{caller} got non-finite values (NaN or inf), first in sample "
      f"{offset + int(np.argmin(finite))}; clean the data before fitting the prior."
    )


def fit_gaussian(
  x, jitter: float = 1e-4, *, chunk_size: int = 4096, clip: tuple[float, float] | None = DATA_RANGE
) -> GaussianPrior:
  """Fits FDRL's data-dependent prior N(μ_D, Σ_D + jitter·I) to data x of shape (N, ...) (Eq. 8).

  The covariance of the flattened data is accumulated on the host in float64 from float32 chunk
  products (d = 3 072, N = 50 000 takes seconds), then factorised once; only the mean and the
  Cholesky factor are kept, as float32.

  Args:
    x: data, shape (N, ...), N ≥ 2; a NumPy or JAX array.
    jitter: added to the covariance's diagonal (the reference uses 1e-4).
    chunk_size: rows per covariance update (bounds the temporary memory).
    clip: range the samples are clipped to (None: no clipping).

  Raises:
    ValueError: for fewer than 2 samples, non-finite values, or a covariance that would not fit in
      the available memory (the message gives the size needed).
  """
  x = np.asarray(x)
  if x.ndim < 2 or x.shape[0] < 2:
    raise ValueError(
      f"fit_gaussian needs data of shape (N, ...) with N >= 2 samples, got shape {x.shape}."
    )
  n, event_shape = x.shape[0], tuple(x.shape[1:])
  flat = x.reshape(n, -1)
  d = flat.shape[1]
  # Covariance (float64) + its factor and a float32 copy of each, plus one chunk's product.
  _check_memory(
    d * d * (8 + 8 + 4 + 4),
    f"A full-covariance Gaussian prior for d={d}",
    "use fit_low_rank_gaussian, a smaller image size or a uniform / standard-normal prior",
  )
  _check_finite(flat, "fit_gaussian")

  mean = flat.mean(axis=0, dtype=np.float64)
  cov = np.zeros((d, d), np.float64)
  for start in range(0, n, chunk_size):
    c = (flat[start : start + chunk_size] - mean).astype(np.float32)
    cov += (c.T @ c).astype(np.float64)
  cov /= n - 1
  cov[np.diag_indices(d)] += jitter
  try:
    scale_tril = np.linalg.cholesky(cov)
  except np.linalg.LinAlgError:
    raise ValueError(
      f"The data covariance plus jitter={jitter} is not positive definite; increase jitter."
    ) from None
  return GaussianPrior(
    mean=jnp.asarray(mean, jnp.float32),
    scale_tril=jnp.asarray(scale_tril, jnp.float32),
    event_shape=event_shape,
    clip=clip,
  )


Batches = np.ndarray | Array | Callable[[], Iterable[np.ndarray | Array]]
_LOW_RANK = "fit_low_rank_gaussian"


def _row_chunks(
  batches: Batches, chunk_size: int, event_shape: tuple[int, ...] | None = None
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
  """Yields one pass over ``batches`` as (event shape, flattened rows of at most chunk_size).

  Every batch must have shape (m, *event_shape); ``event_shape`` None takes the first batch's.
  """
  for batch in batches() if callable(batches) else (batches,):
    batch = np.asarray(batch)
    if batch.ndim < 2:
      raise ValueError(f"{_LOW_RANK} needs batches of shape (N, ...), got shape {batch.shape}.")
    event_shape = batch.shape[1:] if event_shape is None else event_shape
    if batch.shape[1:] != event_shape:
      raise ValueError(
        f"{_LOW_RANK} got a batch of shape {batch.shape} after batches of samples "
        f"of shape {event_shape}; all samples must have the same shape."
      )
    flat = batch.reshape(batch.shape[0], math.prod(event_shape))
    for start in range(0, flat.shape[0], chunk_size):
      yield event_shape, flat[start : start + chunk_size]


def _stream_moments(
  batches: Batches, chunk_size: int
) -> tuple[np.ndarray, float, int, tuple[int, ...]]:
  """Computes the mean, the covariance's trace, N and the event shape in one pass (float64)."""
  total, sum_sq, n, event_shape = np.zeros(()), 0.0, 0, None
  for event_shape, rows in _row_chunks(batches, chunk_size):
    _check_finite(rows, _LOW_RANK, offset=n)
    rows = rows.astype(np.float64)
    total = total + rows.sum(axis=0)
    sum_sq += np.vdot(rows, rows)
    n += rows.shape[0]
  if n < 2 or event_shape is None:  # an event shape comes with the first batch
    raise ValueError(f"{_LOW_RANK} needs N >= 2 samples, got {n}.")
  mean = total / n
  return mean, float(sum_sq - n * np.dot(mean, mean)) / (n - 1), n, event_shape


def _covariance_times(
  batches: Batches,
  chunk_size: int,
  event_shape: tuple[int, ...],
  mean: np.ndarray,
  n: int,
  q: np.ndarray,
) -> np.ndarray:
  """Computes Σ_D q = Xᶜᵀ(Xᶜ q) / (N − 1) in one pass, Xᶜ the centred data (float64 sums)."""
  q32, out, seen = q.astype(np.float32), np.zeros_like(q), 0
  for _, rows in _row_chunks(batches, chunk_size, event_shape):
    centred = (rows - mean).astype(np.float32)
    out += centred.T @ (centred @ q32)
    seen += rows.shape[0]
  if seen != n:
    raise ValueError(
      f"{_LOW_RANK} saw {seen} samples on a later pass over the data but {n} on "
      "the first; `batches` must return a fresh iterable over the same data."
    )
  return out / (n - 1)


def fit_low_rank_gaussian(
  batches: Batches,
  rank: int,
  *,
  jitter: float = 1e-4,
  clip: tuple[float, float] | None = DATA_RANGE,
  oversample: int = 10,
  power_iters: int = 2,
  seed: int = 0,
  chunk_size: int = 1024,
) -> LowRankGaussianPrior:
  """Fits N(μ_D, C Cᵀ + σ²·I), the rank-k PPCA approximation of FDRL's prior N(μ_D, Σ_D) (Eq. 8).

  Σ_D is never formed: the data are read in 3 + ``power_iters`` streaming passes (the mean and
  tr Σ_D; then a randomized subspace iteration, Halko et al. 2011, Alg. 4.3, for the top-k
  eigenspace, each pass accumulating Xᶜᵀ(Xᶜ Q) in float64 for a d × (k + oversample) Q; then the
  Rayleigh–Ritz eigenvalues λ₁..λ_k of QᵀΣ_D Q). The residual variance is
  σ_r² = (tr Σ_D − Σλ_i) / (d − k), so tr(C Cᵀ + σ²·I) = tr Σ_D + d·jitter. The order of the
  samples may differ between passes; the samples themselves may not.

  Args:
    batches: data of shape (N, ...), or a callable returning a fresh iterable of arrays
      (m, ...) on every call (for data that does not fit in memory); N ≥ 2 in total.
    rank: k, the number of principal directions kept, 1 ≤ k < d.
    jitter: added to the covariance's diagonal, as in ``fit_gaussian``.
    clip: range the samples are clipped to (None: no clipping).
    oversample: extra directions of the subspace iteration (more: more accurate λ_k).
    power_iters: extra passes of subspace iteration (more: more accurate for flat spectra).
    seed: seed of the random starting subspace.
    chunk_size: rows per update (bounds the temporary memory).

  Raises:
    ValueError: for k out of range, fewer than 2 samples, non-finite values (naming the first bad
      sample in the stream), samples of different shapes, a callable that does not give the
      same data on every pass, or working memory larger than what is available.
  """
  if rank < 1:
    raise ValueError(f"{_LOW_RANK} needs rank >= 1, got {rank}.")
  mean, trace, n, event_shape = _stream_moments(batches, chunk_size)
  d = mean.shape[0]
  if rank >= d:
    raise ValueError(
      f"{_LOW_RANK} needs rank < d = {d}, got {rank}; use fit_gaussian for a full covariance."
    )
  width = min(rank + oversample, d)
  # Q, Σ_D Q and QR's workspace in float64, plus one chunk in float64 and float32.
  _check_memory(
    8 * 3 * d * width + 12 * chunk_size * d,
    f"A rank-{rank} Gaussian prior for d={d} (k + oversample = {width})",
    "lower rank or oversample",
  )
  cov_times = functools.partial(_covariance_times, batches, chunk_size, event_shape, mean, n)
  q = np.random.default_rng(seed).standard_normal((d, width))
  for _ in range(power_iters + 1):
    q = np.linalg.qr(cov_times(q))[0]
  projected = q.T @ cov_times(q)
  eigvals, eigvecs = np.linalg.eigh((projected + projected.T) / 2)
  eigvals, eigvecs = eigvals[::-1][:rank], eigvecs[:, ::-1][:, :rank]
  residual = max(trace - eigvals.sum(), 0.0) / (d - rank)
  components = (q @ eigvecs) * np.sqrt(np.maximum(eigvals - residual, 0.0))
  return LowRankGaussianPrior(
    mean=jnp.asarray(mean, jnp.float32),
    components=jnp.asarray(components, jnp.float32),
    residual_scale=jnp.asarray(np.sqrt(residual + jitter), jnp.float32),
    event_shape=event_shape,
    clip=clip,
  )


# ----------------------------------------------------------------------------------------------
# The registry, read by the config builders.


def _gaussian_prior(p, data, event_shape):
  if data is None:  # restore template: same shapes, no fit
    d = int(np.prod(event_shape))
    return GaussianPrior(mean=jnp.zeros((d,)), scale_tril=jnp.eye(d), event_shape=event_shape)
  return fit_gaussian(data, jitter=p.jitter)


def _low_rank_prior(p, data, event_shape):
  if data is None:
    d = int(np.prod(event_shape))
    return LowRankGaussianPrior(
      mean=jnp.zeros((d,)),
      components=jnp.zeros((d, p.rank)),
      residual_scale=jnp.zeros(()),
      event_shape=event_shape,
    )
  return fit_low_rank_gaussian(data, p.rank, jitter=p.jitter)


def _empirical_prior(p, data, event_shape):
  if not len(data):  # no source images: translation of given images only
    return SourcelessPrior(event_shape=tuple(event_shape))
  return EmpiricalPrior(data=jnp.asarray(data))


# name → (prior config group, data or None, event shape) → prior. "data" is what the prior is
# fitted to (the training images) or, for "empirical", the source domain it draws from (no rows:
# a ``SourcelessPrior``).
PRIORS: dict[str, Callable[..., Prior]] = {
  "gaussian": _gaussian_prior,
  "low_rank": _low_rank_prior,
  "uniform": lambda p, data, event_shape: UniformPrior(event_shape=event_shape),
  "normal": lambda p, data, event_shape: NormalPrior(
    event_shape=event_shape, loc=p.loc, scale=p.scale
  ),
  "empirical": _empirical_prior,
}


def build_prior(
  config: ml_collections.ConfigDict, data: np.ndarray | None, event_shape: tuple[int, ...]
) -> Prior:
  """The prior q' named by ``config.prior.name`` (a key of PRIORS), fitted to ``data``; ``data``
  None gives a same-shaped template, to restore a checkpoint without refitting."""
  build = registry.lookup(PRIORS, config.prior.name, "--config.prior.name")
  return build(config.prior, data, event_shape)
