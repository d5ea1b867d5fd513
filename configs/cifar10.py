"""FDRL on CIFAR10 32², LSIF-χ², with the ResNet32 estimator (spectral norm, as the reference).

Data: tensorflow-datasets' cifar10 prepared in the array_record format (the error message when it
is missing gives the command). Meant for one or more GPUs/TPUs; not timed end to end here.
  python -m fdrl_jax.main --config=configs/cifar10.py --workdir=runs/cifar10      # FDRL-DDP
  python -m fdrl_jax.main --config=configs/cifar10.py:up --workdir=runs/cifar10_up  # FDRL-UP
FDRL-UP (``:up``) is the paper's uniform-prior ablation: x₀ ~ U[-1, 1]^d, κ = 10, 120 000 steps
with the learning rate × 0.1 when 20 000 and 10 000 steps remain (App. E.1), i.e. at 100 000 and
110 000.
"""

from fdrl_jax.configs import paper


def get_config(variant: str = "ddp"):
  if variant not in ("ddp", "up"):
    raise ValueError(f"configs/cifar10.py:{variant}: the variants are ddp (default) and up.")
  config = paper.get_config()
  config.data.name = "cifar10"
  config.model.name = "resnet32"
  config.model.spectral_norm = True
  if variant == "up":
    config.prior.name = "uniform"
    config.flow.num_refine_steps = 10
    config.training.num_steps = 120_000
    config.optim.decay_steps = (100_000, 110_000)
  return config
