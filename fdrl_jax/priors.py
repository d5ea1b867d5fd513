"""Priors q' that the FDRL flow starts from (Sec. 4, Eq. 8).

Every prior is a ``flax.struct`` dataclass: its arrays are pytree leaves (so it can be passed
through ``jax.jit``, sharded and saved with a run's checkpoint) and its event shape is static.
What each offers is the ``Prior`` protocol: ``prior.sample(key, n)`` returns n particles of shape
(n, *event_shape). Fitting the data-dependent Gaussians, and building the prior a config names,
is ``fdrl_jax.prior_fit``'s.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array

DATA_RANGE = (-1.0, 1.0)  # Gaussian priors' samples are clipped to it, as the reference's are


class Prior(Protocol):
  """What every prior offers (the flow's starting distribution q'): ``event_shape``, the shape of
  one particle; ``clip``, the range its samples are clipped to (None: not clipped);
  ``sample(key, n)``, n particles of shape (n, *event_shape); ``centre()``, the mean of a
  Gaussian-type prior in its event shape (the centre of spherical interpolation), or None where
  there is no such centre (uniform, empirical)."""

  @property
  def event_shape(self) -> tuple[int, ...]: ...

  @property
  def clip(self) -> tuple[float, float] | None: ...

  def sample(self, key: Array, n: int) -> Array: ...

  def centre(self) -> Array | None: ...


def _to_events(x: Array, event_shape: tuple[int, ...], clip: tuple[float, float] | None) -> Array:
  """Reshapes flat samples (n, d) to (n, *event_shape), clipped to ``clip`` (None: no clipping)."""
  x = x.reshape((x.shape[0], *event_shape))
  return x if clip is None else jnp.clip(x, *clip)


@struct.dataclass
class GaussianPrior:
  """N(mean, L Lᵀ) on flattened particles, reshaped to ``event_shape`` (FDRL's data-dependent prior).

  Sampling is mean + L z with z ~ N(0, I), then clipped to ``clip`` (None: no clipping).
  """

  mean: Array  # (d,)
  scale_tril: Array  # (d, d), lower-triangular Cholesky factor of the covariance
  event_shape: tuple[int, ...] = struct.field(pytree_node=False)
  clip: tuple[float, float] | None = struct.field(pytree_node=False, default=DATA_RANGE)

  def sample(self, key: Array, n: int) -> Array:
    z = jax.random.normal(key, (n, self.mean.shape[0]), self.mean.dtype)
    return _to_events(self.mean + z @ self.scale_tril.T, self.event_shape, self.clip)

  def centre(self) -> Array:
    return jnp.reshape(self.mean, self.event_shape)


@struct.dataclass
class LowRankGaussianPrior:
  """N(mean, C Cᵀ + σ²·I) on flattened particles: FDRL's data-dependent prior (Eq. 8) at any size.

  The covariance is the probabilistic-PCA approximation of the data covariance (Tipping & Bishop,
  1999): C = U (Λ − σ_r²·I)^½ holds the top-k principal directions U scaled so that the variance
  along them is the data's, λ_i + jitter, and σ² = σ_r² + jitter, where σ_r² is the mean of the
  d − k discarded eigenvalues. Sampling is mean + C z₁ + σ z₂ with z₁ ~ N(0, I_k), z₂ ~ N(0, I_d),
  then clipped to ``clip`` (None: no clipping); it costs O(n·d·k), never a d×d matrix.
  """

  mean: Array  # (d,)
  components: Array  # (d, k), C = U (Λ − σ_r²·I)^½
  residual_scale: Array  # (), σ = (σ_r² + jitter)^½, the isotropic residual std
  event_shape: tuple[int, ...] = struct.field(pytree_node=False)
  clip: tuple[float, float] | None = struct.field(pytree_node=False, default=DATA_RANGE)

  def sample(self, key: Array, n: int) -> Array:
    d, k = self.components.shape
    z = jax.random.normal(key, (n, k + d), self.mean.dtype)
    x = self.mean + z[:, :k] @ self.components.T + self.residual_scale * z[:, k:]
    return _to_events(x, self.event_shape, self.clip)

  def centre(self) -> Array:
    return jnp.reshape(self.mean, self.event_shape)


@struct.dataclass
class UniformPrior:
  """U[low, high]^d (FDRL-UP uses U[−1, 1]^d)."""

  event_shape: tuple[int, ...] = struct.field(pytree_node=False)
  low: float = struct.field(pytree_node=False, default=DATA_RANGE[0])
  high: float = struct.field(pytree_node=False, default=DATA_RANGE[1])
  clip = None  # its samples lie in [low, high] already

  def sample(self, key: Array, n: int) -> Array:
    return jax.random.uniform(key, (n, *self.event_shape), minval=self.low, maxval=self.high)

  def centre(self) -> None:
    return None


@struct.dataclass
class NormalPrior:
  """N(loc, scale²·I) with the given event shape; the defaults give the standard normal."""

  event_shape: tuple[int, ...] = struct.field(pytree_node=False)
  loc: float = struct.field(pytree_node=False, default=0.0)
  scale: float = struct.field(pytree_node=False, default=1.0)
  clip = None

  def sample(self, key: Array, n: int) -> Array:
    return self.loc + self.scale * jax.random.normal(key, (n, *self.event_shape))

  def centre(self) -> Array:
    return jnp.full(self.event_shape, self.loc, jnp.float32)


@struct.dataclass
class EmpiricalPrior:
  """Draws rows of ``data`` uniformly with replacement (the source domain in translation, Sec. 6.5)."""

  data: Array  # (N, *event_shape)
  clip = None

  @property
  def event_shape(self) -> tuple[int, ...]:
    return tuple(self.data.shape[1:])

  def sample(self, key: Array, n: int) -> Array:
    idx = jax.random.randint(key, (n,), 0, self.data.shape[0])
    return self.data[idx]

  def centre(self) -> None:
    return None


# Why a run's empirical prior cannot be drawn from, and what to do (also ``run_lib``'s refusal).
NO_SOURCE = (
  "holds no source images (a reference checkpoint imported without them): "
  "--mode=translate --input=SOURCE_IMAGES moves given ones; to draw from the prior or "
  "train, import it again with its data (--config.data.path=DIR "
  "--config.prior.source_path=DIR)"
)


@struct.dataclass
class SourcelessPrior:
  """The empirical prior of a translation run whose source images are not stored (a reference
  checkpoint imported without them, ``fdrl_jax.import_reference``): no arrays, so its checkpoint
  holds none. The translate sampler moves given images and never draws from it; drawing raises."""

  event_shape: tuple[int, ...] = struct.field(pytree_node=False)
  clip = None

  def sample(self, key: Array, n: int) -> Array:
    raise ValueError(f"This run's empirical prior {NO_SOURCE}.")

  def centre(self) -> None:
    return None
