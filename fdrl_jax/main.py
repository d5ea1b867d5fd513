"""Command line: ``python -m fdrl_jax.main --config=configs/digits.py --workdir=runs/digits``.

Modes: ``--mode=train`` (default; resumes from the workdir's latest checkpoint),
``--mode=sample --num_samples=N --output=FILE.npz``, ``--mode=eval`` (FD-digits or FID, see
``fdrl_jax.evaluate``; writes ``eval_step_*.json`` into the workdir) and
``--mode=figure --figure=grid|strip|interpolation|neighbours|classes|translation --output=FILE.png``
(one picture of the latest checkpoint, see ``fdrl_jax.figures``; ``--num_samples`` sets its samples
or rows, ``--space=pixel|feature`` the neighbours' distance) and
``--mode=translate --input=FILE.npz|DIR --output=FILE.npz|DIR`` (flows given source images with a
translation run's estimator, ``fdrl_jax.sampling``). ``--config.sampling.*`` picks the sampler
(Algorithm 2, GAN refinement, class-conditional). Override any config key with
``--config.a.b=value``. For multi-process runs (one per host or per GPU) pass ``--distributed``:
``jax.distributed.initialize`` then finds SLURM / Cloud TPU pod settings itself, or takes
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (the README's "Clusters").
Every mode then splits its work over all devices of all processes, and process 0 writes the files.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, e.g. configs/digits.py or configs/toy2d.py:chasm.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config, checkpoints, logs, samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "figure", "translate"],
                          "What to do.")
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", 1000, "sample mode: number of samples; figure mode: samples (grid) or rows "
    "(strip, interpolation, neighbours), default per figure.")
_OUTPUT = flags.DEFINE_string("output", None, "sample mode: output .npz file (key 'x'); figure "
                              "mode: output .png file; translate mode: .npz file or new folder of "
                              "PNGs. Never overwritten.")
_INPUT = flags.DEFINE_string("input", None, "translate mode: source images, an .npz (key 'x', "
                             "NHWC in [-1, 1]) or a folder of PNG/JPEG files.")
_FIGURE = flags.DEFINE_enum("figure", None, ["grid", "strip", "interpolation", "neighbours",
                                             "classes", "translation"],
                            "figure mode: which picture (see fdrl_jax/figures.py).")
_SPACE = flags.DEFINE_enum("space", None, ["pixel", "feature"],
                           "figure mode, neighbours: distance of pixels (default) or features.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Multi-process run: call "
                                  "jax.distributed.initialize() (auto-detects SLURM / TPU pods).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "with --distributed: HOST:PORT "
                                   "of process 0 (with --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "with --distributed: how many "
                                      "processes form the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "with --distributed: this process's "
                                   "index, 0 to num_processes - 1.")


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with bad flags and config overrides reported in one line."""
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    _fail(f"unknown config key {str(e.args[0]).strip(chr(39) + chr(34) + chr(92))!r} in a --config.* override; "
          "configs/default.py lists every key.")
  except (flags.Error, TypeError, ValueError) as e:
    _fail(f"{e} (configs/default.py lists every config key and its type).")
  missing = [name for name in ("config", "workdir") if flags.FLAGS[name].value is None]
  if missing:
    _fail(f"--{' and --'.join(missing)} must be given, e.g. --config=configs/digits.py "
          "--workdir=runs/digits.")
  return rest


def main(argv: list[str]) -> None:
  del argv
  if _MODE.value == "figure":  # checked before JAX starts, like the flags
    if not _FIGURE.value:
      _fail("--mode=figure needs --figure=grid|strip|interpolation|neighbours|classes|translation.")
    if not _OUTPUT.value:
      _fail("--mode=figure needs --output=FILE.png.")
  if _MODE.value == "translate" and not (_INPUT.value and _OUTPUT.value):
    _fail("--mode=translate needs --input=FILE.npz|DIR (source images) and "
          "--output=FILE.npz|DIR (a new file or folder).")
  cluster = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in cluster) and not _DISTRIBUTED.value:
    _fail("--coordinator_address, --num_processes and --process_id need --distributed.")
  from fdrl_jax import parallel, run_lib, sampling  # flag errors are reported before JAX starts
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  try:
    if _DISTRIBUTED.value:
      parallel.initialize_distributed(*cluster)
    if _MODE.value == "train":
      run_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == "eval":
      result = run_lib.evaluate_to_file(_CONFIG.value, _WORKDIR.value)
      print(json.dumps(result, indent=2))
    elif _MODE.value == "figure":
      from fdrl_jax import figures
      num_samples = _NUM_SAMPLES.value if flags.FLAGS["num_samples"].present else None
      path = figures.make_figure(_FIGURE.value, _CONFIG.value, _WORKDIR.value, _OUTPUT.value,
                                 num_samples=num_samples, space=_SPACE.value, inputs=_INPUT.value)
      print(f"wrote the {_FIGURE.value} figure to {path}")
    elif _MODE.value == "translate":
      path = sampling.translate_to_file(_CONFIG.value, _WORKDIR.value, _INPUT.value,
                                        _OUTPUT.value)
      print(f"wrote the translated images to {path}")
    else:
      if not _OUTPUT.value:
        _fail("--mode=sample needs --output=FILE.npz.")
      path = sampling.sample_to_file(_CONFIG.value, _WORKDIR.value, _NUM_SAMPLES.value,
                                     _OUTPUT.value)
      print(f"wrote {_NUM_SAMPLES.value} samples to {path}")
  except ValueError as e:
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
