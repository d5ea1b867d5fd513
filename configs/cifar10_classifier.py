"""An adversarially robust (PGD-L2, ε = 1 on [0, 1] pixels as the paper's guiding ResNet-50) conv
classifier on tfds CIFAR10, to guide class-conditional sampling of ``configs/cifar10.py`` runs.
Far smaller than the paper's ResNet-50; not run here (no CIFAR10 on this machine), tested on tfds
mock data.

  python -m fdrl_jax.main --config=configs/cifar10_classifier.py --workdir=runs/cifar10_classifier
"""

from configs import default


def get_config():
  config = default.get_config()
  config.method = "classifier"
  config.data.name = "cifar10"
  config.data.batch_size = 128
  config.data.max_fit_samples = 50_000  # the whole training split, with labels, in memory
  config.classifier.channels = (64, 128, 256, 256)
  config.classifier.hidden = 256
  config.classifier.epsilon = 2.0       # [-1, 1] units: ε = 1 on [0, 1] pixels
  config.classifier.num_steps = 7
  config.optim.learning_rate = 1e-3
  config.optim.decay_steps = (40_000, 45_000)
  config.training.num_steps = 50_000
  config.training.checkpoint_every = 5_000
  return config
