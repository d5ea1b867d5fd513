"""Writes ``torch.save`` files without torch, for the tests of ``fdrl_jax.torch_files``.

The files have torch's layouts (the zip archive ``<archive>/data.pkl`` + ``<archive>/data/<key>``,
or the legacy stream of pickles) and its pickled names: a NumPy array is pickled as
``torch._utils._rebuild_tensor_v2(<storage>, offset, size, stride, False, OrderedDict())`` with its
storage a persistent id ``("storage", torch.<Type>Storage, key, "cpu", numel)``. Other globals
(``torch.distributions...MultivariateNormal``, ``dill._dill._create_function``...) are written by
stand-in classes and functions made with :func:`fake_class` / :func:`fake_function`, whose module
and name are those of the real ones; ``sys.modules`` holds stand-in modules while pickling.
"""

from __future__ import annotations

import collections
import io
import pickle
import sys
import types
import zipfile
from typing import Any, NamedTuple

import numpy as np
import pytest

KINDS = {"f4": "FloatStorage", "f8": "DoubleStorage", "f2": "HalfStorage", "i8": "LongStorage",
         "i4": "IntStorage", "u1": "ByteStorage", "b1": "BoolStorage"}
_GLOBALS: dict[tuple[str, str], Any] = {}


class FakeStorage(NamedTuple):
  """A storage: its key, ``torch.<type_name>`` and its elements."""
  key: str
  type_name: str
  data: np.ndarray


class View(NamedTuple):
  """A tensor as a strided view (in elements) of a given storage."""
  storage: FakeStorage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def fake_function(module: str, name: str) -> Any:
  """A function pickled by reference as ``module.name`` (never called on loading here)."""
  if (module, name) not in _GLOBALS:
    def fn(*args):
      raise AssertionError(f"{module}.{name} is only pickled by reference")
    fn.__module__, fn.__qualname__, fn.__name__ = module, name, name
    _GLOBALS[module, name] = fn
  return _GLOBALS[module, name]


def fake_class(module: str, name: str) -> type:
  """A class pickled by reference as ``module.name``: its instances pickle as ``NEWOBJ`` and their
  ``__dict__`` as the state (protocol 2's default, as torch objects without ``__reduce__``)."""
  if (module, name) not in _GLOBALS:
    _GLOBALS[module, name] = type(name, (), {"__module__": module, "__qualname__": name})
  return _GLOBALS[module, name]


def instance(module: str, name: str, **state: Any) -> Any:
  """An object of the fake class ``module.name`` with ``state`` as its attributes."""
  obj = fake_class(module, name)()
  obj.__dict__.update(state)
  return obj


class Call:
  """Pickles as ``fn(*args)`` (REDUCE), ``fn`` a global."""

  def __init__(self, fn: Any, *args: Any):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


def _modules() -> dict[str, types.ModuleType]:
  """Stand-in modules (parents included) holding every fake global and torch's tensor names."""
  fake_function("torch._utils", "_rebuild_tensor_v2")
  for kind in KINDS.values():
    fake_class("torch", kind)
  modules: dict[str, types.ModuleType] = {}
  for (module, name), obj in _GLOBALS.items():
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
      modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    setattr(modules[module], name, obj)
  return modules


class _Pickler(pickle.Pickler):
  """torch.save's pickler: arrays as tensors, storages as persistent ids."""

  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)
    self.legacy = legacy
    self.storages: dict[str, np.ndarray] = {}

  def persistent_id(self, obj):
    if not isinstance(obj, FakeStorage):
      return None
    self.storages[obj.key] = obj.data
    pid = ("storage", fake_class("torch", obj.type_name), obj.key, "cpu", obj.data.size)
    return pid + (None,) if self.legacy else pid

  def reducer_override(self, obj):
    if isinstance(obj, np.ndarray):
      value = np.array(obj, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
      value = value.astype(value.dtype.newbyteorder("<"))
      storage = FakeStorage(str(len(self.storages) + 1000), KINDS[value.dtype.str[1:]],
                            value.ravel())
      obj = View(storage, 0, value.shape, tuple(s // max(value.itemsize, 1)
                                                for s in value.strides))
    if isinstance(obj, View):
      rebuild = fake_function("torch._utils", "_rebuild_tensor_v2")
      return rebuild, (obj.storage, obj.offset, tuple(obj.size), tuple(obj.stride), False,
                       collections.OrderedDict())
    return NotImplemented


def torch_save(path, obj: Any, legacy: bool = False, archive: str = "archive") -> str:
  """Writes ``obj`` as ``torch.save(obj, path)`` would (zip, or the legacy stream)."""
  pickled = io.BytesIO()
  with pytest.MonkeyPatch.context() as patch:
    for name, module in _modules().items():
      patch.setitem(sys.modules, name, module)
    pickler = _Pickler(pickled, legacy)
    pickler.dump(obj)
  storages = pickler.storages
  if legacy:
    with open(path, "wb") as f:
      info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 4}}
      for item in (0x1950a86a20f9469cfc6c, 1001, info):
        pickle.dump(item, f, protocol=2)
      f.write(pickled.getvalue())
      pickle.dump(sorted(storages), f, protocol=2)
      for key in sorted(storages):
        f.write(np.array(storages[key].size, "<i8").tobytes() + storages[key].tobytes())
  else:
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr(f"{archive}/data.pkl", pickled.getvalue())
      zf.writestr(f"{archive}/byteorder", "little")
      for key, data in storages.items():
        zf.writestr(f"{archive}/data/{key}", data.tobytes())
      zf.writestr(f"{archive}/version", "3\n")
  return str(path)


def multivariate_normal(loc: np.ndarray, covariance: np.ndarray) -> Any:
  """A ``torch.distributions.MultivariateNormal(loc, covariance_matrix=...)`` as torch pickles it:
  its ``__dict__`` (the Cholesky factor in ``_unbroadcasted_scale_tril``, the shapes as
  ``torch.Size``)."""
  size = fake_class("torch", "Size")
  shape = lambda *dims: Call(size, tuple(dims))
  return instance("torch.distributions.multivariate_normal", "MultivariateNormal",
                  loc=np.asarray(loc, np.float32),
                  covariance_matrix=np.asarray(covariance, np.float32),
                  _unbroadcasted_scale_tril=np.linalg.cholesky(covariance).astype(np.float32),
                  _batch_shape=shape(), _event_shape=shape(len(loc)), _validate_args=False)
