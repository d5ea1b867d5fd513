"""FDRL's Table 2 grid and Fig. 8 flow-length ablation, on the bundled 8×8 digits, scored by FD-digits.

  python -m experiments.digits_table [--part table|curve|all] [--steps 2000] [--samples 1000]
                                     [--variants LSIF,...] [--out experiments/out]

Trains each variant with ``configs/digits.py`` for the same number of steps (FDRL-DDP with LSIF-χ²,
LR-KL, LR-JS, LR-logD; FDRL-UP with LSIF-χ² and LR-KL), scores samples of the EMA estimator
(K + κ steps) with FD-digits, KID and precision/recall on the same classifier features against the
held-out split (``eval.metrics=fd_digits,kid,pr``), and lists the prior's own scores and the real
floor (training vs held-out split), into ``digits_table.md``.
--variants keeps the rows whose label contains one of the given words (and names the reports
after them, ``digits_table_WORDS.md``, so a partial run leaves the whole table's report alone).
The curve part (reusing the table's runs with --part all) writes FD-digits of FDRL-DDP LSIF-χ²
and LR-KL as a function of the sampling length K + κ (Fig. 8), from one flow to the longest length
and timed against one flow per length, into ``digits_flow_length.md``, and
the LR-KL model's pictures (``digits_*.png``: samples, the flow strip of Fig. 6, interpolations of
Fig. 7, nearest training digits by pixels and by classifier features of Fig. 10–11). Everything
goes into --out. FD-digits is a Fréchet distance on a small digits classifier's features, not
FID.
"""

from __future__ import annotations

import os

import jax

from experiments.common import (CURVE_VARIANTS, VARIANTS, argument_parser, chosen,
                                experiment_report, flow_lengths, report_suffix,
                                timed_flow_length_curve, timing_lines, train_variant)
from fdrl_jax import figures
from fdrl_jax.configs import digits

FIGURE_VARIANT = "FDRL-DDP LR-KL"  # the digits default: its pictures


def write_figures(config, workdir: str, out: str) -> list[str]:
  """The pictures of the trained model (``fdrl_jax.figures``): samples, the flow strip (Fig. 6),
  interpolations (Fig. 7) and nearest training digits by pixels and by features (Fig. 10–11)."""
  paths = []
  for name, kwargs in (("grid", {}), ("strip", {}), ("interpolation", {}),
                       ("neighbours", {"space": "pixel"}), ("neighbours", {"space": "feature"})):
    suffix = f"_{kwargs['space']}" if kwargs else ""
    path = os.path.join(out, f"digits_{name}{suffix}.png")
    if os.path.exists(path):
      os.remove(path)  # the experiment's own output, regenerated
    paths.append(figures.FIGURES[name](config, workdir, path, **kwargs))
  return paths


def main() -> None:
  parser = argument_parser(__doc__)
  parser.add_argument("--part", choices=["table", "curve", "all"], default="all")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--samples", type=int, default=1000)
  parser.add_argument("--variants", default="", help="comma-separated words of row labels")
  args = parser.parse_args()
  header = (f"CPU: {os.cpu_count()} cores, jax {jax.__version__}, {args.steps} training steps, "
            f"{args.samples} samples, FD-digits against the 297 held-out digits.")
  trained = {}
  # A subset of the rows writes its own report, beside (not over) the whole table's.
  suffix = report_suffix(args.variants)
  base = digits.get_config()
  base.eval.metrics = "fd_digits,kid,pr"  # KID and precision/recall on FD-digits' features
  if args.part in ("table", "all"):
    lines = [header, "", "| model | FD-digits | KID | precision | recall | prior's FD-digits | "
             "prior's KID | confident share | train time |", "|---" * 9 + "|"]
    for variant in chosen(VARIANTS, args.variants):
      config, workdir, result, seconds = train_variant(variant, args.steps, args.samples, base)
      trained[variant[0]] = (config, workdir, result)
      row = result["rows"][0]
      lines.append(f"| {variant[0]} | {row['fd_digits']:.1f} | {row['kid']:.4g} ± "
                   f"{row['kid_std']:.2g} | {row['precision']:.2f} | {row['recall']:.2f} | "
                   f"{row['fd_digits_prior']:.1f} | {row['kid_prior']:.4g} | "
                   f"{row['confident_share']:.2f} | {seconds:.0f} s |")
      print(lines[-1], flush=True)
    floor = result["rows"][0]
    lines += ["", "Real floor (training vs held-out split): FD-digits "
              f"{floor['fd_digits_floor']:.1f}, KID {floor['kid_floor']:.4g}, precision {floor['precision_floor']:.2f}, recall "
              f"{floor['recall_floor']:.2f}. Classifier test accuracy: "
              f"{result['classifier_test_accuracy']:.3f}."]
    experiment_report(args.out, f"digits_table{suffix}", "\n".join(lines) + "\n")
  if args.part in ("curve", "all"):
    lines = [header, "", "Flow length (Fig. 8): FD-digits of samples drawn with K + κ flow steps "
             "by models trained with K = 20.", ""]
    for label in chosen([v for v in VARIANTS if v[0] in CURVE_VARIANTS], args.variants):
      if label[0] not in trained:
        config, workdir, result, _ = train_variant(label, args.steps, args.samples, base)
        trained[label[0]] = (config, workdir, result)
      config, workdir, result = trained[label[0]]
      row = result["rows"][0]
      lines += [f"{label[0]}: prior's FD-digits {row['fd_digits_prior']:.1f}, real floor "
                f"{row['fd_digits_floor']:.1f}.", "", "| K + κ | FD-digits |", "|---|---|"]
      timed = timed_flow_length_curve(config, workdir, flow_lengths(config.flow.num_steps))
      lines += [f"| {total} | {fd:.1f} |" for total, fd in timed["curve"]]
      lines += ["", *timing_lines(timed, f"{args.samples} samples")]
    experiment_report(args.out, f"digits_flow_length{suffix}",
                               "\n".join(lines) + "\n")
    if FIGURE_VARIANT in trained:
      print("\n".join(write_figures(*trained[FIGURE_VARIANT][:2], args.out)))


if __name__ == "__main__":
  main()
