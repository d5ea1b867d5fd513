"""The pictures people expect from a trained run, each written as one PNG by one function.

* ``grid``: samples of Algorithm 2 (K + κ flow steps) as an image grid, or for 2-D toy data a
  scatter plot over training points (the picture training leaves in ``samples/``).
* ``strip`` (FDRL Fig. 6, the flow process): a few particles (rows) from their prior draw
  (column 0) through the flow to the final sample (last column).
* ``interpolation`` (Fig. 7): each row interpolates between two prior draws and flows every
  interpolant with the same noise, so that a row varies only through its starting point.
* ``neighbours`` (Fig. 10–11): samples (column 0) next to their nearest training images, in
  pixel space or in a feature space, to show that samples are not copies of the training set.
* ``classes`` (Sec. 6.4): one row of class-conditional samples per class of a guiding classifier.
* ``translation`` (Sec. 6.5): source | translated pairs of a translation run.

Every function takes ``(config, workdir, output_path, ...)``, restores the workdir's latest
checkpoint and flows with what ``--mode=sample`` uses: the run's sampler parts
(``run.sampler_parts()``: prior draws, the EMA estimator's potential, the flow's ``spec`` of
K + κ steps, η, ν, clipping). The arrays behind each picture come from pure helpers
(``figure_arrays``: ``flow_snapshots``, ``interpolants``, ``flow_interpolation``; and
``scores.nearest_neighbours``), so that tests check numbers rather than pixels.
Rows × columns pictures are tiled by ``images.tile``. An existing output is never overwritten: it
is refused up front, and the PNG created by ``files.write_new_file``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from fdrl_jax import (
  bundled,
  conditional,
  datasets,
  features,
  figure_arrays,
  files,
  images,
  loading,
  registry,
  run_lib,
  sampling,
  scores,
)

Array = jax.Array

# Keys of the figures: fold_in(run.sample_key, FIGURE_KEY + i). Training grids use
# fold_in(sample_key, step ≥ 1), --mode=sample fold_in(sample_key, 0), FD-digits' prior 1 << 30.
FIGURE_KEY = 1 << 29
SPACES = ("pixel", "feature")


def _prepare(
  config: ml_collections.ConfigDict, output_path: str, figure: str, *, flow: bool = True
) -> None:
  """One-line ValueErrors before restoring: an output that is not a new, writable .png, 2-D toy
  data, and (``flow``) a run without FDRL's flow from a prior (a GAN)."""
  if not output_path.lower().endswith(".png"):
    raise ValueError(f"--output {output_path} must name a .png file.")
  files.refuse_existing(output_path)
  files.check_writable(output_path)
  name = config.data.name
  if (
    figure != "grid"
    and name in bundled.DATASETS
    and not bundled.create_dataset(name, seed=config.seed).is_image
  ):
    raise ValueError(
      f"The {figure} figure needs image data; {name!r} is 2-D points "
      "(use --figure=grid for a scatter plot)."
    )
  if flow and config.method != "fdrl":
    raise ValueError(
      f"The {figure} figure shows FDRL's flow from the prior; a "
      f"--config.method={config.method} run has none (use --figure=grid or "
      "neighbours)."
    )


def _write(picture: np.ndarray, output_path: str, title: str, step: int) -> str:
  """Writes ``picture`` under its title and the checkpoint's step as a new PNG file."""
  picture = images.titled(picture, f"{title} - step {step}")
  return files.write_new_file(output_path, lambda path: images.save_png(picture, path))


def _key(run: run_lib.Run, figure: int) -> Array:
  return run.sample_key_for(FIGURE_KEY + figure)


def grid(
  config: ml_collections.ConfigDict, workdir: str, output_path: str, num_samples: int = 64
) -> str:
  """``num_samples`` samples (Algorithm 2, K + κ steps, EMA estimator) as an image grid.

  The samples are the first ``num_samples`` that ``--mode=sample`` draws. Images are laid out by
  ``images.grid`` (⌈√N⌉ columns, ⌈N / columns⌉ rows); 2-D toy data is drawn as a 256×256
  scatter plot (red) over 2 000 training points (grey), like the training grids.
  """
  figure_arrays.check_count("samples", num_samples)
  _prepare(config, output_path, "grid", flow=False)
  run, state, step = loading.restore_for_sampling(config, workdir)
  samples = sampling.draw(
    run.sampler(), state, run.sample_key_for(0), num_samples, config.data.batch_size
  )
  return _write(
    images.samples_picture(samples, run_lib.grid_reference(run)),
    output_path,
    f"{len(samples)} samples",
    step,
  )


def strip(
  config: ml_collections.ConfigDict,
  workdir: str,
  output_path: str,
  num_samples: int = 8,
  num_columns: int = 10,
) -> str:
  """FDRL Fig. 6: ``num_samples`` particles (rows) from their prior draw (first column) through
  the K + κ flow steps to the final sample (last column); ``figure_arrays.snapshot_plan`` picks
  the steps shown (8–11 columns by default). Image data only."""
  figure_arrays.check_count("strip rows", num_samples)
  _prepare(config, output_path, "strip")
  run, state, step = run_lib.restore_latest(config, workdir)
  snaps = figure_arrays.flow_snapshots(run, state, _key(run, 1), num_samples, num_columns)
  return _write(
    images.tile(snaps.frames), output_path, "flow steps " + " ".join(map(str, snaps.steps)), step
  )


def interpolation(
  config: ml_collections.ConfigDict,
  workdir: str,
  output_path: str,
  num_samples: int = 6,
  num_columns: int = 10,
) -> str:
  """FDRL Fig. 7: ``num_samples`` rows, each ``num_columns`` flowed interpolants between two prior
  draws a (first column) and b (last column).

  Gaussian-type priors are interpolated spherically around their mean μ,
  x(t) = μ + cos(tπ/2)(a − μ) + sin(tπ/2)(b − μ), so that every interpolant is still a typical
  prior draw; uniform and empirical priors linearly (see ``figure_arrays.interpolants``). Every
  interpolant of a row is flowed K + κ steps with the same noise
  (``figure_arrays.flow_interpolation``). Image data only.
  """
  figure_arrays.check_count("interpolation rows", num_samples)
  _prepare(config, output_path, "interpolation")
  run, state, step = run_lib.restore_latest(config, workdir)
  result = figure_arrays.flow_interpolation(run, state, _key(run, 2), num_samples, num_columns)
  return _write(images.tile(result.flowed), output_path, "flowed interpolants, row by row", step)


def training_images(run: run_lib.Run) -> np.ndarray:
  """The training images neighbours are searched in: the whole training split when it is held in
  memory, else the ``data.max_fit_samples`` images decoded to fit the prior (a random subset of a
  large split, drawn with the config's seed)."""
  config = run.config
  return bundled.fit_samples(run.dataset, config.data.max_fit_samples, config.seed)


def neighbours(
  config: ml_collections.ConfigDict,
  workdir: str,
  output_path: str,
  num_samples: int = 8,
  k: int = 8,
  space: str = "pixel",
) -> str:
  """FDRL Fig. 10–11: ``num_samples`` samples (first column) and their ``k`` nearest training
  images (next columns, nearest first).

  ``space="pixel"``: Euclidean distance between pixel values; ``space="feature"``: between
  features (``features.feature_extractor``: the digits classifier, or Inception pool3). Samples
  are the first ones ``--mode=sample`` draws; training images are ``training_images(run)``. Image
  data only.
  """
  figure_arrays.check_count("samples", num_samples)
  figure_arrays.check_count("neighbours", k)
  registry.lookup(dict.fromkeys(SPACES), space, "--space")
  _prepare(config, output_path, "neighbours", flow=False)
  if space == "feature":
    features.check_feature_space(config)  # before the (possibly long) restore
  run, state, step = loading.restore_for_sampling(config, workdir)
  samples = sampling.draw(
    run.sampler(), state, run.sample_key_for(0), num_samples, config.data.batch_size
  )
  train_images = training_images(run)
  if space == "pixel":
    index, _ = scores.nearest_neighbours(samples, train_images, k)
  else:
    extract = features.feature_extractor(config)
    index, _ = scores.nearest_neighbours(extract(samples), extract(train_images), k)
  rows = np.concatenate([samples[:, None], train_images[index]], axis=1)
  return _write(images.tile(rows), output_path, f"sample | nearest training images ({space})", step)


def classes(
  config: ml_collections.ConfigDict, workdir_path: str, output_path: str, num_samples: int = 10
) -> str:
  """Class-conditional samples (FDRL Sec. 6.4): one row of ``num_samples`` per class of the
  classifier in ``sampling.classifier_workdir``, guided with weight ``sampling.classifier_weight``
  (``conditional.conditional_sampler``, the classifier read by ``loading.load_classifier``; every
  row is drawn with the same key)."""
  figure_arrays.check_count("samples per class", num_samples)
  _prepare(config, output_path, "classes")
  run, state, step = run_lib.restore_latest(config, workdir_path)
  guide = loading.load_classifier(
    config.sampling.classifier_workdir, event_shape=run.dataset.event_shape
  )
  for_class, num_classes = conditional.conditional_sampler(
    figure_arrays.flow_parts(run)[0], guide, run.mesh
  )
  weight = config.sampling.classifier_weight
  rows = [
    for_class(label, weight).sample(state, _key(run, 3), num_samples)
    for label in range(num_classes)
  ]
  return _write(
    images.tile(np.stack(rows)),
    output_path,
    f"classes 0-{num_classes - 1}, top to bottom (phi {weight:g})",
    step,
  )


def translation(
  config: ml_collections.ConfigDict,
  workdir_path: str,
  output_path: str,
  num_samples: int = 8,
  inputs: str | None = None,
) -> str:
  """Unpaired translation (FDRL Sec. 6.5): ``num_samples`` pairs in columns, the source above its
  translation, the sources from ``inputs`` (an .npz or folder, as ``--mode=translate`` reads it)
  or else the run's held-out source images."""
  figure_arrays.check_count("translation rows", num_samples)
  _prepare(config, output_path, "translation")
  run, state, step = run_lib.restore_latest(config, workdir_path)
  if inputs:
    sources, _ = loading.read_images(inputs, config, run.dataset.event_shape)
  else:
    held_out = datasets.source_domain(config, run.dataset)[1]
    if held_out is None:
      raise ValueError(
        "The translation figure needs source images: give --input=FILE.npz|DIR "
        "or set --config.prior.source_test_path."
      )
    sources = held_out
  sources = sources[:num_samples]
  translated = sampling.draw(
    run.sampler("translate"), state, _key(run, 4), sources, config.data.batch_size
  )
  return _write(
    images.tile(np.stack([sources, translated])),
    output_path,
    "sources (top) | translated (bottom)",
    step,
  )


FIGURES: dict[str, Callable[..., str]] = {
  "grid": grid,
  "strip": strip,
  "interpolation": interpolation,
  "neighbours": neighbours,
  "classes": classes,
  "translation": translation,
}


def make_figure(
  name: str,
  config: ml_collections.ConfigDict,
  workdir: str,
  output_path: str,
  *,
  num_samples: int | None = None,
  space: str | None = None,
  inputs: str | None = None,
) -> str:
  """The figure ``name`` (a key of FIGURES), as ``--mode=figure`` calls it; ``None`` arguments take
  the figure's defaults. ``space`` applies to ``neighbours`` only, ``inputs`` to ``translation``."""
  figure = registry.lookup(FIGURES, name, "--figure")
  kwargs: dict[str, Any] = {}
  if num_samples is not None:
    kwargs["num_samples"] = num_samples
  if space is not None:
    if name != "neighbours":
      raise ValueError(f"--space applies to --figure=neighbours only, not {name}.")
    kwargs["space"] = space
  if inputs is not None:
    if name != "translation":
      raise ValueError(f"--input applies to --figure=translation only, not {name}.")
    kwargs["inputs"] = inputs
  return figure(config, workdir, output_path, **kwargs)
