"""Command-line entry point: ``python -m fdrl_jax.main --config=configs/default.py --workdir=DIR``.

Training is not implemented yet (it is the next piece of work); today this command only checks its
flags and says so. The library (divergences, losses, flow, priors) is usable from Python.
"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")


def main(argv: list[str]) -> None:
  del argv
  print(f"fdrl_jax: training is not implemented yet; nothing was written to {_WORKDIR.value!r}. "
        "Use the library from Python (see README.md) until the training command lands.")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
