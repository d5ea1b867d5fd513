"""The optimiser of FDRL and the classifier (and of imported reference runs), from the ``optim``
config section; the MonoFlow GAN has its own pair (``gan.build_optimizers``, the ``gan`` section)."""

from __future__ import annotations

import ml_collections
import optax


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with the paper's piecewise-constant decay (× 0.1 at each of ``optim.decay_steps``)."""
  o = config.optim
  schedule = optax.piecewise_constant_schedule(
    o.learning_rate, {int(s): 0.1 for s in o.decay_steps}
  )
  return optax.adam(schedule, b1=o.b1, b2=o.b2)
