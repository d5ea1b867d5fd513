"""FDRL-DDP, LSIF-χ², on MNIST 28²×1 with the ResNet32 layout (the FDRL paper reports no MNIST
run; the hyper-parameters are its CIFAR10 ones, without flips).

Data: tensorflow-datasets' mnist in the array_record format.
  python -m fdrl_jax.main --config=configs/mnist.py --workdir=runs/mnist
"""

from fdrl_jax.configs import paper


def get_config():
  config = paper.get_config()
  config.data.name = "mnist"
  config.eval.metric = "fd_mnist"    # the in-project digit classifier, trained on MNIST
  config.data.random_flip = False
  config.model.name = "resnet32"
  return config
