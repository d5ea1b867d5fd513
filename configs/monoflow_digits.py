"""A GAN on the bundled 8×8 digits, trained in the MonoFlow view (``fdrl_jax.gan``).

The discriminator is the small conv estimator trained with the logistic-regression loss; the
generator a DCGAN-style net (2×2 → 4×4 → 8×8); the generator loss −E[h(d)] with h = ``gan.h``.
Compare losses with ``--config.gan.h=vanilla --config.gan.shift=5`` etc.
(experiments/monoflow_digits.py runs the comparison table).

Run (CPU, 2 cores):
  python -m fdrl_jax.main --config=configs/monoflow_digits.py --workdir=runs/monoflow_digits
"""

from fdrl_jax.configs import default


def get_config():
  config = default.get_config()
  config.method = "gan"
  config.model.name = "conv"
  config.generator.name = "dcgan"
  config.generator.latent_dim = 32
  config.generator.channels = (128, 64)
  config.gan.h = "non_saturating"
  config.gan.gen_learning_rate = 2e-4
  config.gan.disc_learning_rate = 2e-4
  config.data.dequantization = 0.0
  config.training.num_steps = 3000
  config.training.checkpoint_every = 1000
  config.training.sample_every = 1000
  return config
