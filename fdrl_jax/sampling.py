"""The sampling layer: every sampler is "a start + a potential → ``fdrl_jax.flow``".

A method (``fdrl_jax.methods``) offers the samplers its ``sampler.SamplerParts``: how to draw
starting particles (FDRL: the prior; a GAN: G(z)), its own potential (FDRL: f'(r_θ(x)), Eq. 9) and
flow settings, and, where it has them, its density-ratio estimator or its generator. A sampler,
picked by ``config.sampling.name`` from ``SAMPLERS``, composes those pieces:

* ``prior``: Algorithm 2 — x₀ from the start, K + κ flow steps along the method's potential (a GAN:
  G(z), no flow).
* ``refine``: DGflow-style refinement of a GAN's G(z) along its discriminator's MonoFlow
  (``config.refine``, latent or data space; ``monoflow.refine``).
* ``conditional``: class-conditional FDRL (Eq. 12, 29–31; ``fdrl_jax.conditional``): the prior
  flowed along f'(r_θ(x | y = n)) with r(x | y = n) = r_θ(x) / (N p(y = n | x))^ϕ, p(y | x) from a
  classifier trained with ``--config.method=classifier``, handed in as a ``conditional.Guide``.
* ``translate``: unpaired image-to-image translation (Sec. 6.5): given source images flowed K + κ
  steps along the method's potential (the estimator was trained with the source domain as prior).

Each builder returns a ``sampler.Sampler`` whose computation is jitted once per run with its
particles split over the devices of the run's "data" mesh (every process gets the whole result;
``sampler.split_sampler``); adding a sampler is one entry in ``SAMPLERS``. The ``sampling`` config
section is a sampling choice: like ``eval``, it may differ from the training run's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from fdrl_jax import conditional, flows, monoflow, parallel, registry
from fdrl_jax.conditional import Guide
from fdrl_jax.sampler import (
  Array,
  Sampler,
  SamplerParts,
  State,
  flow_fn,
  flow_kwargs,
  require_estimator,
  shard,
  snapshots,
  split_sampler,
)

# ----------------------------------------------------------------------------------------------
# Samplers: (config, parts) → Sampler.


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
  return flow_fn(parts, mesh, lambda state, _: potential(state), lengths)


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


def _translate(
  config: ml_collections.ConfigDict,
  parts: SamplerParts,
  mesh,
  guide: Guide | None,
  lengths: tuple[int, ...] | None,
) -> Sampler:
  require_estimator(parts, "translate")
  kwargs, sigma = flow_kwargs(parts.spec, lengths), parts.input_noise

  def sample(state, key, x):
    # Given images get the noise that training's starting particles got (source dequantisation).
    k_deq, k_flow = jax.random.split(key)
    x = x + sigma * jax.random.normal(k_deq, x.shape, x.dtype)
    return snapshots(flows.flow(parts.potential(state), x, k_flow, **kwargs), lengths)

  return split_sampler(sample, mesh, takes_inputs=True, lengths=lengths)


# name → (config, parts, mesh, guide, lengths) → Sampler; ``guide``: the classifier of
# ``conditional``; ``lengths``: None, or the flow lengths to return the samples after.
SAMPLERS: dict[
  str,
  Callable[
    [ml_collections.ConfigDict, SamplerParts, Any, Guide | None, tuple[int, ...] | None], Sampler
  ],
] = {
  "prior": _prior,
  "refine": _refine,
  "conditional": conditional.build_conditional,
  "translate": _translate,
}


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
