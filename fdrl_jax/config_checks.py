"""Checks of a config before anything is built: its key names and its numbers, one line per bad
one.

The types of keys are checked by the command line (``--config.*`` overrides are typed); the choices
(loss, divergence, model, data set, ...) by the registries that build them. A config file may add
keys, which nothing else would read: ``check_keys`` refuses a key that ``configs/default.py`` does
not have (a typo such as ``data.imagesize`` would otherwise leave the default in force), as the
command line refuses an unknown override. What is left are numbers that have the right type but no
meaning: a zero batch, a negative step size, an EMA decay of 1, NaN. ``RULES`` names each key's
range; ``check_config`` applies those of the keys a config has (sections it lacks are skipped) and
reads nothing else, so it is cheap and needs no JAX.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import ml_collections

from fdrl_jax.configs import default

Rule = tuple[Callable[[float], bool], str]

POSITIVE_INT: Rule = (lambda v: v >= 1, "an integer >= 1")
COUNT: Rule = (lambda v: v >= 0, "an integer >= 0")
POSITIVE: Rule = (lambda v: v > 0, "a finite number > 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, "a finite number >= 0")
FINITE: Rule = (lambda v: True, "a finite number")
DECAY: Rule = (lambda v: 0 <= v < 1, "a number in [0, 1)")

RULES: dict[str, Rule] = {
  "seed": COUNT,
  "data.batch_size": POSITIVE_INT,
  "data.dequantization": NON_NEGATIVE,
  "data.image_size": POSITIVE_INT,
  "data.resize_first": COUNT,
  "data.center_crop": COUNT,
  "data.max_fit_samples": (lambda v: v >= 2, "an integer >= 2"),
  "model.width": POSITIVE_INT,
  "model.depth": POSITIVE_INT,
  "model.channels": POSITIVE_INT,
  "model.negative_slope": NON_NEGATIVE,
  "model.resnet_width": POSITIVE,
  "flow.num_steps": POSITIVE_INT,
  "flow.num_refine_steps": COUNT,
  "flow.step_size": POSITIVE,
  "flow.noise_scale": NON_NEGATIVE,
  "prior.jitter": NON_NEGATIVE,
  "prior.rank": POSITIVE_INT,
  "prior.loc": FINITE,
  "prior.scale": POSITIVE,
  "generator.latent_dim": POSITIVE_INT,
  "generator.width": POSITIVE_INT,
  "generator.depth": POSITIVE_INT,
  "generator.channels": POSITIVE_INT,
  "gan.shift": FINITE,
  "gan.scale": POSITIVE,
  "gan.gen_learning_rate": POSITIVE,
  "gan.disc_learning_rate": POSITIVE,
  "gan.b1": DECAY,
  "gan.b2": DECAY,
  "refine.num_steps": COUNT,
  "refine.step_size": NON_NEGATIVE,
  "refine.noise_scale": NON_NEGATIVE,
  "sampling.label": COUNT,
  "sampling.classifier_weight": NON_NEGATIVE,
  "classifier.channels": POSITIVE_INT,
  "classifier.hidden": POSITIVE_INT,
  "classifier.num_classes": (lambda v: v >= 2, "an integer >= 2"),
  "classifier.epsilon": NON_NEGATIVE,
  "classifier.num_steps": COUNT,
  "classifier.step_size": NON_NEGATIVE,
  "classifier.noise": NON_NEGATIVE,
  "optim.learning_rate": POSITIVE,
  "optim.b1": DECAY,
  "optim.b2": DECAY,
  "optim.decay_steps": POSITIVE_INT,
  "optim.ema_decay": DECAY,
  "training.num_steps": POSITIVE_INT,
  "training.log_every": POSITIVE_INT,
  "training.checkpoint_every": POSITIVE_INT,
  "training.keep_checkpoints": POSITIVE_INT,
  "training.sample_every": POSITIVE_INT,
  "training.num_grid_samples": POSITIVE_INT,
  "training.eval_every": COUNT,
  "eval.num_samples": POSITIVE_INT,
  "eval.num_reference": COUNT,
  "eval.batch_size": COUNT,
}


def _values(value) -> list:
  return list(value) if isinstance(value, (tuple, list)) else [value]


def _keys(tree: dict, prefix: str = "") -> list[str]:
  """Every key of a nested dict, dotted (``data.image_size``), sections included."""
  keys = []
  for name, value in tree.items():
    keys.append(prefix + name)
    if isinstance(value, dict):
      keys += _keys(value, f"{prefix}{name}.")
  return keys


def check_keys(config: ml_collections.ConfigDict) -> None:
  """A one-line ValueError naming the first key of ``config`` that the default config
  (``configs/default.py``) does not have, with the closest known key."""
  known = _keys(default.get_config().to_dict())
  unknown = [key for key in _keys(config.to_dict()) if key not in known]
  if unknown:
    key = unknown[0]
    guess = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    raise ValueError(
      f"unknown config key {key!r} in the config file{hint}; configs/default.py "
      "has every key (`--mode=config` lists them)."
    )


def check_config(config: ml_collections.ConfigDict) -> None:
  """A one-line ValueError naming the first unknown key (``check_keys``), else the first key
  whose value is out of its range (``RULES``)."""
  check_keys(config)
  for key, (ok, wanted) in RULES.items():
    section, _, name = key.rpartition(".")
    group = config.get(section) if section else config
    if group is None or name not in group:
      continue
    value = group[name]
    for v in _values(value):
      good = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and ok(v)
      if not good:
        raise ValueError(
          f"--config.{key}={value!r}: must be {wanted}"
          + (" each" if isinstance(value, (tuple, list)) else "")
          + "."
        )
