"""The arrays behind ``figures``' pictures of the flow, as pure functions of a restored run, so
that tests check numbers rather than pixels.

* ``snapshot_plan`` / ``flow_snapshots`` (FDRL Fig. 6, the strip): particles from their prior draw
  through the K + κ flow steps to the final sample, as ``Snapshots``.
* ``interpolants`` / ``flow_interpolation`` (Fig. 7): starting points between two prior draws
  (spherical around a Gaussian-type prior's centre, else linear), each flowed with its row's noise,
  as an ``Interpolation``.

They flow with what ``--mode=sample`` uses: the run's sampler parts (``flow_parts``: prior draws,
the EMA estimator's potential, the flow's ``spec`` of K + κ steps, η, ν, clipping).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fdrl_jax import flows, run_lib, sampler

Array = jax.Array


def check_count(what: str, n: int, minimum: int = 1) -> None:
  """A one-line ValueError unless ``n`` (a number of rows, columns, samples ...) is an integer of at
  least ``minimum``."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
    raise ValueError(f"The number of {what} must be an integer >= {minimum}, got {n!r}.")


def snapshot_plan(total_steps: int, num_columns: int = 10) -> tuple[int, list[int]]:
  """Which flow steps a strip shows: ``(save_every, steps)``, steps from 0 to ``total_steps``.

  If some ``save_every`` dividing ``total_steps`` gives between ``num_columns`` − 2 and
  ``num_columns`` + 1 snapshots (8–11 for the default 10), every saved snapshot is a column, evenly
  spaced (K + κ = 120: every 12th step, 11 columns). Otherwise the flow saves at the largest
  divisor that still gives at least ``num_columns`` snapshots (often every step) and
  ``num_columns`` of them, as evenly spaced as possible, are shown (K + κ = 25: steps 0, 3, 6, 8,
  11, 14, 17, 19, 22, 25). Flows shorter than ``num_columns`` steps show every step.
  """
  if num_columns < 2:
    raise ValueError(
      f"A strip needs at least 2 columns (prior draw and sample), got {num_columns}."
    )
  if total_steps + 1 <= num_columns:
    return 1, list(range(total_steps + 1))
  divisors = [s for s in range(1, total_steps + 1) if total_steps % s == 0]
  near = [s for s in divisors if num_columns - 2 <= total_steps // s + 1 <= num_columns + 1]
  if near:
    every = min(near, key=lambda s: (abs(total_steps // s + 1 - num_columns), s))
    return every, list(range(0, total_steps + 1, every))
  every = max(s for s in divisors if total_steps // s + 1 >= num_columns)
  picks = np.round(np.linspace(0, total_steps // every, num_columns)).astype(int)
  return every, [int(p) * every for p in picks]


class Snapshots(NamedTuple):
  """A strip's arrays: ``frames`` (R, C, ...) at flow ``steps`` (C,), from ``prior_draw`` to
  ``final`` (R, ...)."""

  frames: np.ndarray
  steps: list[int]
  prior_draw: np.ndarray
  final: np.ndarray


def flow_parts(run: run_lib.Run) -> tuple[sampler.SamplerParts, dict]:
  """The run's sampling pieces: its start (prior draws), potential and K + κ flow; and that flow's
  ``flows.flow`` keywords (``FlowSpec.sampling_kwargs``)."""
  parts = run.sampler_parts()
  if parts is None or parts.potential is None or parts.spec is None:
    raise ValueError(f"A --config.method={run.config.method} run has no flow from a prior.")
  return parts, parts.spec.sampling_kwargs()


def flow_snapshots(
  run: run_lib.Run, state, key: Array, num_samples: int, num_columns: int = 10
) -> Snapshots:
  """Draws ``num_samples`` particles from the prior and flows them K + κ steps, keeping snapshots.

  The key is used as the ``prior`` sampler uses it (split into prior and flow keys), so the final
  column is the sample ``run.draw(state, key, num_samples, "prior")`` draws: the strip shows how
  Algorithm 2's own samples came about.
  """
  check_count("strip rows", num_samples)
  parts, kwargs = flow_parts(run)
  save_every, steps = snapshot_plan(kwargs["num_steps"], num_columns)
  picks = np.asarray([s // save_every for s in steps])

  @jax.jit
  def snapshots(state, key):
    k_prior, k_flow = jax.random.split(key)
    x0 = parts.start(state, k_prior, num_samples)
    final, trajectory = flows.flow(
      parts.potential(state), x0, k_flow, save_every=save_every, **kwargs
    )
    return x0, final, trajectory[picks]

  x0, final, frames = jax.device_get(snapshots(state, key))
  return Snapshots(frames=np.swapaxes(frames, 0, 1), steps=steps, prior_draw=x0, final=final)


def interpolants(prior, a: Array, b: Array, num_columns: int) -> Array:
  """Rows of ``num_columns`` points from a (R, ...) to b (R, ...) at t = 0, 1/(C−1), ..., 1.

  Gaussian-type priors (with a centre μ, ``Prior.centre``): spherical interpolation around μ,

      x(t) = μ + cos(tπ/2)(a − μ) + sin(tπ/2)(b − μ).

  If a − μ and b − μ are independent N(0, Σ) draws, so is every x(t) − μ (cos² + sin² = 1): each
  interpolant is a typical prior draw, as far from μ as a and b. Linear interpolation would pull
  the middle of a row towards μ (covariance Σ/2 at t = ½), where the prior has almost no mass in
  high dimension and the flow was never trained. Interpolants are clipped to the prior's own
  clipping range, as its samples are. Other priors (uniform, empirical): linear interpolation
  x(t) = (1 − t) a + t b. Either way x(0) = a and x(1) = b exactly.

  Returns:
    (R, C, ...) starting points.
  """
  check_count("interpolation columns", num_columns, minimum=2)
  t = np.linspace(0.0, 1.0, num_columns)
  a, b = jnp.asarray(a)[:, None], jnp.asarray(b)[:, None]
  shape = (1, num_columns) + (1,) * (a.ndim - 2)
  mean = prior.centre()
  if mean is None:
    w_a, w_b = 1.0 - t, t
  else:  # sin(π/2 (1 − t)) = cos(tπ/2), but exactly 0 and 1 at the ends in float64
    w_a, w_b = np.sin(np.pi / 2 * (1.0 - t)), np.sin(np.pi / 2 * t)
  weight = lambda w: jnp.asarray(w, a.dtype).reshape(shape)
  x = weight(w_a) * a + weight(w_b) * b  # at t = 0 and 1 this is a or b exactly
  if mean is not None:
    x = x + weight(1.0 - w_a - w_b) * mean
    clip = prior.clip
    if clip is not None:
      x = jnp.clip(x, *clip)
  return x


class Interpolation(NamedTuple):
  """An interpolation figure's arrays: ``starts`` and ``flowed`` (R, C, ...); ``starts[:, 0]`` is
  ``a``, ``starts[:, -1]`` is ``b``; ``spherical`` tells which interpolation was used."""

  starts: np.ndarray
  flowed: np.ndarray
  a: np.ndarray
  b: np.ndarray
  spherical: bool


def flow_interpolation(
  run: run_lib.Run,
  state,
  key: Array,
  num_rows: int,
  num_columns: int = 10,
  *,
  a: Array | None = None,
  b: Array | None = None,
) -> Interpolation:
  """Interpolates between pairs of prior draws (``interpolants``) and flows every interpolant.

  Each particle is flowed on its own (``jax.vmap`` of the flow over particles) with its row's flow
  key, so every interpolant of a row sees the same noise realisation and the row varies only
  through its starting point. ``a`` and ``b`` (R, ...) replace the prior draws when given.
  """
  check_count("interpolation rows", num_rows)
  k_a, k_b, k_flow = jax.random.split(key, 3)
  a = state.prior.sample(k_a, num_rows) if a is None else jnp.asarray(a)
  b = state.prior.sample(k_b, num_rows) if b is None else jnp.asarray(b)
  if a.shape != b.shape or a.shape[0] != num_rows:
    raise ValueError(
      f"Interpolation ends must both have shape ({num_rows}, ...), got {a.shape} and {b.shape}."
    )
  check_count("interpolation columns", num_columns, minimum=2)
  parts, kwargs = flow_parts(run)

  @jax.jit
  def flow_rows(state, a, b, keys):
    starts = interpolants(state.prior, a, b, num_columns)
    one = lambda x0, k: flows.flow(parts.potential(state), x0[None], k, **kwargs)[0]
    # Columns share their row's key (in_axes None): the same noise for the whole row.
    return starts, jax.vmap(jax.vmap(one, in_axes=(0, None)))(starts, keys)

  starts, flowed = flow_rows(state, a, b, jax.random.split(k_flow, num_rows))
  starts, flowed, ends_a, ends_b = jax.device_get((starts, flowed, a, b))
  return Interpolation(
    starts=starts, flowed=flowed, a=ends_a, b=ends_b, spherical=state.prior.centre() is not None
  )
