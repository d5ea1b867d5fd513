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
(``flow_snapshots``, ``interpolants``, ``flow_interpolation``, ``scores.nearest_neighbours``), so
that tests check numbers rather than pixels.
Rows × columns pictures are tiled by ``images.tile``. An existing output is never overwritten: it
is refused up front, and the PNG created by ``files.write_new_file``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fdrl_jax import (
  bundled,
  conditional,
  datasets,
  features,
  files,
  flows,
  images,
  loading,
  registry,
  run_lib,
  sampler,
  sampling,
  scores,
)

Array = jax.Array

# Keys of the figures: fold_in(run.sample_key, FIGURE_KEY + i). Training grids use
# fold_in(sample_key, step ≥ 1), --mode=sample fold_in(sample_key, 0), FD-digits' prior 1 << 30.
FIGURE_KEY = 1 << 29
SPACES = ("pixel", "feature")


# ----------------------------------------------------------------------------------------------
# Pure helpers: the arrays behind the pictures.


def snapshot_plan(total_steps: int, num_columns: int = 10) -> tuple[int, list[int]]:
  """Which flow steps a strip shows: ``(save_every, steps)``, steps from 0 to ``total_steps``.

  If some ``save_every`` dividing ``total_steps`` gives between ``num_columns`` − 2 and
  ``num_columns`` + 1 snapshots (8–11 for the default 10), every saved snapshot is a column, evenly
  spaced (K + κ = 120: every 12th step, 11 columns). Otherwise the flow saves at the largest
  divisor that still gives at least ``num_columns`` snapshots (often every step) and
  ``num_columns`` of them, as evenly spaced as possible, are shown (K + κ = 25: steps 0, 3, 6, 8,
  11, 14, 17, 19, 22, 25). Flows shorter than ``num_columns`` steps show every step.
  """
  if num_columns < 2:
    raise ValueError(
      f"A strip needs at least 2 columns (prior draw and sample), got {num_columns}."
    )
  if total_steps + 1 <= num_columns:
    return 1, list(range(total_steps + 1))
  divisors = [s for s in range(1, total_steps + 1) if total_steps % s == 0]
  near = [s for s in divisors if num_columns - 2 <= total_steps // s + 1 <= num_columns + 1]
  if near:
    every = min(near, key=lambda s: (abs(total_steps // s + 1 - num_columns), s))
    return every, list(range(0, total_steps + 1, every))
  every = max(s for s in divisors if total_steps // s + 1 >= num_columns)
  picks = np.round(np.linspace(0, total_steps // every, num_columns)).astype(int)
  return every, [int(p) * every for p in picks]


class Snapshots(NamedTuple):
  """A strip's arrays: ``frames`` (R, C, ...) at flow ``steps`` (C,), from ``prior_draw`` to
  ``final`` (R, ...)."""

  frames: np.ndarray
  steps: list[int]
  prior_draw: np.ndarray
  final: np.ndarray


def _flow_parts(run: run_lib.Run) -> tuple[sampler.SamplerParts, dict]:
  """The run's sampling pieces: its start (prior draws), potential and K + κ flow; and that flow's
  ``flows.flow`` keywords (``FlowSpec.sampling_kwargs``)."""
  parts = run.sampler_parts()
  if parts is None or parts.potential is None or parts.spec is None:
    raise ValueError(f"A --config.method={run.config.method} run has no flow from a prior.")
  return parts, parts.spec.sampling_kwargs()


def flow_snapshots(
  run: run_lib.Run, state, key: Array, num_samples: int, num_columns: int = 10
) -> Snapshots:
  """Draws ``num_samples`` particles from the prior and flows them K + κ steps, keeping snapshots.

  The key is used as the ``prior`` sampler uses it (split into prior and flow keys), so the final
  column is the sample ``run.draw(state, key, num_samples, "prior")`` draws: the strip shows how
  Algorithm 2's own samples came about.
  """
  _check_count("strip rows", num_samples)
  parts, kwargs = _flow_parts(run)
  save_every, steps = snapshot_plan(kwargs["num_steps"], num_columns)
  picks = np.asarray([s // save_every for s in steps])

  @jax.jit
  def snapshots(state, key):
    k_prior, k_flow = jax.random.split(key)
    x0 = parts.start(state, k_prior, num_samples)
    final, trajectory = flows.flow(
      parts.potential(state), x0, k_flow, save_every=save_every, **kwargs
    )
    return x0, final, trajectory[picks]

  x0, final, frames = jax.device_get(snapshots(state, key))
  return Snapshots(frames=np.swapaxes(frames, 0, 1), steps=steps, prior_draw=x0, final=final)


def interpolants(prior, a: Array, b: Array, num_columns: int) -> Array:
  """Rows of ``num_columns`` points from a (R, ...) to b (R, ...) at t = 0, 1/(C−1), ..., 1.

  Gaussian-type priors (with a centre μ, ``Prior.centre``): spherical interpolation around μ,

      x(t) = μ + cos(tπ/2)(a − μ) + sin(tπ/2)(b − μ).

  If a − μ and b − μ are independent N(0, Σ) draws, so is every x(t) − μ (cos² + sin² = 1): each
  interpolant is a typical prior draw, as far from μ as a and b. Linear interpolation would pull
  the middle of a row towards μ (covariance Σ/2 at t = ½), where the prior has almost no mass in
  high dimension and the flow was never trained. Interpolants are clipped to the prior's own
  clipping range, as its samples are. Other priors (uniform, empirical): linear interpolation
  x(t) = (1 − t) a + t b. Either way x(0) = a and x(1) = b exactly.

  Returns:
    (R, C, ...) starting points.
  """
  _check_count("interpolation columns", num_columns, minimum=2)
  t = np.linspace(0.0, 1.0, num_columns)
  a, b = jnp.asarray(a)[:, None], jnp.asarray(b)[:, None]
  shape = (1, num_columns) + (1,) * (a.ndim - 2)
  mean = prior.centre()
  if mean is None:
    w_a, w_b = 1.0 - t, t
  else:  # sin(π/2 (1 − t)) = cos(tπ/2), but exactly 0 and 1 at the ends in float64
    w_a, w_b = np.sin(np.pi / 2 * (1.0 - t)), np.sin(np.pi / 2 * t)
  weight = lambda w: jnp.asarray(w, a.dtype).reshape(shape)
  x = weight(w_a) * a + weight(w_b) * b  # at t = 0 and 1 this is a or b exactly
  if mean is not None:
    x = x + weight(1.0 - w_a - w_b) * mean
    clip = prior.clip
    if clip is not None:
      x = jnp.clip(x, *clip)
  return x


class Interpolation(NamedTuple):
  """An interpolation figure's arrays: ``starts`` and ``flowed`` (R, C, ...); ``starts[:, 0]`` is
  ``a``, ``starts[:, -1]`` is ``b``; ``spherical`` tells which interpolation was used."""

  starts: np.ndarray
  flowed: np.ndarray
  a: np.ndarray
  b: np.ndarray
  spherical: bool


def flow_interpolation(
  run: run_lib.Run,
  state,
  key: Array,
  num_rows: int,
  num_columns: int = 10,
  *,
  a: Array | None = None,
  b: Array | None = None,
) -> Interpolation:
  """Interpolates between pairs of prior draws (``interpolants``) and flows every interpolant.

  Each particle is flowed on its own (``jax.vmap`` of the flow over particles) with its row's flow
  key, so every interpolant of a row sees the same noise realisation and the row varies only
  through its starting point. ``a`` and ``b`` (R, ...) replace the prior draws when given.
  """
  _check_count("interpolation rows", num_rows)
  k_a, k_b, k_flow = jax.random.split(key, 3)
  a = state.prior.sample(k_a, num_rows) if a is None else jnp.asarray(a)
  b = state.prior.sample(k_b, num_rows) if b is None else jnp.asarray(b)
  if a.shape != b.shape or a.shape[0] != num_rows:
    raise ValueError(
      f"Interpolation ends must both have shape ({num_rows}, ...), got {a.shape} and {b.shape}."
    )
  _check_count("interpolation columns", num_columns, minimum=2)
  parts, kwargs = _flow_parts(run)

  @jax.jit
  def flow_rows(state, a, b, keys):
    starts = interpolants(state.prior, a, b, num_columns)
    one = lambda x0, k: flows.flow(parts.potential(state), x0[None], k, **kwargs)[0]
    # Columns share their row's key (in_axes None): the same noise for the whole row.
    return starts, jax.vmap(jax.vmap(one, in_axes=(0, None)))(starts, keys)

  starts, flowed = flow_rows(state, a, b, jax.random.split(k_flow, num_rows))
  starts, flowed, ends_a, ends_b = jax.device_get((starts, flowed, a, b))
  return Interpolation(
    starts=starts, flowed=flowed, a=ends_a, b=ends_b, spherical=state.prior.centre() is not None
  )


# ----------------------------------------------------------------------------------------------
# The figures.


def _check_count(what: str, n: int, minimum: int = 1) -> None:
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
    raise ValueError(f"The number of {what} must be an integer >= {minimum}, got {n!r}.")


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
  _check_count("samples", num_samples)
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
  the K + κ flow steps to the final sample (last column); ``snapshot_plan`` picks the steps
  shown (8–11 columns by default). Image data only."""
  _check_count("strip rows", num_samples)
  _prepare(config, output_path, "strip")
  run, state, step = run_lib.restore_latest(config, workdir)
  snaps = flow_snapshots(run, state, _key(run, 1), num_samples, num_columns)
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
  prior draw; uniform and empirical priors linearly (see ``interpolants``). Every interpolant of a
  row is flowed K + κ steps with the same noise (``flow_interpolation``). Image data only.
  """
  _check_count("interpolation rows", num_samples)
  _prepare(config, output_path, "interpolation")
  run, state, step = run_lib.restore_latest(config, workdir)
  result = flow_interpolation(run, state, _key(run, 2), num_samples, num_columns)
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
  _check_count("samples", num_samples)
  _check_count("neighbours", k)
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
  _check_count("samples per class", num_samples)
  _prepare(config, output_path, "classes")
  run, state, step = run_lib.restore_latest(config, workdir_path)
  guide = loading.load_classifier(
    config.sampling.classifier_workdir, event_shape=run.dataset.event_shape
  )
  for_class, num_classes = conditional.conditional_sampler(_flow_parts(run)[0], guide, run.mesh)
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
  _check_count("translation rows", num_samples)
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
