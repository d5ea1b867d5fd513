"""FDRL-DDP, LSIF-χ², on LSUN Church 128² with the ResNet128 estimator and a low-rank prior.

A full covariance of 128×128×3 pixels would take 9.7 GB; the prior keeps the top 64 principal
components and an isotropic rest (fdrl_jax.priors.fit_low_rank_gaussian), fitted in streaming
passes. Data: tensorflow-datasets' lsun/church_outdoor in the array_record format, the shorter
side resized to 128 and the centre square cut; ``--config.data.stretch=True`` squeezes each whole
image into 128×128 instead, as the reference does. GPUs/TPUs.
  python -m fdrl_jax.main --config=configs/lsun_church128.py --workdir=runs/church128
"""

from fdrl_jax.configs import paper


def get_config():
  config = paper.get_config()
  config.data.name = "lsun_church"
  config.data.max_fit_samples = 20_000
  config.model.name = "resnet128"
  config.prior.name = "low_rank"
  config.prior.rank = 64
  return config
