"""A robust (PGD-L2, ε = 1 on [0, 1] pixels as the paper's guiding ResNet-50) conv classifier on
tfds CIFAR10, to guide class-conditional sampling of ``configs/cifar10.py`` runs:
``configs/digits_classifier.py`` with CIFAR10's data and a wider net, far smaller than the paper's
ResNet-50. Not run here (no CIFAR10 on this machine); tested on tfds mock data.

  python -m fdrl_jax.main --config=configs/cifar10_classifier.py --workdir=runs/cifar10_classifier
"""

from fdrl_jax.configs import digits_classifier


def get_config():
  config = digits_classifier.get_config()
  config.data.name = "cifar10"
  config.data.max_fit_samples = 50_000  # the whole training split, with labels, in memory
  config.classifier.channels = (64, 128, 256, 256)
  config.classifier.hidden = 256
  config.classifier.epsilon = 2.0       # [-1, 1] units: ε = 1 on [0, 1] pixels
  config.optim.learning_rate = 1e-3
  config.optim.decay_steps = (40_000, 45_000)
  config.training.num_steps = 50_000
  config.training.checkpoint_every = 5_000
  return config
