"""The FID InceptionV3 (pool3 features, Inception Score logits) in Flax Linen, with local weights.

Architecture. This is the network of TF-FID (``inception-2015-12-05``) as ported by pytorch-fid
(``FIDInceptionA/C/E_1/E_2`` on top of torchvision's ``Inception3``), truncated after the final
global average pool ("pool3"). It differs from torchvision's ImageNet InceptionV3 in the pooling
branches: ``Mixed_5b-d`` (A), ``Mixed_6b-e`` (C) and ``Mixed_7b`` (E_1) average-pool 3x3/1 with
padding 1 *without* counting the padded zeros (``count_include_pad=False``), and ``Mixed_7c``
(E_2) max-pools there instead. Every convolution has no bias and is followed by inference-mode
BatchNorm (eps 1e-3, running statistics in the ``batch_stats`` collection) and a ReLU. The network
up to pool3 has 94 convolutions and 21,785,568 parameters (convolution kernels plus BatchNorm
scale/bias; the running means/variances, another 2 x 17,216 numbers, are not counted). That equals
torchvision's ``inception_v3`` (27,161,264 with 1000 classes and the auxiliary head) minus the final
``fc`` (2,049,000) and ``AuxLogits`` (3,326,696). On top of pool3 sits the TF graph's 1008-way
classifier ``fc`` (kernel 2048 x 1008 and bias 1008: 2,065,392 parameters, 23,850,960 in all),
used only for the Inception Score's logits.

Inception Score logits. ``InceptionV3(logits=True)`` returns ``(pool3, pool3 @ fc/kernel)``, and
:func:`features` with ``logits=True`` gives both from one forward pass. The logits leave out
``fc/bias``, as the Inception Score of the field does (OpenAI's improved-GAN ``inception_score.py``
multiplies pool3 by the softmax weights alone; torch-fidelity's ``isc`` uses its
``logits_unbiased``); the bias is kept in the weights only so that they hold pytorch-fid's whole
classifier.

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
* ``<layer>/bn/mean``, ``<layer>/bn/var``: ``<layer>.bn.running_mean``, ``<layer>.bn.running_var``;
* ``fc/kernel``: ``fc.weight`` transposed, ``(2048, 1008)``; ``fc/bias``: ``fc.bias``, ``(1008,)``.

Any ``num_batches_tracked`` entries are dropped. ``fc`` is optional: a file converted before it was
kept (without ``fc/*``) still gives pool3 features for FID, and asking it for logits is a one-line
error that says to convert again. The conversion needs no PyTorch
(``fdrl_jax/convert_inception.py`` reads the ``torch.save`` file itself); run once::

  python -m fdrl_jax.convert_inception pt_inception-2015-12-05-6726825d.pth pt_inception.npz

It never overwrites its output and checks the result with :func:`load_weights`, which, like
:func:`check_weights`, reports a missing, unreadable or foreign file in one line.

Comparability. FID from this network is the standard TF-FID / pytorch-fid number. The FDRL
paper's FID numbers were computed with torchvision's ImageNet InceptionV3 on float images, a
different network with different weights, so they are not comparable with numbers from here.

Several devices. With a ``mesh`` (``parallel.data_mesh``), :func:`features` splits each batch over
its "data" axis, so that each device computes its own rows; :func:`feature_moments` reduces a batch
of features on the devices to its count, sum and sum of outer products, so that only D + D^2
numbers per batch reach the host, and :func:`moments_statistics` turns them into the mean and
covariance of ``scores.feature_statistics`` (:func:`image_statistics` does all three).
"""

from __future__ import annotations

import functools
import os
import zipfile
from typing import Any, Iterable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fdrl_jax import parallel

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the TF graph's classifier: ImageNet's 1000 classes and 8 unused outputs
FC_KEYS = ("fc/bias", "fc/kernel")  # optional in a weights file (not in older conversions)
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


class Classifier(nn.Module):
  """Computes the Inception Score's logits pool3 @ kernel (B, 1008), without the bias.

  The bias is a variable all the same, so that the weights hold pytorch-fid's whole ``fc``.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps pool3 features (B, 2048) to logits (B, 1008)."""
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], NUM_CLASSES))
    self.param("bias", nn.initializers.zeros_init(), (NUM_CLASSES,))
    # Full float32 products: TF32 (XLA's default on recent GPUs) keeps 10 mantissa bits.
    return jnp.dot(x, kernel, precision=jax.lax.Precision.HIGHEST)


class InceptionV3(nn.Module):
  """Computes the 2048-d pool3 features of the FID InceptionV3 (see the module docstring).

  Attributes:
    resize_input: resize inputs that are not 299x299 bilinearly to 299x299 first.
    logits: also return the Inception Score's logits (the ``fc`` variables are then needed).
  """
  resize_input: bool = True
  logits: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Maps NHWC images in [-1, 1] of shape (B, H, W, 3) to features of shape (B, 2048), or with
    ``logits`` to (features, logits of shape (B, 1008))."""
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
    pool3 = jnp.mean(x, axis=(1, 2))
    return (pool3, Classifier(name="fc")(pool3)) if self.logits else pool3


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
  """Computes the flat key -> (collection, path, shape/dtype) table of the network's variables,
  the classifier's (``FC_KEYS``) included."""
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return _flatten(jax.eval_shape(InceptionV3(logits=True).init, jax.random.key(0), x))


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


def _no_classifier(source: str) -> ValueError:
  """The one-line error for logits asked of weights converted before ``fc`` was kept."""
  return ValueError(f"{source} have no classifier fc (converted before it was kept), which the "
                    f"Inception Score's logits need; convert pytorch-fid's weights again with: "
                    f"{CONVERT_COMMAND} OUT.npz")


def _check_shapes(path: str, found: dict[str, tuple[tuple[int, ...], Any]], logits: bool) -> None:
  """One-line ValueErrors for the first missing or wrongly shaped layer, or an unexpected key;
  ``fc`` may be missing as a whole unless ``logits``."""
  table = expected_shapes()
  if not found:
    raise _not_weights(path, "it holds no arrays")
  if not found.keys() & table.keys():
    names = ", ".join(sorted(found)[:3]) + (", ..." if len(found) > 3 else "")
    raise _not_weights(path, f"none of its arrays ({names}) is a layer of the network")
  if not found.keys() & set(FC_KEYS):
    if logits:
      raise _no_classifier(f"the weights in {path}")
    table = {key: value for key, value in table.items() if key not in FC_KEYS}
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
    for key, (collection, names, expected) in expected_shapes().items():
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


def _network_variables(variables: Variables, logits: bool) -> Variables:
  """The variables that ``InceptionV3(logits=logits)`` reads: without ``fc`` unless ``logits``
  (so that weights with and without it share one compiled network for features alone)."""
  has_fc = "fc" in variables["params"]
  if logits and not has_fc:
    raise _no_classifier("these FID Inception weights")
  if logits or not has_fc:
    return variables
  return {**variables, "params": {k: v for k, v in variables["params"].items() if k != "fc"}}


@functools.cache
def _apply_fn(resize_input: bool, logits: bool, mesh: Mesh | None) -> Any:
  """Returns the jitted ``InceptionV3(resize_input, logits).apply``; with a mesh, the variables
  replicated and the images, features and logits split over "data"."""
  apply = InceptionV3(resize_input, logits).apply
  if mesh is None:
    return jax.jit(apply)
  rows = parallel.particles(mesh)
  return jax.jit(apply, in_shardings=(parallel.replicated(mesh), rows), out_shardings=rows)


def _batches(images: np.ndarray, batch_size: int, mesh: Mesh | None
             ) -> Iterable[tuple[Any, Any, int]]:
  """Yields (images, valid rows, count) per batch of ``batch_size`` images, zero-padded to a fixed
  size (``batch_size``, rounded up to a multiple of the mesh's devices) and, with a mesh, split
  over "data" (every process holds all images and places its own devices' rows)."""
  size = batch_size if mesh is None else -(-batch_size // mesh.devices.size) * mesh.devices.size
  for start in range(0, len(images), batch_size):
    batch = np.asarray(images[start:start + batch_size], np.float32)
    count = len(batch)
    batch = np.pad(batch, ((0, size - count),) + ((0, 0),) * (batch.ndim - 1))
    valid = np.arange(size) < count
    if mesh is not None:
      batch, valid = parallel.put_particles(batch, mesh), parallel.put_particles(valid, mesh)
    yield batch, valid, count


def _numpy(x: Any) -> np.ndarray:
  """A host value, or a device array (gathered to every process if split), as float64 NumPy."""
  return np.asarray(parallel.to_host(x) if isinstance(x, jax.Array) else x, np.float64)


def _placed(variables: Variables, logits: bool, mesh: Mesh | None) -> tuple[Variables, Mesh | None]:
  """The network's variables (replicated over ``mesh``) and the mesh, None for one device."""
  variables = _network_variables(variables, logits)
  if mesh is None or mesh.devices.size == 1:
    return variables, None
  return jax.device_put(variables, parallel.replicated(mesh)), mesh


def features(variables: Variables, images: np.ndarray, batch_size: int = 50,
             resize_input: bool = True, *, logits: bool = False, mesh: Mesh | None = None
             ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """Computes pool3 features (N, 2048) as float64 for NHWC images in [-1, 1], in batches.

  The last batch is zero-padded to ``batch_size`` so that the network compiles once per image size.

  Args:
    variables: as returned by :func:`load_weights` (or ``InceptionV3(logits=True).init``).
    images: array of shape (N, H, W, 3) with values in [-1, 1]; with several processes, every
      process holds all of them.
    batch_size: images per forward pass.
    resize_input: resize non-299x299 inputs bilinearly to 299x299 first.
    logits: also return the Inception Score's logits pool3 @ fc/kernel (no bias; see the module
      docstring), from the same forward pass.
    mesh: a mesh with a "data" axis (``parallel.data_mesh``): each device computes its rows of
      every batch (the batch is padded to a multiple of the devices, and the padding dropped), and
      every process gets all the features. None, or one device: one device computes them all.

  Returns:
    Float64 array of shape (N, 2048); with ``logits``, the pair (features, float64 logits of shape
    (N, 1008)).

  Raises:
    ValueError: one line if ``logits`` is asked of weights without the classifier ``fc``.
  """
  variables, mesh = _placed(variables, logits, mesh)
  apply = _apply_fn(resize_input, logits, mesh)
  out = []
  for batch, _, count in _batches(images, batch_size, mesh):
    result = apply(variables, batch)
    out.append(tuple(_numpy(r)[:count] for r in (result if logits else (result,))))
  if not out:
    out = [(np.zeros((0, FEATURE_DIM)), np.zeros((0, NUM_CLASSES)))[:1 + logits]]
  feats, *rest = (np.concatenate(parts) for parts in zip(*out))
  return (feats, rest[0]) if logits else feats


class Moments(NamedTuple):
  """Sums over the rows x of a feature set, about a fixed shift c: count, sum of (x - c), and sum
  of the outer products (x - c)(x - c)^T."""
  count: Any  # (), int32 on devices, an int on the host
  total: Any  # (D,)
  outer: Any  # (D, D)


def feature_moments(feats: jax.Array, valid: jax.Array, shift: jax.Array) -> Moments:
  """Computes the moments of the valid rows of a batch of features (N, D) about ``shift`` (D,).

  Pure and jit-able: with ``feats`` and ``valid`` split over a mesh's "data" axis, XLA computes
  each device's partial sums and all-reduces them, so the result (D + D^2 numbers) is the batch's
  over all devices and processes (build the inputs with ``parallel.put_particles`` when every
  process holds the whole batch, or ``parallel.global_batch`` when each holds its rows).

  Args:
    feats: features (N, D).
    valid: booleans (N,): False for padding rows, which count for nothing.
    shift: the centre c (D,); a value near the mean (the first batch's) keeps float32 sums
      accurate.

  Returns:
    ``Moments`` of the batch, in the features' dtype (the count as int32).
  """
  centred = jnp.where(valid[:, None], feats - shift, 0.0)
  # Full float32 products: TF32 (XLA's default on recent GPUs) keeps 10 mantissa bits.
  outer = jnp.dot(centred.T, centred, precision=jax.lax.Precision.HIGHEST)
  return Moments(jnp.sum(valid, dtype=jnp.int32), centred.sum(0), outer)


def add_moments(a: Moments, b: Moments) -> Moments:
  """The float64 host sum of two batches' moments (about the same shift); ``b`` may be on devices
  (replicated, as :func:`feature_moments` jitted over a mesh leaves it). Start from
  ``Moments(0, 0.0, 0.0)``."""
  return Moments(int(a.count) + int(_numpy(b.count)), _numpy(a.total) + _numpy(b.total),
                 _numpy(a.outer) + _numpy(b.outer))


def moments_statistics(moments: Moments, shift: Any) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64, on the host) of a feature set from its accumulated moments.

  With m = s / n: mu = c + m and sigma = (S - n m m^T) / (n - 1), which is
  ``scores.feature_statistics`` of the same rows when c is its shift (the first batch's mean).

  Args:
    moments: the sum (:func:`add_moments`) of the batches' :func:`feature_moments`.
    shift: the shift c that all of them used.

  Returns:
    (mu (D,), sigma (D, D)), float64.

  Raises:
    ValueError: one line for fewer than 2 rows.
  """
  count = int(moments.count)
  if count < 2:
    raise ValueError(f"Feature statistics need (N, D) features with N >= 2, got N = {count}.")
  mean = _numpy(moments.total) / count
  return _numpy(shift) + mean, (_numpy(moments.outer) - count * np.outer(mean, mean)) / (count - 1)


@functools.cache
def _moments_fn(mesh: Mesh | None) -> Any:
  """Returns the jitted :func:`feature_moments`; with a mesh, its result replicated."""
  if mesh is None:
    return jax.jit(feature_moments)
  rows, replicated = parallel.particles(mesh), parallel.replicated(mesh)
  return jax.jit(feature_moments, in_shardings=(rows, rows, replicated),
                 out_shardings=replicated)


def image_statistics(variables: Variables, batches: Iterable[np.ndarray], batch_size: int = 50,
                     resize_input: bool = True, *, mesh: Mesh | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64) of the pool3 features of streamed images, as
  ``scores.feature_statistics(features(...) for each batch)``, with only the moments of each
  forward pass leaving the devices.

  Args:
    variables: as for :func:`features`.
    batches: an iterable of image arrays (n, H, W, 3) in [-1, 1]; with several processes, every
      process holds each whole.
    batch_size: images per forward pass.
    resize_input: resize non-299x299 inputs bilinearly to 299x299 first.
    mesh: as for :func:`features`.

  Returns:
    (mu (2048,), sigma (2048, 2048)), float64; moments are summed about the first forward pass's
    mean in float32 on the devices, then in float64.

  Raises:
    ValueError: one line for fewer than 2 images.
  """
  variables, mesh = _placed(variables, False, mesh)
  apply, reduce = _apply_fn(resize_input, False, mesh), _moments_fn(mesh)
  shift, total = np.zeros(FEATURE_DIM, np.float32), Moments(0, 0.0, 0.0)
  for images in batches:
    for batch, valid, _ in _batches(images, batch_size, mesh):
      feats = apply(variables, batch)
      if not total.count:
        first = reduce(feats, valid, jnp.zeros(FEATURE_DIM, feats.dtype))
        shift = first.total / first.count
      total = add_moments(total, reduce(feats, valid, shift))  # D + D^2 numbers to the host
  return moments_statistics(total, shift)
