"""The reference PyTorch FDRL's estimator weights (clear-nus/fdrl ``src/models.py``) in Flax.

A reference ``state_dict`` names its layers as the PyTorch modules do: ``conv1``,
``layer<s>.<b>.conv1`` / ``conv2`` / ``shortcut_conv``, ``self_attn_module.key`` / ``query`` /
``value`` / ``self_att`` and ``gamma``, ``linear`` (the ResNets); ``mlp.<2i>`` (the toy MLP). A
layer under ``torch.nn.utils.spectral_norm`` stores ``weight_orig`` and its power-iteration vectors
``weight_u`` (output side, length O) and ``weight_v`` (input side) instead of ``weight``.

Conversion: a conv kernel OIHW → HWIO, a linear weight (out, in) → (in, out), biases and ``gamma``
as they are. Spectral norm: Flax's ``SpectralNorm`` keeps the output-side vector as ``u`` (1, O),
which is torch's ``weight_u``; every Flax call runs one power iteration from it,
v = W̄ᵀu/‖·‖, u' = W̄v/‖·‖, σ = u'ᵀW̄v — the computation of a reference forward pass in training
mode, the mode its ``flow`` and its EMA copy run in (it never calls ``.eval()``). So an imported
estimator divides each weight by the σ the reference's next forward pass would use. The ``sigma``
statistic is set to uᵀW̄v of the stored u, v (what torch's eval mode would use).

Adam: torch's ``optim.state_dict()`` keys each parameter's ``exp_avg`` / ``exp_avg_sq`` / ``step``
by its position in ``model.parameters()``, the order of the parameters (not the ``weight_u`` /
``weight_v`` buffers) in the ``state_dict``; they map to optax's ``mu`` / ``nu`` / ``count`` with
the same layout changes as the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from fdrl_jax import models

SN_BUFFERS = (".weight_u", ".weight_v")


class Layer(NamedTuple):
  """One reference layer and where it lives in the Flax variables."""

  torch: str  # state_dict prefix, e.g. "layer2.0.conv1"
  params: tuple[str, ...]  # path of its Flax module in ``params``, e.g. ("ResBlock_3", "Conv_0")
  stats: tuple[str, ...]  # path of its spectral-norm statistics in ``batch_stats`` (prefix)
  bias: bool


def resnet_layers(arch: str, self_attention: bool) -> list[Layer]:
  """The layers of the reference's ResNet ``arch`` (a key of ``models.RESNETS``) in order."""
  _, stages, attention_after = models.RESNETS[arch]
  in_width = models.RESNETS[arch][0]
  layers = [Layer("conv1", ("Conv_0",), ("_Layer_0", "SpectralNorm_0", "Conv_0"), False)]
  block = 0
  for s, (width, blocks, stride) in enumerate(stages):
    for b in range(blocks):
      names = ["conv1", "conv2"]
      if (stride if b == 0 else 1) != 1 or in_width != width:
        names.append("shortcut_conv")
      for i, name in enumerate(names):
        layers.append(
          Layer(
            f"layer{s + 1}.{b}.{name}",
            (f"ResBlock_{block}", f"Conv_{i}"),
            (f"ResBlock_{block}", f"_Layer_{i}", "SpectralNorm_0", f"Conv_{i}"),
            False,
          )
        )
      in_width, block = width, block + 1
    if self_attention and s == attention_after:
      for i, name in enumerate(("key", "query", "value", "self_att")):
        layers.append(
          Layer(
            f"self_attn_module.{name}",
            ("SelfAttention_0", f"Conv_{i}"),
            ("SelfAttention_0", f"_Layer_{i}", "SpectralNorm_0", f"Conv_{i}"),
            True,
          )
        )
  layers.append(Layer("linear", ("Dense_0",), ("_Layer_1", "SpectralNorm_0", "Dense_0"), True))
  return layers


def mlp_layers(depth: int) -> list[Layer]:
  """The layers of the reference's toy MLP: ``depth`` hidden ones (``mlp.0``, ``mlp.2``...)."""
  return [Layer(f"mlp.{2 * i}", (f"Dense_{i}",), (), True) for i in range(depth + 1)]


def parameter_names(state: dict[str, np.ndarray]) -> list[str]:
  """The names of a reference ``state_dict``'s parameters, in ``model.parameters()`` order."""
  return [name for name in state if not name.endswith(SN_BUFFERS)]


def _flax_value(name: str, value: np.ndarray) -> np.ndarray:
  """A torch parameter in Flax's layout: OIHW → HWIO, (out, in) → (in, out)."""
  value = np.asarray(value, np.float32)
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    return value.T
  return value


def _put(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def convert_params(
  lookup: Callable[[str], np.ndarray | None],
  layers: list[Layer],
  spectral_norm: bool,
  gamma: bool,
  template: dict,
  source: str,
) -> dict:
  """The Flax ``params`` tree of the reference parameters ``lookup(name)`` (None: missing).

  Raises:
    ValueError: one line naming the first missing or wrongly shaped parameter.
  """
  params: dict = {}
  weight = ".weight_orig" if spectral_norm else ".weight"
  entries = [(layer.torch + weight, layer.params + ("kernel",)) for layer in layers]
  entries += [(layer.torch + ".bias", layer.params + ("bias",)) for layer in layers if layer.bias]
  if gamma:
    entries.append(("self_attn_module.gamma", ("SelfAttention_0", "gamma")))
  for name, path in entries:
    saved = lookup(name)
    if saved is None:
      hint = " (spectral norm is on in its config)" if name.endswith("_orig") else ""
      raise ValueError(f"{source} lacks {name}{hint}")
    value = _flax_value(name, saved)
    expected = tuple(_get(template, path).shape)
    if value.shape != expected:
      raise ValueError(
        f"{source}: {name} has shape {np.shape(saved)}; this library's "
        f"estimator has {expected} in Flax's layout"
      )
    _put(params, path, value)
  return params


def spectral_stats(state: dict[str, np.ndarray], layers: list[Layer], source: str) -> dict:
  """The Flax ``batch_stats`` of the reference's spectral norm: u = ``weight_u`` and
  σ = uᵀ W̄ v per layer (W̄ = ``weight_orig`` as an O × (I·kh·kw) matrix)."""
  stats: dict = {}
  for layer in layers:
    names = [layer.torch + leaf for leaf in (".weight_orig", ".weight_u", ".weight_v")]
    missing = [name for name in names if name not in state]
    if missing:
      raise ValueError(f"{source} lacks {missing[0]} (spectral norm is on in its config)")
    w, u, v = (np.asarray(state[name], np.float64) for name in names)
    matrix = w.reshape(w.shape[0], -1)
    if u.shape != (matrix.shape[0],) or v.shape != (matrix.shape[1],):
      raise ValueError(
        f"{source}: {names[1]} / {names[2]} have shapes {u.shape} / {v.shape}, "
        f"not those of {names[0]} {w.shape}"
      )
    *prefix, leaf = layer.stats
    _put(stats, (*prefix, f"{leaf}/kernel/u"), u[None].astype(np.float32))
    _put(stats, (*prefix, f"{leaf}/kernel/sigma"), np.float32(u @ matrix @ v))
  return stats


def check_all_used(
  state: dict[str, np.ndarray], layers: list[Layer], gamma: bool, what: str, source: str
) -> None:
  """A one-line error naming the first ``state_dict`` entry that the estimator has no place for."""
  prefixes = tuple(layer.torch + "." for layer in layers)
  for name in state:
    if not (name.startswith(prefixes) or (gamma and name == "self_attn_module.gamma")):
      raise ValueError(
        f"{source}: {name} is not part of the reference's {what} (is the "
        "checkpoint's config its own?)"
      )


def adam_moments(
  optim_state: Any, params: dict[str, np.ndarray], convert: Callable, source: str
) -> tuple[int, dict, dict]:
  """torch Adam's state as (count, mu, nu) Flax trees; ``params`` are the model's parameters in
  ``model.parameters()`` order (``parameter_names``), ``convert(lookup)`` maps a parameter lookup
  to a Flax tree (``convert_params`` bound to the estimator). A parameter without optimizer state
  (never updated) gets zero moments.

  Raises:
    ValueError: one line if the optimiser state is not a torch Adam's of these parameters.
  """
  if not (
    isinstance(optim_state, dict)
    and isinstance(optim_state.get("state"), dict)
    and isinstance(optim_state.get("param_groups"), list)
  ):
    raise ValueError(f"{source}: its 'optim' entry is not a torch optimizer state_dict")
  names = list(params)
  ids = [i for group in optim_state["param_groups"] for i in group.get("params", [])]
  if len(ids) != len(names):
    raise ValueError(f"{source}: its optimizer holds {len(ids)} parameters, the model {len(names)}")
  by_name = {name: optim_state["state"].get(i, {}) for name, i in zip(names, ids)}
  steps = [int(np.asarray(s["step"])) for s in by_name.values() if "step" in s]
  if any(s and "exp_avg" not in s for s in by_name.values()):
    raise ValueError(f"{source}: its optimizer state is not Adam's (no exp_avg)")

  def moment(key: str) -> dict:
    def lookup(name: str) -> np.ndarray | None:
      if name not in by_name:
        return None
      value = by_name[name].get(key)
      return np.zeros_like(params[name]) if value is None else value

    return convert(lookup)

  return max(steps, default=0), moment("exp_avg"), moment("exp_avg_sq")
