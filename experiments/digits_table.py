"""FDRL's Table 2 grid and Fig. 8 flow-length ablation, on the bundled 8×8 digits, scored by FD-digits.

  python experiments/digits_table.py [--part table|curve|all] [--steps 2000] [--samples 1000]
                                     [--variants LSIF,...] [--out experiments/out]

Trains each variant with ``configs/digits.py`` for the same number of steps (FDRL-DDP with LSIF-χ²,
LR-KL, LR-JS, LR-logD; FDRL-UP with LSIF-χ² and LR-KL), scores samples of the EMA estimator
(K + κ steps) with FD-digits against the held-out split (``fdrl_jax.evaluate``), and lists the
prior's own FD-digits and the real floor (training vs held-out split), into ``digits_table.md``.
--variants keeps the rows whose label contains one of the given words (and names the reports
after them, ``digits_table_WORDS.md``, so a partial run leaves the whole table's report alone).
The curve part (reusing the table's runs with --part all) writes FD-digits of FDRL-DDP LSIF-χ²
and LR-KL as a function of the sampling length K + κ (Fig. 8) into ``digits_flow_length.md``, and
the LR-KL model's pictures (``digits_*.png``: samples, the flow strip of Fig. 6, interpolations of
Fig. 7, nearest training digits by pixels and by classifier features of Fig. 10–11). Everything
goes into --out. FD-digits is a Fréchet distance on a small digits classifier's features, not
FID.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time

import jax

from configs import digits
from fdrl_jax import features, figures, modes, run_lib, sampling, workdir as workdirs

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
FIGURE_VARIANT = "FDRL-DDP LR-KL"  # the digits default: its pictures


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


def flow_length_curve(config, workdir: str, lengths: list[int], score=None
                      ) -> list[tuple[int, float]]:
  """``score(samples)`` (default FD-digits) of the trained model sampled with K + κ = each of
  ``lengths`` (Fig. 8)."""
  if score is None:
    classifier = features.digits_classifier(config.seed)
    run = run_lib.Run(config)
    score = lambda x: features.fd_digits(x, run.dataset.test, classifier)
  run, state, _ = run_lib.restore_latest(config, workdir)
  rows = []
  for total in lengths:
    flow_config = config.copy_and_resolve_references()
    flow_config.flow.num_steps, flow_config.flow.num_refine_steps = total, 0
    sampler = sampling.build_sampler(flow_config, run.method.sampler_parts(flow_config,
                                                                           run.dataset))
    x = sampling.draw(sampler, state, run.sample_key_for(0), config.eval.num_samples,
                      config.data.batch_size)
    rows.append((total, score(x)))
  return rows


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


def chosen(variants: list[tuple], words: str) -> list[tuple]:
  """The rows whose label contains one of the comma-separated ``words`` (all if empty)."""
  keep = [w for w in words.split(",") if w]
  return [v for v in variants if not keep or any(w in v[0] for w in keep)]


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
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", choices=["table", "curve", "all"], default="all")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--samples", type=int, default=1000)
  parser.add_argument("--variants", default="", help="comma-separated words of row labels")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
  args = parser.parse_args()
  header = (f"CPU: {os.cpu_count()} cores, jax {jax.__version__}, {args.steps} training steps, "
            f"{args.samples} samples, FD-digits against the 297 held-out digits.")
  trained = {}
  # A subset of the rows writes its own report, beside (not over) the whole table's.
  suffix = "_" + re.sub(r"[^A-Za-z0-9]+", "-", args.variants).strip("-") if args.variants else ""
  if args.part in ("table", "all"):
    lines = [header, "", "| model | FD-digits | prior's FD-digits | confident share | train time |",
             "|---|---|---|---|---|"]
    for variant in chosen(VARIANTS, args.variants):
      config, workdir, result, seconds = train_variant(variant, args.steps, args.samples)
      trained[variant[0]] = (config, workdir, result)
      lines.append(f"| {variant[0]} | {result['fd_digits']:.1f} | {result['fd_digits_prior']:.1f} "
                   f"| {result['confident_share']:.2f} | {seconds:.0f} s |")
      print(lines[-1], flush=True)
    lines += ["", f"Real floor (training vs held-out split): {result['fd_digits_floor']:.1f}. "
              f"Classifier test accuracy: {result['classifier_test_accuracy']:.3f}."]
    workdirs.experiment_report(args.out, f"digits_table{suffix}", "\n".join(lines) + "\n")
  if args.part in ("curve", "all"):
    lines = [header, "", "Flow length (Fig. 8): FD-digits of samples drawn with K + κ flow steps "
             "by models trained with K = 20.", ""]
    for label in chosen([v for v in VARIANTS if v[0] in CURVE_VARIANTS], args.variants):
      if label[0] not in trained:
        config, workdir, result, _ = train_variant(label, args.steps, args.samples)
        trained[label[0]] = (config, workdir, result)
      config, workdir, result = trained[label[0]]
      lines += [f"{label[0]}: prior's FD-digits {result['fd_digits_prior']:.1f}, real floor "
                f"{result['fd_digits_floor']:.1f}.", "", "| K + κ | FD-digits |", "|---|---|"]
      for total, fd in flow_length_curve(config, workdir, flow_lengths(config.flow.num_steps)):
        lines.append(f"| {total} | {fd:.1f} |")
      lines.append("")
    workdirs.experiment_report(args.out, f"digits_flow_length{suffix}",
                               "\n".join(lines) + "\n")
    if FIGURE_VARIANT in trained:
      print("\n".join(write_figures(*trained[FIGURE_VARIANT][:2], args.out)))


if __name__ == "__main__":
  main()
