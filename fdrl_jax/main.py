"""Command line: ``python -m fdrl_jax.main --config=configs/digits.py --workdir=runs/digits``
(installed: ``fdrl-jax --config=digits --workdir=runs/digits``).

Modes: ``--mode=train`` (default; resumes from the workdir's latest checkpoint),
``--mode=sample --num_samples=N --output=FILE.npz``, ``--mode=eval`` (FD-digits or FID, see
``fdrl_jax.evaluate``; writes ``eval_step_*.json`` into the workdir) and
``--mode=figure --figure=grid|strip|interpolation|neighbours|classes|translation --output=FILE.png``
(one picture of the latest checkpoint, see ``fdrl_jax.figures``; ``--num_samples`` sets its samples
or rows, ``--space=pixel|feature`` the neighbours' distance; the figure defaults to grid). Without
``--output``, sample and figure write a new file in the workdir (``samples.npz``,
``figure_grid.png``, ...; ``-2``, ``-3`` ... appended rather than overwrite) and
``--mode=translate --input=FILE.npz|DIR --output=FILE.npz|DIR`` (flows given source images with a
translation run's estimator). The modes are ``fdrl_jax.modes.MODES``, the figures
``fdrl_jax.figures.FIGURES``. ``--config.sampling.*`` picks the sampler (Algorithm 2, GAN
refinement, class-conditional). Override any config key with
``--config.a.b=value``. For multi-process runs (one per host or per GPU) pass ``--distributed``:
``jax.distributed.initialize`` then finds SLURM / Cloud TPU pod settings itself, or takes
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (docs/guide/clusters.md).
Every mode then splits its work over all devices of all processes, and process 0 writes the files.

``--config`` takes a config file (``configs/digits.py``, ``configs/toy2d.py:chasm``, any path), a
bundled config's name (``digits``, ``toy2d:chasm``), or a workdir's ``config.json``.
``--mode=config`` prints the resolved config (every key, with the overrides) and exits.
"""

from __future__ import annotations

import json
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "A config file (configs/digits.py, configs/toy2d.py:chasm; one of your own "
  "starts from `from fdrl_jax.configs import default`), a bundled config's name (digits, "
  "toy2d:chasm) or a workdir's config.json.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config, checkpoints, logs, samples.")
_MODE = flags.DEFINE_string(
  "mode",
  "train",
  "What to do: train, sample, eval, figure, translate, "
  "stats (the data's feature statistics, --output=S.npz) or config "
  "(print the resolved config and exit); fdrl_jax/modes.py.",
)
_NUM_SAMPLES = flags.DEFINE_integer(
  "num_samples",
  None,
  "sample mode: number of samples (default 1000); figure mode: samples "
  "(grid) or rows (strip, interpolation, neighbours), default per figure.",
)
_OUTPUT = flags.DEFINE_string(
  "output",
  None,
  "sample mode: output .npz file (key 'x'); figure "
  "mode: output .png file; translate mode: .npz file or new folder of "
  "PNGs; stats mode: .npz file. Never overwritten.",
)
_INPUT = flags.DEFINE_string(
  "input",
  None,
  "translate mode: source images, an .npz (key 'x', "
  "NHWC in [-1, 1]) or a folder of PNG/JPEG files.",
)
_FIGURE = flags.DEFINE_string(
  "figure",
  None,
  "figure mode: which picture, a name of fdrl_jax/figures.py's FIGURES (default grid).",
)
_SPACE = flags.DEFINE_string(
  "space",
  None,
  "figure mode, neighbours: distance of pixels (default) or features, figures.SPACES.",
)
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Multi-process run: call jax.distributed.initialize() (auto-detects SLURM / TPU pods).",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "with --distributed: HOST:PORT of process 0 (with --num_processes and --process_id).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "with --distributed: how many processes form the run."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "with --distributed: this process's index, 0 to num_processes - 1."
)


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  # What the interpreter's shutdown still prints after a failure (TensorStore callbacks of a
  # failed checkpoint write reporting "Event loop is closed") would bury the one line above.
  os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
  sys.exit(2)


def _config_argument(value: str) -> str:
  """``--config``'s value as absl's config_flags reads it: a bundled config's name becomes its
  file inside the package (``fdrl_jax/configs``, so an installed wheel finds it from any folder), a
  workdir's ``config.json`` goes through ``configs/from_json.py``; a file that does not exist is
  reported in one line before anything is created."""
  from fdrl_jax import configs, registry  # the bundled configs, installed with the package

  folder = os.path.dirname(configs.__file__)
  path, sep, args = value.partition(":")
  bundled = os.path.join(folder, f"{path}.py")
  if not os.path.exists(path) and re.fullmatch(r"\w+", path) and os.path.isfile(bundled):
    return bundled + sep + args
  if os.path.isfile(value) and value.endswith(".json"):
    from fdrl_jax.configs import from_json

    try:
      from_json.read(value)  # a broken file is named here, not in a traceback of the loader
    except ValueError as e:
      _fail(f"--config {e}")
    return os.path.join(folder, "from_json.py") + ":" + value
  if not os.path.isfile(path):
    names = sorted(
      f[:-3]
      for f in os.listdir(folder)
      if f.endswith(".py") and not f.startswith(("_", "from_json"))
    )
    if re.fullmatch(r"\w+", path):  # a bundled config's name, mistyped
      _fail(
        f"{registry.unknown_name(path, names, '--config')} Or give a config file (e.g. "
        "configs/digits.py) or a workdir's config.json."
      )
    _fail(
      f"--config {value}: no such file. Give a config file (e.g. configs/digits.py), a "
      f"workdir's config.json, or a bundled config's name: {', '.join(names)}."
    )
  return value


def _help() -> None:
  """``--help``: what the command does, its flags, and where the config keys are; exit 0."""
  print(__doc__)
  print(flags.FLAGS.main_module_help())
  print(
    "\nConfig keys: --config.SECTION.KEY=VALUE overrides any key; "
    "`--config=digits --mode=config` prints them all with their values, and "
    "configs/default.py explains each."
  )
  sys.exit(0)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with bad flags and config overrides reported in one line."""
  if any(a in ("-h", "--help", "--helpshort", "--helpfull", "-?") for a in argv[1:]):
    _help()
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith("--config="):
      argv[i] = "--config=" + _config_argument(arg[len("--config=") :])
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    err: Exception = e
    while err.args and isinstance(err.args[0], Exception):  # ml_collections wraps a KeyError
      err = err.args[0]
    text = str(err.args[0]) if err.args else str(err)
    match = re.match(r"'?([\w.]*)", text)  # matches any text (maybe empty)
    key = match.group(1) if match else ""
    given = [a.split("=")[0][len("--config.") :] for a in argv if a.startswith("--config.")]
    key = next((g for g in given if g == key or g.endswith("." + key)), key)
    guess = re.search(r'Did you mean "([\w.]+)"', text)
    hint = f" (did you mean {guess.group(1)!r}?)" if guess else ""
    _fail(
      f"unknown config key {key!r} in a --config.* override{hint}; `--mode=config` lists every key."
    )
  except (flags.Error, TypeError, ValueError) as e:
    _fail(f"{e} (`--mode=config` lists every config key and its value).")
  needed = ("config",) if flags.FLAGS["mode"].value == "config" else ("config", "workdir")
  missing = [name for name in needed if flags.FLAGS[name].value is None]
  if missing:
    _fail(
      f"--{' and --'.join(missing)} must be given, e.g. --config=configs/digits.py "
      "--workdir=runs/digits."
    )
  from fdrl_jax import config_checks  # a config file's keys and values, checked as flags are

  try:
    config_checks.check_config(flags.FLAGS["config"].value)
  except ValueError as e:
    _fail(str(e))
  return rest


def _workdir() -> str:
  """``--workdir``; "" only for ``--mode=config``, which needs none (``_parse_flags`` checks)."""
  return _WORKDIR.value or ""


def _new_output(name: str) -> str:
  """A new file ``name`` in the workdir (``-2``, ``-3`` ... before the extension if it exists),
  named the same by every process before any of them writes."""
  from fdrl_jax import files, parallel, workdir

  path = files.free_path(workdir.join(_workdir(), name))
  parallel.sync("output_name")
  return path


def main(argv: list[str]) -> None:
  del argv
  cluster = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in cluster) and not _DISTRIBUTED.value:
    _fail("--coordinator_address, --num_processes and --process_id need --distributed.")
  from fdrl_jax import modes, parallel, registry, stops, workdir  # flag errors come before JAX

  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  options = modes.Options(
    num_samples=_NUM_SAMPLES.value,
    output=_OUTPUT.value,
    input=_INPUT.value,
    figure=_FIGURE.value,
    space=_SPACE.value,
    new_output=_new_output,
  )
  try:
    mode = registry.lookup(modes.MODES, _MODE.value, "--mode")
    if _DISTRIBUTED.value:
      parallel.initialize_distributed(*cluster)
    mode(_CONFIG.value, _workdir(), options)
    workdir.quiet_late_reports()  # the output is complete: late library noise goes to errors.log
  except modes.ResultNotWritten as e:
    print(json.dumps(e.result, indent=2))  # the evaluation's numbers, then why they are not saved
    _fail(str(e))
  except ValueError as e:
    _fail(str(e))
  except OSError as e:  # a write that failed after the checks: a full disk, a file-size limit
    where = workdir.log_error(_workdir(), e) if os.path.isdir(_workdir()) else ""
    _fail(
      f"could not write {e.filename or 'a file'}: {e.strerror or e}. Nothing written "
      f"before it is lost; free space (or fix the folder) and run the command again{where}."
    )
  except stops.TrainingInterrupted as e:
    print(str(e), file=sys.stderr)
    workdir.quiet_late_reports()
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    print(
      "Interrupted; the latest checkpoint is where training resumes."
      if _MODE.value == "train"
      else f"Interrupted; --mode={_MODE.value} wrote no output: run it again.",
      file=sys.stderr,
    )
    sys.exit(130)


def run() -> None:
  """The ``fdrl-jax`` console script: the same as ``python -m fdrl_jax.main``."""
  try:
    app.run(main, flags_parser=_parse_flags)
  except KeyboardInterrupt:  # Ctrl-C while the flags are parsed or JAX is imported
    print("Interrupted before any work; nothing was written.", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  run()
