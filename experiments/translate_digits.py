"""Unpaired translation plain → bold digits (FDRL Sec. 6.5, Table 3's protocol), one command.

  python -m experiments.translate_digits [--out experiments/out]

Trains (or reuses, in --out/work) ``configs/digits_bold.py``: the source domain (750 plain training
digits) is the prior, the target the other 750 training digits made bold. Then:
* Table 3's protocol (``--mode=eval``): FD-digits of the 297 translated held-out digits against the
  297 held-out bold digits, beside the untranslated digits' FD-digits;
* as a function of the flow length K + κ: the share of translated held-out digits that a
  plain-vs-bold judge calls bold, and the share whose class a digit judge keeps (both judges are
  the FD-digits classifier architecture trained on the training digits in both styles, never seen
  by the translation model's training).
Writes ``translate_digits.md`` and ``translate_digits.png`` (source | translated pairs).
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from experiments.common import argument_parser, experiment_report
from fdrl_jax.configs import digits_bold
from fdrl_jax import bundled, features, figures, modes, run_lib, sampling


def judges(seed: int) -> tuple[features.Classifier, features.Classifier]:
  """A plain (0) vs bold (1) judge and a digit-class judge, trained on the training digits in
  both styles and scored on the held-out digits in both styles."""
  train_x, train_y, test_x, test_y = bundled.digits_split(seed)
  both = lambda x: np.concatenate([x, bundled.bold(x)])
  style = lambda x: np.repeat([0, 1], len(x))
  bold_judge = features.train_classifier(both(train_x), style(train_x), both(test_x),
                                         style(test_x), seed=1234, steps=600)
  class_judge = features.train_classifier(both(train_x), np.tile(train_y, 2), both(test_x),
                                          np.tile(test_y, 2), seed=4321, steps=600)
  return bold_judge, class_judge


def main() -> None:
  parser = argument_parser(__doc__)
  args = parser.parse_args()
  config = digits_bold.get_config()
  workdir = os.path.join(args.out, "work", "digits_bold")
  start = time.perf_counter()
  run_lib.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - start
  table3 = modes.evaluate_to_file(config, workdir)

  split = bundled.digits_bold_split(config.seed)
  sources, labels = split["test_plain"], split["test_labels"]
  bold_judge, class_judge = judges(config.seed)
  digit_features = features.digits_classifier(config.seed)
  run, state, _ = run_lib.restore_latest(config, workdir)
  default_length = config.flow.num_steps + config.flow.num_refine_steps
  lines = [f"CPU: {os.cpu_count()} cores, jax {jax.__version__}. configs/digits_bold.py, "
           f"{config.training.num_steps} steps ({seconds:.0f} s), trained with K = "
           f"{config.flow.num_steps}, sampled with K + κ = {default_length}.",
           f"Judges' held-out accuracy (both styles): plain-vs-bold {bold_judge.test_accuracy:.3f},"
           f" digit class {class_judge.test_accuracy:.3f}.", "",
           "Table 3's protocol (297 held-out digits):", "",
           "| | FD-digits vs held-out bold digits |", "|---|---|",
           f"| untranslated plain digits | {table3['fd_digits_untranslated']:.1f} |",
           f"| translated (K + κ = {default_length}) | {table3['fd_digits']:.1f} |",
           f"| real floor (bold training vs held-out) | {table3['fd_digits_floor']:.1f} |", "",
           "Flow length:", "", "| K + κ | judged bold | class kept | FD-digits |", "|---|---|---|---|"]
  for total in (0, 5, 10, 15, 20, default_length, 30, 40):
    if total == 0:
      moved = sources
    else:
      flow_config = config.copy_and_resolve_references()
      flow_config.flow.num_steps, flow_config.flow.num_refine_steps = total, 0
      sampler = sampling.build_sampler(flow_config, run.method.sampler_parts(flow_config,
                                                                             run.dataset),
                                       "translate")
      moved = sampling.draw(sampler, state, run.sample_key_for(0), sources, 500)
    bold_share = float(np.mean(bold_judge.probabilities(moved).argmax(-1) == 1))
    kept = float(np.mean(class_judge.probabilities(moved).argmax(-1) == labels))
    fd = features.fd_digits(moved, split["test_bold"], digit_features)
    mark = " (default)" if total == default_length else ""
    lines.append(f"| {total}{mark} | {bold_share:.2f} | {kept:.2f} | {fd:.1f} |")
    print(lines[-1], flush=True)
  path = experiment_report(args.out, "translate_digits", "\n".join(lines) + "\n")
  print(f"wrote {figures.translation(config, workdir, path, num_samples=16)}")


if __name__ == "__main__":
  main()
