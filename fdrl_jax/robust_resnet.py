"""The CIFAR ResNets of MadryLab's ``robustness`` library (ResNet18/34/50), for inference, and the
conversion of its robust classifiers' checkpoints (``classifier.robustness_run`` makes them
``--config.method=classifier`` runs).

The paper guides class-conditional FDRL with robustness's L2-robust CIFAR10 ResNet-50 (ε = 1).
Its checkpoints (``torch.save(..., pickle_module=dill)``) hold ``{"model": state_dict, "optimizer",
"schedule", "epoch", ...}``; the ``state_dict`` is an ``AttackerModel``'s under DataParallel:
``module.normalizer.new_mean`` / ``new_std`` (the [0, 1]-pixel input normalisation),
``module.model.*`` (the ResNet) and ``module.attacker.*`` (copies of both, ignored).

``RobustResNet`` is robustness's ``cifar_models/resnet.py`` forward pass: a 3×3 stem, four stages
of basic (ResNet18/34) or bottleneck (ResNet50) blocks of widths (64, 128, 256, 512) × ``width``
with strides (1, 2, 2, 2), global average pooling (its ``avg_pool2d(·, 4)`` on the 4² map),
a linear layer. Batch norm is in inference mode and folded into the convolution before it:
W' = W·γ/√(σ² + ε), b' = β − μ·γ/√(σ² + ε) (ε = 1e-5, PyTorch's), so the network has no batch
statistics. Inputs are this library's [-1, 1] NHWC images; with ``input_mean`` / ``input_std`` set
they are mapped to [0, 1], clipped (as robustness's ``InputNormalize``) and normalised first.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fdrl_jax.conv import conv_general_dilated

Array = jax.Array
# name -> (bottleneck blocks, blocks per stage)
RESNETS = {
  "resnet18": (False, (2, 2, 2, 2)),
  "resnet34": (False, (3, 4, 6, 3)),
  "resnet50": (True, (3, 4, 6, 3)),
}
WIDTHS = (64, 128, 256, 512)
BN_EPSILON = 1e-5


def _conv(features: int, k: int, stride: int = 1) -> nn.Conv:
  return nn.Conv(
    features,
    (k, k),
    strides=stride,
    padding=((k // 2, k // 2),) * 2,
    conv_general_dilated=conv_general_dilated,
  )


class Block(nn.Module):
  """A basic (two 3×3) or bottleneck (1×1, 3×3 with the stride, 1×1 to 4×) block, with its
  batch norms folded in; a 1×1 shortcut conv where the stride or the width changes."""

  planes: int
  stride: int
  bottleneck: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.bottleneck:
      out_planes = 4 * self.planes
      h = nn.relu(_conv(self.planes, 1)(x))
      h = nn.relu(_conv(self.planes, 3, self.stride)(h))
      h = _conv(out_planes, 1)(h)
    else:
      out_planes = self.planes
      h = nn.relu(_conv(self.planes, 3, self.stride)(x))
      h = _conv(self.planes, 3)(h)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_planes:
      shortcut = _conv(out_planes, 1, self.stride)(x)
    return nn.relu(h + shortcut)


class RobustResNet(nn.Module):
  """robustness's CIFAR ResNet ``arch`` (a key of RESNETS) on [-1, 1] NHWC images → logits."""

  arch: str = "resnet50"
  num_classes: int = 10
  width: float = 1.0
  input_mean: Sequence[float] = ()
  input_std: Sequence[float] = ()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    bottleneck, blocks = RESNETS[self.arch]
    if self.input_mean:
      x = (jnp.clip((x + 1) / 2, 0, 1) - jnp.asarray(self.input_mean)) / jnp.asarray(self.input_std)
    widths = [int(w * self.width) for w in WIDTHS]
    x = nn.relu(_conv(widths[0], 3)(x))
    for stage, (planes, n) in enumerate(zip(widths, blocks)):
      for b in range(n):
        x = Block(planes, (1 if stage == 0 else 2) if b == 0 else 1, bottleneck)(x)
    return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def torch_layers(arch: str) -> list[tuple[str, str | None, tuple[str, ...]]]:
  """(conv or linear name, its batch norm's name or None, Flax path) of robustness's ResNet
  ``arch`` in the ``state_dict``'s names (without ``model.``)."""
  bottleneck, blocks = RESNETS[arch]
  layers: list[tuple[str, str | None, tuple[str, ...]]] = [("conv1", "bn1", ("Conv_0",))]
  index = 0
  for stage, n in enumerate(blocks):
    for b in range(n):
      prefix = f"layer{stage + 1}.{b}."
      convs = 3 if bottleneck else 2
      for i in range(convs):
        layers.append(
          (f"{prefix}conv{i + 1}", f"{prefix}bn{i + 1}", (f"Block_{index}", f"Conv_{i}"))
        )
      layers.append(
        (f"{prefix}shortcut.0", f"{prefix}shortcut.1", (f"Block_{index}", f"Conv_{convs}"))
      )
      index += 1
  layers.append(("linear", None, ("Dense_0",)))
  return layers


def fold_batch_norm(
  weight: np.ndarray, state: dict[str, np.ndarray], bn: str
) -> tuple[np.ndarray, np.ndarray]:
  """A torch OIHW conv weight followed by the inference-mode batch norm ``bn``, as an HWIO
  kernel and a bias."""
  g, beta, mean, var = (
    np.asarray(state[f"{bn}.{k}"], np.float64)
    for k in ("weight", "bias", "running_mean", "running_var")
  )
  scale = g / np.sqrt(var + BN_EPSILON)
  kernel = np.asarray(weight, np.float64) * scale[:, None, None, None]
  return kernel.transpose(2, 3, 1, 0).astype(np.float32), (beta - mean * scale).astype(np.float32)


def detect(state: dict[str, np.ndarray], source: str) -> tuple[str, float, int]:
  """(arch, width, number of classes) of robustness's ResNet in ``state`` (names without
  ``model.``).

  Raises:
    ValueError: one line naming an architecture this library does not have.
  """
  if "conv1.weight" not in state or "linear.weight" not in state:
    raise ValueError(
      f"{source}: its model is not one of robustness's CIFAR ResNets (no "
      "conv1.weight / linear.weight)"
    )
  bottleneck = "layer1.0.conv3.weight" in state
  blocks = tuple(
    len({name.split(".")[1] for name in state if name.startswith(f"layer{s}.")})
    for s in range(1, 5)
  )
  for arch, spec in RESNETS.items():
    if spec == (bottleneck, blocks):
      return arch, state["conv1.weight"].shape[0] / WIDTHS[0], state["linear.weight"].shape[0]
  kind = "bottleneck" if bottleneck else "basic"
  raise ValueError(
    f"{source}: its model is a ResNet of {kind} blocks {blocks}, which this "
    f"library does not have ({', '.join(RESNETS)})"
  )


def convert(state: dict[str, np.ndarray], arch: str, template: dict, source: str) -> dict:
  """The Flax ``params`` of robustness's ResNet ``state`` (names without ``model.``)."""
  params: dict = {}
  for name, bn, path in torch_layers(arch):
    if name.startswith("layer") and name.endswith("shortcut.0") and f"{name}.weight" not in state:
      continue  # an identity shortcut
    if f"{name}.weight" not in state:
      raise ValueError(f"{source} lacks model.{name}.weight")
    if bn is None:
      kernel, bias = np.asarray(state[f"{name}.weight"], np.float32).T, state[f"{name}.bias"]
    else:
      kernel, bias = fold_batch_norm(state[f"{name}.weight"], state, bn)
    node = template
    for key in path:
      node = node[key]
    if kernel.shape != tuple(node["kernel"].shape):
      raise ValueError(
        f"{source}: model.{name}.weight has shape {state[f'{name}.weight'].shape},"
        f" this library's {arch} expects {tuple(node['kernel'].shape)} in HWIO"
      )
    out = params
    for key in path:
      out = out.setdefault(key, {})
    out["kernel"], out["bias"] = kernel, np.asarray(bias, np.float32)
  return params


def is_checkpoint(ckpt: object) -> bool:
  """Whether an unpickled checkpoint is robustness's (an AttackerModel's ``state_dict`` under
  ``model`` or, in its older files, ``state_dict``)."""
  if not isinstance(ckpt, dict):
    return False
  state = ckpt.get("model", ckpt.get("state_dict"))
  return isinstance(state, dict) and any(
    str(name).replace("module.", "", 1).startswith("normalizer.") for name in state
  )
