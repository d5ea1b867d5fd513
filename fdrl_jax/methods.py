"""Training methods as records of pure functions, keyed by ``config.method``.

The training loop (``run_lib``) knows no method: it calls a ``Method``'s hooks. Each hook is a
builder of that method's module, reading the config and returning data, a state or a pure function:

* ``fdrl``: FDRL (Algorithm 1; ``fdrl_jax.fdrl``) — a density-ratio estimator trained on its own
  flowed prior samples.
* ``gan``: a GAN trained in the MonoFlow view (``fdrl_jax.gan``).
* ``classifier``: an image classifier, adversarially robust by PGD-L2 training when
  ``classifier.epsilon`` > 0 (``fdrl_jax.classifier``), to guide class-conditional sampling.

Adding a method is one record here; no method runs another's builders.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import ml_collections

from fdrl_jax import classifier, datasets, evaluate, fdrl, gan, metric_table, registry


class Method(NamedTuple):
  """A training method's hooks.

  Attributes:
    dataset: config → its training data (a ``bundled.Dataset``).
    init_state: (config, dataset, key, *, fit) → a fresh state; ``fit=False`` a same-shaped
      template (nothing fitted) to restore a checkpoint into.
    train_step: (config, dataset, particle_sharding) → the pure ``step(state, batch, key) →
      (state, metrics)``; the loop jits it data-parallel (``parallel.jit_train_step``).
    batch: (config, dataset, step, rows) → the rows ``rows`` (a slice: this process's) of the
      global host batch of training step ``step``.
    sampler_parts: (config, dataset) → what the samplers of ``fdrl_jax.sampling`` compose, or
      None for a method that does not sample.
    check_eval: config → None, a one-line ValueError for an evaluation that cannot run (checked
      before anything is restored).
    evaluate: (config, run, state, workdir) → the results ``--mode=eval`` writes.
    sections: the config sections only this method reads (a run of another method is not tied to
      them on its workdir).
    samplers: the method's own samplers, name → ``(config, parts, mesh, guide) → Sampler``, found
      by ``config.sampling.name`` beside ``sampling.SAMPLERS`` (a sampler that is not "start +
      potential → flow" lives with its method).
  """

  dataset: Callable[[ml_collections.ConfigDict], Any]
  init_state: Callable[..., Any]
  train_step: Callable[..., Callable]
  batch: Callable[[ml_collections.ConfigDict, Any, int, slice], Any]
  sampler_parts: Callable[..., Any] | None
  check_eval: Callable[[ml_collections.ConfigDict], None]
  evaluate: Callable[..., dict]
  sections: tuple[str, ...] = ()
  samplers: Mapping[str, Callable[..., Any]] = types.MappingProxyType({})


METHODS: dict[str, Method] = {
  "fdrl": Method(
    dataset=datasets.build_dataset,
    init_state=fdrl.init_state,
    train_step=fdrl.build_train_step,
    batch=datasets.image_batch,
    sampler_parts=fdrl.sampler_parts,
    check_eval=metric_table.check_metric,
    evaluate=evaluate.evaluate_samples,
  ),
  "gan": Method(
    dataset=datasets.build_dataset,
    init_state=gan.init_state,
    train_step=gan.build_train_step,
    batch=datasets.image_batch,
    sampler_parts=gan.sampler_parts,
    check_eval=metric_table.check_metric,
    evaluate=evaluate.evaluate_samples,
    sections=("gan", "generator"),
  ),
  "classifier": Method(
    dataset=datasets.labelled_dataset,
    init_state=classifier.init_state,
    train_step=classifier.build_train_step,
    batch=datasets.labelled_batch,
    sampler_parts=None,
    check_eval=lambda config: None,
    evaluate=classifier.evaluate_accuracy,
    sections=("classifier",),
  ),
}


def get_method(name: str) -> Method:
  """The record of ``config.method``; an unknown name is a one-line ValueError listing them."""
  return registry.lookup(METHODS, name, "--config.method")


def unrelated_sections(name: str) -> tuple[str, ...]:
  """The config sections that only methods other than ``name`` read (all methods' own sections
  for an unknown name)."""
  own = METHODS[name].sections if name in METHODS else ()
  return tuple(sorted({s for m in METHODS.values() for s in m.sections} - set(own)))
