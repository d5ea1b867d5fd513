"""The FDRL particle flow: Euler–Maruyama steps along the gradient of a per-particle potential.

One step (Eq. 9 of FDRL, Algorithm 2)::

    x_{k+1} = x_k − η ∇ₓ Σᵢ φ(x_k)ᵢ + ν ξ_k,    ξ_k ~ N(0, I)

With φ = f'(r_θ(x)) this is the FDRL flow; with φ = −h(d(x)) it is MonoFlow (d = log p/q = −log r).
The flow knows nothing of networks or configs: it takes any pure ``potential_fn`` mapping a batch of
particles (B, ...) to (B,), so it composes with ``jax.jit``, ``jax.vmap`` and sharding like any JAX
transform. Particles move independently; the gradient of the batch *sum* is each particle's own
gradient.

Execution strategy. The step loop is a ``jax.lax.scan``: constant memory and compile time in the
number of steps. XLA:CPU, however, runs the input gradient of ``jax.lax.conv_general_dilated``
several times slower inside a while-loop body than in straight-line code (jax-ml/jax#12868: in a
loop the reversed kernel is not re-laid-out for the fast convolution path). The estimators of this
package use ``fdrl_jax.conv.conv_general_dilated``, whose gradient avoids that, so their flows stay
a fast loop. For any other potential whose gradient has that slow pattern, on CPU, flows of at most
``CPU_UNROLL_MAX_STEPS`` steps are traced as straight-line code instead (faster per step; longer
ones keep the loop, since compiling a long unrolled conv flow takes minutes). GPU and TPU always
run the loop. The figures are in ``experiments/README.md``. ``unroll`` overrides the choice.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct
from jax.extend import core as jax_core

Array = jax.Array
PotentialFn = Callable[[Array], Array]


def _has_slow_loop_convolution(jaxpr) -> bool:
  """Whether a jaxpr (or one nested in it) convolves with a reversed kernel: the input gradient
  of ``jax.lax.conv_general_dilated``, which XLA:CPU runs slowly inside loop bodies."""
  reversed_vars = set()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "rev":
      reversed_vars.update(eqn.outvars)
    elif name == "conv_general_dilated":
      kernel = eqn.invars[1]
      if isinstance(kernel, jax_core.Var) and kernel in reversed_vars:
        return True
    if any(_has_slow_loop_convolution(sub) for sub in jax_core.jaxprs_in_params(eqn.params)):
      return True
  return False


# Longest conv flow that is unrolled on CPU: its compile time stays within seconds.
CPU_UNROLL_MAX_STEPS = 20


def auto_unroll(potential_fn: Callable[..., Any], x0: Array, num_steps: int) -> int | bool:
  """The ``unroll`` that ``flow`` picks by default (see the module docstring): ``True``
  (straight-line code) for a CPU flow of at most ``CPU_UNROLL_MAX_STEPS`` steps whose potential's
  gradient convolves with a reversed kernel, else 1 (a plain scan).

  Args:
    potential_fn: particles (B, ...) → values (B,) (a stateful potential with its state bound).
    x0: the starting particles; only their shape and dtype are used.
    num_steps: the number of flow steps.
  """
  if jax.default_backend() != "cpu" or num_steps > CPU_UNROLL_MAX_STEPS:
    return 1
  spec = jax.ShapeDtypeStruct(x0.shape, x0.dtype)
  jaxpr = jax.make_jaxpr(lambda x: potential_gradient(potential_fn, x))(spec)
  return _has_slow_loop_convolution(jaxpr.jaxpr) or 1


def _check_int(name: str, value, minimum: int = 1) -> int:
  """``value`` as a Python int ≥ minimum, or a one-line ValueError."""
  try:
    number = None if isinstance(value, bool) else operator.index(value)
  except TypeError:
    number = None
  if number is None or number < minimum:
    raise ValueError(
      f"{name} must be a Python integer >= {minimum} (static under jit), got {value!r}."
    )
  return number


def potential_gradient(potential_fn: Callable[..., Any], x: Array, *, has_aux: bool = False):
  """Per-particle potential values φ(x) (B,) and ∇ₓ Σᵢ φ(x)ᵢ (same shape as x); with ``has_aux``,
  ``potential_fn`` returns (values, aux) and aux (not differentiated) comes third.

  Raises:
    ValueError: if ``potential_fn`` does not return exactly one value per particle.
  """
  if has_aux:
    values, vjp, *aux = jax.vjp(potential_fn, x, has_aux=True)
  else:
    (values, vjp), aux = jax.vjp(potential_fn, x), []
  if values.shape != x.shape[:1]:
    raise ValueError(
      f"potential_fn must return one value per particle, shape ({x.shape[0]},) for particles of "
      f"shape {tuple(x.shape)}; got shape {tuple(values.shape)}. Reduce the network output "
      "(e.g. out[:, 0] or out.reshape(-1))."
    )
  (grad,) = vjp(jnp.ones_like(values))
  return (values, grad, *aux)


def _check_save_at(save_at, num_steps: int) -> tuple[int, ...]:
  """``save_at`` as a tuple of increasing Python ints in [0, num_steps], or a one-line error."""
  steps = tuple(_check_int("save_at", s, minimum=0) for s in save_at)
  if not steps or any(b <= a for a, b in itertools.pairwise(steps)) or steps[-1] > num_steps:
    raise ValueError(
      f"save_at={tuple(save_at)} must be increasing step counts from 0 to num_steps={num_steps}."
    )
  return steps


def flow(
  potential_fn: Callable[..., Any],
  x0: Array,
  key: Array,
  *,
  num_steps: int,
  step_size: float | Array,
  noise_scale: float | Array,
  clip: tuple[float, float] | None = None,
  clip_every_step: bool = True,
  save_every: int | None = None,
  save_at: tuple[int, ...] | None = None,
  unroll: int | bool | None = None,
  state=None,
):
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
    clip_every_step: False clips only the particles returned (and saved), not those the flow
      moves on: the reference implementation's clamp of its final samples.
    save_every: if given, also return the trajectory: x0 and the particles after every
      ``save_every`` steps, shape (num_steps // save_every + 1, B, ...). Must divide num_steps.
      Without it, memory does not grow with ``num_steps``.
    save_at: if given (instead of ``save_every``), also return the particles after each of these
      step counts (static, increasing, 0 = x0, at most ``num_steps``), shape (len(save_at), B,
      ...): the snapshot after l steps is the output of a flow of l steps with the same key (the
      same noise schedule), so one flow to the longest length serves every shorter one.
    unroll: scan unroll factor, or True for straight-line code; default: chosen per backend,
      potential and length (see the module docstring).
    state: optional pytree for a potential with internal state that every call advances (the
      reference's spectral-norm power iteration in each forward pass): ``potential_fn`` is then
      ``(x, state) -> (values, new_state)``, step k sees the state after k calls, and the final
      state is returned last. It is not differentiated.

  Returns:
    The particles after ``num_steps`` steps, then the snapshots if ``save_every`` or ``save_at``
    is given, then the final state if ``state`` is given (a tuple when there is more than the
    particles).
  """
  num_steps = _check_int("num_steps", num_steps)
  x0 = jnp.asarray(x0)
  if x0.ndim < 1 or x0.shape[0] < 1:
    raise ValueError(f"x0 must have a leading particle axis (B, ...), got shape {x0.shape}.")
  if not jnp.issubdtype(x0.dtype, jnp.floating):
    raise ValueError(f"x0 must be a floating-point array, got dtype {x0.dtype}.")
  if save_every is not None:
    if save_at is not None:
      raise ValueError("Give flow save_every or save_at, not both.")
    save_every = _check_int("save_every", save_every)
    if num_steps % save_every:
      raise ValueError(f"save_every={save_every} must divide num_steps={num_steps}.")
    save_at = tuple(range(0, num_steps + 1, save_every))
  if save_at is not None:
    save_at = _check_save_at(save_at, num_steps)
  stateful = state is not None
  if unroll is None:
    unroll = auto_unroll(
      (lambda x: potential_fn(x, state)[0]) if stateful else potential_fn, x0, num_steps
    )
  elif unroll is not True:
    unroll = _check_int("unroll", unroll)

  # A literal zero noise scale skips drawing the noise (MonoFlow and the toy flows are deterministic).
  deterministic = isinstance(noise_scale, (int, float)) and noise_scale == 0

  def step(x, k, s):
    if stateful:
      _, grad, s = potential_gradient(lambda x, s=s: potential_fn(x, s), x, has_aux=True)
    else:
      _, grad = potential_gradient(potential_fn, x)
    x = x - step_size * grad
    if not deterministic:
      x = x + noise_scale * jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)
    if clip is not None and clip_every_step:
      x = jnp.clip(x, clip[0], clip[1])
    return x, s

  def out(x):
    return x if clip is None or clip_every_step else jnp.clip(x, clip[0], clip[1])

  def result(x, s, *snapshots):
    parts = (out(x), *(out(t) for t in snapshots), *((s,) if stateful else ()))
    return parts if len(parts) > 1 else parts[0]

  if unroll is True:  # straight-line code (lax.scan turns a 1-step full unroll into a loop)
    x, s, saved = x0, state, [x0] if save_at and save_at[0] == 0 else []
    for k in range(num_steps):
      x, s = step(x, jnp.uint32(k), s)
      if save_at and k + 1 in save_at:
        saved.append(x)
    return result(x, s, *((jnp.stack(saved),) if save_at else ()))

  # The step counter rides in the carry: no per-step input array of length K.
  if save_at is None:

    def body(carry, _):
      x, k, s = carry
      x, s = step(x, k, s)
      return (x, k + 1, s), None

    x, _, s = jax.lax.scan(
      body, (x0, jnp.zeros((), jnp.uint32), state), length=num_steps, unroll=unroll
    )[0]
    return result(x, s)

  # Snapshots go to their slot of a buffer carried along (slot len(save_at): steps not saved),
  # written in place after each step: one scan, whatever the number of lengths.
  slots = [len(save_at)] * (num_steps + 1)
  for i, l in enumerate(save_at):
    slots[l] = i
  slot_of = jnp.asarray(slots, jnp.int32)
  buffer = jnp.zeros((len(save_at) + 1, *x0.shape), x0.dtype)
  buffer = jax.lax.dynamic_update_index_in_dim(buffer, x0, slot_of[0], 0)

  def save_body(carry, _):
    x, k, s, buf = carry
    x, s = step(x, k, s)
    k = k + 1
    buf = jax.lax.dynamic_update_index_in_dim(buf, x, slot_of[k], 0)
    return (x, k, s, buf), None

  x, _, s, buffer = jax.lax.scan(
    save_body, (x0, jnp.zeros((), jnp.uint32), state, buffer), length=num_steps, unroll=unroll
  )[0]
  return result(x, s, buffer[: len(save_at)])


class FlowSpec(struct.PyTreeNode):
  """A flow's static hyper-parameters: K, κ, η, ν and clipping (a hashable jit constant)."""

  num_steps: int = struct.field(pytree_node=False)
  num_refine_steps: int = struct.field(pytree_node=False)
  step_size: float = struct.field(pytree_node=False)
  noise_scale: float = struct.field(pytree_node=False)
  clip: tuple[float, float] | None = struct.field(pytree_node=False)
  clip_every_step: bool = struct.field(pytree_node=False, default=True)

  def sampling_kwargs(self) -> dict:
    """Algorithm 2's K + κ steps with this η, ν and clipping, as ``flow`` takes them."""
    return {
      "num_steps": self.num_steps + self.num_refine_steps,
      "step_size": self.step_size,
      "noise_scale": self.noise_scale,
      "clip": self.clip,
      "clip_every_step": self.clip_every_step,
    }

  def training_clip(self) -> tuple[float, float] | None:
    """The clipping of Algorithm 1's training flow: the range after every step, or none when
    only final samples are clipped (the reference never clips its training particles)."""
    return self.clip if self.clip_every_step else None


# The range of the data (images in [-1, 1]) that a clipped flow keeps its particles in.
DATA_RANGE = (-1.0, 1.0)


def build_flow_spec(config: ml_collections.ConfigDict) -> FlowSpec:
  """The run's flow (``config.flow``): K, κ, η, ν, and clipping to the data range."""
  f = config.flow
  return FlowSpec(
    num_steps=f.num_steps,
    num_refine_steps=f.num_refine_steps,
    step_size=f.step_size,
    noise_scale=f.noise_scale,
    clip=DATA_RANGE if f.clip else None,
    clip_every_step=f.clip_every_step,
  )
