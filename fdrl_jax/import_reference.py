"""Imports a checkpoint of the reference PyTorch FDRL (clear-nus/fdrl) as a workdir of this library.

Usage (no PyTorch needed)::

  python -m fdrl_jax.import_reference cifar10_LSIF_Pearson.pt --workdir=runs/ref_cifar10 \\
      [--prior=cifar10_ddp.pt] [--config.data.data_dir=...]

The checkpoint is what ``train_ddp.py``, ``train_up.py``, ``train_im2im_translation.py`` and
``train_toy_datasets.py`` save: ``{step, model, optim, ema, scheduler, config}`` (``model`` maybe
with DataParallel's ``module.`` prefix, ``ema`` the EMA of the whole ``state_dict``). It becomes an
ordinary workdir — ``config.json`` and an Orbax checkpoint of the whole ``fdrl.TrainState`` — so
``--mode=sample|eval|figure|translate`` run on it and ``--mode=train`` resumes it.

* Config (``fdrl_jax.reference_config``): the reference's ``dataset`` picks this library's config
  of that data set (``configs/cifar10.py``, ``celeba64.py``, ``lsun_church128.py``, ``cat2dog.py``,
  ``toy2d.py``; ``train_up.py``'s checkpoints, told by their ``best_fid``, get the uniform prior),
  and its ``loss_function``, ``f_divergence``, ``eta``, ``n_flow_steps``, ``noise_factor``,
  ``ema_rate``, ``learning_rate``, ``scheduler_steps``, ``n_epochs``, ``train_batch_size``,
  ``self_attn``, ``spectral_norm``, ``img_size`` / ``model`` and the toy MLP's sizes replace that
  config's values.
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
  optim,
  prior_fit,
  readers,
  reference_config as refconfig,
  reference_weights,
  robust_resnet,
  torch_files,
  torch_objects,
  workdir as workdirs,
)


def _layers(config: ml_collections.ConfigDict) -> list[reference_weights.Layer]:
  if config.model.name == "mlp":
    return reference_weights.mlp_layers(config.model.depth)
  return reference_weights.resnet_layers(config.model.name, config.model.self_attention)


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


def build_prior(config: ml_collections.ConfigDict, prior_path: str | None, shape: tuple[int, ...]):
  """The run's prior: ``--prior``'s Gaussian, the uniform / normal prior, the source domain
  without ``prior.source_path`` (``priors.SourcelessPrior``), or one fitted to data."""
  if prior_path:
    config.prior.name = "gaussian"
    return refconfig.read_prior(prior_path, shape)
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
  shape = refconfig.reference_shape(ckpt)
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
    refconfig.apply_overrides(config, list(overrides))
  else:
    ckpt = refconfig.check_checkpoint(ckpt, path)
    config = refconfig.reference_config(ckpt, path)
    model_sd = torch_objects.strip_prefix(
      torch_objects.state_dict(ckpt["model"], path, "its model state_dict")
    )
    refconfig.set_width(config, model_sd, path)
    refconfig.apply_overrides(config, list(overrides))
    prior = build_prior(config, prior_path, refconfig.reference_shape(ckpt))
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
