"""Converts pytorch-fid's FID Inception weights into the ``.npz`` of ``fdrl_jax.inception``.

Usage (no PyTorch needed)::

  python -m fdrl_jax.convert_inception pt_inception-2015-12-05-6726825d.pth pt_inception.npz

The input is pytorch-fid's ``state_dict`` file from its GitHub release ``fid_weights``. It is read
as a ``torch.save`` file in either of PyTorch's two formats: the zip archive (the default since
PyTorch 1.6), whose ``<archive>/data.pkl`` pickles the ``state_dict`` with each tensor's storage
named by a persistent id and stored raw in ``<archive>/data/<key>``; or the older single stream of
pickles (a magic number, a protocol version, system information, the ``state_dict``, the list of
storage keys), followed by each storage as an 8-byte element count and its raw bytes. A tensor is
pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and rebuilt here
with numpy. The pickles are read by an unpickler that admits only ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and the ``torch.*Storage`` names (references, never called),
so nothing in the file runs; any other name is refused.

The names are mapped as the module docstring of ``fdrl_jax.inception`` says (``<layer>.conv.weight``
transposed OIHW -> HWIO to ``<layer>/conv/kernel``, the BatchNorm's ``weight``, ``bias``,
``running_mean``, ``running_var`` to ``scale``, ``bias``, ``mean``, ``var``; ``fc.*`` and
``num_batches_tracked`` dropped). An existing output is never overwritten, and the written file is
checked by ``inception.load_weights`` (and removed if that fails). Every error is one line.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import zipfile
import zlib
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from fdrl_jax import inception

# torch.<name>Storage -> numpy dtype of its elements.
STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2",
                  "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2",
                  "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?"}
ZIP_MAGIC = b"PK\x03\x04"  # how a zip-format torch.save file starts
LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # the first pickle of a pre-zip torch.save file
LEGACY_PROTOCOL = 1001
# (module, leaf) of a state_dict name -> leaf of the .npz key.
LEAVES = {("conv", "weight"): "kernel", ("bn", "weight"): "scale", ("bn", "bias"): "bias",
          ("bn", "running_mean"): "mean", ("bn", "running_var"): "var"}


class _Invalid(ValueError):
  """A one-line error about the input file (told apart from errors inside ``pickle``)."""


class StorageType(NamedTuple):
  """What ``torch.<name>Storage`` unpickles to: a marker naming the element type."""
  name: str


class Storage(NamedTuple):
  """A storage named by a persistent id: its key, element dtype and number of elements."""
  key: str
  dtype: np.dtype
  numel: int


class TensorRef(NamedTuple):
  """A tensor as pickled: a strided view (in elements) of a storage."""
  storage: Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorRef:
  """Stands in for ``torch._utils._rebuild_tensor_v2``; the data is read after the pickle."""
  if not (isinstance(storage, Storage) and isinstance(offset, int)
          and all(isinstance(v, int) for v in (*size, *stride)) and len(size) == len(stride)):
    raise _Invalid("a tensor in the pickle is malformed")
  return TensorRef(storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
  """An unpickler that admits only the names a ``state_dict`` of tensors needs."""

  def __init__(self, file: BinaryIO, byteorder: str = "<"):
    super().__init__(file)
    self.byteorder = byteorder
    self.storages: dict[str, Storage] = {}

  def find_class(self, module: str, name: str) -> Any:
    """Resolves the allowed global names; refuses every other one."""
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor_v2
    if module == "torch" and name in STORAGE_DTYPES:
      return StorageType(name)
    raise _Invalid(f"its pickle refers to {module}.{name}, which a state_dict of tensors does not "
                   "use; refusing to load it")

  def persistent_load(self, pid: Any) -> Storage:
    """Maps ``("storage", type, key, location, numel[, view])`` to a :class:`Storage`."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
            and isinstance(pid[1], StorageType) and isinstance(pid[4], int)):
      raise _Invalid(f"its pickle has an unknown persistent id {str(pid)[:60]}")
    if len(pid) == 6 and pid[5] is not None:
      raise _Invalid("it uses storage views (an old PyTorch format), which are not supported")
    dtype = np.dtype(STORAGE_DTYPES[pid[1].name]).newbyteorder(self.byteorder)
    storage = Storage(str(pid[2]), dtype, pid[4])
    if self.storages.setdefault(storage.key, storage) != storage:
      raise _Invalid(f"its storage {storage.key} is declared twice with different types")
    return storage


def _unpickle(unpickler: _Unpickler) -> Any:
  """Runs ``unpickler.load()``, turning a corrupt pickle into a one-line error."""
  try:
    return unpickler.load()
  except _Invalid:
    raise
  except Exception as e:  # anything a damaged pickle can raise
    raise _Invalid(f"its pickle is damaged ({type(e).__name__})") from None


def _buffer(storage: Storage, data: bytes) -> np.ndarray:
  """The elements of a storage from its raw bytes, checking the length."""
  if len(data) != storage.numel * storage.dtype.itemsize:
    raise _Invalid(f"its storage {storage.key} has {len(data)} bytes, expected "
                   f"{storage.numel * storage.dtype.itemsize} (a truncated download?)")
  return np.frombuffer(data, storage.dtype)


def _read_zip(archive: zipfile.ZipFile) -> tuple[Any, dict[str, np.ndarray]]:
  """The unpickled object and storage buffers of a zip-format ``torch.save`` file."""
  pickles = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
  if len(pickles) != 1:
    raise _Invalid("it is a zip archive but not a torch.save file (no <archive>/data.pkl)")
  prefix = pickles[0][:-len("data.pkl")]
  byteorder = "<"
  if prefix + "byteorder" in archive.namelist():
    byteorder = "<" if archive.read(prefix + "byteorder").strip() == b"little" else ">"
  unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])), byteorder)
  obj = _unpickle(unpickler)
  buffers = {}
  for key, storage in unpickler.storages.items():
    try:
      data = archive.read(f"{prefix}data/{key}")
    except KeyError:
      raise _Invalid(f"its storage {prefix}data/{key} is missing") from None
    buffers[key] = _buffer(storage, data)
  return obj, buffers


def _read_legacy(f: BinaryIO) -> tuple[Any, dict[str, np.ndarray]]:
  """The unpickled object and storage buffers of a pre-zip ``torch.save`` stream."""
  try:
    magic = _unpickle(_Unpickler(f))
  except _Invalid:
    magic = None
  if magic != LEGACY_MAGIC:
    raise _Invalid("it is a pickle, but its first object is not torch.save's magic number")
  if (protocol := _unpickle(_Unpickler(f))) != LEGACY_PROTOCOL:
    raise _Invalid(f"its torch.save protocol {protocol} is not {LEGACY_PROTOCOL}")
  info = _unpickle(_Unpickler(f))
  little = info.get("little_endian", True) if isinstance(info, dict) else True
  unpickler = _Unpickler(f, "<" if little else ">")
  obj = _unpickle(unpickler)
  keys = _unpickle(_Unpickler(f))
  if not isinstance(keys, list) or set(map(str, keys)) != set(unpickler.storages):
    raise _Invalid("its list of storages does not match its pickle")
  buffers = {}
  for key in map(str, keys):
    storage = unpickler.storages[key]
    count = int.from_bytes(f.read(8), "little" if little else "big", signed=True)
    if count != storage.numel:
      raise _Invalid(f"its storage {key} has {count} elements, expected {storage.numel}")
    buffers[key] = _buffer(storage, f.read(count * storage.dtype.itemsize))
  return obj, buffers


def _array(name: str, ref: TensorRef, buffers: dict[str, np.ndarray]) -> np.ndarray:
  """Copies a tensor out of its storage buffer, checking that the view stays inside it."""
  buffer = buffers[ref.storage.key]
  dtype = buffer.dtype.newbyteorder("=")
  if 0 in ref.size:
    return np.zeros(ref.size, dtype)
  last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
  if ref.offset < 0 or min(ref.stride, default=0) < 0 or last >= len(buffer):
    raise _Invalid(f"tensor {name} reaches outside its storage")
  view = np.lib.stride_tricks.as_strided(buffer[ref.offset:], ref.size,
                                         [s * buffer.itemsize for s in ref.stride])
  return view.astype(dtype)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a ``torch.save`` file of a ``state_dict`` (either format) into numpy arrays.

  Args:
    path: the ``.pth`` file.

  Returns:
    ``{name: array}`` in the file's order, each array a copy in native byte order.

  Raises:
    ValueError: one line if the file is missing, not a ``torch.save`` file, damaged, refers to a
      name other than those a ``state_dict`` needs, or holds something other than tensors.
  """
  if not os.path.isfile(path):
    raise ValueError(f"the file {path} does not exist; download pytorch-fid's "
                     f"{inception.SOURCE_WEIGHTS} (its GitHub release fid_weights) first")
  try:
    with open(path, "rb") as f:
      magic = f.read(4)
      f.seek(0)
      if magic == ZIP_MAGIC:
        with zipfile.ZipFile(f) as archive:
          obj, buffers = _read_zip(archive)
      elif magic[:1] == pickle.PROTO:
        obj, buffers = _read_legacy(f)
      else:
        raise _Invalid("it is neither a zip archive nor a stream of pickles")
  except _Invalid as e:
    raise ValueError(f"{path} is not a readable torch.save file: {e}") from None
  except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as e:
    raise ValueError(f"{path} is not a readable torch.save file: its zip archive is damaged "
                     f"({type(e).__name__})") from None
  except OSError as e:
    raise ValueError(f"cannot read {path} ({e.strerror or e})") from None
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a pickled {type(obj).__name__}, not a state_dict")
  out = {}
  for name, value in obj.items():
    if not isinstance(value, TensorRef):
      raise ValueError(f"{path}: state_dict entry {name!r} is a {type(value).__name__}, "
                       "not a tensor")
    try:
      out[str(name)] = _array(name, value, buffers)
    except _Invalid as e:
      raise ValueError(f"{path} is not a readable torch.save file: {e}") from None
  return out


def npz_key(name: str) -> str | None:
  """The ``.npz`` key of a ``state_dict`` name; None for ``fc.*`` and ``num_batches_tracked``.

  Raises:
    ValueError: for a name of no FID Inception array.
  """
  parts = name.split(".")
  if parts[0] == "fc" or parts[-1] == "num_batches_tracked":
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


def to_npz_arrays(state: dict[str, np.ndarray], path: str = "the state_dict"
                  ) -> dict[str, np.ndarray]:
  """Maps a pytorch-fid ``state_dict`` to the ``.npz`` arrays that ``inception.load_weights`` reads.

  Args:
    state: ``{name: array}`` as read by :func:`read_state_dict`.
    path: the source file, named in errors.

  Returns:
    ``{key: array}`` with convolution kernels transposed OIHW -> HWIO.

  Raises:
    ValueError: one line naming the first unexpected, wrongly shaped or missing entry (in
      ``state_dict`` terms, with the expected shape).
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
    expected = table[key][2].shape
    if key.endswith("/conv/kernel"):
      expected = (expected[3], expected[2], expected[0], expected[1])  # HWIO -> OIHW
    if value.shape != expected:
      raise ValueError(f"{path}: {name} has shape {value.shape}, the FID Inception's is {expected}")
    if key.endswith("/conv/kernel"):
      value = np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    arrays[key] = value
  missing = [key for key in table if key not in arrays]
  if missing:
    raise ValueError(f"{path}: the state_dict lacks {torch_name(missing[0])} ({len(missing)} of "
                     f"the FID Inception's {len(table)} arrays are missing)")
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
      np.savez(f, **arrays)
  except OSError as e:
    raise ValueError(f"cannot write {output} ({e.strerror or e})") from None
  try:
    inception.load_weights(output)
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
    print(f"error: usage: python -m fdrl_jax.convert_inception {inception.SOURCE_WEIGHTS} "
          "OUT.npz", file=sys.stderr)
    sys.exit(2)
  try:
    count = convert(argv[1], argv[2])
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {argv[2]}: {count} arrays of the FID Inception, checked by load_weights")


if __name__ == "__main__":
  main(sys.argv)
