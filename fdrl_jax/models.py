"""Density-ratio estimators (Flax Linen): one scalar per example, r or log r by the loss's choice.
The GAN's generators are in ``generators``.

The toy MLP is the reference's 2-D estimator (2→64, three 64→64, 64→1, LeakyReLU 0.2); the small
conv net is sized for the bundled 8×8 digits; ``ResNet`` builds the paper's estimators (Table 4)
with the reference implementation's block internals and layer shapes (parameter counts in
``RESNET_PARAMETER_COUNTS``). Convolutions use ``fdrl_jax.conv.conv_general_dilated`` so that the
flow's input gradients stay fast inside ``lax.scan`` on CPU.

Spectral normalisation (``spectral_norm=True``) wraps every conv and dense layer in
``flax.linen.SpectralNorm``, whose power-iteration state lives in the ``batch_stats`` collection:
call with ``update_stats=True`` and ``mutable=["batch_stats"]`` in a training step, and with
``update_stats=False`` everywhere else (the flow), which keeps sampling pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fdrl_jax import registry
from fdrl_jax.conv import conv_general_dilated


def variables(params, batch_stats) -> dict:
  """Flax variables from trainable parameters and (possibly empty) spectral-norm statistics."""
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def training_apply(apply_fn, params, stats, x: jax.Array, **mode) -> tuple[jax.Array, Any]:
  """``apply_fn`` in training mode (``mode``: ``update_stats=True`` for the estimators,
  ``train=True`` for the generators) on x: the outputs and the updated mutable statistics
  (spectral norm's power iteration, batch norm's running averages), or ``stats`` itself where the
  network has none."""
  if not stats:
    return apply_fn({"params": params}, x, **mode), stats
  out, mutated = apply_fn(variables(params, stats), x, mutable=["batch_stats"], **mode)
  return out, mutated["batch_stats"]


def _init(torch_init: bool, fan_in: int | None = None, bias: float = 0.0) -> dict:
  """A layer's ``kernel_init`` / ``bias_init``: Flax's defaults (LeCun normal, zero bias), or with
  ``torch_init`` PyTorch's (weights and biases uniform on ±1/√fan-in, the reference's); the bias
  is shifted by ``bias``. ``fan_in`` (the layer's inputs per output) is needed only by a biased
  layer's PyTorch bias: the kernel initialiser reads it from the kernel's shape."""
  if not torch_init:
    return {"bias_init": nn.initializers.constant(bias)}
  kernel = {"kernel_init": nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")}
  if fan_in is None:  # a layer without bias
    return kernel
  bound = fan_in**-0.5
  return {
    **kernel,
    "bias_init": lambda key, shape, dtype=jnp.float32: (
      bias + jax.random.uniform(key, shape, dtype, -bound, bound)
    ),
  }


class MLP(nn.Module):
  """Fully connected estimator on flattened inputs: ``depth`` hidden layers of ``width``."""

  width: int = 64
  depth: int = 4
  negative_slope: float = 0.2
  output_bias: float = 0.0  # the output layer's initial bias (see fdrl.create_estimator)
  torch_init: bool = False  # PyTorch's initialisation (the reference's), see _init

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    del update_stats  # no spectral norm here; the argument keeps one call signature for all
    x = x.reshape((x.shape[0], -1))
    for _ in range(self.depth):
      x = nn.leaky_relu(
        nn.Dense(self.width, **_init(self.torch_init, x.shape[-1]))(x), self.negative_slope
      )
    return nn.Dense(1, **_init(self.torch_init, x.shape[-1], self.output_bias))(x)[:, 0]


class ConvNet(nn.Module):
  """Small conv estimator for low-resolution images: 3×3 convs (no bias, stride 2 after the first),
  LeakyReLU, global mean pool, Dense → 1."""

  channels: Sequence[int] = (32, 64, 64)
  negative_slope: float = 0.2
  output_bias: float = 0.0  # the output layer's initial bias (see fdrl.create_estimator)
  torch_init: bool = False  # PyTorch's initialisation (the reference's), see _init

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    del update_stats  # no spectral norm here; the argument keeps one call signature for all
    for i, c in enumerate(self.channels):
      stride = 1 if i == 0 else 2
      x = nn.Conv(
        c,
        (3, 3),
        strides=stride,
        use_bias=False,
        conv_general_dilated=conv_general_dilated,
        **_init(self.torch_init),
      )(x)
      x = nn.leaky_relu(x, self.negative_slope)
    return nn.Dense(1, **_init(self.torch_init, x.shape[-1], self.output_bias))(
      x.mean(axis=(1, 2))
    )[:, 0]


# (stem width, [(width, number of blocks, stride of the first)...], stage after which self-attention
# goes) of the reference's ResNet32x32, ResNet64x64, ResNet128x128 and ResNet64x64Shallow.
RESNETS = {
  "resnet32": (128, ((128, 3, 1), (256, 3, 2), (256, 3, 2), (256, 3, 2)), 0),
  "resnet64": (64, ((64, 1, 2), (128, 2, 2), (256, 2, 2), (256, 2, 2)), 1),
  "resnet128": (64, ((64, 1, 2), (128, 1, 2), (128, 2, 2), (256, 2, 2), (256, 2, 2)), 1),
  "resnet64_shallow": (64, ((64, 1, 2), (128, 1, 2), (128, 1, 2), (256, 1, 2)), 1),
}

# Trainable parameters for 3-channel inputs, without / with self-attention (tests/test_models.py
# recomputes them from the layer shapes; spectral norm adds no trainable parameters).
RESNET_PARAMETER_COUNTS = {
  "resnet32": (11_374_209, 11_382_578),
  "resnet64": (5_126_081, 5_134_450),
  "resnet128": (5_437_377, 5_445_746),
  "resnet64_shallow": (1_537_985, 1_546_354),
}


class _Layer(nn.Module):
  """A conv or dense layer, spectrally normalised when ``spectral_norm``."""

  layer: nn.Module
  spectral_norm: bool

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool) -> jax.Array:
    if self.spectral_norm:
      return nn.SpectralNorm(self.layer)(x, update_stats=update_stats)
    return self.layer(x)


class ResBlock(nn.Module):
  """Post-activation residual block: y = LReLU(conv3×3(LReLU(conv3×3_s(x))) + shortcut(x)).

  The shortcut is a 1×1 conv with the block's stride when the stride or the width changes, else the
  identity; no biases, no normalisation layers (as the reference's BasicBlock).
  """

  features: int
  stride: int = 1
  spectral_norm: bool = False
  negative_slope: float = 0.2
  dtype: Any = None
  torch_init: bool = False  # PyTorch's initialisation (the reference's), see _init

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    conv = lambda k, s: _Layer(
      nn.Conv(
        self.features,
        (k, k),
        strides=s,
        use_bias=False,
        padding=((k // 2, k // 2),) * 2,
        dtype=self.dtype,
        conv_general_dilated=conv_general_dilated,
        **_init(self.torch_init),
      ),
      self.spectral_norm,
    )
    h = nn.leaky_relu(conv(3, self.stride)(x, update_stats), self.negative_slope)
    h = conv(3, 1)(h, update_stats)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = conv(1, self.stride)(x, update_stats)
    return nn.leaky_relu(h + shortcut, self.negative_slope)


class SelfAttention(nn.Module):
  """SAGAN self-attention: y = γ·W_o(softmax(kᵀq) v) + x, with 1×1 convs C→C/8 for k, q, v and
  C/8→C for W_o (biases on), softmax over the key positions, γ initialised to 0 (so the block is
  the identity at initialisation)."""

  reduction: int = 8
  spectral_norm: bool = False
  dtype: Any = None
  torch_init: bool = False  # PyTorch's initialisation (the reference's), see _init

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    b, h, w, c = x.shape
    conv = lambda f, fan_in: _Layer(
      nn.Conv(
        f,
        (1, 1),
        dtype=self.dtype,
        conv_general_dilated=conv_general_dilated,
        **_init(self.torch_init, fan_in),
      ),
      self.spectral_norm,
    )
    inner = max(1, c // self.reduction)
    key, query, value = (conv(inner, c)(x, update_stats).reshape(b, h * w, inner) for _ in range(3))
    attention = jax.nn.softmax(jnp.einsum("bic,bjc->bij", key, query), axis=1)  # over keys i
    attended = jnp.einsum("bic,bij->bjc", value, attention).reshape(b, h, w, inner)
    out = conv(c, inner)(attended, update_stats)
    gamma = self.param("gamma", nn.initializers.zeros, ())
    return gamma * out + x


class ResNet(nn.Module):
  """The paper's ResNet estimators (Table 4): stem conv3×3 → residual stages → optional
  self-attention → global mean pool → Dense(1). ``arch`` is a key of RESNETS."""

  arch: str = "resnet32"
  spectral_norm: bool = False
  self_attention: bool = False
  negative_slope: float = 0.2
  dtype: Any = None  # computation dtype (e.g. jnp.bfloat16); parameters stay float32
  output_bias: float = 0.0  # the output layer's initial bias (see fdrl.create_estimator)
  torch_init: bool = False  # PyTorch's initialisation (the reference's), see _init
  width: float = 1.0  # every layer's channels × width: the paper's depth at a fraction of the cost

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    stem_features, stage_specs, attention_after = RESNETS[self.arch]
    scaled = lambda channels: max(1, round(channels * self.width))
    stem = scaled(stem_features)
    stages = [(scaled(f), blocks, stride) for f, blocks, stride in stage_specs]
    x = _Layer(
      nn.Conv(
        stem,
        (3, 3),
        use_bias=False,
        padding=((1, 1), (1, 1)),
        dtype=self.dtype,
        conv_general_dilated=conv_general_dilated,
        **_init(self.torch_init),
      ),
      self.spectral_norm,
    )(x, update_stats)
    x = nn.leaky_relu(x, self.negative_slope)
    for i, (features, blocks, stride) in enumerate(stages):
      for j in range(blocks):
        x = ResBlock(
          features,
          stride if j == 0 else 1,
          self.spectral_norm,
          self.negative_slope,
          self.dtype,
          self.torch_init,
        )(x, update_stats)
      if self.self_attention and i == attention_after:
        x = SelfAttention(
          spectral_norm=self.spectral_norm, dtype=self.dtype, torch_init=self.torch_init
        )(x, update_stats)
    x = x.mean(axis=(1, 2))
    out = _Layer(
      nn.Dense(1, dtype=self.dtype, **_init(self.torch_init, x.shape[-1], self.output_bias)),
      self.spectral_norm,
    )(x, update_stats)
    return out[:, 0].astype(jnp.float32)


DCGAN_INIT_STD = 0.02  # DCGAN's weight initialisation, N(0, 0.02²), as MonoFlow's weights_init


def dcgan_norm(train: bool) -> nn.BatchNorm:
  """PyTorch's BatchNorm2d as MonoFlow initialises it: momentum 0.1 (Flax's 0.9), ε = 1e-5, scale
  N(1, 0.02²), batch statistics in training and running averages otherwise."""
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    scale_init=lambda key, shape, dtype=jnp.float32: (
      1.0 + DCGAN_INIT_STD * jax.random.normal(key, shape, dtype)
    ),
  )


class DCGANDiscriminator(nn.Module):
  """DCGAN discriminator: 4×4 stride-2 convs (``channels``), LeakyReLU 0.2, flatten, Dense → 1.

  As the estimator of a MonoFlow field it must be a per-sample function d(x), so unlike the DCGAN
  paper it has no batch normalisation (which would make d(x) depend on the rest of the batch).
  """

  channels: Sequence[int] = (32, 64)
  negative_slope: float = 0.2
  output_bias: float = 0.0  # the output layer's initial bias (see fdrl.create_estimator)
  torch_init: bool = False  # PyTorch's initialisation (the reference's), see _init

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    del update_stats
    for c in self.channels:
      x = nn.Conv(
        c,
        (4, 4),
        strides=2,
        padding=((1, 1), (1, 1)),
        conv_general_dilated=conv_general_dilated,
        **_init(self.torch_init, 16 * x.shape[-1]),
      )(x)
      x = nn.leaky_relu(x, self.negative_slope)
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(1, **_init(self.torch_init, x.shape[-1], self.output_bias))(x)[:, 0]


class MonoFlowDiscriminator(nn.Module):
  """MonoFlow's DCGAN discriminator as its ``nets.py`` has it (``Discriminator`` for 32²,
  ``Discriminator_mnist`` for 28²): 4×4 stride-2 convs to ``channels`` = (ndf, 2·ndf, 4·ndf), batch
  norm on the last two, LeakyReLU 0.2, then a 4×4 conv to one value (valid on a 4² map, stride 2
  on a 3² map); no biases; DCGAN's N(0, 0.02) weights and N(1, 0.02) batch-norm scales.

  Batch norm makes d(x) depend on the rest of the batch in training (``update_stats=True``: batch
  statistics, running averages updated, as PyTorch's train mode); elsewhere it uses the running
  averages and is a per-sample function, which the MonoFlow refinement flow needs.
  """

  channels: Sequence[int] = (64, 128, 256)
  negative_slope: float = 0.2

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    conv = lambda c, stride, pad: nn.Conv(
      c,
      (4, 4),
      strides=stride,
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      kernel_init=nn.initializers.normal(DCGAN_INIT_STD),
      conv_general_dilated=conv_general_dilated,
    )
    for i, c in enumerate(self.channels):
      x = conv(c, 2, 1)(x)
      if i:
        x = dcgan_norm(update_stats)(x)
      x = nn.leaky_relu(x, self.negative_slope)
    x = (conv(1, 1, 0) if x.shape[1] == 4 else conv(1, 2, 1))(x)
    return x.reshape(x.shape[0], -1)[:, 0]


def _resnet_builder(arch: str) -> Callable[[ml_collections.ConfigDict, float], nn.Module]:
  """The ``MODELS`` entry of ResNet ``arch`` (a key of RESNETS)."""
  return lambda cfg, bias: ResNet(
    arch=arch,
    spectral_norm=cfg.spectral_norm,
    self_attention=cfg.self_attention,
    negative_slope=cfg.negative_slope,
    dtype=jnp.bfloat16 if cfg.bf16 else None,
    output_bias=bias,
    torch_init=cfg.torch_init,
    width=cfg.resnet_width,
  )


# name → (the ``model`` config group, the output layer's initial bias) → the estimator.
MODELS: dict[str, Callable[[ml_collections.ConfigDict, float], nn.Module]] = {
  "dcgan": lambda cfg, bias: DCGANDiscriminator(
    channels=tuple(cfg.channels),
    negative_slope=cfg.negative_slope,
    output_bias=bias,
    torch_init=cfg.torch_init,
  ),
  "mlp": lambda cfg, bias: MLP(
    width=cfg.width,
    depth=cfg.depth,
    negative_slope=cfg.negative_slope,
    output_bias=bias,
    torch_init=cfg.torch_init,
  ),
  "conv": lambda cfg, bias: ConvNet(
    channels=tuple(cfg.channels),
    negative_slope=cfg.negative_slope,
    output_bias=bias,
    torch_init=cfg.torch_init,
  ),
  "monoflow_dcgan": lambda cfg, bias: MonoFlowDiscriminator(
    channels=tuple(cfg.channels), negative_slope=cfg.negative_slope
  ),
  **{arch: _resnet_builder(arch) for arch in RESNETS},
}


def create_model(config: ml_collections.ConfigDict, output_bias: float = 0.0) -> nn.Module:
  """Builds the estimator named ``config.name`` from the ``model`` config group, its output
  layer's bias initialised to ``output_bias``."""
  return registry.lookup(MODELS, config.name, "--config.model.name")(config, output_bias)
