"""Class-conditional FDRL on the bundled 8×8 digits (FDRL Sec. 6.4, Eq. 12, 29–31), one command.

  python -m experiments.conditional_digits [--samples 100] [--out experiments/out]

Trains (or reuses, in --out/work) the digits default (``configs/digits.py``, FDRL-DDP LR-KL), a
robust guiding classifier (``configs/digits_classifier.py``, PGD-L2 with noise) and a non-robust
one (the same net, plain training: ε = 0, no noise). For each guidance and
ϕ ∈ {0, 0.03, 0.1, 0.2, 0.3, 1} it draws ``--samples`` conditional
samples per class and reports: the share that a *separate*, non-robust judge (the FD-digits
classifier architecture trained with another seed, never used for guidance) puts in the requested
class, the mean over classes of FD-digits against that class's held-out digits, and FD-digits of
all the conditional samples together against all held-out digits, beside the unconditional
samples'. Writes ``conditional_digits.md`` and ``conditional_digits.png`` (one row per class).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from experiments.common import argument_parser, experiment_report
from fdrl_jax.configs import digits, digits_classifier
from fdrl_jax import bundled, conditional, features, images, loading, modes, run_lib, sampling

WEIGHTS = (0.0, 0.03, 0.1, 0.2, 0.3, 1.0)


def main() -> None:
  parser = argument_parser(__doc__)
  parser.add_argument("--samples", type=int, default=100, help="samples per class and setting")
  args = parser.parse_args()
  work = os.path.join(args.out, "work")
  fdrl_config = digits.get_config()
  robust = digits_classifier.get_config()
  plain = digits_classifier.get_config()
  plain.classifier.epsilon = plain.classifier.noise = 0.0
  for name, config in (("fdrl", fdrl_config), ("robust", robust), ("plain", plain)):
    run_lib.train_and_evaluate(config, os.path.join(work, name))  # or reuse a finished run
  clean = {name: modes.evaluate_to_file(config, os.path.join(work, name))
           for name, config in (("robust", robust), ("plain", plain))}

  train_x, train_y, test_x, test_y = bundled.digits_split(fdrl_config.seed)
  judge = features.train_classifier(train_x, train_y, test_x, test_y, seed=1234, steps=600)
  digit_features = features.digits_classifier(fdrl_config.seed)
  run, state, _ = run_lib.restore_latest(fdrl_config, os.path.join(work, "fdrl"))
  n, num = args.samples, 10 * args.samples
  unconditional = sampling.draw(run.sampler("prior"), state, run.sample_key_for(0), num, 500)
  fd_unconditional = features.fd_digits(unconditional, test_x, digit_features)

  lines = [f"CPU: {os.cpu_count()} cores, jax {jax.__version__}. {n} samples per class and "
           "setting; FDRL-DDP LR-KL (configs/digits.py, "
           f"{fdrl_config.training.num_steps} steps), K + κ = "
           f"{fdrl_config.flow.num_steps + fdrl_config.flow.num_refine_steps}.",
           f"Guiding classifiers (test accuracy clean / under PGD-L2 ε = 1): robust "
           f"(ε = {robust.classifier.epsilon:g}, noise σ = {robust.classifier.noise:g}) {clean['robust']['clean_accuracy']:.3f} / "
           f"{clean['robust']['adversarial_accuracy']:.3f}; non-robust "
           f"{clean['plain']['clean_accuracy']:.3f} / {clean['plain']['adversarial_accuracy']:.3f}."
           f" Judge (separate, non-robust) test accuracy {judge.test_accuracy:.3f}.",
           f"Unconditional samples: FD-digits {fd_unconditional:.1f} (all held-out digits).", "",
           "| guidance | ϕ | on-class share (mean over digits) | worst digit | per-class FD-digits "
           "(mean) | FD-digits of all | ÷ unconditional |", "|---|---|---|---|---|---|---|"]
  pictures = {}
  for name, config in (("robust", robust), ("plain", plain)):
    guided = fdrl_config.copy_and_resolve_references()
    guided.sampling.classifier_workdir = os.path.join(work, name)
    guide = loading.load_classifier(guided.sampling.classifier_workdir,
                                    event_shape=run.dataset.event_shape)
    for_class, num_classes = conditional.conditional_sampler(run.sampler_parts(), guide)
    for weight in WEIGHTS:
      shares, fds, everything = [], [], []
      for label in range(num_classes):
        x = for_class(label, weight).sample(state, run.sample_key_for(label), n)
        shares.append(float(np.mean(judge.probabilities(x).argmax(-1) == label)))
        fds.append(features.fd_digits(x, test_x[test_y == label], digit_features))
        everything.append(x)
      fd_all = features.fd_digits(np.concatenate(everything), test_x, digit_features)
      lines.append(f"| {name} | {weight:g} | {np.mean(shares):.2f} | {min(shares):.2f} "
                   f"(digit {int(np.argmin(shares))}) | {np.mean(fds):.1f} | {fd_all:.1f} | "
                   f"{fd_all / fd_unconditional:.2f} |")
      print(lines[-1], flush=True)
      if name == "robust" and weight == fdrl_config.sampling.classifier_weight:
        pictures["robust"] = np.stack([e[:10] for e in everything])
  path = experiment_report(args.out, "conditional_digits", "\n".join(lines) + "\n")
  if "robust" in pictures:
    images.save_png(images.tile(pictures["robust"]), path)
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
