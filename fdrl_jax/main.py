"""Command line: ``python -m fdrl_jax.main --config=configs/digits.py --workdir=runs/digits``.

Modes: ``--mode=train`` (default; resumes from the workdir's latest checkpoint),
``--mode=sample --num_samples=N --output=FILE.npz``, ``--mode=eval`` (FD-digits or FID, see
``fdrl_jax.evaluate``; writes ``eval_step_*.json`` into the workdir) and
``--mode=figure --figure=grid|strip|interpolation|neighbours --output=FILE.png`` (one picture of the
latest checkpoint, see ``fdrl_jax.figures``; ``--num_samples`` sets its samples or rows,
``--space=pixel|feature`` the neighbours' distance). Override any config key with
``--config.a.b=value``. For multi-host runs pass ``--distributed`` (calls
``jax.distributed.initialize()``, which finds SLURM / TPU pod settings itself).
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
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "figure"], "What to do.")
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", 1000, "sample mode: number of samples; figure mode: samples (grid) or rows "
    "(strip, interpolation, neighbours), default per figure.")
_OUTPUT = flags.DEFINE_string("output", None, "sample mode: output .npz file (key 'x'); figure "
                              "mode: output .png file. Never overwritten.")
_FIGURE = flags.DEFINE_enum("figure", None, ["grid", "strip", "interpolation", "neighbours"],
                            "figure mode: which picture (see fdrl_jax/figures.py).")
_SPACE = flags.DEFINE_enum("space", None, ["pixel", "feature"],
                           "figure mode, neighbours: distance of pixels (default) or features.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")


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
      _fail("--mode=figure needs --figure=grid|strip|interpolation|neighbours.")
    if not _OUTPUT.value:
      _fail("--mode=figure needs --output=FILE.png.")
  import jax  # imported here so that flag errors are reported before JAX starts
  from fdrl_jax import run_lib
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  try:
    if _MODE.value == "train":
      run_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == "eval":
      result = run_lib.evaluate_to_file(_CONFIG.value, _WORKDIR.value)
      print(json.dumps(result, indent=2))
    elif _MODE.value == "figure":
      from fdrl_jax import figures
      num_samples = _NUM_SAMPLES.value if flags.FLAGS["num_samples"].present else None
      path = figures.make_figure(_FIGURE.value, _CONFIG.value, _WORKDIR.value, _OUTPUT.value,
                                 num_samples=num_samples, space=_SPACE.value)
      print(f"wrote the {_FIGURE.value} figure to {path}")
    else:
      if not _OUTPUT.value:
        _fail("--mode=sample needs --output=FILE.npz.")
      path = run_lib.sample_to_file(_CONFIG.value, _WORKDIR.value, _NUM_SAMPLES.value,
                                    _OUTPUT.value)
      print(f"wrote {_NUM_SAMPLES.value} samples to {path}")
  except ValueError as e:
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
