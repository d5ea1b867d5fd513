"""FDRL-DDP with LR-KL on the 8×8 digits bundled with scikit-learn (1 500 train / 297 held out).

Run (CPU, 2 cores: about 3 minutes for the 2 000 steps):
  python -m fdrl_jax.main --config=configs/digits.py --workdir=runs/digits
Samples: runs/digits/samples/step_*.png.
"""

from configs import default


def get_config():
  return default.get_config()  # the default config is this experiment
