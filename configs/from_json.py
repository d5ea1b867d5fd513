"""A workdir's saved config as a config file: ``--config=WORKDIR/config.json`` (the command line
turns that into ``--config=configs/from_json.py:WORKDIR/config.json``). It is the resolved config
the run was trained with, every key and value, so the same run can be resumed, sampled or
evaluated without the .py file it came from; ``--config.*`` overrides apply as usual. A key added
to the library after the run was trained (absent from its config.json) takes its default from
``configs/default.py``."""

import ml_collections

from fdrl_jax.configs import default
from fdrl_jax import workdir


def _merged(defaults: dict, saved: dict) -> dict:
  """``saved`` with the keys it lacks taken from ``defaults`` (recursively)."""
  out = dict(defaults)
  for key, value in saved.items():
    both = isinstance(value, dict) and isinstance(defaults.get(key), dict)
    out[key] = _merged(defaults[key], value) if both else value
  return out


def read(path: str) -> dict:
  """The saved config in the file ``path`` as a dict (``workdir.parse_config``: a one-line
  ValueError if it is not a JSON object)."""
  with open(path) as f:
    return workdir.parse_config(f.read(), path)


def get_config(path: str):
  return ml_collections.ConfigDict(_merged(default.get_config().to_dict(), read(path)))
