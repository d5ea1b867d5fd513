"""The FDRL particle flow: Euler–Maruyama steps along the gradient of a per-particle potential.

One step (Eq. 9 of FDRL, Algorithm 2)::

    x_{k+1} = x_k − η ∇ₓ Σᵢ φ(x_k)ᵢ + ν ξ_k,    ξ_k ~ N(0, I)

With φ = f'(r_θ(x)) this is the FDRL flow; with φ = −h(d(x)) it is MonoFlow (d = log p/q = −log r).
The flow knows nothing of networks or configs: it takes any pure ``potential_fn`` mapping a batch of
particles (B, ...) to (B,), so it composes with ``jax.jit``, ``jax.vmap`` and sharding like any JAX
transform. Particles move independently; the gradient of the batch *sum* is each particle's own
gradient.

Execution strategy. The step loop is a ``jax.lax.scan``: constant memory and compile time in the
number of steps, which is what GPU and TPU want. XLA:CPU, however, runs the input-gradient
convolution of a conv net several times slower inside a while-loop body than in straight-line code
(jax-ml/jax#12868: in a loop the transposed kernel is not re-laid-out for the fast convolution
path). So on CPU, when the potential's gradient contains a convolution, the scan is fully unrolled;
dense potentials (MLPs) keep the loop, which is as fast there and compiles in constant time. The
figures are in ``experiments/bench_flow.py``. ``unroll`` overrides the choice.
"""

from __future__ import annotations

import operator
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
PotentialFn = Callable[[Array], Array]


def _has_convolution(jaxpr) -> bool:
  """Whether a jaxpr, or any jaxpr nested in its equations, contains a convolution."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      return True
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr → Jaxpr
        if hasattr(sub, "eqns") and _has_convolution(sub):
          return True
  return False


def _auto_unroll(potential_fn: PotentialFn, x0: Array) -> int | bool:
  if jax.default_backend() != "cpu":
    return 1
  spec = jax.ShapeDtypeStruct(x0.shape, x0.dtype)
  jaxpr = jax.make_jaxpr(lambda x: potential_gradient(potential_fn, x))(spec)
  return _has_convolution(jaxpr.jaxpr) or 1  # True unrolls fully (even a 1-step scan).


def _check_int(name: str, value, minimum: int = 1) -> int:
  """``value`` as a Python int ≥ minimum, or a one-line ValueError."""
  try:
    number = None if isinstance(value, bool) else operator.index(value)
  except TypeError:
    number = None
  if number is None or number < minimum:
    raise ValueError(f"{name} must be a Python integer >= {minimum} (static under jit), "
                     f"got {value!r}.")
  return number


def potential_gradient(potential_fn: PotentialFn, x: Array) -> tuple[Array, Array]:
  """Per-particle potential values φ(x) (B,) and ∇ₓ Σᵢ φ(x)ᵢ (same shape as x).

  Raises:
    ValueError: if ``potential_fn`` does not return exactly one value per particle.
  """
  values, vjp = jax.vjp(potential_fn, x)
  if values.shape != x.shape[:1]:
    raise ValueError(
        f"potential_fn must return one value per particle, shape ({x.shape[0]},) for particles of "
        f"shape {tuple(x.shape)}; got shape {tuple(values.shape)}. Reduce the network output "
        "(e.g. out[:, 0] or out.reshape(-1)).")
  (grad,) = vjp(jnp.ones_like(values))
  return values, grad


def flow(
    potential_fn: PotentialFn,
    x0: Array,
    key: Array,
    *,
    num_steps: int,
    step_size: float | Array,
    noise_scale: float | Array,
    clip: tuple[float, float] | None = None,
    save_every: int | None = None,
    unroll: int | bool | None = None,
) -> Array | tuple[Array, Array]:
  """Run ``num_steps`` Euler–Maruyama steps of Eq. (9): x ← x − η∇ₓΣφ(x) + νξ.

  Args:
    potential_fn: pure function, particles (B, ...) → per-particle potential (B,). To flow with a
      network, close over its parameters *inside* your jitted function (pass the parameters as an
      argument of that function), so one compilation serves every parameter value.
    x0: initial particles, shape (B, ...).
    key: PRNG key; the noise of step k is drawn from ``fold_in(key, k)``, so a key fixes the run.
    num_steps: number of steps K (static).
    step_size: η.
    noise_scale: ν, the standard deviation of the added Gaussian noise (0 for a deterministic flow).
    clip: optional (low, high); particles are clipped to it after every step (the data range).
    save_every: if given, also return the trajectory: x0 and the particles after every
      ``save_every`` steps, shape (num_steps // save_every + 1, B, ...). Must divide num_steps.
      Without it, memory does not grow with ``num_steps``.
    unroll: scan unroll factor (True unrolls fully); default: chosen per backend and
      potential (see the module docstring). On CPU, ``unroll=1`` trades a conv net's run time for
      compile time.

  Returns:
    The particles after ``num_steps`` steps, and the trajectory if ``save_every`` is given.
  """
  num_steps = _check_int("num_steps", num_steps)
  x0 = jnp.asarray(x0)
  if x0.ndim < 1 or x0.shape[0] < 1:
    raise ValueError(f"x0 must have a leading particle axis (B, ...), got shape {x0.shape}.")
  if not jnp.issubdtype(x0.dtype, jnp.floating):
    raise ValueError(f"x0 must be a floating-point array, got dtype {x0.dtype}.")
  if unroll is None:
    unroll = _auto_unroll(potential_fn, x0)
  elif unroll is not True:
    unroll = _check_int("unroll", unroll)

  def step(carry, _):
    x, k = carry  # the step counter rides in the carry: no per-step input array of length K
    _, grad = potential_gradient(potential_fn, x)
    noise = jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)
    x = x - step_size * grad + noise_scale * noise
    if clip is not None:
      x = jnp.clip(x, clip[0], clip[1])
    return (x, k + 1), None

  start = (x0, jnp.zeros((), jnp.uint32))
  if save_every is None:
    (x, _), _ = jax.lax.scan(step, start, length=num_steps, unroll=unroll)
    return x

  save_every = _check_int("save_every", save_every)
  if num_steps % save_every:
    raise ValueError(f"save_every={save_every} must divide num_steps={num_steps}.")

  def chunk(carry, _):
    carry, _ = jax.lax.scan(step, carry, length=save_every, unroll=unroll)
    return carry, carry[0]

  (x, _), saved = jax.lax.scan(chunk, start, length=num_steps // save_every, unroll=unroll)
  return x, jnp.concatenate([x0[None], saved])


def two_stage_flow(
    potential_fn: PotentialFn,
    x0: Array,
    key: Array,
    *,
    num_steps: int,
    num_refine_steps: int,
    step_size: float | Array,
    noise_scale: float | Array,
    clip: tuple[float, float] | None = None,
    unroll: int | bool | None = None,
) -> Array:
  """Two-stage sampling of FDRL (Algorithm 2, Sec. 4.1): K bridging steps, then κ refinement steps.

  Both stages are the same flow with the same estimator; the split only matters because a model
  trained with K steps keeps improving samples for a few more (Fig. 8: best at K + κ = 120 for
  K = 100). κ = 20 for the data-dependent prior and 10 for the uniform prior in the paper.
  """
  num_steps = _check_int("num_steps", num_steps) + _check_int(
      "num_refine_steps", num_refine_steps, minimum=0)
  return flow(potential_fn, x0, key, num_steps=num_steps, step_size=step_size,
              noise_scale=noise_scale, clip=clip, unroll=unroll)
