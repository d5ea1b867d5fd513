"""An adversarially robust (PGD-L2) digit classifier on the bundled 8×8 digits, to guide
class-conditional FDRL (``--config.sampling.name=conditional``, FDRL Sec. 6.4).

The paper guides with an L2-robust ResNet-50 (ε = 1 on [0, 1] CIFAR10 pixels); a non-robust
classifier's input gradients are too noisy to steer a flow. Here: a small conv net trained on
PGD-L2 adversarial digits (ε = 1 in [-1, 1] pixel units, 7 steps) with Gaussian noise (σ = 0.5)
added to the training images, so that its gradient is defined on the half-formed images a flow
passes through; ``--config.classifier.epsilon=0 --config.classifier.noise=0`` trains a plain one.
Measured guiding the digits default (experiments/conditional_digits.py): ε = 2 or 3 and no noise,
or ε = 0.5, guide worse; ε = 4 does not train. ``--mode=eval`` reports clean and adversarial test
accuracy.

Run (CPU, 2 cores: about a minute):
  python -m fdrl_jax.main --config=configs/digits_classifier.py --workdir=runs/digits_classifier
"""

from fdrl_jax.configs import default


def get_config():
  config = default.get_config()
  config.method = "classifier"
  config.data.batch_size = 128
  config.classifier.epsilon = 1.0
  config.classifier.num_steps = 7
  config.classifier.noise = 0.5
  config.optim.learning_rate = 2e-3
  config.optim.decay_steps = (1200, 1400)
  config.training.num_steps = 1500
  config.training.checkpoint_every = 500
  return config
