"""The reference PyTorch FDRL's run as this library's config: its checkpoint's ``config`` mapped
onto ``configs/`` (``reference_config``, ``set_width``), ``--config.<key>=<value>`` arguments on
top (``apply_overrides``), and its ``DATASET_ddp.pt`` prior read as a ``GaussianPrior``
(``read_prior``).

What is mapped, and which of this library's switches take the reference's values, is told in
``fdrl_jax.import_reference`` (its ``--help``), which builds the workdir from these.
"""

from __future__ import annotations

import ast
import importlib
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from fdrl_jax import models, priors, torch_files, torch_objects

# The reference's data set -> (this library's config module, its argument, image side).
DATASETS = {
  "cifar10": ("cifar10", None, 32),
  "celeba": ("celeba64", None, 64),
  "lsun_church": ("lsun_church128", None, 128),
  "cat2dog": ("cat2dog", None, 64),
  "swissroll": ("toy2d", "swissroll", None),
  "8gaussians": ("toy2d", "8gaussians", None),
  "25gaussians": ("toy2d", "25gaussians", None),
}
LOSSES = {"LSIF": "lsif", "LR": "lr", "KL": "kl"}
DIVERGENCES = {"Pearson": "pearson", "KL": "kl", "JS": "js", "logD": "logd"}
REFERENCE_GAMMA = 0.1  # this library's learning-rate decay factor (optim.build_optimizer)


def check_checkpoint(ckpt: Any, path: str) -> dict:
  """The reference checkpoint dict, checked to have a ``model`` state_dict and a ``config``."""
  if not (
    isinstance(ckpt, dict)
    and isinstance(ckpt.get("model"), dict)
    and isinstance(ckpt.get("config"), dict)
  ):
    raise ValueError(
      f"{path} is a torch.save file but not a checkpoint of the reference's "
      "training scripts (no 'model' and 'config' entries)"
    )
  return ckpt


def architecture(ref: dict, source: str) -> str:
  """The ``models.MODELS`` name of the reference estimator that ``ref`` (its config) builds."""
  if "in_dim" in ref:
    if ref.get("spectral_norm"):
      raise ValueError(
        f"{source}: the reference's toy MLP with spectral norm is not in this "
        "library (its mlp has none)"
      )
    return "mlp"
  side, kind = ref.get("img_size"), ref.get("model", "resnet")
  if side == 64 and kind not in ("resnet", "resnetshallow"):
    raise ValueError(
      f"{source}: the reference's 64² model {kind!r} is not in this library "
      "(resnet, resnetshallow are)"
    )
  names = {
    32: "resnet32",
    64: "resnet64_shallow" if kind == "resnetshallow" else "resnet64",
    128: "resnet128",
  }
  if side not in names:
    raise ValueError(
      f"{source}: the reference has no estimator for img_size={side!r} (32, 64, 128)"
    )
  return names[side]


def _required(ref: dict, key: str, table: dict, source: str) -> Any:
  value = ref.get(key)
  if value not in table:
    raise ValueError(
      f"{source}: its config's {key}={value!r} is not one this library has ({', '.join(table)})"
    )
  return table[value]


def reference_config(ckpt: dict, source: str) -> ml_collections.ConfigDict:
  """This library's config of the run that wrote ``ckpt`` (what is mapped:
  ``fdrl_jax.import_reference``'s docstring)."""
  ref = ckpt["config"]
  dataset = ref.get("dataset")
  if dataset not in DATASETS:
    raise ValueError(
      f"{source}: its data set {dataset!r} has no config in this library ({', '.join(DATASETS)})"
    )
  module, argument, side = DATASETS[dataset]
  uniform = "best_fid" in ckpt  # train_up.py's checkpoints
  get = importlib.import_module(f"fdrl_jax.configs.{module}").get_config
  if argument:
    config = get(argument)
  else:
    config = get("up") if uniform and module == "cifar10" else get()
  arch = architecture(ref, source)
  config.model.name = arch
  if arch == "mlp":
    if ref.get("in_dim") != 2:
      raise ValueError(
        f"{source}: the toy MLP takes in_dim={ref.get('in_dim')}; the toy data here are 2-D"
      )
    config.model.width = int(ref["hidden_dim"])
    config.model.depth = int(ref["n_hidden_layers"]) + 1
    config.prior.name, config.prior.loc, config.prior.scale = "normal", 0.0, 1.0  # torch.randn
  else:
    if ref.get("img_size") != side:
      raise ValueError(
        f"{source}: {dataset} images are {side}² here, its img_size is {ref.get('img_size')}"
      )
    config.model.spectral_norm = bool(ref.get("spectral_norm", False))
    config.model.self_attention = bool(ref.get("self_attn", False))
    config.flow.clip_every_step = False
    if uniform:
      config.prior.name = "uniform"
  if ref.get("scheduler_gamma", REFERENCE_GAMMA) != REFERENCE_GAMMA:
    raise ValueError(
      f"{source}: its scheduler_gamma={ref['scheduler_gamma']}; this library "
      f"decays the learning rate by {REFERENCE_GAMMA} only"
    )
  config.loss.name = _required(ref, "loss_function", LOSSES, source)
  config.loss.divergence = _required(ref, "f_divergence", DIVERGENCES, source)
  config.flow.step_size = float(ref["eta"])
  config.flow.num_steps = int(ref["n_flow_steps"])
  config.flow.noise_scale = float(ref["noise_factor"])
  config.optim.learning_rate = float(ref["learning_rate"])
  config.optim.decay_steps = tuple(int(s) for s in ref.get("scheduler_steps", ()))
  if ref.get("ema", True):
    config.optim.ema_decay = float(ref["ema_rate"])
  config.training.num_steps = int(ref.get("n_epochs", config.training.num_steps))
  config.data.batch_size = int(ref.get("train_batch_size", config.data.batch_size))
  config.model.neutral_init = False
  config.model.torch_init = True
  config.model.sn_every_call = True
  return config


def reference_shape(ckpt: dict) -> tuple[int, ...]:
  """The shape of one example of the reference run: (side, side, 3) images or 2-D points."""
  ref = ckpt["config"]
  if "in_dim" in ref:
    return (int(ref["in_dim"]),)
  return (int(ref["img_size"]), int(ref["img_size"]), int(ref.get("n_channels", 3)))


def set_width(config: ml_collections.ConfigDict, state: dict[str, np.ndarray], source: str) -> None:
  """``model.resnet_width`` from the stem's channels (the reference's are width 1)."""
  if config.model.name == "mlp":
    return
  stem = state.get("conv1.weight_orig", state.get("conv1.weight"))
  if stem is None:
    raise ValueError(f"{source} lacks conv1.weight (is it one of the reference's ResNets?)")
  config.model.resnet_width = stem.shape[0] / models.RESNETS[config.model.name][0]


def read_prior(path: str, shape: tuple[int, ...]) -> priors.GaussianPrior:
  """The reference's ``DATASET_ddp.pt`` as a ``GaussianPrior`` over NHWC images of ``shape``."""
  mean, tril = torch_objects.multivariate_normal(torch_files.load(path), path)
  d = int(np.prod(shape))
  if mean.size != d:
    raise ValueError(
      f"the prior {path} has dimension {mean.size}; the checkpoint's data have "
      f"{' × '.join(map(str, shape))} = {d}"
    )
  if len(shape) == 3:  # NHWC position k holds NCHW coordinate order[k]
    h, w, c = shape
    order = np.arange(d).reshape(c, h, w).transpose(1, 2, 0).ravel()
    mean, tril = mean[order], tril[order]
  return priors.GaussianPrior(
    mean=jnp.asarray(mean, jnp.float32),
    scale_tril=jnp.asarray(tril, jnp.float32),
    event_shape=shape,
  )


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """Applies ``--config.a.b=value`` arguments (Python literals, else strings)."""
  for arg in overrides:
    key, sep, text = arg[len("--config.") :].partition("=")
    if not arg.startswith("--config.") or not sep:
      raise ValueError(f"unknown argument {arg}; expected --config.<key>=<value>")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    try:
      old = config
      for part in key.split(".")[:-1]:
        old = old[part]
      current = old[key.split(".")[-1]]
    except (KeyError, AttributeError):
      raise ValueError(f"--config.{key}: no such config key") from None
    if isinstance(current, float) and isinstance(value, int):
      value = float(value)
    old[key.split(".")[-1]] = value
