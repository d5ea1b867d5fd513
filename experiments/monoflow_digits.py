"""MonoFlow's GAN-loss comparison on the bundled 8×8 digits, scored by FD-digits.

  python -m experiments.monoflow_digits [--steps 3000] [--samples 1000] [--disc-lr 2e-4]
                                        [--losses logit,...] [--refine 0,10,25,50]
                                        [--out experiments/out]

Trains ``configs/monoflow_digits.py`` (DCGAN-style generator, small conv discriminator trained by
logistic regression) with each generator loss −E[h(d)] of MonoFlow's Section 5.2 — vanilla with
C = 0 and C = 5, non-saturating, logit, arcsinh — for the same number of steps and the same seed,
then scores 1 000 samples with FD-digits against the held-out split (``fdrl_jax.evaluate``). The
table also gives, averaged over the last 10 % of training, D(G(z)) = σ(d) on the generator's
samples and the mean slope h'(d) there: a loss *saturates* when h'(d) is near 0 while D still
rejects the samples (then the generator gets no gradient). Writes ``monoflow_digits.md`` and a
PNG of each loss's samples into --out (``monoflow_digits_disc_lr_<lr>.*`` for another
discriminator learning rate). --losses keeps the losses whose label contains one of the given words
(reports ``monoflow_digits_WORDS.*``). --refine adds DGflow's table: each trained GAN's samples
G(z) refined along the discriminator's KL flow in latent space (``sampling.name=refine``,
``refine.h=logit``, η = 0.1, ν = 0.045) for each given number of steps, all from one flow, scored
by FD-digits and precision/recall (``eval.flow_lengths``; 0 is G(z) before refinement).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import jax
import numpy as np

from experiments.common import argument_parser, chosen, report_suffix
from fdrl_jax.configs import monoflow_digits
from fdrl_jax import images, modes, run_lib

# (label, h, shift): MonoFlow's Section 5.2 losses.
LOSSES = [("vanilla, C = 0", "vanilla", 0.0), ("vanilla, C = 5", "vanilla", 5.0),
          ("non-saturating", "non_saturating", 0.0), ("logit", "logit", 0.0),
          ("arcsinh", "arcsinh", 0.0)]


def loss_config(h: str, shift: float, steps: int, samples: int, disc_lr: float):
  config = monoflow_digits.get_config()
  config.gan.h, config.gan.shift = h, shift
  config.gan.disc_learning_rate = disc_lr
  config.training.num_steps = steps
  config.training.log_every = max(1, steps // 100)
  config.training.checkpoint_every = steps
  config.training.sample_every = steps
  config.eval.num_samples = samples
  return config


def late_average(workdir: str, keys: tuple[str, ...], fraction: float = 0.1) -> dict[str, float]:
  """Means of logged metrics over the last ``fraction`` of the run's log lines."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  late = records[-max(1, int(len(records) * fraction)):]
  return {k: float(np.mean([r[k] for r in late])) for k in keys}


def main() -> None:
  parser = argument_parser(__doc__)
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--samples", type=int, default=1000)
  parser.add_argument("--disc-lr", type=float, default=2e-4,
                      help="discriminator learning rate (a stronger discriminator provokes "
                           "saturation)")
  parser.add_argument("--losses", default="", help="comma-separated words of loss labels")
  parser.add_argument("--refine", default="", help="refinement steps of DGflow's table, e.g. "
                                                   "0,10,25,50 (empty: no refinement)")
  args = parser.parse_args()
  lines = [f"CPU: {os.cpu_count()} cores, jax {jax.__version__}, {args.steps} training steps each "
           f"(batch 64, seed 0, discriminator lr {args.disc_lr:g}), {args.samples} samples, FD-digits against the 297 held-out "
           "digits. D(G(z)) and h'(d): means over the last 10 % of training.", "",
           "| generator loss | FD-digits | confident share | D(G(z)) | mean h'(d) | train time |",
           "|---|---|---|---|---|---|"]
  pictures, refined = [], []
  for label, h, shift in chosen(LOSSES, args.losses):
    config = loss_config(h, shift, args.steps, args.samples, args.disc_lr)
    workdir = tempfile.mkdtemp(prefix="monoflow_digits_")
    start = time.perf_counter()
    run_lib.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - start
    row = modes.evaluate_to_file(config, workdir)["rows"][0]
    late = late_average(workdir, ("d_fake", "h_slope"))
    lines.append(f"| {label} | {row['fd_digits']:.1f} | {row['confident_share']:.2f} | "
                 f"{late['d_fake']:.3f} | {late['h_slope']:.3g} | {seconds:.0f} s |")
    print(lines[-1], flush=True)
    run, state, _ = run_lib.restore_latest(config, workdir)
    pictures.append(np.asarray(run.draw(state, jax.random.key(0), 36)))
    if args.refine:
      config.sampling.name, config.eval.flow_lengths = "refine", args.refine
      config.eval.metrics = "fd_digits,pr"
      refined.append((label, modes.evaluate_to_file(config, workdir)["rows"]))
  lines += ["", f"Real floor (training vs held-out split): {row['fd_digits_floor']:.1f}."]
  if refined:
    lines += ["", "DGflow's refinement of each GAN's samples (latent space, KL flow: h = logit, "
              "η = 0.1, ν = 0.045): FD-digits (precision / recall) after n refinement steps; "
              "n = 0 is G(z) as the generator draws it.", "",
              "| generator loss | " + " | ".join(f"n = {r['flow_length']}"
                                               for r in refined[0][1]) + " |",
              "|---|" + "---|" * len(refined[0][1])]
    lines += [f"| {label} | " + " | ".join(f"{r['fd_digits']:.1f} ({r['precision']:.2f} / "
                                           f"{r['recall']:.2f})" for r in rows) + " |"
              for label, rows in refined]
  text = "\n".join(lines) + "\n"
  os.makedirs(args.out, exist_ok=True)
  stem = ("monoflow_digits" + ("" if args.disc_lr == 2e-4 else f"_disc_lr_{args.disc_lr:g}")
          + report_suffix(args.losses))
  with open(os.path.join(args.out, stem + ".md"), "w") as f:
    f.write(text)
  # One grid per loss, side by side in LOSSES order.
  grids = [images.grid(x) for x in pictures]
  gap = np.full((grids[0].shape[0], 8, 3), 255, np.uint8)
  images.save_png(np.concatenate([part for g in grids for part in (g, gap)][:-1], axis=1),
                  os.path.join(args.out, stem + ".png"))
  print(text)


if __name__ == "__main__":
  main()
