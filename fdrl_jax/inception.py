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

Weights. No weights ship with this package and nothing is downloaded: pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``, converted once to an ``.npz`` (``convert_inception``),
is read, checked and written by ``fdrl_jax.inception_weights``, whose docstring gives the file's
keys. ``expected_shapes`` is the table of the network's variables that it checks against.

Comparability. FID from this network is the standard TF-FID / pytorch-fid number. The FDRL
paper's FID numbers were computed with torchvision's ImageNet InceptionV3 on float images, a
different network with different weights, so they are not comparable with numbers from here.

Several devices. With a ``mesh`` (``parallel.data_mesh``), :func:`features` splits each batch over
its "data" axis, so that each device computes its own rows, and gives every process all the
features (``fdrl_jax.features`` sums their moments).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

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
    x = nn.Conv(
      self.features,
      self.kernel,
      (self.strides, self.strides),
      self.padding,
      use_bias=False,
      name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _conv(
  features: int, name: str, kh: int = 1, kw: int | None = None, strides: int = 1, same: bool = True
) -> ConvBN:
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
    b3_stem = _conv(384, "branch3x3_1")(x)
    b3 = [_conv(384, "branch3x3_2a", 1, 3)(b3_stem), _conv(384, "branch3x3_2b", 3, 1)(b3_stem)]
    bd_stem = _conv(384, "branch3x3dbl_2", 3)(_conv(448, "branch3x3dbl_1")(x))
    bd = [
      _conv(384, "branch3x3dbl_3a", 1, 3)(bd_stem),
      _conv(384, "branch3x3dbl_3b", 3, 1)(bd_stem),
    ]
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
    for name, channels in (
      ("Mixed_6b", 128),
      ("Mixed_6c", 160),
      ("Mixed_6d", 160),
      ("Mixed_6e", 192),
    ):
      x = InceptionC(channels, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    return (pool3, Classifier(name="fc")(pool3)) if self.logits else pool3


def flatten(variables: Variables) -> dict[str, tuple[str, tuple[str, ...], Any]]:
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
  return flatten(jax.eval_shape(InceptionV3(logits=True).init, jax.random.key(0), x))


def no_classifier(source: str) -> ValueError:
  """The one-line error for logits asked of weights converted before ``fc`` was kept."""
  return ValueError(
    f"{source} have no classifier fc (converted before it was kept), which the "
    f"Inception Score's logits need; convert pytorch-fid's weights again with: "
    f"{CONVERT_COMMAND} OUT.npz"
  )


def _network_variables(variables: Variables, logits: bool) -> Variables:
  """The variables that ``InceptionV3(logits=logits)`` reads: without ``fc`` unless ``logits``
  (so that weights with and without it share one compiled network for features alone)."""
  has_fc = "fc" in variables["params"]
  if logits and not has_fc:
    raise no_classifier("these FID Inception weights")
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


def _batches(images: np.ndarray, batch_size: int, mesh: Mesh | None) -> Iterable[tuple[Any, int]]:
  """Yields (images, count) per batch of ``batch_size`` images, zero-padded to a fixed size
  (``batch_size``, rounded up to a multiple of the mesh's devices) and, with a mesh, split over
  "data" (every process holds all images and places its own devices' rows)."""
  size = batch_size if mesh is None else -(-batch_size // mesh.devices.size) * mesh.devices.size
  for start in range(0, len(images), batch_size):
    batch = np.asarray(images[start : start + batch_size], np.float32)
    count = len(batch)
    batch = np.pad(batch, ((0, size - count),) + ((0, 0),) * (batch.ndim - 1))
    yield (batch if mesh is None else parallel.put_particles(batch, mesh)), count


def _numpy(x: Any) -> np.ndarray:
  """A host value, or a device array (gathered to every process if split), as float64 NumPy."""
  return np.asarray(parallel.to_host(x) if isinstance(x, jax.Array) else x, np.float64)


def _placed(variables: Variables, logits: bool, mesh: Mesh | None) -> tuple[Variables, Mesh | None]:
  """The network's variables (replicated over ``mesh``) and the mesh, None for one device."""
  variables = _network_variables(variables, logits)
  if mesh is None or mesh.devices.size == 1:
    return variables, None
  return jax.device_put(variables, parallel.replicated(mesh)), mesh


def features(
  variables: Variables,
  images: np.ndarray,
  batch_size: int = 50,
  resize_input: bool = True,
  *,
  logits: bool = False,
  mesh: Mesh | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """Computes pool3 features (N, 2048) as float64 for NHWC images in [-1, 1], in batches.

  The last batch is zero-padded to ``batch_size`` so that the network compiles once per image size.

  Args:
    variables: as returned by ``inception_weights.load_weights`` (or
      ``InceptionV3(logits=True).init``).
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
  for batch, count in _batches(images, batch_size, mesh):
    result = apply(variables, batch)
    out.append(tuple(_numpy(r)[:count] for r in (result if logits else (result,))))
  if not out:
    out = [(np.zeros((0, FEATURE_DIM)), np.zeros((0, NUM_CLASSES)))[: 1 + logits]]
  feats, *rest = (np.concatenate(parts) for parts in zip(*out))
  return (feats, rest[0]) if logits else feats
