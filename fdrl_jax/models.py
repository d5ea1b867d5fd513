"""Density-ratio estimators (Flax Linen): one scalar per example, r or log r by the loss's choice.

The toy MLP is the reference's 2-D estimator (2→64, three 64→64, 64→1, LeakyReLU 0.2); the small
conv net is sized for the bundled 8×8 digits. The paper's ResNets (Table 4) are a later addition.
Convolutions use ``fdrl_jax.conv.conv_general_dilated`` so that the flow's input gradients stay
fast inside ``lax.scan`` on CPU.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import ml_collections

from fdrl_jax.conv import conv_general_dilated


class MLP(nn.Module):
  """Fully connected estimator on flattened inputs: ``depth`` hidden layers of ``width``."""
  width: int = 64
  depth: int = 4
  negative_slope: float = 0.2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for _ in range(self.depth):
      x = nn.leaky_relu(nn.Dense(self.width)(x), self.negative_slope)
    return nn.Dense(1)(x)[:, 0]


class ConvNet(nn.Module):
  """Small conv estimator for low-resolution images: 3×3 convs (no bias, stride 2 after the first),
  LeakyReLU, global mean pool, Dense → 1."""
  channels: Sequence[int] = (32, 64, 64)
  negative_slope: float = 0.2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, c in enumerate(self.channels):
      stride = 1 if i == 0 else 2
      x = nn.Conv(c, (3, 3), strides=stride, use_bias=False,
                  conv_general_dilated=conv_general_dilated)(x)
      x = nn.leaky_relu(x, self.negative_slope)
    return nn.Dense(1)(x.mean(axis=(1, 2)))[:, 0]


MODELS = {
    "mlp": lambda cfg: MLP(width=cfg.width, depth=cfg.depth, negative_slope=cfg.negative_slope),
    "conv": lambda cfg: ConvNet(channels=tuple(cfg.channels), negative_slope=cfg.negative_slope),
}


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """Builds the estimator named ``config.name`` from the ``model`` config group."""
  if config.name not in MODELS:
    raise ValueError(f"Unknown model {config.name!r}. Available models are: "
                     f"{', '.join(sorted(MODELS))}.")
  return MODELS[config.name](config)
