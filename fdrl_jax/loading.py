"""``fdrl_jax.load(workdir)``: a trained (or imported) run as plain JAX functions.

The run is restored exactly as the command-line modes restore it (``run_lib.restore_latest``: the
latest readable checkpoint, checked against the workdir's ``config.json``; as for
``--mode=sample``, a tfds preset's images need not be on this machine). What comes back holds the
restored state and functions of arrays that close over it, pure and traceable, so they compose
with the caller's ``jax.jit``, ``jax.grad`` and ``jax.vmap``:

* FDRL: ``output(x)`` the EMA estimator's outputs (B,) (r or log r, per the loss),
  ``potential(x)`` its flow potential f'(r(x)) (B,) (``fdrl_jax.flow`` takes it as is),
  ``sample(key, n)`` Algorithm 2 (a prior draw, K + κ steps; ``n`` static under ``jit``),
  ``prior``, ``params`` = the EMA parameters.
* MonoFlow GAN: ``generator(z)``, ``discriminator(x)`` (the logit d = log p/q),
  ``sample(key, n)`` = G(z), ``params`` = the generator's.
* Classifier: ``output(x)`` the log-probabilities (B, N), ``params`` its parameters.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import ml_collections

from fdrl_jax import classifier, run_lib, sampling, workdir as workdirs

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """A restored run (see the module docstring); fields a method lacks are None."""
  config: ml_collections.ConfigDict
  step: int
  state: Any
  params: Any
  prior: Any = None
  output: Callable[[Array], Array] | None = None
  potential: Callable[[Array], Array] | None = None
  generator: Callable[[Array], Array] | None = None
  discriminator: Callable[[Array], Array] | None = None
  sampler: Callable[[Any, Array, int], Array] | None = dataclasses.field(default=None, repr=False)

  def sample(self, key: Array, n: int) -> Array:
    """n samples (n, *event_shape) of the run's ``prior`` sampler from ``key``; pure."""
    if self.sampler is None:
      raise ValueError(f"a --config.method={self.config.method} run does not sample")
    return self.sampler(self.state, key, n)


def load(workdir: str | os.PathLike) -> LoadedRun:
  """The latest checkpoint of ``workdir`` as a :class:`LoadedRun`.

  Raises:
    ValueError: one line if the workdir holds no run, no readable checkpoint, or its data cannot
      be read.
  """
  workdir = os.fspath(workdir)
  config = workdirs.read_config(workdir)
  run, state, step = run_lib.restore_latest(config, workdir, data_optional=True)
  method = config.get("method", "fdrl")
  if method == "classifier":
    model = classifier.build_model(config)
    return LoadedRun(config, step, state, state.params,
                     output=classifier.log_probabilities(model.apply, state.params))
  parts = run.sampler_parts()
  sampler = sampling.prior_sample_fn(parts)
  if parts.generator is not None:
    g = parts.generator
    return LoadedRun(config, step, state, state.gen_params, generator=g.generate(state),
                     discriminator=g.logit(state), sampler=sampler)
  return LoadedRun(config, step, state, state.ema_params, prior=state.prior,
                   output=parts.estimator.apply(state), potential=parts.potential(state),
                   sampler=sampler)
