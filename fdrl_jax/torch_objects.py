"""What the objects read from ``torch.save`` files (``fdrl_jax.torch_files.load``) mean: a
``state_dict`` of arrays (checked; DataParallel's ``module.`` prefix stripped) and a pickled
``torch.distributions.MultivariateNormal`` (the reference's priors, ``DATASET_ddp.pt``), each
refused in one line naming what the file holds instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fdrl_jax.torch_files import Opaque


def describe(obj: Any) -> str:
  """A short name of what an unpickled object is, for error messages."""
  return obj.qualname if isinstance(obj, Opaque) else type(obj).__name__


def state_dict(obj: Any, path: str, what: str = "a state_dict") -> dict[str, np.ndarray]:
  """``obj`` checked to be a ``state_dict`` of arrays, as ``{name: array}`` in its order.

  Raises:
    ValueError: one line naming the first entry that is not a tensor.
  """
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a pickled {describe(obj)}, not {what}")
  for name, value in obj.items():
    if not isinstance(value, np.ndarray):
      raise ValueError(f"{path}: {what} entry {name!r} is a {describe(value)}, not a tensor")
  return {str(name): value for name, value in obj.items()}


def strip_prefix(state: dict[str, np.ndarray], prefix: str = "module.") -> dict[str, np.ndarray]:
  """The ``state_dict`` without ``prefix`` (DataParallel's ``module.``) where every name has it."""
  if state and all(name.startswith(prefix) for name in state):
    return {name[len(prefix) :]: value for name, value in state.items()}
  return dict(state)


def multivariate_normal(obj: Any, path: str) -> tuple[np.ndarray, np.ndarray]:
  """The mean (d,) and lower Cholesky factor (d, d) of a pickled
  ``torch.distributions.MultivariateNormal`` (without a batch shape), in float64.

  The factor is the one the distribution stored (``_unbroadcasted_scale_tril``, from which torch
  samples), else the Cholesky factor of its ``covariance_matrix``.

  Raises:
    ValueError: one line if ``obj`` is not such a distribution.
  """
  if not (
    isinstance(obj, Opaque)
    and obj.name == "MultivariateNormal"
    and isinstance(obj.state, dict)
    and isinstance(obj.state.get("loc"), np.ndarray)
  ):
    raise ValueError(
      f"{path} holds a pickled {describe(obj)}, not a torch.distributions.MultivariateNormal"
    )
  state = obj.state
  loc = np.asarray(state["loc"], np.float64)
  if loc.ndim != 1:
    raise ValueError(
      f"{path}: the MultivariateNormal has a batch shape {loc.shape[:-1]}; one "
      "distribution is needed"
    )
  for key in ("_unbroadcasted_scale_tril", "scale_tril"):
    if isinstance(state.get(key), np.ndarray):
      tril = np.asarray(state[key], np.float64)
      break
  else:
    if not isinstance(state.get("covariance_matrix"), np.ndarray):
      raise ValueError(f"{path}: the MultivariateNormal stores no scale_tril or covariance")
    try:
      tril = np.linalg.cholesky(np.asarray(state["covariance_matrix"], np.float64))
    except np.linalg.LinAlgError:
      raise ValueError(
        f"{path}: the MultivariateNormal's covariance is not positive definite"
      ) from None
  if tril.shape != (loc.size, loc.size):
    raise ValueError(
      f"{path}: the MultivariateNormal's scale has shape {tril.shape}, its mean {loc.shape}"
    )
  return loc, np.tril(tril)
