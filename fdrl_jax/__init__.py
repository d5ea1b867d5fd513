"""fdrl_jax: generative modelling with density-ratio gradient flows (FDRL, MonoFlow) in JAX.

Convention: r(x) = q(x)/p(x), q = prior / flowed samples, p = data (FDRL's). MonoFlow's logit is
d = log p/q = −log r.
"""

from importlib import metadata as _metadata

from fdrl_jax import divergences, losses, monoflow, priors
from fdrl_jax.divergences import DIVERGENCES, flow_potential
from fdrl_jax.flows import flow, potential_gradient
from fdrl_jax.losses import LOSSES, bregman_loss
from fdrl_jax.prior_fit import fit_gaussian, fit_low_rank_gaussian

try:
  __version__ = _metadata.version("fdrl_jax")
except _metadata.PackageNotFoundError:  # a source tree on the path, not installed
  __version__ = "0+unknown"


def load(workdir):
  """A trained or imported workdir's latest checkpoint as pure JAX functions (``.output``,
  ``.potential``, ``.sample``, ``.prior``, ``.params``...): ``fdrl_jax.loading.load``, imported
  on first use (it brings in the run machinery: Orbax, the data sets)."""
  from fdrl_jax import loading

  return loading.load(workdir)


__all__ = [
  "DIVERGENCES",
  "LOSSES",
  "bregman_loss",
  "divergences",
  "fit_gaussian",
  "fit_low_rank_gaussian",
  "flow",
  "flow_potential",
  "load",
  "losses",
  "monoflow",
  "potential_gradient",
  "priors",
]
