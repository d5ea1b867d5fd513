"""Class-conditional FDRL (Eq. 12, 29–31): the prior flowed along f'(r_θ(x | y = n)) with
r(x | y = n) = r_θ(x) / (N p(y = n | x))^ϕ (``conditional_potential``), p(y | x) from a classifier
trained with ``--config.method=classifier`` and handed in as a ``Guide`` (``loading.load_classifier``
reads it from ``sampling.classifier_workdir``). ``conditional_sampler`` gives one compiled sampler
for every class and weight; ``build_conditional`` is the ``conditional`` entry of
``sampling.SAMPLERS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import ml_collections

from fdrl_jax import parallel, sampler
from fdrl_jax.divergences import flow_potential
from fdrl_jax.sampler import Array, PotentialFn, Sampler, SamplerParts


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


def conditional_sampler(
  parts: SamplerParts, guide: Guide | None, mesh=None, lengths: tuple[int, ...] | None = None
) -> tuple[Callable[[int, float], Sampler], int]:
  """Class-conditional FDRL guided by the classifier ``guide``: ``(for_class, num_classes)``,
  ``for_class(label, weight)`` the ``Sampler`` of class ``label`` with ϕ = ``weight``, particles
  split over ``mesh`` (default all devices; with ``lengths``, the particles after each flow
  length). Label and ϕ are traced arguments, so one compilation serves every class and weight."""
  sampler.require_estimator(parts, "conditional")
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

  split = sampler.split_sampler(
    sampler.flow_fn(parts, mesh, potential_of, lengths), mesh, lengths=lengths
  )

  def for_class(label: int, weight: float) -> Sampler:
    extra = (guide.params, jnp.asarray(label, jnp.int32), jnp.asarray(weight, jnp.float32))
    return Sampler(
      lambda state, key, n: split.sample(state, key, n, extra),
      lambda state, key, n: split.device_sample(state, key, n, extra),
      lengths=lengths,
    )

  return for_class, guide.num_classes


def build_conditional(
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
