"""A sampler and its pieces: what a method offers the samplers (``SamplerParts``, with its
``Estimator`` or ``Generator``), the built ``Sampler``, and the one way one is made from a pure
function, its particles split over the devices of the run's "data" mesh (``split_sampler``), with
the flow of a start along a potential (``flow_fn``) that most samplers share.

The samplers themselves, picked by ``config.sampling.name``, are ``fdrl_jax.sampling.SAMPLERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from fdrl_jax import flows, parallel
from fdrl_jax.flows import FlowSpec

Array = jax.Array
PotentialFn = Callable[[Array], Array]
State = Any


class Estimator(NamedTuple):
  """A method's density-ratio estimator, for samplers that compose its output with more terms.

  Attributes:
    apply: state → (x ↦ the network's output (B,)), with the parameters used for sampling (EMA).
    output: "ratio" (the network outputs r = q/p) or "log_ratio" (log r).
    divergence: the f-divergence of the method's flow (``divergences.DIVERGENCES``).
  """

  apply: Callable[[State], PotentialFn]
  output: str
  divergence: str


class Generator(NamedTuple):
  """A method's generator x = G(z), z ~ N(0, I), and its discriminator's logit d = log p/q."""

  latent_dim: int
  generate: Callable[[State], Callable[[Array], Array]]
  logit: Callable[[State], PotentialFn]


class SamplerParts(NamedTuple):
  """What a method offers the samplers.

  Attributes:
    start: (state, key, n) → n starting particles (a prior draw, or G(z)).
    potential: state → the method's per-particle potential φ, or None when it does not flow.
    spec: the method's sampling flow (K + κ steps, η, ν, clipping), or None.
    event_shape: the shape of one sample.
    input_noise: σ of the Gaussian noise the method's training adds to its starting particles
      (translation: the source images' dequantisation), added to given inputs too.
    estimator: the density-ratio estimator, if the method has one.
    generator: the generator, if the method has one.
  """

  start: Callable[[State, Array, int], Array]
  potential: Callable[[State], PotentialFn] | None
  spec: FlowSpec | None
  event_shape: tuple[int, ...]
  input_noise: float = 0.0
  estimator: Estimator | None = None
  generator: Generator | None = None


class Sampler(NamedTuple):
  """A built sampler, its particles split over the devices of the run's "data" mesh.

  Attributes:
    sample: ``sample(state, key, n)`` draws n samples or, when ``takes_inputs``,
      ``sample(state, key, x)`` moves the given particles x (N, ...): a NumPy array of exactly
      what was asked for, the same on every process. n (or N) is padded to a multiple of the
      device count for the device computation and the padding dropped.
    device_sample: the jitted computation behind it, ``(state, key, n | x)`` with n (or N) a
      multiple of the device count; its output is split over "data" (each device holds its
      n / devices particles).
    takes_inputs: whether the sampler moves given particles rather than drawing a start.
    lengths: None, or the flow lengths (step counts) of a sampler that returns the particles
      after each of them from one flow: samples of shape (len(lengths), n, ...), the particle
      axis second (``build_sampler``'s ``lengths``).
  """

  sample: Callable[..., np.ndarray]
  device_sample: Callable[..., Array]
  takes_inputs: bool = False
  lengths: tuple[int, ...] | None = None


def split_sampler(
  fn: Callable[..., Array],
  mesh,
  *,
  takes_inputs: bool = False,
  lengths: tuple[int, ...] | None = None,
) -> Sampler:
  """A ``Sampler`` from a pure ``fn``: the one way a sampler is made (a method's own samplers,
  ``methods.Method.samplers``, use it too). Jits ``fn(state, key, n | x, *extra)`` with its
  particles split over "data" (``fn`` constrains its start with ``shard``) and wraps it to pad n
  to the devices and gather the result to every process (``Sampler``). ``extra`` arguments are
  traced, not compiled in. With ``lengths``, ``fn`` returns (len(lengths), n, ...): the particle
  axis is the second."""
  n_dev = mesh.devices.size
  sharding = (
    parallel.particles(mesh)
    if lengths is None
    else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
  )
  jitted = jax.jit(fn, static_argnums=() if takes_inputs else 2, out_shardings=sharding)

  def sample(state, key, arg, *extra):
    if takes_inputs:
      x = np.asarray(arg)
      n = len(x)
      padded = np.concatenate([x, np.repeat(x[-1:], -n % n_dev, axis=0)])
      out = jitted(state, key, parallel.put_particles(padded, mesh), *extra)
    else:
      n = int(arg)
      out = jitted(state, key, n + (-n % n_dev), *extra)
    out = parallel.to_host(out)
    return out[:n] if lengths is None else out[:, :n]

  return Sampler(sample, jitted, takes_inputs, lengths)


def shard(x: Array, mesh) -> Array:
  """Particles inside a sampler's jit, split over "data": each device computes its own."""
  return jax.lax.with_sharding_constraint(x, parallel.particles(mesh))


def flow_kwargs(spec: FlowSpec | None, lengths: tuple[int, ...] | None) -> dict[str, Any]:
  """``flows.flow``'s settings: K + κ steps, or one flow to the longest of ``lengths`` (step
  counts ≥ 1) with the particles saved after each."""
  if spec is None:
    raise ValueError("This run's samples do not flow (its method gives no flow settings).")
  kwargs = spec.sampling_kwargs()
  if lengths is None:
    return kwargs
  if not lengths or min(lengths) < 1:
    raise ValueError(f"Flow lengths must be step counts >= 1, got {lengths}.")
  return {**kwargs, "num_steps": max(lengths), "save_at": tuple(sorted(lengths))}


def snapshots(flowed, lengths: tuple[int, ...] | None) -> Array:
  """A flow's output: the final particles, or (with ``lengths``) the snapshots at each length."""
  return flowed if lengths is None else flowed[1]


def flow_fn(
  parts: SamplerParts,
  mesh,
  potential_of: Callable[[State, Any], PotentialFn],
  lengths: tuple[int, ...] | None = None,
) -> Callable[..., Array]:
  """``fn(state, key, n, extra)``: x₀ = parts.start, split over the devices (mesh None: left
  where it is), then K + κ steps along ``potential_of(state, extra)`` (with ``lengths``: the
  particles after each length, stacked). ``extra`` (e.g. a classifier's parameters) is a jit
  argument, not a constant baked into the compiled sampler."""
  kwargs = flow_kwargs(parts.spec, lengths)

  def fn(state, key, n, extra=None):
    k_start, k_flow = jax.random.split(key)
    x0 = parts.start(state, k_start, n)
    x0 = x0 if mesh is None else shard(x0, mesh)
    return snapshots(flows.flow(potential_of(state, extra), x0, k_flow, **kwargs), lengths)

  return fn


def require_estimator(parts: SamplerParts, name: str) -> None:
  if parts.estimator is None or parts.spec is None:
    raise ValueError(
      f"--config.sampling.name={name} needs an FDRL density-ratio estimator (--config.method=fdrl)."
    )
