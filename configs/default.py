"""Default configuration: every key, commented. Dataset configs import it and change what differs.

Run: python -m fdrl_jax.main --config=configs/default.py --workdir=runs/default
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "lsif"           # Bregman loss: lsif | lr | kl (fdrl_jax.losses.LOSSES)
  config.loss.divergence = "pearson"  # f-divergence of the flow: pearson | kl | js | logd

  config.flow = ml_collections.ConfigDict()
  config.flow.num_steps = 100         # K, flow steps per training step (Eq. 9)
  config.flow.num_refine_steps = 20   # κ, extra steps at sampling (20 for DDP, 10 for UP)
  config.flow.step_size = 3.0         # η
  config.flow.noise_scale = 1e-2      # ν

  config.prior = ml_collections.ConfigDict()
  config.prior.name = "gaussian"      # gaussian (data-dependent, Eq. 8) | uniform | normal
  config.prior.jitter = 1e-4          # added to the fitted covariance's diagonal
  return config
