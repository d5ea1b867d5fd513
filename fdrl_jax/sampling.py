"""The sampling layer: every sampler is "a start + a potential → ``fdrl_jax.flow``".

A method (``fdrl_jax.methods``) offers the samplers its ``SamplerParts``: how to draw starting
particles (FDRL: the prior; a GAN: G(z)), its own potential (FDRL: f'(r_θ(x)), Eq. 9) and flow
settings, and, where it has them, its density-ratio estimator or its generator. A sampler, picked
by ``config.sampling.name`` from ``SAMPLERS``, composes those pieces:

* ``prior``: Algorithm 2 — x₀ from the start, K + κ flow steps along the method's potential (a GAN:
  G(z), no flow).
* ``refine``: DGflow-style refinement of a GAN's G(z) along its discriminator's MonoFlow
  (``config.refine``, latent or data space; ``monoflow.refine``).
* ``conditional``: class-conditional FDRL (Eq. 12, 29–31): the prior flowed along
  f'(r_θ(x | y = n)) with r(x | y = n) = r_θ(x) / (N p(y = n | x))^ϕ, p(y | x) from a classifier
  trained with ``--config.method=classifier`` (``conditional_potential``), handed in as a
  ``Guide`` (``loading.load_classifier`` reads it from ``sampling.classifier_workdir``).
* ``translate``: unpaired image-to-image translation (Sec. 6.5): given source images flowed K + κ
  steps along the method's potential (the estimator was trained with the source domain as prior).

Each builder returns a ``Sampler`` whose computation is jitted once per run with its particles
split over the devices of the run's "data" mesh (every process gets the whole result); adding a
sampler is one entry in ``SAMPLERS``. The ``sampling`` config section is a sampling choice: like ``eval``, it may
differ from the training run's.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from fdrl_jax import flows, monoflow, parallel, registry
from fdrl_jax.divergences import flow_potential
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


class Guide(NamedTuple):
  """The classifier that guides conditional sampling.

  Attributes:
    log_probs: params → (x (B, ...) ↦ log p(y | x), (B, N)).
    params: its parameters, a jit argument of the sampler (not a compiled-in constant).
    num_classes: N.
  """

  log_probs: Callable[[Any], Callable[[Array], Array]]
  params: Any
  num_classes: int


# Where conditional sampling finds its classifier.
NEEDS_CLASSIFIER = (
  "--config.sampling.name=conditional needs "
  "--config.sampling.classifier_workdir=DIR, a run of --config.method=classifier "
  "(e.g. configs/digits_classifier.py)."
)


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


# ----------------------------------------------------------------------------------------------
# Pure potentials.


def conditional_potential(
  output_fn: PotentialFn,
  log_prob_fn: Callable[[Array], Array],
  *,
  label: int,
  weight: float,
  output: str,
  divergence: str,
) -> PotentialFn:
  """f'(r(x | y = n)) of Eq. 12 / 29–31, for any divergence and output parameterisation.

  A classifier is a density ratio, N p(y = n | x) = p(x | y = n) / p(x) for N balanced classes, so
  r(x | y = n) = q(x) / p(x | y = n) = r(x) / (N p(y = n | x)). With the paper's weight ϕ on the
  classifier, log r(x | y) = log r(x) − ϕ (log p(y = n | x) + log N). It is formed in the
  estimator's own parameterisation — log r − ϕ(…) for a log-ratio output, r · e^{−ϕ(…)} for a ratio
  output (no log of an LSIF output, which may be ≤ 0) — and passed to the divergence's stable f'.
  With ϕ = 0 this is the unconditional potential. For LR-KL (f' = log r + 1) the flow moves by
  −η ∇(log r − ϕ log p(y | x)): the reference notebook's step with its η, which this package keeps
  (the paper prints 2η in Eq. 30–31; with ϕ = 0 its flow would then run at twice the step size the
  estimator was trained with, which Algorithm 2 does not do).

  Args:
    output_fn: x (B, ...) ↦ the estimator's output (B,).
    log_prob_fn: x (B, ...) ↦ the classifier's log-probabilities (B, N).
    label: the requested class n.
    weight: ϕ (paper: 0.1).
    output: "ratio" or "log_ratio".
    divergence: a key of ``divergences.DIVERGENCES``.
  """
  stable = flow_potential(divergence, output)

  def potential(x: Array) -> Array:
    log_probs = log_prob_fn(x)
    shift = weight * (log_probs[:, label] + math.log(log_probs.shape[-1]))
    out = output_fn(x)
    return stable(out * jnp.exp(-shift) if output == "ratio" else out - shift)

  return potential


# ----------------------------------------------------------------------------------------------
# Samplers: (config, parts) → Sampler.


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
  to the devices and gather the result to every process (``Sampler``). ``extra`` arguments are traced, not compiled in. With
  ``lengths``, ``fn`` returns (len(lengths), n, ...): the particle axis is the second."""
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


def _flow_kwargs(spec: FlowSpec | None, lengths: tuple[int, ...] | None) -> dict[str, Any]:
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


def _snapshots(flowed, lengths: tuple[int, ...] | None) -> Array:
  """A flow's output: the final particles, or (with ``lengths``) the snapshots at each length."""
  return flowed if lengths is None else flowed[1]


def _flow_fn(
  parts: SamplerParts,
  mesh,
  potential_of: Callable[[State, Any], PotentialFn],
  lengths: tuple[int, ...] | None = None,
) -> Callable[..., Array]:
  """``fn(state, key, n, extra)``: x₀ = parts.start, split over the devices (mesh None: left
  where it is), then K + κ steps along ``potential_of(state, extra)`` (with ``lengths``: the
  particles after each length, stacked). ``extra`` (e.g. a classifier's parameters) is a jit
  argument, not a constant baked into the compiled sampler."""
  kwargs = _flow_kwargs(parts.spec, lengths)

  def fn(state, key, n, extra=None):
    k_start, k_flow = jax.random.split(key)
    x0 = parts.start(state, k_start, n)
    x0 = x0 if mesh is None else shard(x0, mesh)
    return _snapshots(flows.flow(potential_of(state, extra), x0, k_flow, **kwargs), lengths)

  return fn


def prior_sample_fn(
  parts: SamplerParts, mesh=None, lengths: tuple[int, ...] | None = None
) -> Callable[[State, Array, int], Array]:
  """The pure ``fn(state, key, n)`` of the ``prior`` sampler: K + κ flow steps from a prior draw
  (or the particles after each of ``lengths``), or a generator's G(z) as is; split over
  ``mesh``'s devices, or (None) traced as plain code for a caller's own ``jax.jit``
  (``fdrl_jax.load``)."""
  if parts.potential is None:  # a generator: its samples are the start itself
    if lengths is not None:
      raise ValueError(
        "A generator's samples do not flow: flow lengths need --config.sampling.name=refine."
      )
    place = (lambda x: x) if mesh is None else (lambda x: shard(x, mesh))
    return lambda state, key, n: place(parts.start(state, jax.random.split(key)[0], n))
  potential = parts.potential
  return _flow_fn(parts, mesh, lambda state, _: potential(state), lengths)


def _prior(
  config: ml_collections.ConfigDict,
  parts: SamplerParts,
  mesh,
  guide: Guide | None,
  lengths: tuple[int, ...] | None,
) -> Sampler:
  return split_sampler(prior_sample_fn(parts, mesh, lengths), mesh, lengths=lengths)


def _refine(
  config: ml_collections.ConfigDict,
  parts: SamplerParts,
  mesh,
  guide: Guide | None,
  lengths: tuple[int, ...] | None,
) -> Sampler:
  """DGflow's refinement of G(z); with ``lengths`` (refinement step counts, 0 = G(z) before
  refinement) the samples after each, from one refinement flow."""
  g = parts.generator
  if g is None:
    raise ValueError(
      "--config.sampling.name=refine refines a generator's samples "
      "(--config.method=gan); FDRL's own refinement is flow.num_refine_steps."
    )
  r = config.refine
  hmap = monoflow.get_map(
    r.h, setting="--config.refine.h", shift=config.gan.shift, scale=config.gan.scale
  )  # the GAN's h
  monoflow.check_refine_space(r.space)

  if lengths is not None and (not lengths or min(lengths) < 0):
    raise ValueError(f"Refinement lengths must be step counts >= 0, got {lengths}.")
  save_at = None if lengths is None else tuple(sorted(lengths))
  num_steps = r.num_steps if lengths is None else max(lengths)

  def sample(state, key, n):
    k_z, k_flow = jax.random.split(key)
    z = shard(jax.random.normal(k_z, (n, g.latent_dim)), mesh)
    if num_steps == 0:
      x = g.generate(state)(z)
      return x if save_at is None else x[None]
    return monoflow.refine(
      g.generate(state),
      g.logit(state),
      hmap,
      z,
      k_flow,
      space=r.space,
      num_steps=num_steps,
      step_size=r.step_size,
      noise_scale=r.noise_scale,
      clip=parts.spec.clip if parts.spec else None,
      save_at=save_at,
    )

  return split_sampler(sample, mesh, lengths=save_at)


def _require_estimator(parts: SamplerParts, name: str) -> None:
  if parts.estimator is None or parts.spec is None:
    raise ValueError(
      f"--config.sampling.name={name} needs an FDRL density-ratio estimator (--config.method=fdrl)."
    )


def conditional_sampler(
  parts: SamplerParts, guide: Guide | None, mesh=None, lengths: tuple[int, ...] | None = None
) -> tuple[Callable[[int, float], Sampler], int]:
  """Class-conditional FDRL guided by the classifier ``guide``: ``(for_class, num_classes)``,
  ``for_class(label, weight)`` the ``Sampler`` of class ``label`` with ϕ = ``weight``, particles
  split over ``mesh`` (default all devices; with ``lengths``, the particles after each flow
  length). Label and ϕ are traced arguments, so one compilation serves every class and weight."""
  _require_estimator(parts, "conditional")
  if guide is None:
    raise ValueError(NEEDS_CLASSIFIER)
  mesh = parallel.data_mesh() if mesh is None else mesh
  est, log_probs = parts.estimator, guide.log_probs

  def potential_of(state, extra):
    classifier_params, label, weight = extra
    return conditional_potential(
      est.apply(state),
      log_probs(classifier_params),
      label=label,
      weight=weight,
      output=est.output,
      divergence=est.divergence,
    )

  split = split_sampler(_flow_fn(parts, mesh, potential_of, lengths), mesh, lengths=lengths)

  def for_class(label: int, weight: float) -> Sampler:
    extra = (guide.params, jnp.asarray(label, jnp.int32), jnp.asarray(weight, jnp.float32))
    return Sampler(
      lambda state, key, n: split.sample(state, key, n, extra),
      lambda state, key, n: split.device_sample(state, key, n, extra),
      lengths=lengths,
    )

  return for_class, guide.num_classes


def _conditional(
  config: ml_collections.ConfigDict,
  parts: SamplerParts,
  mesh,
  guide: Guide | None,
  lengths: tuple[int, ...] | None,
) -> Sampler:
  for_class, num_classes = conditional_sampler(parts, guide, mesh, lengths)
  label, weight = config.sampling.label, config.sampling.classifier_weight
  if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
    raise ValueError(
      f"--config.sampling.label={label!r} is not a class of the classifier in "
      f"{config.sampling.classifier_workdir}: choose 0 to {num_classes - 1}."
    )
  return for_class(label, weight)


def _translate(
  config: ml_collections.ConfigDict,
  parts: SamplerParts,
  mesh,
  guide: Guide | None,
  lengths: tuple[int, ...] | None,
) -> Sampler:
  _require_estimator(parts, "translate")
  kwargs, sigma = _flow_kwargs(parts.spec, lengths), parts.input_noise

  def sample(state, key, x):
    # Given images get the noise that training's starting particles got (source dequantisation).
    k_deq, k_flow = jax.random.split(key)
    x = x + sigma * jax.random.normal(k_deq, x.shape, x.dtype)
    return _snapshots(flows.flow(parts.potential(state), x, k_flow, **kwargs), lengths)

  return split_sampler(sample, mesh, takes_inputs=True, lengths=lengths)


# name → (config, parts, mesh, guide, lengths) → Sampler; ``guide``: the classifier of
# ``conditional``; ``lengths``: None, or the flow lengths to return the samples after.
SAMPLERS: dict[
  str,
  Callable[
    [ml_collections.ConfigDict, SamplerParts, Any, Guide | None, tuple[int, ...] | None], Sampler
  ],
] = {"prior": _prior, "refine": _refine, "conditional": _conditional, "translate": _translate}


def build_sampler(
  config: ml_collections.ConfigDict,
  parts: SamplerParts | None,
  name: str | None = None,
  mesh=None,
  guide: Guide | None = None,
  lengths: tuple[int, ...] | None = None,
  samplers: Mapping[str, Callable[..., Sampler]] | None = None,
) -> Sampler:
  """The sampler ``name`` (default ``config.sampling.name``) composed from a method's parts, its
  particles split over ``mesh`` (default: a "data" mesh of all devices); ``guide`` is the
  classifier of the ``conditional`` sampler. With ``lengths`` (flow step counts; for ``refine``
  refinement steps, 0 = before refinement) the sampler flows once to the longest and returns
  the samples after each length, shape (len(lengths), n, ...) in increasing order: each equals
  the sampler of that one length with the same key (``flows.flow``'s ``save_at``). ``samplers``: a
  method's own builders (``methods.Method.samplers``), found beside ``SAMPLERS``."""
  name = name or config.sampling.name
  builder = registry.lookup({**SAMPLERS, **(samplers or {})}, name, "--config.sampling.name")
  if parts is None:
    raise ValueError(f"A --config.method={config.method} run does not sample.")
  lengths = None if lengths is None else tuple(sorted(set(lengths)))
  return builder(config, parts, parallel.data_mesh() if mesh is None else mesh, guide, lengths)


# ----------------------------------------------------------------------------------------------
# Drawing many samples.


def draw_batches(
  sampler: Sampler, state, key: Array, num_or_inputs: int | np.ndarray, batch_size: int
) -> Iterator[np.ndarray]:
  """``sampler`` in batches of ``batch_size``, one host array per batch: ``num`` samples, or the
  given inputs moved; batch i uses ``fold_in(key, i)``. A progress bar on a terminal (process 0).
  Streaming keeps a paper-size evaluation (50 000 images) out of host memory. A sampler with
  ``lengths`` yields (len(lengths), n, ...) batches: the batch of every length at once."""
  inputs = None if isinstance(num_or_inputs, (int, np.integer)) else np.asarray(num_or_inputs)
  total = len(inputs) if inputs is not None else int(num_or_inputs)
  if total < 1:
    raise ValueError(f"The number of samples must be positive, got {total}.")
  quiet = not sys.stderr.isatty() or not parallel.is_writer()
  with tqdm(total=total, disable=quiet, unit="sample") as bar:
    for i, start in enumerate(range(0, total, batch_size)):
      n = min(batch_size, total - start)
      arg = n if inputs is None else inputs[start : start + n]
      yield sampler.sample(state, jax.random.fold_in(key, i), arg)
      bar.update(n)


def draw(
  sampler: Sampler, state, key: Array, num_or_inputs: int | np.ndarray, batch_size: int
) -> np.ndarray:
  """All of ``draw_batches`` in one array."""
  return np.concatenate(list(draw_batches(sampler, state, key, num_or_inputs, batch_size)))
