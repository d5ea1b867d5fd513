"""FDRL-DDP, LSIF-χ², on CelebA 64² (centre crop 140, resize 64) with the ResNet64 estimator.

Data: tensorflow-datasets' celeb_a prepared in the array_record format. Meant for GPUs/TPUs.
  python -m fdrl_jax.main --config=configs/celeba64.py --workdir=runs/celeba64
"""

from fdrl_jax.configs import paper


def get_config():
  config = paper.get_config()
  config.data.name = "celeb_a"
  config.model.name = "resnet64"
  config.model.spectral_norm = False  # the reference CelebA config has it off
  return config
