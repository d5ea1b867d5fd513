"""The FID InceptionV3 network (pool3, 2048-d features) in Flax Linen, with local weights.

Architecture. This is the network of TF-FID (``inception-2015-12-05``) as ported by pytorch-fid
(``FIDInceptionA/C/E_1/E_2`` on top of torchvision's ``Inception3``), truncated after the final
global average pool ("pool3"). It differs from torchvision's ImageNet InceptionV3 in the pooling
branches: ``Mixed_5b-d`` (A), ``Mixed_6b-e`` (C) and ``Mixed_7b`` (E_1) average-pool 3x3/1 with
padding 1 *without* counting the padded zeros (``count_include_pad=False``), and ``Mixed_7c``
(E_2) max-pools there instead. Every convolution has no bias and is followed by inference-mode
BatchNorm (eps 1e-3, running statistics in the ``batch_stats`` collection) and a ReLU. The network
has 94 convolutions and 21,785,568 parameters (convolution kernels plus BatchNorm scale/bias; the
running means/variances, another 2 x 17,216 numbers, are not counted). That equals torchvision's
``inception_v3`` (27,161,264 with 1000 classes and the auxiliary head) minus the final ``fc``
(2,049,000) and ``AuxLogits`` (3,326,696).

Input convention. ``InceptionV3()(x)`` takes NHWC float images with values in [-1, 1] (map uint8
pixels by ``p / 127.5 - 1``; pytorch-fid's [0, 1] inputs by ``2 p - 1``), 3 channels. With
``resize_input=True`` (the default, as in pytorch-fid) any input that is not 299 x 299 is first
resized bilinearly to 299 x 299 with half-pixel centres and no anti-aliasing, which matches
``F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)``. Since bilinear
resizing is affine, resizing after the [0, 1] -> [-1, 1] map (pytorch-fid resizes before) gives
the same result up to rounding.

Weights. No weights ship with this package and nothing is downloaded. The expected source is
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a PyTorch ``state_dict`` of the TF FID
Inception graph, from the pytorch-fid GitHub release ``fid_weights``), converted once to an
``.npz`` file that :func:`load_weights` reads. The ``.npz`` holds one array per leaf, with flat
keys ``<layer>/<conv|bn>/<leaf>`` where ``<layer>`` is the PyTorch module path with ``.`` replaced
by ``/`` (e.g. ``Conv2d_1a_3x3``, ``Mixed_5b/branch1x1``, ``Mixed_7c/branch3x3dbl_3a``):

* ``<layer>/conv/kernel``: ``<layer>.conv.weight`` transposed OIHW -> HWIO, ``(kh, kw, in, out)``;
* ``<layer>/bn/scale``, ``<layer>/bn/bias``: ``<layer>.bn.weight``, ``<layer>.bn.bias``;
* ``<layer>/bn/mean``, ``<layer>/bn/var``: ``<layer>.bn.running_mean``, ``<layer>.bn.running_var``.

The classifier ``fc.*`` and any ``num_batches_tracked`` entries are dropped. The conversion needs
no PyTorch (``fdrl_jax/convert_inception.py`` reads the ``torch.save`` file itself); run once::

  python -m fdrl_jax.convert_inception pt_inception-2015-12-05-6726825d.pth pt_inception.npz

It never overwrites its output and checks the result with :func:`load_weights`, which, like
:func:`check_weights`, reports a missing, unreadable or foreign file in one line.

Comparability. FID from this network is the standard TF-FID / pytorch-fid number. The FDRL
paper's FID numbers were computed with torchvision's ImageNet InceptionV3 on float images, a
different network with different weights, so they are not comparable with numbers from here.
"""

from __future__ import annotations

import functools
import os
import zipfile
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
FEATURE_DIM = 2048
Padding = tuple[tuple[int, int], tuple[int, int]]
Variables = dict[str, Any]
VALID: Padding = ((0, 0), (0, 0))
SOURCE_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
CONVERT_COMMAND = f"python -m fdrl_jax.convert_inception {SOURCE_WEIGHTS}"


def _pad(kh: int, kw: int) -> Padding:
  """Symmetric padding that keeps the spatial size of a stride-1 (kh, kw) convolution."""
  return ((kh // 2, kh // 2), (kw // 2, kw // 2))


class ConvBN(nn.Module):
  """Computes ReLU(BatchNorm(conv(x))) with a bias-free convolution and inference-mode BN."""
  features: int
  kernel: tuple[int, int] = (1, 1)
  strides: int = 1
  padding: Padding = VALID

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the convolution, BatchNorm (running statistics, eps 1e-3) and ReLU."""
    x = nn.Conv(self.features, self.kernel, (self.strides, self.strides), self.padding,
                use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _conv(features: int, name: str, kh: int = 1, kw: int | None = None, strides: int = 1,
          same: bool = True) -> ConvBN:
  """Builds a ConvBN; ``same`` pads to keep the size, otherwise the convolution is unpadded."""
  kw = kh if kw is None else kw
  return ConvBN(features, (kh, kw), strides, _pad(kh, kw) if same else VALID, name=name)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """Computes the 3x3/1 average pool over the unpadded pixels only (TF, count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array) -> jax.Array:
  """Computes the 3x3/1 max pool with padding 1."""
  return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


def _max_pool_reduce(x: jax.Array) -> jax.Array:
  """Computes the unpadded 3x3/2 max pool that halves the resolution."""
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  """Computes the FID InceptionA block (Mixed_5b-d): 1x1, 5x5, double 3x3 and pool branches."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Concatenates the four branches along channels (224 + pool_features)."""
    b1 = _conv(64, "branch1x1")(x)
    b5 = _conv(64, "branch5x5_2", 5)(_conv(48, "branch5x5_1")(x))
    b3 = _conv(64, "branch3x3dbl_1")(x)
    b3 = _conv(96, "branch3x3dbl_3", 3)(_conv(96, "branch3x3dbl_2", 3)(b3))
    bp = _conv(self.pool_features, "branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Computes the grid-reduction block Mixed_6a (35x35 -> 17x17)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Concatenates the strided 3x3, strided double 3x3 and max-pool branches."""
    b3 = _conv(384, "branch3x3", 3, strides=2, same=False)(x)
    bd = _conv(96, "branch3x3dbl_2", 3)(_conv(64, "branch3x3dbl_1")(x))
    bd = _conv(96, "branch3x3dbl_3", 3, strides=2, same=False)(bd)
    return jnp.concatenate([b3, bd, _max_pool_reduce(x)], axis=-1)


class InceptionC(nn.Module):
  """Computes the FID InceptionC block (Mixed_6b-e) with factorised 7x7 convolutions."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Concatenates the 1x1, 7x7, double 7x7 and pool branches (768 channels)."""
    c = self.channels_7x7
    b1 = _conv(192, "branch1x1")(x)
    b7 = _conv(c, "branch7x7_1")(x)
    b7 = _conv(192, "branch7x7_3", 7, 1)(_conv(c, "branch7x7_2", 1, 7)(b7))
    bd = _conv(c, "branch7x7dbl_1")(x)
    bd = _conv(c, "branch7x7dbl_3", 1, 7)(_conv(c, "branch7x7dbl_2", 7, 1)(bd))
    bd = _conv(192, "branch7x7dbl_5", 1, 7)(_conv(c, "branch7x7dbl_4", 7, 1)(bd))
    bp = _conv(192, "branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Computes the grid-reduction block Mixed_7a (17x17 -> 8x8)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Concatenates the strided 3x3, strided 7x7-then-3x3 and max-pool branches."""
    b3 = _conv(320, "branch3x3_2", 3, strides=2, same=False)(_conv(192, "branch3x3_1")(x))
    b7 = _conv(192, "branch7x7x3_1")(x)
    b7 = _conv(192, "branch7x7x3_3", 7, 1)(_conv(192, "branch7x7x3_2", 1, 7)(b7))
    b7 = _conv(192, "branch7x7x3_4", 3, strides=2, same=False)(b7)
    return jnp.concatenate([b3, b7, _max_pool_reduce(x)], axis=-1)


class InceptionE(nn.Module):
  """Computes the FID InceptionE block; Mixed_7b average-pools (E_1), Mixed_7c max-pools (E_2)."""
  max_pool: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Concatenates the 1x1, split 3x3, split double 3x3 and pool branches (2048 channels)."""
    b1 = _conv(320, "branch1x1")(x)
    b3 = _conv(384, "branch3x3_1")(x)
    b3 = [_conv(384, "branch3x3_2a", 1, 3)(b3), _conv(384, "branch3x3_2b", 3, 1)(b3)]
    bd = _conv(384, "branch3x3dbl_2", 3)(_conv(448, "branch3x3dbl_1")(x))
    bd = [_conv(384, "branch3x3dbl_3a", 1, 3)(bd), _conv(384, "branch3x3dbl_3b", 3, 1)(bd)]
    pooled = _max_pool_3x3(x) if self.max_pool else _avg_pool_3x3(x)
    bp = _conv(192, "branch_pool")(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


def resize_to_input_size(x: jax.Array) -> jax.Array:
  """Resizes NHWC images bilinearly to 299x299 like torch's align_corners=False, no antialias."""
  if x.shape[1:3] == (INPUT_SIZE, INPUT_SIZE):
    return x
  shape = (x.shape[0], INPUT_SIZE, INPUT_SIZE, x.shape[3])
  return jax.image.resize(x, shape, "bilinear", antialias=False)


class InceptionV3(nn.Module):
  """Computes the 2048-d pool3 features of the FID InceptionV3 (see the module docstring).

  Attributes:
    resize_input: resize inputs that are not 299x299 bilinearly to 299x299 first.
  """
  resize_input: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC images in [-1, 1] of shape (B, H, W, 3) to features of shape (B, 2048)."""
    if self.resize_input:
      x = resize_to_input_size(x)
    x = _conv(32, "Conv2d_1a_3x3", 3, strides=2, same=False)(x)
    x = _conv(32, "Conv2d_2a_3x3", 3, same=False)(x)
    x = _max_pool_reduce(_conv(64, "Conv2d_2b_3x3", 3)(x))
    x = _conv(80, "Conv2d_3b_1x1")(x)
    x = _max_pool_reduce(_conv(192, "Conv2d_4a_3x3", 3, same=False)(x))
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features, name=name)(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                           ("Mixed_6e", 192)):
      x = InceptionC(channels, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


def _flatten(variables: Variables) -> dict[str, tuple[str, tuple[str, ...], Any]]:
  """Maps each flat key ``layer/.../leaf`` to (collection, path, leaf), sorted by key."""
  flat = {}
  for collection, tree in variables.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      names = tuple(p.key for p in path)
      flat["/".join(names)] = (collection, names, leaf)
  return dict(sorted(flat.items()))


@functools.cache
def expected_shapes() -> dict[str, tuple[str, tuple[str, ...], jax.ShapeDtypeStruct]]:
  """Computes the flat key -> (collection, path, shape/dtype) table of the network's variables."""
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return _flatten(jax.eval_shape(InceptionV3().init, jax.random.key(0), x))


def save_weights(variables: Variables, path: str) -> None:
  """Writes the network's variables to an ``.npz`` with the flat keys of the module docstring."""
  arrays = {key: np.asarray(leaf) for key, (_, _, leaf) in _flatten(variables).items()}
  np.savez(path, **arrays)


def _not_weights(path: str, reason: str) -> ValueError:
  """The one-line error for a readable file that is not an ``.npz`` of these weights."""
  return ValueError(f"{path} is not an .npz of the FID Inception ({reason}); convert pytorch-fid's "
                    f"weights with: {CONVERT_COMMAND} OUT.npz")


def _torch_file(path: str) -> ValueError:
  """The one-line error for a ``torch.save`` file (or other pickle) given as the weights."""
  return ValueError(f"{path} is a PyTorch file or a pickle, not an .npz of the FID Inception; if "
                    f"it is pytorch-fid's, convert it with: python -m fdrl_jax.convert_inception "
                    f"{path} OUT.npz")


def _open_npz(path: str) -> np.lib.npyio.NpzFile:
  """Opens ``path`` by ``np.load``: one-line errors for a missing, unreadable or non-.npz file."""
  if not os.path.exists(path):
    raise ValueError(f"the file {path} does not exist; convert pytorch-fid's weights into it with: "
                     f"{CONVERT_COMMAND} {path}")
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
  if any(name.rsplit("/", 1)[-1] == "data.pkl" for name in data.zip.namelist()):
    raise _torch_file(path)
  out = {}
  for name in data.zip.namelist():
    key = name.removesuffix(".npy")
    try:
      with data.zip.open(name) as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile):
      raise _not_weights(path, f"its member {name} is not a numpy array") from None
    if dtype.kind not in "biuf":
      raise _not_weights(path, f"{key} holds {dtype} values, not numbers")
    out[key] = shape, dtype
  return out


def _check_shapes(path: str, found: dict[str, tuple[tuple[int, ...], Any]]) -> None:
  """One-line ValueErrors for the first missing or wrongly shaped layer, or an unexpected key."""
  table = expected_shapes()
  if not found:
    raise _not_weights(path, "it holds no arrays")
  if not found.keys() & table.keys():
    names = ", ".join(sorted(found)[:3]) + (", ..." if len(found) > 3 else "")
    raise _not_weights(path, f"none of its arrays ({names}) is a layer of the network")
  for key, (_, _, expected) in table.items():
    layer = key.rsplit("/", 2)[0]
    if key not in found:
      raise _not_weights(path, f"layer {layer} is missing {key}, expected shape {expected.shape}")
    if found[key][0] != expected.shape:
      raise _not_weights(path, f"layer {layer} has {key} of shape {found[key][0]}, expected "
                         f"{expected.shape}")
  extra = sorted(found.keys() - table.keys())
  if extra:
    raise _not_weights(path, f"unexpected key {extra[0]}")


def check_weights(path: str) -> None:
  """Checks that ``path`` is an ``.npz`` of FID Inception weights from the array headers alone.

  Reads no array data, so an evaluation can check its weights cheaply before it samples.

  Raises:
    ValueError: one line saying that the file does not exist (with the converter command), cannot
      be read, or is not an ``.npz`` of these weights (naming the first missing or wrongly shaped
      layer, or the first unexpected key, in sorted key order).
  """
  with _open_npz(path) as data:
    _check_shapes(path, _headers(path, data))


def load_weights(path: str) -> Variables:
  """Reads and shape-checks an ``.npz`` of FID Inception weights into Flax variables.

  Args:
    path: ``.npz`` file with the flat keys described in the module docstring.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` for ``InceptionV3().apply``.

  Raises:
    ValueError: as :func:`check_weights`, which it runs first: one line for a missing, unreadable
      or foreign file, naming the first missing or wrongly shaped layer, with the expected and
      found shapes, or the first unexpected key. "First" is in sorted key order, in which the
      top-level layers (``Conv2d_1a_3x3`` ... ``Mixed_7c``) follow the forward pass.
  """
  variables: Variables = {}
  with _open_npz(path) as data:
    _check_shapes(path, _headers(path, data))
    for key, (collection, names, expected) in expected_shapes().items():
      try:
        found = data[key]
      except (ValueError, EOFError, OSError, zipfile.BadZipFile):
        raise _not_weights(path, f"its array {key} is truncated or corrupt") from None
      node = variables.setdefault(collection, {})
      for name in names[:-1]:
        node = node.setdefault(name, {})
      node[names[-1]] = jnp.asarray(found, expected.dtype)
  return variables


@functools.cache
def _apply_fn(resize_input: bool) -> Any:
  """Returns the jitted ``InceptionV3(resize_input).apply``."""
  return jax.jit(InceptionV3(resize_input).apply)


def features(variables: Variables, images: np.ndarray, batch_size: int = 50,
             resize_input: bool = True) -> np.ndarray:
  """Computes pool3 features (N, 2048) as float64 for NHWC images in [-1, 1], in batches.

  The last batch is zero-padded to ``batch_size`` so that the network compiles once per image size.

  Args:
    variables: as returned by :func:`load_weights` (or ``InceptionV3().init``).
    images: array of shape (N, H, W, 3) with values in [-1, 1].
    batch_size: images per forward pass.
    resize_input: resize non-299x299 inputs bilinearly to 299x299 first.

  Returns:
    Float64 array of shape (N, 2048).
  """
  apply = _apply_fn(resize_input)
  out = []
  for start in range(0, len(images), batch_size):
    batch = np.asarray(images[start:start + batch_size], np.float32)
    count = len(batch)
    batch = np.pad(batch, ((0, batch_size - count),) + ((0, 0),) * (batch.ndim - 1))
    out.append(np.asarray(apply(variables, batch), np.float64)[:count])
  return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))
