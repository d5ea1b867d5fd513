"""The command line's modes (``--mode=...``), one function each, in ``MODES``.

* ``train``: ``run_lib.train_and_evaluate`` (resumes from the workdir's latest checkpoint).
* ``sample``: ``sample_to_file``, samples of ``config.sampling`` in an .npz.
* ``eval``: ``evaluate_to_file``, the method's evaluation of one checkpoint or a series
  (``eval.checkpoints``) in ``eval_step_*.json`` / ``eval_steps_*.json``.
* ``figure``: ``figures.make_figure``, one picture of the latest checkpoint.
* ``translate``: ``translate_to_file``, given source images flowed by a translation run.
* ``stats``: ``feature_stats.stats_to_file``, the data's reference feature statistics in an .npz.
* ``config``: the resolved config, printed.

Every mode is ``mode(config, workdir, options)``, ``options`` the command's other flags
(``Options``); it prints what it did. Nothing existing is overwritten.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import NamedTuple

import ml_collections
import numpy as np

from fdrl_jax import (
  checkpoints,
  feature_stats,
  figures,
  files,
  images,
  loading,
  methods,
  metrics_log,
  parallel,
  registry,
  run_lib,
  sampling,
  workdir as workdirs,
)


class ResultNotWritten(ValueError):
  """An evaluation's result (``result``) that could not be written: the caller shows it."""

  def __init__(self, message: str, result: dict):
    super().__init__(message)
    self.result = result


def _write_npz(x: np.ndarray) -> Callable[[str], None]:
  def write(path: str) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
      np.savez(f, x=x)

  return write


def sample_to_file(
  config: ml_collections.ConfigDict,
  workdir_path: str,
  num_samples: int,
  output: str,
  batch_size: int | None = None,
) -> str:
  """Draws ``num_samples`` with ``config.sampling`` (default Algorithm 2: the EMA estimator's K + κ
  flow from the prior) from the latest checkpoint and writes them to ``output`` (.npz, key ``x``;
  images in [-1, 1])."""
  files.refuse_existing(output)  # before the sampling, not after it
  files.check_writable(output)
  if config.sampling.name == "translate":
    raise ValueError(
      "--config.sampling.name=translate moves given images: use --mode=translate "
      "--input=FILE.npz|DIR."
    )
  run, state, _ = loading.restore_for_sampling(
    config, workdir_path, data_optional=config.sampling.name == "prior"
  )
  files.check_writable(output, 4 * num_samples * math.prod(run.dataset.event_shape))  # float32
  x = sampling.draw(
    run.sampler(), state, run.sample_key_for(0), num_samples, batch_size or config.data.batch_size
  )
  return files.write_new_file(output, _write_npz(x))


def translate_to_file(
  config: ml_collections.ConfigDict,
  workdir_path: str,
  input_path: str,
  output: str,
  batch_size: int | None = None,
) -> str:
  """Unpaired translation (Sec. 6.5): flows the images of ``input_path`` K + κ steps with the EMA
  estimator of the latest checkpoint and writes them to ``output``: an .npz (key ``x``, in
  [-1, 1]) or a new folder of PNGs named after the inputs (written whole or not at all,
  ``files.write_new_folder``). Nothing existing is overwritten. A translation run's folders
  are not needed where its prior holds no source images (a reference checkpoint imported without
  them, ``priors.SourcelessPrior``)."""
  to_folder = not output.endswith(".npz")
  if to_folder:
    files.refuse_existing_folder(output)
  else:
    files.refuse_existing(output)
  files.check_writable(output)
  run, state, _ = run_lib.restore_latest(config, workdir_path, data_optional=True)
  x, names = loading.read_images(input_path, config, run.dataset.event_shape)
  files.check_writable(output, x.nbytes)
  y = sampling.draw(
    run.sampler("translate"), state, run.sample_key_for(0), x, batch_size or config.data.batch_size
  )
  if not to_folder:
    return files.write_new_file(output, _write_npz(y))

  def write_pngs(folder: str) -> None:
    for name, image in zip(names, y):
      images.save_png(
        images.tile(image[None, None], pad=0, min_size=1), os.path.join(folder, f"{name}.png")
      )

  return files.write_new_folder(output, write_pngs)


# --config.eval.checkpoints's forms, as its error lists them.
CHECKPOINT_CHOICES = ("latest", "all", "every:N", "S1,S2")


def select_steps(spec: str, steps: list[int], latest: int) -> list[int]:
  """The checkpoint steps ``--config.eval.checkpoints=spec`` picks among ``steps`` (the
  workdir's, oldest first): ``latest`` (the newest readable, ``latest``), ``all``, ``every:N``
  (those divisible by N) or a list ``S1,S2`` of steps; a one-line ValueError otherwise."""
  setting = "--config.eval.checkpoints"
  spec = spec.strip()
  there = f"steps there: {', '.join(map(str, steps)) or 'none'}"
  if spec == "latest":
    return [latest]
  if spec == "all":
    return list(steps)
  if spec.startswith("every:"):
    every = spec[len("every:") :]
    if not every.isdigit() or int(every) < 1:
      raise ValueError(f"{setting}={spec!r}: every:N needs a whole number N >= 1.")
    chosen = [s for s in steps if s % int(every) == 0]
    if not chosen:
      raise ValueError(f"{setting}={spec!r}: no checkpoint step is a multiple of {every}; {there}.")
    return chosen
  parts = [p.strip() for p in spec.split(",")]
  if not all(p.isdigit() for p in parts):
    raise registry.unknown_name(spec, CHECKPOINT_CHOICES, setting)
  chosen = sorted({int(p) for p in parts})
  missing = [s for s in chosen if s not in steps]
  if missing:
    raise ValueError(
      f"{setting}={spec!r}: no checkpoint of step {', '.join(map(str, missing))}; {there}."
    )
  return chosen


def evaluate_to_file(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """``--mode=eval``: the method's evaluation (``Method.evaluate``: sample scores of a generative
  run, accuracies of a classifier) of each checkpoint ``eval.checkpoints`` picks (``select_steps``;
  default the latest), returned with the path it is written to: one checkpoint's to
  ``workdir/eval_step_<step>.json``, a series' to ``workdir/eval_steps_<first>-<last>.json``
  (``steps``, each step's ``results`` and all their ``rows``); a new name if that exists. Every
  row has its ``step`` (``metrics_log.eval_rows``). The workdir is checked writable first; a write
  that fails after the evaluation raises ``ResultNotWritten`` with the result, so that nothing
  computed is lost."""
  methods.get_method(config.method).check_eval(config)
  run, state, latest = loading.restore_for_sampling(config, workdir)
  workdir = os.fspath(files.as_path(workdir))
  steps = select_steps(
    config.eval.checkpoints, checkpoints.checkpoint_steps(config, workdir), latest
  )
  name = (
    f"eval_step_{steps[0]:07d}.json"
    if len(steps) == 1
    else f"eval_steps_{steps[0]:07d}-{steps[-1]:07d}.json"
  )
  # Named before the evaluation's collectives, so every process names the same file.
  path = files.free_path(workdirs.join(workdir, name))
  files.check_writable(path)
  parallel.sync("eval_path")
  judge = (
    {}
    if config.sampling.name != "conditional"
    else {
      "judge": loading.load_classifier(
        config.eval.judge_workdir, event_shape=run.dataset.event_shape
      )
    }
  )  # never the guide
  results = []
  restored = (
    ((latest, state),) if steps == [latest] else checkpoints.restore_steps(run, workdir, steps)
  )
  for step, state in restored:
    result = {"step": step, **run.method.evaluate(config, run, state, workdir, **judge)}
    results.append({**result, "rows": metrics_log.eval_rows(result, step)})
  result = (
    results[0]
    if len(results) == 1
    else {
      "steps": steps,
      "results": [{k: v for k, v in r.items() if k != "rows"} for r in results],
      "rows": [row for r in results for row in r["rows"]],
    }
  )
  try:
    files.write_json(path, result)
  except ValueError as e:
    raise ResultNotWritten(
      f"{str(e).rstrip('.')}; the results above are not saved.", result
    ) from None
  return {**result, "path": path}


# ----------------------------------------------------------------------------------------------
# The modes.


class Options(NamedTuple):
  """The command line's flags besides ``--config`` and ``--workdir``.

  Attributes:
    num_samples: ``--num_samples``, or None where not given (a figure's default).
    output: ``--output``, or None (a new file in the workdir).
    input: ``--input``, or None.
    figure: ``--figure``, or None (grid).
    space: ``--space``, or None.
    new_output: name → a new file of that name in the workdir (never an existing one).
  """

  num_samples: int | None
  output: str | None
  input: str | None
  figure: str | None
  space: str | None
  new_output: Callable[[str], str]


# --num_samples of --mode=sample when it is not given.
DEFAULT_NUM_SAMPLES = 1000


def _train(config: ml_collections.ConfigDict, workdir: str, options: Options) -> None:
  del options
  run_lib.train_and_evaluate(config, workdir)


def _sample(config: ml_collections.ConfigDict, workdir: str, options: Options) -> None:
  num = DEFAULT_NUM_SAMPLES if options.num_samples is None else options.num_samples
  path = sample_to_file(config, workdir, num, options.output or options.new_output("samples.npz"))
  print(f"wrote {num} samples to {path}")


def _eval(config: ml_collections.ConfigDict, workdir: str, options: Options) -> None:
  del options
  print(json.dumps(evaluate_to_file(config, workdir), indent=2))


def _figure(config: ml_collections.ConfigDict, workdir: str, options: Options) -> None:
  name = options.figure or "grid"
  path = figures.make_figure(
    name,
    config,
    workdir,
    options.output or options.new_output(f"figure_{name}.png"),
    num_samples=options.num_samples,
    space=options.space,
    inputs=options.input,
  )
  print(f"wrote the {name} figure to {path}")


def _translate(config: ml_collections.ConfigDict, workdir: str, options: Options) -> None:
  if not (options.input and options.output):
    raise ValueError(
      "--mode=translate needs --input=FILE.npz|DIR (source images) and "
      "--output=FILE.npz|DIR (a new file or folder)."
    )
  path = translate_to_file(config, workdir, options.input, options.output)
  print(f"wrote the translated images to {path}")


def _stats(config: ml_collections.ConfigDict, workdir: str, options: Options) -> None:
  del workdir
  path = feature_stats.stats_to_file(config, options.output or options.new_output("stats.npz"))
  print(f"wrote the reference statistics of {config.data.name} to {path}")


def _config(config: ml_collections.ConfigDict, workdir: str, options: Options) -> None:
  del workdir, options
  print(config.to_json_best_effort(indent=2))


# --mode → mode(config, workdir, options).
MODES: dict[str, Callable[[ml_collections.ConfigDict, str, Options], None]] = {
  "train": _train,
  "sample": _sample,
  "eval": _eval,
  "figure": _figure,
  "translate": _translate,
  "stats": _stats,
  "config": _config,
}
