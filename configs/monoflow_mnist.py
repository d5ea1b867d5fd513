"""MonoFlow's DCGAN on MNIST 28² (paper Section 5.2): ngf = ndf = 32, z ~ N(0, I₁₀₀), batch 128,
Adam lr_D 2e-4, lr_G 1e-4, β = (0.5, 0.999), one discriminator step per generator step, 15 epochs
(7 035 steps), data in [−1, 1]. The discriminator has no batch norm (``models.DCGANDiscriminator``
says why). Choose the generator loss with ``--config.gan.h`` (vanilla with ``--config.gan.shift``,
non_saturating, logit, arcsinh).

``:reference`` is MonoFlow's own code rather than its settings: the networks of its ``nets.py``
(``DCG_mnist``, ``Discriminator_mnist``: batch norm in both, no biases, DCGAN's N(0, 0.02)
initialisation; ``models.MonoFlowDiscriminator``) and its step, in which one G(z) trains both.

Data: tensorflow-datasets' mnist in the array_record format. Not timed end to end here.
  python -m fdrl_jax.main --config=configs/monoflow_mnist.py --workdir=runs/monoflow_mnist
  python -m fdrl_jax.main --config=configs/monoflow_mnist.py:reference --workdir=runs/mf_mnist_ref
"""

from fdrl_jax.configs import default

STEPS_PER_EPOCH = 60_000 // 128


def check_variant(name: str, variant: str) -> None:
  if variant not in ("ours", "reference"):
    raise ValueError(f"configs/{name}.py:{variant}: the variants are ours (default) and reference "
                     "(MonoFlow's nets.py and training step).")


def use_reference_networks(config, ndf: int, ngf: int, generator_widths: int) -> None:
  """MonoFlow's nets.py discriminator (ndf, 2·ndf, 4·ndf) and generator (8·ngf, 4·ngf, ...), and its
  step that trains both on one G(z)."""
  config.model.name = "monoflow_dcgan"
  config.model.channels = (ndf, 2 * ndf, 4 * ndf)
  config.generator.name = "monoflow_dcgan"
  config.generator.channels = tuple(8 * ngf // 2 ** i for i in range(generator_widths))
  config.gan.reuse_fake = True


def get_config(variant: str = "ours"):
  check_variant("monoflow_mnist", variant)
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
  if variant == "reference":  # DCG_mnist: 4² × 8·ngf → ... → 32² × ngf, cropped to 28² × 1
    use_reference_networks(config, ndf=32, ngf=32, generator_widths=4)
  return config
