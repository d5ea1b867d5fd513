"""MonoFlow's DCGAN on CIFAR10 32² (paper Section 5.2): ngf = ndf = 64, z ~ N(0, I₁₀₀), batch 128,
Adam lr_D 2e-4, lr_G 1e-4, β = (0.5, 0.999), one discriminator step per generator step, 15 epochs
(5 865 steps), data in [−1, 1]. Choose the generator loss with ``--config.gan.h``.

``:reference``: MonoFlow's nets.py networks (``DCG_cifar10``, ``Discriminator``) and training step,
as ``configs/monoflow_mnist.py:reference``.

Data: tensorflow-datasets' cifar10 in the array_record format. Not timed end to end here.
  python -m fdrl_jax.main --config=configs/monoflow_cifar10.py --workdir=runs/monoflow_cifar10
"""

from fdrl_jax.configs import monoflow_mnist


def get_config(variant: str = "ours"):
  monoflow_mnist.check_variant("monoflow_cifar10", variant)
  config = monoflow_mnist.get_config()
  config.data.name = "cifar10"
  config.eval.metric = "fid"
  config.model.channels = (64, 128, 256)      # 32² → 16² → 8² → 4², then Dense → 1
  config.generator.channels = (256, 128, 64)  # 4² × 4·ngf → 8² × 2·ngf → 16² × ngf → 32² × 3
  config.training.num_steps = 15 * (50_000 // 128)
  if variant == "reference":  # DCG_cifar10: 4² × 8·ngf → 8² × 4·ngf → 16² × 2·ngf → 32² × 3
    monoflow_mnist.use_reference_networks(config, ndf=64, ngf=64, generator_widths=3)
  return config
