"""Imports a checkpoint of the reference PyTorch FDRL (clear-nus/fdrl) as a workdir of this library.

Usage (no PyTorch needed)::

  python -m fdrl_jax.import_reference cifar10_LSIF_Pearson.pt --workdir=runs/ref_cifar10 \\
      [--prior=cifar10_ddp.pt] [--config.data.data_dir=...]

The checkpoint is what ``train_ddp.py``, ``train_up.py``, ``train_im2im_translation.py`` and
``train_toy_datasets.py`` save: ``{step, model, optim, ema, scheduler, config}`` (``model`` maybe
with DataParallel's ``module.`` prefix, ``ema`` the EMA of the whole ``state_dict``). It becomes an
ordinary workdir — ``config.json`` and an Orbax checkpoint of the whole ``fdrl.TrainState`` — so
``--mode=sample|eval|figure|translate`` run on it and ``--mode=train`` resumes it.

* Config: the reference's ``dataset`` picks this library's config of that data set
  (``configs/cifar10.py``, ``celeba64.py``, ``lsun_church128.py``, ``cat2dog.py``, ``toy2d.py``;
  ``train_up.py``'s checkpoints, told by their ``best_fid``, get the uniform prior), and its
  ``loss_function``, ``f_divergence``, ``eta``, ``n_flow_steps``, ``noise_factor``, ``ema_rate``,
  ``learning_rate``, ``scheduler_steps``, ``n_epochs``, ``train_batch_size``, ``self_attn``,
  ``spectral_norm``, ``img_size`` / ``model`` and the toy MLP's sizes replace that config's values.
  The switches where this library departs from the reference are set to the reference's:
  ``model.neutral_init=False``, ``model.torch_init=True``, ``model.sn_every_call=True``,
  ``flow.clip_every_step=False``. ``--config.<key>=<value>`` arguments change the result further
  (e.g. where the data are).
* Weights: ``fdrl_jax.reference_weights`` (layouts, spectral norm, Adam's moments and step).
* Step: the reference's ``step`` is the index of its last step; the workdir's step counts the
  steps done, one more.
* Prior: ``--prior`` reads the reference's ``DATASET_ddp.pt`` (a pickled MultivariateNormal over
  flattened NCHW images) into a ``GaussianPrior`` in NHWC order (a row-permuted factor); without
  it the config's prior is fitted to the data (the uniform and toy normal priors need none).
  Cat2dog's prior is the source domain (cats): without ``--config.prior.source_path=DIR/trainA``
  (and ``--config.data.path=DIR/trainB``) the checkpoint imports without any images, and
  ``--mode=translate --input=CATS`` (an .npz or a folder) moves the given ones; drawing from its
  prior (``--mode=sample``) and training need it imported with them.

A checkpoint of MadryLab's ``robustness`` library (its CIFAR ResNet18/34/50 classifiers, such as
the paper's robust ResNet-50 that guides class-conditional sampling) becomes a
``--config.method=classifier`` workdir instead (``fdrl_jax.robust_resnet``).

Every error is one line; an existing non-empty ``--workdir`` is refused.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fdrl_jax import (
  checkpoints,
  classifier,
  datasets,
  fdrl,
  files,
  methods,
  models,
  optim,
  prior_fit,
  priors,
  readers,
  reference_weights,
  robust_resnet,
  torch_files,
  torch_objects,
  workdir as workdirs,
)

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
  """This library's config of the run that wrote ``ckpt`` (see the module docstring)."""
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


def _layers(config: ml_collections.ConfigDict) -> list[reference_weights.Layer]:
  if config.model.name == "mlp":
    return reference_weights.mlp_layers(config.model.depth)
  return reference_weights.resnet_layers(config.model.name, config.model.self_attention)


def set_width(config: ml_collections.ConfigDict, state: dict[str, np.ndarray], source: str) -> None:
  """``model.resnet_width`` from the stem's channels (the reference's are width 1)."""
  if config.model.name == "mlp":
    return
  stem = state.get("conv1.weight_orig", state.get("conv1.weight"))
  if stem is None:
    raise ValueError(f"{source} lacks conv1.weight (is it one of the reference's ResNets?)")
  config.model.resnet_width = stem.shape[0] / models.RESNETS[config.model.name][0]


def estimator_variables(
  config: ml_collections.ConfigDict, state: dict[str, np.ndarray], template: dict, source: str
) -> tuple[dict, dict]:
  """(params, batch_stats) of the imported estimator from a reference ``state_dict``."""
  layers, sn = _layers(config), config.model.spectral_norm
  gamma = config.model.self_attention
  what = f"{config.model.name}{' with spectral norm' if sn else ''}"
  reference_weights.check_all_used(state, layers, gamma, what, source)
  params = reference_weights.convert_params(
    state.get, layers, sn, gamma, template["params"], source
  )
  stats = reference_weights.spectral_stats(state, layers, source) if sn else {}
  return params, stats


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


def build_prior(config: ml_collections.ConfigDict, prior_path: str | None, shape: tuple[int, ...]):
  """The run's prior: ``--prior``'s Gaussian, the uniform / normal prior, the source domain
  without ``prior.source_path`` (``priors.SourcelessPrior``), or one fitted to data."""
  if prior_path:
    config.prior.name = "gaussian"
    return read_prior(prior_path, shape)
  if config.prior.name in ("uniform", "normal"):
    return prior_fit.build_prior(config, None, shape)
  if datasets.is_translation(config) and not config.prior.source_path:
    return prior_fit.build_prior(config, np.zeros((0, *shape), np.float32), shape)
  try:
    dataset = datasets.build_dataset(config)
    return prior_fit.build_prior(config, datasets.prior_data(config, dataset), shape)
  except (ValueError, OSError) as e:
    reason = readers.first_line(e).split("; ")[0][:200]
    raise ValueError(
      f"the {config.prior.name} prior cannot be fitted to the data ({reason}); "
      "give --prior=DATASET_ddp.pt (the reference's dataset_setup.py output) or "
      "--config.data.* where the data are"
    ) from None


def _with_adam(opt_state: Any, count: int, mu: dict, nu: dict) -> Any:
  """optax's Adam state (and its schedule's count) with torch's moments and step."""
  found, out = False, []
  for part in opt_state:
    if isinstance(part, optax.ScaleByAdamState):
      part, found = part._replace(count=jnp.asarray(count, jnp.int32), mu=mu, nu=nu), True
    elif hasattr(part, "count"):
      part = part._replace(count=jnp.asarray(count, jnp.int32))
    out.append(part)
  if not found:
    raise ValueError("this library's optimizer state has no Adam moments to import into")
  return type(opt_state)(out)


def build_state(
  config: ml_collections.ConfigDict, ckpt: dict, prior, source: str
) -> fdrl.TrainState:
  """The ``fdrl.TrainState`` of a reference checkpoint (weights, EMA, Adam, step, prior)."""
  model_sd = torch_objects.strip_prefix(
    torch_objects.state_dict(ckpt["model"], source, "its model state_dict")
  )
  ema_sd = model_sd
  if config.optim.ema_decay and isinstance(ckpt.get("ema"), dict) and ckpt["ema"]:
    ema_sd = torch_objects.strip_prefix(
      torch_objects.state_dict(ckpt["ema"], source, "its EMA state_dict")
    )
  shape = reference_shape(ckpt)
  model = fdrl.create_estimator(config)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))
  params, stats = estimator_variables(config, model_sd, template, source)
  ema_params, ema_stats = estimator_variables(config, ema_sd, template, source + " (ema)")
  tx = optim.build_optimizer(config)
  opt_state = tx.init(params)
  if "optim" in ckpt:
    convert = lambda lookup: reference_weights.convert_params(
      lookup,
      _layers(config),
      config.model.spectral_norm,
      config.model.self_attention,
      template["params"],
      source + " (optimizer)",
    )
    named = {name: model_sd[name] for name in reference_weights.parameter_names(model_sd)}
    count, mu, nu = reference_weights.adam_moments(ckpt["optim"], named, convert, source)
    opt_state = _with_adam(opt_state, count, mu, nu)
  as_jax = lambda tree: jax.tree.map(jnp.asarray, tree)
  step = int(ckpt.get("step", -1)) + 1
  return fdrl.TrainState(
    step=jnp.asarray(step, jnp.int32),
    params=as_jax(params),
    batch_stats=as_jax(stats),
    opt_state=as_jax(opt_state),
    ema_params=as_jax(ema_params),
    ema_batch_stats=as_jax(ema_stats),
    prior=prior,
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


def import_checkpoint(
  path: str, workdir: str, prior_path: str | None = None, overrides: Sequence[str] = ()
) -> tuple[str, int]:
  """Writes the workdir of a reference checkpoint; returns its path and step."""
  target = files.as_path(workdir)
  if target.exists() and (not target.is_dir() or any(target.iterdir())):
    raise ValueError(f"--workdir {workdir} exists and is not empty; give a new one")
  ckpt = torch_files.load(path)
  state: classifier.ClassifierState | fdrl.TrainState
  if robust_resnet.is_checkpoint(ckpt):
    if prior_path:
      raise ValueError(f"{path} is a robustness classifier; --prior is for FDRL checkpoints")
    config, state = classifier.robustness_run(ckpt, path)
    apply_overrides(config, list(overrides))
  else:
    ckpt = check_checkpoint(ckpt, path)
    config = reference_config(ckpt, path)
    model_sd = torch_objects.strip_prefix(
      torch_objects.state_dict(ckpt["model"], path, "its model state_dict")
    )
    set_width(config, model_sd, path)
    apply_overrides(config, list(overrides))
    prior = build_prior(config, prior_path, reference_shape(ckpt))
    state = build_state(config, ckpt, prior, path)
  workdir = workdirs.check_workdir(
    workdir, config, create=True, unrelated_sections=methods.unrelated_sections(config.method)
  )
  workdirs.write_config(workdir, config)
  checkpoints.save_checkpoint(workdir, config, state)
  return workdir, int(state.step)


def main(argv: list[str]) -> None:
  """``CKPT.pt --workdir=W [--prior=DATASET_ddp.pt] [--config.k=v ...]``; errors: one line."""
  if len(argv) == 2 and argv[1] in ("-h", "--help"):
    print(__doc__)
    return
  positional = [a for a in argv[1:] if not a.startswith("--")]
  options = dict(
    a[2:].partition("=")[::2] for a in argv[1:] if a.startswith(("--workdir=", "--prior="))
  )
  rest = [
    a for a in argv[1:] if a.startswith("--") and not a.startswith(("--workdir=", "--prior="))
  ]
  try:
    if len(positional) != 1 or not options.get("workdir"):
      raise ValueError(
        "usage: python -m fdrl_jax.import_reference CKPT.pt --workdir=DIR "
        "[--prior=DATASET_ddp.pt] [--config.KEY=VALUE ...]"
      )
    workdir, step = import_checkpoint(positional[0], options["workdir"], options.get("prior"), rest)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  prior = workdirs.read_config(workdir).get("prior", {})
  mode = (
    "translate --input=SOURCE_IMAGES --output=OUT.npz"  # imported without its source images
    if prior.get("name") == "empirical" and not prior.get("source_path")
    else "sample"
  )
  print(
    f"wrote {workdir}: the reference run at step {step} "
    f"(python -m fdrl_jax.main --config={os.path.join(workdir, 'config.json')} "
    f"--workdir={workdir} --mode={mode})"
  )


if __name__ == "__main__":
  main(sys.argv)
