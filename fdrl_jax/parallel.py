"""Devices: the one "data" mesh, the data-parallel jit of a training step, global batches.

Every method's training step is a pure ``step(state, batch, key)``; over several devices (and
processes) the batch and the particles are split over the "data" mesh axis and the state is
replicated, so XLA averages the parameter gradients and the particle flows need no communication.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh named "data" over ``devices`` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of a replicated state on ``mesh``."""
  return NamedSharding(mesh, P())


def jit_train_step(step_fn_builder: Callable[[NamedSharding | None], Callable], mesh: Mesh):
  """Jits ``step_fn_builder(data_sharding)`` with the batch sharded over "data", the state
  replicated, and the state donated."""
  sharded = NamedSharding(mesh, P("data"))
  return jax.jit(step_fn_builder(sharded), in_shardings=(replicated(mesh), sharded,
                                                         replicated(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def global_batch(batch: Any, mesh: Mesh) -> Any:
  """Places a global host batch (the same on every process; an array or a tuple of arrays with
  one leading batch axis) on the mesh, split over "data".

  Each process contributes only its own rows, so multi-host runs load no row twice on a device.
  """
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  size = jax.tree.leaves(batch)[0].shape[0]
  if size % n_dev:
    raise ValueError(f"The batch size ({size}) must be divisible by the number of "
                     f"devices ({n_dev}); set --config.data.batch_size.")
  rows = size // n_proc
  lo = jax.process_index() * rows

  def place(array: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")),
                                                  array[lo:lo + rows], array.shape)
  return jax.tree.map(place, batch)
