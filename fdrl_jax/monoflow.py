"""MonoFlow: particles moved along ∇ₓ h(d(x)) for an increasing h of the log density ratio.

Convention. MonoFlow's d is the logit of a data-vs-model classifier, d(x) = log p(x)/q(x) (p the
data, q the model or flowed particles). The rest of this package uses FDRL's r = q/p, so a network
trained with the library's logistic-regression loss (``losses.LOSSES["lr"]``) outputs
l = log r = −d. Conversions happen only here: ``logit_from_log_ratio`` and the potentials below.

For any strictly increasing h, dx/dt = ∇h(d(x)) = h'(d)∇d decreases KL(q‖p) (MonoFlow). As a
potential for ``fdrl_jax.flow`` (which moves down the gradient of φ) this is φ(x) = −h(d(x)).

* FDRL's flow moves down f'(r(x)) = f'(e^{−d}): it is the MonoFlow with h(d) = −f'(e^{−d})
  (``from_divergence``; increasing because f is convex).
* A GAN generator trained with a fixed discriminator minimises −E_z[h(d(G(z)))]: its samples follow
  h'(d)∇d (``fdrl_jax.gan``). The names of MONOTONE_MAPS are the usual generator losses.
* DGflow refines samples by the same flow, in data space or in latent space through the generator
  (``refine``: refinement with MonoFlow).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fdrl_jax import registry
from fdrl_jax.divergences import flow_potential
from fdrl_jax.flows import flow

Array = jax.Array

# Where a user's h is checked: wide enough to reach a saturating map's flat end, narrow enough that
# float32 still resolves its slope there.
CHECK_GRID = np.linspace(-10.0, 10.0, 401, dtype=np.float32)


class MonotoneMap(NamedTuple):
  """An increasing map h of the logit d = log p/q and its derivative, elementwise."""

  h: Callable[[Array], Array]
  h_prime: Callable[[Array], Array]


def _vanilla(shift: float = 0.0) -> MonotoneMap:
  # Minimax generator loss log(1 − σ(d + C)) = −softplus(d + C), so h(d) = softplus(d + C).
  return MonotoneMap(
    h=lambda d: jax.nn.softplus(d + shift), h_prime=lambda d: jax.nn.sigmoid(d + shift)
  )


def _exp(scale: float = 1.5) -> MonotoneMap:
  return MonotoneMap(h=lambda d: jnp.exp(scale * d), h_prime=lambda d: scale * jnp.exp(scale * d))


# name → factory(**parameters) → MonotoneMap. Generator loss = −E[h(d(G(z)))].
MONOTONE_MAPS: dict[str, Callable[..., MonotoneMap]] = {
  # h(d) = d: the KL flow (generator loss −d).
  "logit": lambda: MonotoneMap(h=lambda d: d, h_prime=jnp.ones_like),
  # Minimax GAN, shifted by C ("shift"): h' = σ(d + C) vanishes when d ≪ −C (saturation).
  "vanilla": _vanilla,
  # Non-saturating GAN, loss −log σ(d): h = log σ(d), h' = σ(−d).
  "non_saturating": lambda: MonotoneMap(h=jax.nn.log_sigmoid, h_prime=lambda d: jax.nn.sigmoid(-d)),
  # h = arcsinh(d), h' = 1/√(1 + d²): slope decays only like 1/|d| on both sides.
  "arcsinh": lambda: MonotoneMap(h=jnp.arcsinh, h_prime=lambda d: jax.lax.rsqrt(1.0 + d * d)),
  # h = exp(a d) ("scale" a > 0): the paper's Section 4.3 example.
  "exp": _exp,
}


def get_map(name: str, *, setting: str = "--config.gan.h", **parameters: float) -> MonotoneMap:
  """The map ``name`` of MONOTONE_MAPS (an unknown name: a one-line ValueError naming
  ``setting``). ``parameters`` (``shift`` for vanilla, ``scale`` for exp) go to the maps that take
  them; the others ignore them, so one config can name any map."""
  factory = registry.lookup(MONOTONE_MAPS, name, setting)
  accepted = factory.__code__.co_varnames[: factory.__code__.co_argcount]
  return factory(**{k: v for k, v in parameters.items() if k in accepted})


def check_increasing(
  hmap: MonotoneMap, name: str = "the map h", grid: np.ndarray = CHECK_GRID
) -> MonotoneMap:
  """Returns ``hmap`` if h and h' are finite, h is non-decreasing with h' ≥ 0 on ``grid`` and not
  constant; otherwise raises a one-line ValueError naming the first bad point."""
  d = jnp.asarray(grid)
  values, slopes = np.asarray(hmap.h(d)), np.asarray(hmap.h_prime(d))
  if values.shape != d.shape or slopes.shape != d.shape:
    raise ValueError(
      f"{name} must act elementwise: it mapped {d.shape} logits to {values.shape} "
      f"values and {slopes.shape} slopes."
    )
  for what, array in (("value", values), ("derivative", slopes)):
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
      raise ValueError(
        f"{name} is not finite on the test grid: its {what} at d = "
        f"{grid[bad[0]]:.3g} is {array[bad[0]]}; use a map that is finite on "
        f"[{grid[0]:g}, {grid[-1]:g}]."
      )
  # Flat ends are allowed (a saturating map, e.g. vanilla, has h' ≈ 0 far out in float32), and so
  # is float32 rounding noise in h's values (XLA's tanh wobbles by an ulp near ±1).
  falls = np.diff(values) < -1e-6 * (1.0 + np.abs(values[:-1]))
  bad = np.flatnonzero((slopes < 0) | np.append(falls, False))
  if bad.size or not np.any(slopes > 0):
    at = f"at d = {grid[bad[0]]:.3g} (h' = {slopes[bad[0]]:.3g})" if bad.size else "anywhere"
    raise ValueError(
      f"{name} is not increasing {at} on the test grid [{grid[0]:g}, "
      f"{grid[-1]:g}]; MonoFlow needs an increasing h of the logit d = log p/q (a "
      "decreasing one moves samples away from the data)."
    )
  return hmap


def custom_map(
  h: Callable[[Array], Array],
  h_prime: Callable[[Array], Array] | None = None,
  *,
  grid: np.ndarray = CHECK_GRID,
) -> MonotoneMap:
  """A user's map h (elementwise, jax-traceable), h' by ``jax.grad`` unless given; checked to be
  finite and increasing on ``grid``."""
  if h_prime is None:
    h_prime = jax.vmap(jax.grad(lambda d: jnp.sum(h(d))))
  name = getattr(h, "__name__", "<lambda>")
  return check_increasing(
    MonotoneMap(h=h, h_prime=h_prime),
    "the map h" if name == "<lambda>" else f"the map {name}",
    grid,
  )


def from_divergence(name: str) -> MonotoneMap:
  """The MonoFlow of FDRL's flow for divergence ``name``: h(d) = −f'(e^{−d}).

  Built from the same stable potential the FDRL flow uses (``flow_potential(name, "log_ratio")``
  at l = −d), so the two flows are one computation: KL gives h' = 1, JS σ(d), log D σ(−d) and
  Pearson χ² 2e^{−d}.
  """
  potential = flow_potential(name, "log_ratio")
  h = lambda d: -potential(-d)
  return MonotoneMap(h=h, h_prime=jax.vmap(jax.grad(lambda d: jnp.sum(h(d)))))


def logit_from_log_ratio(log_ratio: Array) -> Array:
  """MonoFlow's d = log p/q from the package's log r = log q/p (an LR-trained network's output)."""
  return -log_ratio


def potential(logit_fn: Callable[[Array], Array], hmap: MonotoneMap) -> Callable[[Array], Array]:
  """φ(x) = −h(d(x)) for ``fdrl_jax.flow``: its steps x ← x + η h'(d)∇d are the MonoFlow.

  Args:
    logit_fn: particles (B, ...) → d(x) = log p/q, shape (B,). For a network trained with the
      package's LR loss, ``lambda x: logit_from_log_ratio(apply(variables, x))``.
    hmap: an increasing map (MONOTONE_MAPS, ``custom_map`` or ``from_divergence``).
  """
  return lambda x: -hmap.h(logit_fn(x))


def latent_potential(
  logit_fn: Callable[[Array], Array], generator_fn: Callable[[Array], Array], hmap: MonotoneMap
) -> Callable[[Array], Array]:
  """φ(z) = −h(d(G(z))): DGflow's refinement in latent space, flowing z through the generator."""
  return lambda z: -hmap.h(logit_fn(generator_fn(z)))


# ----------------------------------------------------------------------------------------------
# Refinement with MonoFlow (DGflow): a trained discriminator's flow moves a generator's samples.

REFINE_SPACES = ("latent", "data")


def check_refine_space(space: str) -> None:
  """A one-line ValueError for a refinement space other than REFINE_SPACES."""
  registry.lookup(dict.fromkeys(REFINE_SPACES), space, "--config.refine.space")


def refine(
  generator_fn: Callable[[Array], Array],
  logit_fn: Callable[[Array], Array],
  hmap: MonotoneMap,
  z: Array,
  key: Array,
  *,
  space: str,
  num_steps: int,
  step_size: float,
  noise_scale: float,
  clip: tuple[float, float] | None = None,
  save_at: tuple[int, ...] | None = None,
) -> Array:
  """DGflow-style refinement of generated samples along the MonoFlow of a trained discriminator.

  ``space="latent"``: z ← z + η h'(d(G(z)))∇_z d(G(z)) + ν ξ, then x = G(z) (DGflow's latent
  refinement; with h = logit this is its KL flow). ``space="data"``: x = G(z), then x ← x +
  η h'(d(x))∇ₓ d(x) + ν ξ (clipped to ``clip``). Both are ``fdrl_jax.flow`` runs. With
  ``save_at`` (``flow``'s), the samples after each of those step counts, stacked.
  """
  check_refine_space(space)
  kwargs: dict[str, Any] = {
    "num_steps": num_steps,
    "step_size": step_size,
    "noise_scale": noise_scale,
    "save_at": save_at,
  }
  pick = (lambda out: out) if save_at is None else (lambda out: out[1])
  if space == "latent":
    z = pick(flow(latent_potential(logit_fn, generator_fn, hmap), z, key, **kwargs))
    return generator_fn(z) if save_at is None else jnp.stack([generator_fn(zi) for zi in z])
  return pick(flow(potential(logit_fn, hmap), generator_fn(z), key, clip=clip, **kwargs))
