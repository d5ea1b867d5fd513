"""FDRL-DDP, LSIF-χ², on CIFAR10 32² with the ResNet32 estimator (spectral norm, as the reference).

Data: tensorflow-datasets' cifar10 prepared in the array_record format (the error message when it
is missing gives the command). Meant for one or more GPUs/TPUs; not timed end to end here.
  python -m fdrl_jax.main --config=configs/cifar10.py --workdir=runs/cifar10
FDRL-UP instead: --config.prior.name=uniform --config.flow.num_refine_steps=10
  --config.training.num_steps=120000 (the paper's FDRL-UP schedule).
"""

from configs import paper


def get_config():
  config = paper.get_config()
  config.data.name = "cifar10"
  config.model.name = "resnet32"
  config.model.spectral_norm = True
  return config
