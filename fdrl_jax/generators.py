"""Generators x = G(z) (Flax Linen) for the GAN training of ``fdrl_jax.gan`` (MonoFlow): an MLP for
any data, the DCGAN generator, and MonoFlow's own DCGAN generator (``nets.py``). Called with
``train=True`` in a training step (batch statistics, updated running averages in
``batch_stats``: ``models.training_apply``) and ``train=False`` elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fdrl_jax import registry
from fdrl_jax.models import DCGAN_INIT_STD, dcgan_norm


class MLPGenerator(nn.Module):
  """z → ``depth`` Dense(``width``) + ReLU → Dense → reshaped to ``event_shape`` (any data)."""

  event_shape: tuple[int, ...]
  width: int = 128
  depth: int = 2
  tanh: bool = False  # squash into [-1, 1] (image data)

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    del train
    for _ in range(self.depth):
      z = nn.relu(nn.Dense(self.width)(z))
    x = nn.Dense(int(math.prod(self.event_shape)))(z)
    return (jnp.tanh(x) if self.tanh else x).reshape((z.shape[0], *self.event_shape))


class DCGANGenerator(nn.Module):
  """DCGAN generator: Dense → s×s×C₀, then 4×4 stride-2 transposed convs, each doubling the size:
  batch norm + ReLU between them, the last one to the image channels, tanh.

  ``channels`` = (C₀, C₁, ...): the widths before each upsampling, so the start size is
  s = H / 2^len(channels): (4·ngf, 2·ngf) for 28² (7 → 14 → 28), (4·ngf, 2·ngf, ngf) for 32²
  (4 → 8 → 16 → 32). Batch statistics are used with ``train=True`` (kept in ``batch_stats``) and
  their running averages otherwise.
  """

  event_shape: tuple[int, int, int]
  channels: Sequence[int] = (128, 64)

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    h, w, c = self.event_shape
    n = len(self.channels)
    start = (h // 2**n, w // 2**n)
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    x = nn.Dense(start[0] * start[1] * self.channels[0], use_bias=False)(z)
    x = nn.relu(norm()(x.reshape((z.shape[0], *start, self.channels[0]))))
    for width in self.channels[1:]:
      x = nn.ConvTranspose(width, (4, 4), strides=(2, 2), padding="SAME", use_bias=False)(x)
      x = nn.relu(norm()(x))
    return jnp.tanh(nn.ConvTranspose(c, (4, 4), strides=(2, 2), padding="SAME")(x))


class MonoFlowGenerator(nn.Module):
  """MonoFlow's DCGAN generator as its ``nets.py`` has it (``DCG_cifar10``, ``DCG_mnist``): z as a
  1×1 map, a 4×4 transposed conv to ``channels[0]`` (4²), then 4×4 stride-2 transposed convs, one
  per further width (8², 16², ...), each with batch norm and ReLU; then to the image channels by
  one more stride-2 transposed conv when the image side is twice the map's (32² from 16²), or by
  a centre crop and a 1×1 conv when it is smaller (28² from 32², the reference's padding-2 1×1
  transposed conv); tanh. No biases; DCGAN's N(0, 0.02) weights and N(1, 0.02) batch-norm scales.
  """

  event_shape: tuple[int, int, int]
  channels: Sequence[int] = (512, 256, 128)

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    h, _, c = self.event_shape
    init = nn.initializers.normal(DCGAN_INIT_STD)
    up = lambda width, stride, pad: nn.ConvTranspose(
      width,
      (4, 4),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      kernel_init=init,
    )
    x = z.reshape((z.shape[0], 1, 1, -1))
    for i, width in enumerate(self.channels):
      x = up(width, 1, 3)(x) if i == 0 else up(width, 2, 2)(x)  # torch padding 0 / 1
      x = nn.relu(dcgan_norm(train)(x))
    side = x.shape[1]
    if h == 2 * side:
      x = up(c, 2, 2)(x)
    else:
      crop = (side - h) // 2
      x = nn.Conv(c, (1, 1), use_bias=False, kernel_init=init)(
        x[:, crop : crop + h, crop : crop + h]
      )
    return jnp.tanh(x)


GENERATORS = {
  "mlp": lambda cfg, shape, is_image: MLPGenerator(
    event_shape=tuple(shape), width=cfg.width, depth=cfg.depth, tanh=is_image
  ),
  "dcgan": lambda cfg, shape, is_image: DCGANGenerator(
    event_shape=tuple(shape), channels=tuple(cfg.channels)
  ),
  "monoflow_dcgan": lambda cfg, shape, is_image: MonoFlowGenerator(
    event_shape=tuple(shape), channels=tuple(cfg.channels)
  ),
}


def create_generator(
  config: ml_collections.ConfigDict, event_shape: tuple[int, ...], is_image: bool
) -> nn.Module:
  """Builds the generator named ``config.name`` (a key of GENERATORS) for data of ``event_shape``.

  Raises a one-line ValueError when that generator cannot produce such data.
  """
  build = registry.lookup(GENERATORS, config.name, "--config.generator.name")
  if config.name == "dcgan":
    n = len(config.channels)
    if len(event_shape) != 3 or any(side % 2**n for side in event_shape[:2]):
      raise ValueError(
        f"The dcgan generator with {n} channel widths makes images whose sides are "
        f"multiples of {2**n}; the data have shape {tuple(event_shape)}. Set "
        "--config.generator.channels (e.g. 2 widths for 28², 3 for 32²) or use "
        "--config.generator.name=mlp."
      )
  if config.name == "monoflow_dcgan":  # a 4² map doubled per further width, then ×2 or a crop
    n = len(config.channels)
    side = 4 * 2 ** (n - 1)
    if (
      len(event_shape) != 3
      or event_shape[0] != event_shape[1]
      or not (
        event_shape[0] == 2 * side or (event_shape[0] <= side and (side - event_shape[0]) % 2 == 0)
      )
    ):
      raise ValueError(
        f"The monoflow_dcgan generator with {n} widths ends on a {side}² map, so it "
        f"makes square images of side {2 * side}, or an even crop of {side}; the "
        f"data have shape {tuple(event_shape)}. Set --config.generator.channels "
        "(3 widths for 32², 4 for 28²)."
      )
  return build(config, event_shape, is_image)
