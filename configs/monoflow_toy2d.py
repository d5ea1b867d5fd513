"""A GAN on a 2-D toy set in the MonoFlow view: ``--config=configs/monoflow_toy2d.py:<name>``.

The discriminator is the toy MLP estimator, the generator an MLP from z ~ N(0, I₈); names as in
configs/toy2d.py (8gaussians, 25gaussians, swissroll, chasm).
  python -m fdrl_jax.main --config=configs/monoflow_toy2d.py:8gaussians --workdir=runs/gan_8g
"""

from fdrl_jax.configs import toy2d


def get_config(name: str = "8gaussians"):
  config = toy2d.get_config(name)
  config.method = "gan"
  config.generator.name = "mlp"
  config.generator.latent_dim = 8
  config.generator.width = 128
  config.generator.depth = 3
  config.gan.h = "non_saturating"
  config.gan.gen_learning_rate = 1e-3
  config.gan.disc_learning_rate = 1e-3
  config.training.num_steps = 3000
  config.training.checkpoint_every = 1000
  config.training.sample_every = 1000
  return config
