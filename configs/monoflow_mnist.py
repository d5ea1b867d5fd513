"""MonoFlow's DCGAN on MNIST 28² (paper Section 5.2): ngf = ndf = 32, z ~ N(0, I₁₀₀), batch 128,
Adam lr_D 2e-4, lr_G 1e-4, β = (0.5, 0.999), one discriminator step per generator step, 15 epochs
(7 035 steps), data in [−1, 1]. The discriminator has no batch norm (``models.DCGANDiscriminator``
says why). Choose the generator loss with ``--config.gan.h`` (vanilla with ``--config.gan.shift``,
non_saturating, logit, arcsinh).

Data: tensorflow-datasets' mnist in the array_record format. Not timed end to end here.
  python -m fdrl_jax.main --config=configs/monoflow_mnist.py --workdir=runs/monoflow_mnist
"""

from configs import default

STEPS_PER_EPOCH = 60_000 // 128


def get_config():
  config = default.get_config()
  config.method = "gan"
  config.data.name = "mnist"
  config.eval.metric = "fd_mnist"    # the in-project digit classifier, trained on MNIST
  config.data.batch_size = 128
  config.data.dequantization = 0.0
  config.data.random_flip = False
  config.model.name = "dcgan"         # the discriminator: 4×4 stride-2 convs ndf, 2·ndf
  config.model.channels = (32, 64)
  config.generator.name = "dcgan"     # 7² × 4·ngf → 14² × 2·ngf → 28² × 1
  config.generator.latent_dim = 100
  config.generator.channels = (128, 64)
  config.gan.h = "non_saturating"
  config.training.num_steps = 15 * STEPS_PER_EPOCH
  config.training.log_every = 100
  config.training.checkpoint_every = 1000
  config.training.sample_every = 1000
  return config
