"""Reads ``torch.save`` files with NumPy alone: no PyTorch, and nothing in the file is run.

Both of PyTorch's formats are read: the zip archive (the default since PyTorch 1.6), whose
``<archive>/data.pkl`` pickles the object with each tensor's storage stored raw in
``<archive>/data/<key>``; and the older stream of pickles (magic number, protocol, system
information, the object, the storage keys), each storage then as a count and its raw bytes.

A tensor is pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
(an ``nn.Parameter`` wraps it in ``_rebuild_parameter``) and comes back as a NumPy array copied out
of its storage. ``collections.OrderedDict``, ``torch.Size``, NumPy scalars and dtypes, sets and
protocol 2's ``bytes`` are rebuilt as themselves. Every other global — an LR scheduler, a
``torch.distributions`` object, ``dill``'s helpers, ``os.system`` — unpickles to an inert
:class:`Opaque` that records its name, arguments and state and is never looked up or called: a
checkpoint that pickles a scheduler or a lambda still reads, with its tensors. What the objects
mean (a ``state_dict``, a pickled ``MultivariateNormal``) is ``fdrl_jax.torch_objects``'s.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import zipfile
import zlib
from typing import Any, BinaryIO, NamedTuple, Self

import ml_dtypes
import numpy as np

# torch.<name>Storage -> numpy dtype of its elements.
STORAGE_DTYPES = {
  "FloatStorage": "f4",
  "DoubleStorage": "f8",
  "HalfStorage": "f2",
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": "i8",
  "IntStorage": "i4",
  "ShortStorage": "i2",
  "CharStorage": "i1",
  "ByteStorage": "u1",
  "BoolStorage": "?",
  "ComplexFloatStorage": "c8",
  "ComplexDoubleStorage": "c16",
}
ZIP_MAGIC = b"PK\x03\x04"  # how a zip-format torch.save file starts
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a pre-zip torch.save file
LEGACY_PROTOCOL = 1001


class _Invalid(ValueError):
  """A one-line error about the input file (told apart from errors inside ``pickle``)."""


class Opaque:
  """An object of a class this reader does not rebuild: its global name, the arguments it was
  called or created with, its pickled state and any items or list entries pickled into it."""

  module: str = ""
  name: str = ""
  # Set by __new__: pickle's NEWOBJ creates the object without calling __init__.
  args: tuple[Any, ...]
  kwargs: dict[str, Any]
  state: Any
  items: dict[Any, Any]
  entries: list[Any]

  def __new__(cls, *args: Any, **kwargs: Any) -> Self:
    obj = object.__new__(cls)
    obj.args, obj.kwargs, obj.state = args, kwargs, None
    obj.items, obj.entries = {}, []
    return obj

  def __init__(self, *args: Any, **kwargs: Any):
    pass

  def __setstate__(self, state: Any) -> None:  # pickle's BUILD
    self.state = state

  def __setitem__(self, key: Any, value: Any) -> None:  # SETITEMS
    self.items[key] = value

  def append(self, value: Any) -> None:  # APPENDS
    self.entries.append(value)

  extend = lambda self, values: self.entries.extend(values)

  qualname = property(lambda self: f"{self.module}.{self.name}")

  def __repr__(self) -> str:
    return f"<{self.qualname} (not rebuilt)>"


def opaque_class(module: str, name: str) -> type:
  """A fresh :class:`Opaque` subclass standing in for the global ``module.name``."""
  return type(name, (Opaque,), {"module": module, "name": name, "__module__": __name__})


class StorageType(NamedTuple):
  """What ``torch.<name>Storage`` unpickles to: a marker naming the element type."""

  name: str


class Storage(NamedTuple):
  """A storage named by a persistent id: its key, element dtype and number of elements."""

  key: str
  dtype: np.dtype
  numel: int


class TensorRef(NamedTuple):
  """A tensor as pickled: a strided view (in elements) of a storage, read after the pickle."""

  storage: Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorRef:
  """Stands in for ``torch._utils._rebuild_tensor_v2``."""
  if not (
    isinstance(storage, Storage)
    and isinstance(offset, int)
    and all(isinstance(v, int) for v in (*size, *stride))
    and len(size) == len(stride)
  ):
    raise _Invalid("a tensor in the pickle is malformed")
  return TensorRef(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
  """Stands in for ``torch._utils._rebuild_parameter[_with_state]``: the parameter's tensor."""
  return data


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
  """Stands in for NumPy's scalar reconstructor (``numpy.core.multiarray.scalar``); a scalar of
  any other kind stays an :class:`Opaque` record."""
  if (
    not isinstance(dtype, np.dtype)
    or dtype.hasobject
    or not isinstance(data, bytes)
    or len(data) != dtype.itemsize
  ):
    return opaque_class("numpy.core.multiarray", "scalar")(dtype, data)
  return np.frombuffer(data, dtype)[0]


def _encode(text: Any, encoding: Any = "utf-8") -> Any:
  """Stands in for ``_codecs.encode``, how protocol 2 pickles ``bytes`` (as latin-1 text)."""
  if isinstance(text, str) and encoding in ("latin1", "latin-1"):
    return text.encode("latin1")
  return opaque_class("_codecs", "encode")(text, encoding)


def _numpy_dtype(spec: Any, *_: Any) -> np.dtype:
  """Stands in for ``numpy.dtype`` (a plain type code only)."""
  if not isinstance(spec, str) or spec.startswith("O"):
    raise _Invalid(f"a NumPy dtype {str(spec)[:20]!r} in the pickle is not a plain one")
  return np.dtype(spec)


SAFE_GLOBALS = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
  ("torch", "Size"): tuple,
  ("numpy.core.multiarray", "scalar"): _numpy_scalar,
  ("numpy._core.multiarray", "scalar"): _numpy_scalar,
  ("numpy", "dtype"): _numpy_dtype,
  ("_codecs", "encode"): _encode,
  ("builtins", "set"): set,
  ("builtins", "frozenset"): frozenset,
  ("builtins", "bytearray"): bytearray,
  ("builtins", "complex"): complex,
}


class _Unpickler(pickle.Unpickler):
  """An unpickler that rebuilds tensors and a few plain types, and nothing else."""

  def __init__(self, file: BinaryIO, byteorder: str = "<"):
    super().__init__(file)
    self.byteorder = byteorder
    self.storages: dict[str, Storage] = {}

  def find_class(self, module: str, name: str) -> Any:
    """The safe stand-in of a global name, or an :class:`Opaque` class for it (Python 2 names,
    such as protocol 2's ``__builtin__``, read as their Python 3 ones)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[module, name]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if (module, name) in SAFE_GLOBALS:
      return SAFE_GLOBALS[module, name]
    if module == "torch" and name in STORAGE_DTYPES:
      return StorageType(name)
    return opaque_class(module, name)

  def persistent_load(self, pid: Any) -> Storage:
    """Maps ``("storage", type, key, location, numel[, view])`` to a :class:`Storage`."""
    if not (
      isinstance(pid, tuple)
      and len(pid) in (5, 6)
      and pid[0] == "storage"
      and isinstance(pid[1], StorageType)
      and isinstance(pid[4], int)
    ):
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
  except Exception as e:  # noqa: BLE001 (anything a damaged pickle can raise)
    raise _Invalid(f"its pickle is damaged ({type(e).__name__})") from None


def _buffer(storage: Storage, data: bytes) -> np.ndarray:
  """The elements of a storage from its raw bytes, checking the length."""
  if len(data) != storage.numel * storage.dtype.itemsize:
    raise _Invalid(
      f"its storage {storage.key} has {len(data)} bytes, expected "
      f"{storage.numel * storage.dtype.itemsize} (a truncated download?)"
    )
  return np.frombuffer(data, storage.dtype)


def _read_zip(archive: zipfile.ZipFile) -> tuple[Any, dict[str, np.ndarray]]:
  """The unpickled object and storage buffers of a zip-format ``torch.save`` file."""
  pickles = [
    n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl" and n.count("/") == 1
  ]
  if len(pickles) != 1:
    raise _Invalid("it is a zip archive but not a torch.save file (no <archive>/data.pkl)")
  prefix = pickles[0][: -len("data.pkl")]
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


def _array(ref: TensorRef, buffers: dict[str, np.ndarray]) -> np.ndarray:
  """Copies a tensor out of its storage buffer, checking that the view stays inside it."""
  buffer = buffers[ref.storage.key]
  dtype = buffer.dtype.newbyteorder("=")
  if 0 in ref.size:
    return np.zeros(ref.size, dtype)
  last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
  if ref.offset < 0 or min(ref.stride, default=0) < 0 or last >= len(buffer):
    raise _Invalid(f"a tensor of shape {ref.size} reaches outside its storage {ref.storage.key}")
  view = np.lib.stride_tricks.as_strided(
    buffer[ref.offset :], ref.size, [s * buffer.itemsize for s in ref.stride]
  )
  return view.astype(dtype)


def _resolve(obj: Any, buffers: dict[str, np.ndarray], memo: dict[int, Any]) -> Any:
  """``obj`` with every tensor replaced by its array (containers rebuilt, opaque objects and
  OrderedDicts updated in place; shared objects stay shared)."""
  if isinstance(obj, TensorRef):
    return _array(obj, buffers)
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, dict):
    memo[id(obj)] = obj
    for key in list(obj):
      obj[key] = _resolve(obj[key], buffers, memo)
    return obj
  if isinstance(obj, list):
    memo[id(obj)] = obj
    obj[:] = [_resolve(v, buffers, memo) for v in obj]
    return obj
  if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
    memo[id(obj)] = out = tuple(_resolve(v, buffers, memo) for v in obj)
    return out
  if isinstance(obj, Opaque):
    memo[id(obj)] = obj
    obj.args = _resolve(obj.args, buffers, memo)
    obj.kwargs = _resolve(obj.kwargs, buffers, memo)
    obj.state = _resolve(obj.state, buffers, memo)
    obj.items = _resolve(obj.items, buffers, memo)
    obj.entries = _resolve(obj.entries, buffers, memo)
  return obj


def load(path: str) -> Any:
  """Reads a ``torch.save`` file (either format) with every tensor as a NumPy array.

  Args:
    path: the file.

  Returns:
    The saved object: dicts, lists, tuples and numbers as saved, tensors and parameters as NumPy
    arrays (copies in native byte order), other objects as :class:`Opaque` records.

  Raises:
    ValueError: one line if the file is missing, not a ``torch.save`` file or damaged.
  """
  if not os.path.isfile(path):
    raise ValueError(f"the file {path} does not exist")
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
      return _resolve(obj, buffers, {})
  except _Invalid as e:
    raise ValueError(f"{path} is not a readable torch.save file: {e}") from None
  except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as e:
    raise ValueError(
      f"{path} is not a readable torch.save file: its zip archive is damaged ({type(e).__name__})"
    ) from None
  except OSError as e:
    raise ValueError(f"cannot read {path} ({e.strerror or e})") from None
