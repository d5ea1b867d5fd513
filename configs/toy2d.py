"""FDRL on 2-D toy sets with the reference's toy MLP: ``--config=configs/toy2d.py:<name>``.

Names: chasm (p = N(6, 0.1 I) from q' = N(0, 0.1 I), the paper's density chasm, Fig. 2b / 4),
8gaussians, 25gaussians, swissroll (prior: a Gaussian fitted to the data).

Run (CPU, 2 cores: under a minute):
  python -m fdrl_jax.main --config=configs/toy2d.py:chasm --workdir=runs/chasm
"""

from configs import default


def get_config(name: str = "chasm"):
  config = default.get_config()
  config.data.name = name
  config.data.batch_size = 256
  config.model.name = "mlp"
  config.loss.name = "lr"
  config.loss.divergence = "kl"
  config.flow.num_steps = 10
  config.flow.num_refine_steps = 0
  config.flow.step_size = 0.01
  config.flow.noise_scale = 0.0
  config.flow.clip = False
  if name == "chasm":
    config.prior.name = "normal"
    config.prior.loc = 0.0
    config.prior.scale = 0.1 ** 0.5
    # η·K = 30 time units per flow: the chasm (|(6, 6)| ≈ 8.5) is crossed with |∇ log r| ≈ 0.3,
    # which a logistic estimator reaches; η·K = 0.1 needed the exact slope 85, which it never
    # learns (see experiments/density_chasm.py). η = 1 as in the reference toy config.
    config.flow.num_steps = 30
    config.flow.step_size = 1.0
    config.flow.noise_scale = 1e-2     # ν, the paper's value
    config.optim.ema_decay = 0.95      # a 20-step EMA horizon: the estimator changes fast here
  config.optim.learning_rate = 1e-3
  config.optim.decay_steps = ()
  config.training.num_steps = 1000
  config.training.checkpoint_every = 500
  config.training.sample_every = 500
  config.training.num_grid_samples = 1000
  return config
