"""A robust (PGD-L2) classifier on tfds MNIST 28²×1, to guide class-conditional sampling of an MNIST
FDRL run (``configs/mnist.py``): ``configs/digits_classifier.py`` with MNIST's data and a wider net.
Not run here (no MNIST on this machine); tested on tfds mock data.

  python -m fdrl_jax.main --config=configs/mnist_classifier.py --workdir=runs/mnist_classifier
"""

from fdrl_jax.configs import digits_classifier


def get_config():
  config = digits_classifier.get_config()
  config.data.name = "mnist"
  config.data.max_fit_samples = 60_000  # the whole training split, with labels, in memory
  config.classifier.channels = (32, 64, 128)
  config.classifier.epsilon = 2.0       # [-1, 1] units: ε = 1 on [0, 1] pixels, the paper's radius
  config.optim.learning_rate = 1e-3
  config.optim.decay_steps = (8_000, 9_000)
  config.training.num_steps = 10_000
  config.training.checkpoint_every = 2_000
  return config
