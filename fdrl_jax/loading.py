"""``fdrl_jax.load(workdir)``: a trained (or imported) run as plain JAX functions.

The run is restored exactly as the command-line modes restore it (``run_lib.restore_latest``: the
latest readable checkpoint, checked against the workdir's ``config.json``; as for
``--mode=sample``, a tfds preset's images need not be on this machine). What comes back holds the
restored state and functions of arrays that close over it, pure and traceable, so they compose
with the caller's ``jax.jit``, ``jax.grad`` and ``jax.vmap``:

* FDRL: ``output(x)`` the EMA estimator's outputs (B,) (r or log r, per the loss),
  ``potential(x)`` its flow potential f'(r(x)) (B,) (``fdrl_jax.flow`` takes it as is),
  ``sample(key, n)`` Algorithm 2 (a prior draw, K + κ steps; ``n`` static under ``jit``),
  ``prior``, ``params`` = the EMA parameters.
* MonoFlow GAN: ``generator(z)``, ``discriminator(x)`` (the logit d = log p/q),
  ``sample(key, n)`` = G(z), ``params`` = the generator's.
* Classifier: ``output(x)`` the log-probabilities (B, N), ``params`` its parameters.

The modes read through here too: ``restore_for_sampling`` (a run with the classifier that guides
its conditional sampler, ``load_classifier``), and ``read_images`` (the images to translate).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from fdrl_jax import (
  classifier,
  conditional,
  preprocessing,
  readers,
  run_lib,
  sampling,
  workdir as workdirs,
)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """A restored run (see the module docstring); fields a method lacks are None."""

  config: ml_collections.ConfigDict
  step: int
  state: Any
  params: Any
  prior: Any = None
  output: Callable[[Array], Array] | None = None
  potential: Callable[[Array], Array] | None = None
  generator: Callable[[Array], Array] | None = None
  discriminator: Callable[[Array], Array] | None = None
  sampler: Callable[[Any, Array, int], Array] | None = dataclasses.field(default=None, repr=False)

  def sample(self, key: Array, n: int) -> Array:
    """n samples (n, *event_shape) of the run's ``prior`` sampler from ``key``; pure."""
    if self.sampler is None:
      raise ValueError(f"a --config.method={self.config.method} run does not sample")
    return self.sampler(self.state, key, n)


def load(workdir: str | os.PathLike) -> LoadedRun:
  """The latest checkpoint of ``workdir`` as a :class:`LoadedRun`.

  Raises:
    ValueError: one line if the workdir holds no run, no readable checkpoint, or its data cannot
      be read.
  """
  workdir = os.fspath(workdir)
  config = workdirs.read_config(workdir)
  state: Any  # the method's own state (FDRL's TrainState, GANState, ClassifierState)
  run, state, step = run_lib.restore_latest(config, workdir, data_optional=True)
  method = config.get("method", "fdrl")
  if method == "classifier":
    model = classifier.build_model(config)
    return LoadedRun(
      config,
      step,
      state,
      state.params,
      output=classifier.log_probabilities(model.apply, state.params),
    )
  parts = run.sampler_parts()
  if parts is None:
    raise ValueError(f"{workdir} holds a {method!r} run, which has no sampler to load.")
  sampler = sampling.prior_sample_fn(parts)
  if parts.generator is not None:
    g = parts.generator
    return LoadedRun(
      config,
      step,
      state,
      state.gen_params,
      generator=g.generate(state),
      discriminator=g.logit(state),
      sampler=sampler,
    )
  if parts.estimator is None or parts.potential is None:
    raise ValueError(
      f"{workdir} holds a {method!r} run, which has neither a generator nor a "
      "density-ratio estimator to load."
    )
  return LoadedRun(
    config,
    step,
    state,
    state.ema_params,
    prior=state.prior,
    output=parts.estimator.apply(state),
    potential=parts.potential(state),
    sampler=sampler,
  )


def load_classifier(classifier_workdir: str, *, event_shape: tuple[int, ...]) -> conditional.Guide:
  """The guiding classifier of ``--config.sampling.classifier_workdir`` as a ``conditional.Guide``
  (x ↦ log p(y | x) (B, N), its parameters, N), checked against the sampled images' shape
  (one-line ValueErrors). The classifier is restored like any run."""
  if not classifier_workdir:
    raise ValueError(conditional.NEEDS_CLASSIFIER)
  config = workdirs.read_config(classifier_workdir)
  if config.get("method") != "classifier":
    raise ValueError(
      f"--config.sampling.classifier_workdir {classifier_workdir} holds a "
      f"{config.get('method', 'fdrl')!r} run, not a classifier; train one with "
      "--config=configs/digits_classifier.py (or another classifier config)."
    )
  state: Any  # a ClassifierState
  run, state, _ = run_lib.restore_latest(config, classifier_workdir)
  if tuple(run.dataset.event_shape) != tuple(event_shape):
    raise ValueError(
      f"The classifier in {classifier_workdir} was trained on images of shape "
      f"{tuple(run.dataset.event_shape)}, but this run samples "
      f"{tuple(event_shape)}; train a classifier on this data set."
    )
  model = classifier.build_model(config)
  return conditional.Guide(
    log_probs=lambda params: classifier.log_probabilities(model.apply, params),
    params=state.params,
    num_classes=model.num_classes,
  )


def restore_for_sampling(
  config: ml_collections.ConfigDict, workdir: str, *, data_optional: bool = False
) -> tuple[run_lib.Run, Any, int]:
  """``run_lib.restore_latest``, with ``run.guide`` set to the classifier of
  ``sampling.classifier_workdir`` when ``config.sampling.name`` is ``conditional``."""
  run, state, step = run_lib.restore_latest(config, workdir, data_optional=data_optional)
  if config.sampling.name == "conditional":
    run.guide = load_classifier(
      config.sampling.classifier_workdir, event_shape=run.dataset.event_shape
    )
  return run, state, step


def read_images(
  path: str, config: ml_collections.ConfigDict, event_shape: tuple[int, ...]
) -> tuple[np.ndarray, list[str]]:
  """Images to translate, in [-1, 1], and a name for each: an .npz (key ``x``, NHWC, float in
  [-1, 1] or uint8) or a folder of PNG/JPEG files preprocessed as the training folder is
  (``data.image_size``, ``resize_first``, ``center_crop``, ``stretch``; grey when the run's
  images are)."""
  if os.path.isdir(path):
    files = readers.image_files(path)
    names = [os.path.splitext(os.path.relpath(f, path))[0].replace(os.sep, "_") for f in files]
    shared = [name for name, count in collections.Counter(names).items() if count > 1]
    if shared:
      raise ValueError(
        f"--input {path} holds several images named {shared[0]} (other extensions "
        f"or folders), which would all be written as {shared[0]}.png; rename them."
      )
    d = config.data
    load = readers.folder_loader(
      files,
      event_shape[-1],
      folder=path,
      image_size=event_shape[0],
      center_crop=d.center_crop or None,
      resize_first=d.resize_first or None,
      stretch=d.stretch,
    )
    x = preprocessing.load_all(len(files), load)
  elif os.path.isfile(path) and path.endswith(".npz"):
    with readers.open_npz(path) as arrays:
      x = readers.npz_images(arrays, "x", path)
    names = [f"{i:06d}" for i in range(len(x))]
  else:
    raise ValueError(f"--input {path} is neither an .npz file nor a folder of images.")
  if tuple(x.shape[1:]) != tuple(event_shape):
    raise ValueError(
      f"--input {path} holds images of shape {tuple(x.shape[1:])}; this run's "
      f"images have shape {tuple(event_shape)}."
    )
  if not len(x):
    raise ValueError(f"--input {path} holds no images.")
  return x, names
