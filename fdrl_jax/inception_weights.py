"""The FID Inception's weights file: the ``.npz`` that :func:`load_weights` reads, checks and
:func:`save_weights` writes, and its one-line errors.

No weights ship with this package and nothing is downloaded. The expected source is
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a PyTorch ``state_dict`` of the TF FID
Inception graph, from the pytorch-fid GitHub release ``fid_weights``), converted once to an
``.npz`` file that ``load_weights`` reads. The ``.npz`` holds one array per leaf, with flat
keys ``<layer>/<conv|bn>/<leaf>`` where ``<layer>`` is the PyTorch module path with ``.`` replaced
by ``/`` (e.g. ``Conv2d_1a_3x3``, ``Mixed_5b/branch1x1``, ``Mixed_7c/branch3x3dbl_3a``):

* ``<layer>/conv/kernel``: ``<layer>.conv.weight`` transposed OIHW -> HWIO, ``(kh, kw, in, out)``;
* ``<layer>/bn/scale``, ``<layer>/bn/bias``: ``<layer>.bn.weight``, ``<layer>.bn.bias``;
* ``<layer>/bn/mean``, ``<layer>/bn/var``: ``<layer>.bn.running_mean``, ``<layer>.bn.running_var``;
* ``fc/kernel``: ``fc.weight`` transposed, ``(2048, 1008)``; ``fc/bias``: ``fc.bias``, ``(1008,)``.

Any ``num_batches_tracked`` entries are dropped. ``fc`` is optional: a file converted before it was
kept (without ``fc/*``) still gives pool3 features for FID, and asking it for logits is a one-line
error that says to convert again. The conversion needs no PyTorch
(``fdrl_jax/convert_inception.py`` reads the ``torch.save`` file itself); run once::

  python -m fdrl_jax.convert_inception pt_inception-2015-12-05-6726825d.pth pt_inception.npz

It never overwrites its output and checks the result with :func:`load_weights`, which, like
:func:`check_weights`, reports a missing, unreadable or foreign file in one line.

A file is checked against ``inception.expected_shapes`` (the network's variables) from its array
headers alone (``check_weights``), before anything is sampled.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import jax.numpy as jnp
import numpy as np

from fdrl_jax import inception
from fdrl_jax.inception import Variables


def save_weights(variables: Variables, path: str) -> None:
  """Writes the network's variables to an ``.npz`` with the flat keys of the module docstring."""
  arrays = {key: np.asarray(leaf) for key, (_, _, leaf) in inception.flatten(variables).items()}
  np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub: **kwds vs allow_pickle


def _not_weights(path: str, reason: str) -> ValueError:
  """The one-line error for a readable file that is not an ``.npz`` of these weights."""
  return ValueError(
    f"{path} is not an .npz of the FID Inception ({reason}); convert pytorch-fid's "
    f"weights with: {inception.CONVERT_COMMAND} OUT.npz"
  )


def _torch_file(path: str) -> ValueError:
  """The one-line error for a ``torch.save`` file (or other pickle) given as the weights."""
  return ValueError(
    f"{path} is a PyTorch file or a pickle, not an .npz of the FID Inception; if "
    f"it is pytorch-fid's, convert it with: python -m fdrl_jax.convert_inception "
    f"{path} OUT.npz"
  )


def _open_npz(path: str) -> np.lib.npyio.NpzFile:
  """Opens ``path`` by ``np.load``: one-line errors for a missing, unreadable or non-.npz file."""
  if not os.path.exists(path):
    raise ValueError(
      f"the file {path} does not exist; convert pytorch-fid's weights into it with: "
      f"{inception.CONVERT_COMMAND} {path}"
    )
  try:
    data = np.load(path)
  except OSError as e:
    raise ValueError(f"cannot read {path} ({e.strerror or e})") from None
  except (ValueError, EOFError, zipfile.BadZipFile):
    with open(path, "rb") as f:
      if f.read(1) == b"\x80":  # pickle protocol 2+, as a torch.save file before PyTorch 1.6
        raise _torch_file(path) from None
    raise _not_weights(path, "not a zip archive of numpy arrays") from None
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise _not_weights(path, "a single .npy array")
  return data


def _headers(path: str, data: np.lib.npyio.NpzFile) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Reads the shape and dtype of every member of an open ``.npz`` without reading its data."""
  archive = data.zip
  if archive is None:  # only once closed
    raise ValueError(f"{path} was closed before its arrays were read.")
  if any(name.rsplit("/", 1)[-1] == "data.pkl" for name in archive.namelist()):
    raise _torch_file(path)
  out = {}
  for name in archive.namelist():
    key = name.removesuffix(".npy")
    try:
      with archive.open(name) as f:
        version = np.lib.format.read_magic(f)
        read = (
          np.lib.format.read_array_header_1_0
          if version == (1, 0)
          else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(f)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile):
      raise _not_weights(path, f"its member {name} is not a numpy array") from None
    if dtype.kind not in "biuf":
      raise _not_weights(path, f"{key} holds {dtype} values, not numbers")
    out[key] = shape, dtype
  return out


def _check_shapes(path: str, found: dict[str, tuple[tuple[int, ...], Any]], logits: bool) -> None:
  """One-line ValueErrors for the first missing or wrongly shaped layer, or an unexpected key;
  ``fc`` may be missing as a whole unless ``logits``."""
  table = inception.expected_shapes()
  if not found:
    raise _not_weights(path, "it holds no arrays")
  if not found.keys() & table.keys():
    names = ", ".join(sorted(found)[:3]) + (", ..." if len(found) > 3 else "")
    raise _not_weights(path, f"none of its arrays ({names}) is a layer of the network")
  if not found.keys() & set(inception.FC_KEYS):
    if logits:
      raise inception.no_classifier(f"the weights in {path}")
    table = {key: value for key, value in table.items() if key not in inception.FC_KEYS}
  for key, (_, _, expected) in table.items():
    layer = key.rsplit("/", 2)[0]
    if key not in found:
      raise _not_weights(path, f"layer {layer} is missing {key}, expected shape {expected.shape}")
    if found[key][0] != expected.shape:
      raise _not_weights(
        path, f"layer {layer} has {key} of shape {found[key][0]}, expected {expected.shape}"
      )
  extra = sorted(found.keys() - table.keys())
  if extra:
    raise _not_weights(path, f"unexpected key {extra[0]}")


def check_weights(path: str, *, logits: bool = False) -> None:
  """Checks that ``path`` is an ``.npz`` of FID Inception weights from the array headers alone.

  Reads no array data, so an evaluation can check its weights cheaply before it samples.

  Args:
    path: the ``.npz`` file.
    logits: require the classifier ``fc`` (the Inception Score's logits); without it a file
      converted before ``fc`` was kept passes (pool3 features, FID).

  Raises:
    ValueError: one line saying that the file does not exist (with the converter command), cannot
      be read, or is not an ``.npz`` of these weights (naming the first missing or wrongly shaped
      layer, or the first unexpected key, in sorted key order), or, with ``logits``, lacks ``fc``
      (with the converter command).
  """
  with _open_npz(path) as data:
    _check_shapes(path, _headers(path, data), logits)


def load_weights(path: str, *, logits: bool = False) -> Variables:
  """Reads and shape-checks an ``.npz`` of FID Inception weights into Flax variables.

  Args:
    path: ``.npz`` file with the flat keys described in the module docstring.
    logits: require the classifier ``fc``, as :func:`check_weights`; it is read whenever the file
      has it.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` for ``InceptionV3().apply`` (``params["fc"]`` when the
    file has the classifier).

  Raises:
    ValueError: as :func:`check_weights`, which it runs first: one line for a missing, unreadable
      or foreign file, naming the first missing or wrongly shaped layer, with the expected and
      found shapes, or the first unexpected key. "First" is in sorted key order, in which the
      top-level layers (``Conv2d_1a_3x3`` ... ``Mixed_7c``, then ``fc``) follow the forward pass.
  """
  variables: Variables = {}
  with _open_npz(path) as data:
    headers = _headers(path, data)
    _check_shapes(path, headers, logits)
    for key, (collection, names, expected) in inception.expected_shapes().items():
      if key not in headers:  # the optional classifier
        continue
      try:
        found = data[key]
      except (ValueError, EOFError, OSError, zipfile.BadZipFile):
        raise _not_weights(path, f"its array {key} is truncated or corrupt") from None
      node = variables.setdefault(collection, {})
      for name in names[:-1]:
        node = node.setdefault(name, {})
      node[names[-1]] = jnp.asarray(found, expected.dtype)
  return variables
