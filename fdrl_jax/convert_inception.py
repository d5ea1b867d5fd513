"""Converts pytorch-fid's FID Inception weights into the ``.npz`` of ``fdrl_jax.inception_weights``.

Usage (no PyTorch needed)::

  python -m fdrl_jax.convert_inception pt_inception-2015-12-05-6726825d.pth pt_inception.npz

The input is pytorch-fid's ``state_dict`` file from its GitHub release ``fid_weights``, read by
``fdrl_jax.torch_files`` (either ``torch.save`` format; nothing in the file runs).

The names are mapped as the module docstring of ``fdrl_jax.inception_weights`` says
(``<layer>.conv.weight`` transposed OIHW -> HWIO to ``<layer>/conv/kernel``, the BatchNorm's
``weight``, ``bias``, ``running_mean``, ``running_var`` to ``scale``, ``bias``, ``mean``, ``var``;
the classifier's ``fc.weight`` transposed to ``fc/kernel`` and ``fc.bias`` to ``fc/bias``, kept
when the source has them, for the Inception Score's logits; ``num_batches_tracked`` dropped). An
existing output is never overwritten, and the written file is checked by
``inception_weights.load_weights`` (and removed if that fails). Every error is one line.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from fdrl_jax import inception, inception_weights, torch_files, torch_objects

# (module, leaf) of a state_dict name -> leaf of the .npz key.
LEAVES: dict[tuple[str, ...], str] = {
  ("conv", "weight"): "kernel",
  ("bn", "weight"): "scale",
  ("bn", "bias"): "bias",
  ("bn", "running_mean"): "mean",
  ("bn", "running_var"): "var",
  ("fc", "weight"): "kernel",
  ("fc", "bias"): "bias",
}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a ``torch.save`` file of a ``state_dict`` (either format, ``fdrl_jax.torch_files``).

  Args:
    path: the ``.pth`` file.

  Returns:
    ``{name: array}`` in the file's order, each array a copy in native byte order.

  Raises:
    ValueError: one line if the file is missing, not a ``torch.save`` file, damaged, or holds
      something other than a dict of tensors.
  """
  if not os.path.isfile(path):
    raise ValueError(
      f"the file {path} does not exist; download pytorch-fid's "
      f"{inception.SOURCE_WEIGHTS} (its GitHub release fid_weights) first"
    )
  return torch_objects.state_dict(torch_files.load(path), path)


def npz_key(name: str) -> str | None:
  """The ``.npz`` key of a ``state_dict`` name; None for ``num_batches_tracked``.

  Raises:
    ValueError: for a name of no FID Inception array.
  """
  parts = name.split(".")
  if parts[-1] == "num_batches_tracked":
    return None
  key = "/".join(parts[:-1] + [LEAVES.get(tuple(parts[-2:]), "")])
  if key not in inception.expected_shapes():
    raise ValueError(f"the state_dict entry {name} is not part of the FID Inception")
  return key


def torch_name(key: str) -> str:
  """The ``state_dict`` name of an ``.npz`` key (the inverse of :func:`npz_key`)."""
  *layer, module, leaf = key.split("/")
  inverse = {value: torch_leaf for (m, torch_leaf), value in LEAVES.items() if m == module}
  return ".".join([*layer, module, inverse[leaf]])


def to_npz_arrays(
  state: dict[str, np.ndarray], path: str = "the state_dict"
) -> dict[str, np.ndarray]:
  """Maps a pytorch-fid ``state_dict`` to the ``.npz`` arrays that
  ``inception_weights.load_weights`` reads.

  Args:
    state: ``{name: array}`` as read by :func:`read_state_dict`.
    path: the source file, named in errors.

  Returns:
    ``{key: array}`` with convolution kernels transposed OIHW -> HWIO and the classifier's
    (out, in) -> (in, out), ``fc/*`` only if the source has ``fc.*``.

  Raises:
    ValueError: one line naming the first unexpected, wrongly shaped or missing entry (in
      ``state_dict`` terms, with the expected shape); ``fc.*`` is missing only as a whole.
  """
  table = inception.expected_shapes()
  arrays = {}
  for name, value in state.items():
    try:
      key = npz_key(name)
    except ValueError as e:
      raise ValueError(f"{path}: {e}; is it pytorch-fid's {inception.SOURCE_WEIGHTS}?") from None
    if key is None:
      continue
    # torch's layouts: convolutions OIHW (ours HWIO), the classifier (out, in) (ours (in, out)).
    order = (2, 3, 1, 0) if key.endswith("/conv/kernel") else (1, 0) if key == "fc/kernel" else None
    expected = table[key][2].shape
    if order:
      expected = tuple(expected[order.index(i)] for i in range(len(order)))
    if value.shape != expected:
      raise ValueError(f"{path}: {name} has shape {value.shape}, the FID Inception's is {expected}")
    arrays[key] = np.ascontiguousarray(value.transpose(order)) if order else value
  has_fc = bool(arrays.keys() & set(inception.FC_KEYS))
  required = [key for key in table if has_fc or key not in inception.FC_KEYS]
  missing = [key for key in required if key not in arrays]
  if missing:
    raise ValueError(
      f"{path}: the state_dict lacks {torch_name(missing[0])} ({len(missing)} of "
      f"the FID Inception's {len(required)} arrays are missing)"
    )
  return arrays


def convert(source: str, output: str) -> int:
  """Converts pytorch-fid's ``.pth`` into a new ``.npz`` and checks it with ``load_weights``.

  Args:
    source: the ``torch.save`` file of pytorch-fid's FID Inception ``state_dict``.
    output: the ``.npz`` to write; it must not exist.

  Returns:
    The number of arrays written.

  Raises:
    ValueError: one line, from reading, mapping, writing or checking.
  """
  if os.path.exists(output):
    raise ValueError(f"{output} already exists and is never overwritten; give a new file name")
  arrays = to_npz_arrays(read_state_dict(source), source)
  try:
    with open(output, "xb") as f:
      np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub: **kwds vs allow_pickle
  except OSError as e:
    raise ValueError(f"cannot write {output} ({e.strerror or e})") from None
  try:
    inception_weights.load_weights(output)
  except ValueError:
    os.remove(output)
    raise
  return len(arrays)


def main(argv: list[str]) -> None:
  """The command line: ``SOURCE.pth OUT.npz``; errors print ``error: ...`` and exit 2."""
  if len(argv) == 2 and argv[1] in ("-h", "--help"):
    print(__doc__)
    return
  if len(argv) != 3:
    print(
      f"error: usage: python -m fdrl_jax.convert_inception {inception.SOURCE_WEIGHTS} OUT.npz",
      file=sys.stderr,
    )
    sys.exit(2)
  try:
    count = convert(argv[1], argv[2])
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {argv[2]}: {count} arrays of the FID Inception, checked by load_weights")


if __name__ == "__main__":
  main(sys.argv)
