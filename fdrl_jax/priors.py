"""Priors q' that the FDRL flow starts from (Sec. 4, Eq. 8).

Every prior is a ``flax.struct`` dataclass: its arrays are pytree leaves (so it can be passed
through ``jax.jit``, sharded and saved with a run's checkpoint) and its event shape is static.
``prior.sample(key, n)`` returns n particles of shape (n, *event_shape).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array

# Samples of the Gaussian priors are clipped to the data range, as the reference implementation does.
DATA_RANGE = (-1.0, 1.0)


@struct.dataclass
class GaussianPrior:
  """N(mean, L Lᵀ) on flattened particles, reshaped to ``event_shape`` (FDRL's data-dependent prior).

  Sampling is mean + L z with z ~ N(0, I), then clipped to ``clip`` (None: no clipping).
  """
  mean: Array                      # (d,)
  scale_tril: Array                # (d, d), lower-triangular Cholesky factor of the covariance
  event_shape: tuple[int, ...] = struct.field(pytree_node=False)
  clip: tuple[float, float] | None = struct.field(pytree_node=False, default=DATA_RANGE)

  def sample(self, key: Array, n: int) -> Array:
    z = jax.random.normal(key, (n, self.mean.shape[0]), self.mean.dtype)
    x = (self.mean + z @ self.scale_tril.T).reshape((n, *self.event_shape))
    return x if self.clip is None else jnp.clip(x, *self.clip)


@struct.dataclass
class UniformPrior:
  """U[low, high]^d (FDRL-UP uses U[−1, 1]^d)."""
  event_shape: tuple[int, ...] = struct.field(pytree_node=False)
  low: float = struct.field(pytree_node=False, default=DATA_RANGE[0])
  high: float = struct.field(pytree_node=False, default=DATA_RANGE[1])

  def sample(self, key: Array, n: int) -> Array:
    return jax.random.uniform(key, (n, *self.event_shape), minval=self.low, maxval=self.high)


@struct.dataclass
class NormalPrior:
  """N(loc, scale²·I) with the given event shape; the defaults give the standard normal."""
  event_shape: tuple[int, ...] = struct.field(pytree_node=False)
  loc: float = struct.field(pytree_node=False, default=0.0)
  scale: float = struct.field(pytree_node=False, default=1.0)

  def sample(self, key: Array, n: int) -> Array:
    return self.loc + self.scale * jax.random.normal(key, (n, *self.event_shape))


@struct.dataclass
class EmpiricalPrior:
  """Draws rows of ``data`` uniformly with replacement (the source domain in translation, Sec. 6.5)."""
  data: Array                      # (N, *event_shape)

  @property
  def event_shape(self) -> tuple[int, ...]:
    return tuple(self.data.shape[1:])

  def sample(self, key: Array, n: int) -> Array:
    idx = jax.random.randint(key, (n,), 0, self.data.shape[0])
    return self.data[idx]


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


def fit_gaussian(x, jitter: float = 1e-4, *, chunk_size: int = 4096,
                 clip: tuple[float, float] | None = DATA_RANGE) -> GaussianPrior:
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
    raise ValueError(f"fit_gaussian needs data of shape (N, ...) with N >= 2 samples, got shape "
                     f"{x.shape}.")
  n, event_shape = x.shape[0], tuple(x.shape[1:])
  flat = x.reshape(n, -1)
  d = flat.shape[1]
  # Covariance (float64) + its factor and a float32 copy of each, plus one chunk's product.
  needed = d * d * (8 + 8 + 4 + 4)
  available = _available_memory_bytes()
  if available is not None and needed > available:
    raise ValueError(
        f"A full-covariance Gaussian prior for d={d} needs about {needed / 2**30:.1f} GiB of host "
        f"memory but only {available / 2**30:.1f} GiB is available; use a smaller image size or a "
        "uniform / standard-normal prior.")
  if not np.all(np.isfinite(flat)):
    bad = int(np.argmax(~np.all(np.isfinite(flat), axis=1)))
    raise ValueError(f"fit_gaussian got non-finite values (NaN or inf), first in sample {bad}; "
                     "clean the data before fitting the prior.")

  mean = flat.mean(axis=0, dtype=np.float64)
  cov = np.zeros((d, d), np.float64)
  for start in range(0, n, chunk_size):
    c = (flat[start:start + chunk_size] - mean).astype(np.float32)
    cov += (c.T @ c).astype(np.float64)
  cov /= n - 1
  cov[np.diag_indices(d)] += jitter
  try:
    scale_tril = np.linalg.cholesky(cov)
  except np.linalg.LinAlgError:
    raise ValueError(f"The data covariance plus jitter={jitter} is not positive definite; "
                     "increase jitter.") from None
  return GaussianPrior(mean=jnp.asarray(mean, jnp.float32),
                       scale_tril=jnp.asarray(scale_tril, jnp.float32),
                       event_shape=event_shape, clip=clip)
