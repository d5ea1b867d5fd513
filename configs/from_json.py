"""A workdir's saved config as a config file: ``--config=WORKDIR/config.json`` (the command line
turns that into ``--config=configs/from_json.py:WORKDIR/config.json``). It is the resolved config
the run was trained with, every key and value, so the same run can be resumed, sampled or
evaluated without the .py file it came from; ``--config.*`` overrides apply as usual. A key added
to the library after the run was trained (absent from its config.json) takes its default from
``configs/default.py``."""

import json

import ml_collections

from fdrl_jax.configs import default


def _merged(defaults: dict, saved: dict) -> dict:
  """``saved`` with the keys it lacks taken from ``defaults`` (recursively)."""
  out = dict(defaults)
  for key, value in saved.items():
    both = isinstance(value, dict) and isinstance(defaults.get(key), dict)
    out[key] = _merged(defaults[key], value) if both else value
  return out


def parse(text: str, path: str) -> dict:
  """A saved config's JSON ``text`` as a dict; a one-line ValueError naming ``path`` if it is not
  a JSON object."""
  try:
    saved = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                     "repair it (`--mode=config` prints a config as JSON).") from None
  if not isinstance(saved, dict):
    raise ValueError(f"{path} holds a JSON {type(saved).__name__}, not a config (an object of "
                     "sections); repair it (`--mode=config` prints a config as JSON).")
  return saved


def read(path: str) -> dict:
  """``parse`` of the file ``path``."""
  with open(path) as f:
    return parse(f.read(), path)


def get_config(path: str):
  return ml_collections.ConfigDict(_merged(default.get_config().to_dict(), read(path)))
