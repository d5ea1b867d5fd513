"""What the flow does to its particles, for LSIF-χ² on the bundled digits at several η, learning
rates and starts of the estimator: why the paper's η = 3 trained worse here (issue 13's question).

  python -m experiments.flow_stats [--steps 1500] [--samples 500] [--out experiments/out]
  python -m experiments.flow_stats --model resnet32 --width 0.125 --steps 1000   # paper ResNet
  python -m experiments.flow_stats --steps 4000 --rows 3                          # one row, longer
  python -m experiments.flow_stats --model resnet32 --rows 0 --sn_every_call      # reference SN

Each setting (η, Adam learning rate, the estimator's start: neutral r = 1 or the reference's
r ≈ 0, and Flax's or PyTorch's initialisation) trains ``configs/digits.py`` with LSIF-χ² for
--steps steps (× 0.1 at 80 % and 90 %), then flows --samples prior draws K + κ steps with the EMA
estimator and records, after every step: the mean estimated ratio r(x) of the particles, the
share of saturated pixels (|x| ≥ 0.99, where the data's digits are mostly ink or background) and
the mean particle norm ‖x‖. The data's own saturated share and norm are the targets. With
``--model resnet32`` the estimator is the paper's CIFAR10 ResNet (spectral norm, every layer's
channels × --width) in place of the small conv net. Writes ``flow_stats[_MODEL].md`` into --out.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from experiments.common import argument_parser, experiment_report, variant_config, train_variant
from fdrl_jax import flows, run_lib

SETTINGS = {  # (η, learning rate, neutral start, PyTorch's initialisation) per estimator
    "conv": [(1.0, 1e-3, True, False), (1.0, 1e-3, False, False), (3.0, 1e-3, True, False),
             (3.0, 1e-4, True, False)],
    # The paper's η = 3 with every combination of the two starts; the paper's lr 1e-4 with ours
    # and with the reference's (r ≈ 0 and PyTorch's initialisation).
    "resnet32": [(3.0, 1e-3, True, False), (3.0, 1e-3, False, False), (3.0, 1e-3, True, True),
                 (3.0, 1e-3, False, True), (3.0, 1e-4, True, False), (3.0, 1e-4, False, True)],
}
SATURATED = 0.99


def statistics(x: np.ndarray) -> tuple[float, float]:
  """The share of saturated pixels and the mean particle norm of images x (n, ...)."""
  flat = x.reshape(len(x), -1)
  return float(np.mean(np.abs(flat) >= SATURATED)), float(np.mean(np.linalg.norm(flat, axis=1)))


def flow_record(config, workdir: str, num_samples: int):
  """Per flow step (0 … K + κ): mean ratio, saturated share and mean norm of the particles, and
  the final particles."""
  run, state, _ = run_lib.restore_latest(config, workdir)
  parts = run.sampler_parts()
  kwargs = parts.spec.sampling_kwargs()
  estimator = parts.estimator.apply(state)

  @jax.jit
  def trajectory(state, key):
    k_prior, k_flow = jax.random.split(key)
    x0 = parts.start(state, k_prior, num_samples)
    final, path = flows.flow(parts.potential(state), x0, k_flow, save_every=1, **kwargs)
    return final, path, jax.vmap(estimator)(path)

  final, path, outputs = jax.device_get(trajectory(state, run.sample_key_for(0)))
  ratios = outputs if parts.estimator.output == "ratio" else np.exp(outputs)
  rows = [(k, float(np.mean(ratios[k])), *statistics(path[k])) for k in range(len(path))]
  return rows, final, run


def main() -> None:
  parser = argument_parser(__doc__)
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--samples", type=int, default=500)
  parser.add_argument("--model", choices=sorted(SETTINGS), default="conv")
  parser.add_argument("--width", type=float, default=0.125, help="resnet32: channels × this")
  parser.add_argument("--rows", default="", help="comma-separated setting indices (default all)")
  parser.add_argument("--seed", type=int, default=0, help="the configs' seed")
  parser.add_argument("--sn_every_call", action="store_true",
                      help="resnet32: the reference's power iteration in every forward pass")
  args = parser.parse_args()
  settings = SETTINGS[args.model]
  if args.rows:
    settings = [settings[int(i)] for i in args.rows.split(",")]
  began = time.perf_counter()
  model = ("the small conv net" if args.model == "conv" else
           f"{args.model} × {args.width:g} width with spectral norm"
           + (" (a power iteration in every forward pass)" if args.sn_every_call
              else " (one power iteration per training step)"))
  lines = [f"CPU: {os.cpu_count()} cores, jax {jax.__version__}. configs/digits.py with LSIF-χ², "
           f"{model}, seed {args.seed}, {args.steps} steps each, {args.samples} particles flowed "
           "K + κ steps by the EMA estimator.", ""]
  summary = ["| η | lr | start | init | FD-digits | prior's | mean r, start → end | saturated "
             "share, start → end (data) | ‖x‖, start → end (data) | train time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
  details = []
  for eta, lr, neutral, torch_init in settings:
    variant = ("", "lsif", "pearson", "gaussian", 5)  # the table's FDRL-DDP LSIF-χ² row
    base = variant_config(*variant[1:], args.steps, args.samples)
    base.flow.step_size, base.optim.learning_rate = eta, lr
    base.model.neutral_init, base.model.torch_init = neutral, torch_init
    base.seed = args.seed
    if args.model != "conv":
      base.model.name, base.model.resnet_width, base.model.spectral_norm = (
          args.model, args.width, True)
      base.model.sn_every_call = args.sn_every_call
    config, workdir, result, seconds = train_variant(variant, args.steps, args.samples, base)
    rows, final, run = flow_record(config, workdir, args.samples)
    data_share, data_norm = statistics(run.dataset.test)
    start = "r = 1" if neutral else "r ≈ 0"
    init = "PyTorch" if torch_init else "Flax"
    summary.append(
        f"| {eta:g} | {lr:g} | {start} | {init} | {result['rows'][0]['fd_digits']:.1f} | "
        f"{result['rows'][0]['fd_digits_prior']:.1f} | {rows[0][1]:.3g} → {rows[-1][1]:.3g} | "
        f"{rows[0][2]:.2f} → {rows[-1][2]:.2f} ({data_share:.2f}) | {rows[0][3]:.2f} → "
        f"{rows[-1][3]:.2f} ({data_norm:.2f}) | {seconds:.0f} s |")
    print(summary[-1], flush=True)
    picks = sorted({0, 1, 2, 5, 10, len(rows) // 2, len(rows) - 1})
    details += [f"η = {eta:g}, lr {lr:g}, start {start}, {init} init: along the flow", "",
                "| flow step | mean r | saturated share | ‖x‖ |", "|---|---|---|---|",
                *(f"| {rows[k][0]} | {rows[k][1]:.3g} | {rows[k][2]:.3f} | {rows[k][3]:.2f} |"
                  for k in picks), ""]
  text = "\n".join(lines + summary + [""] + details
                   + [f"Whole command: {time.perf_counter() - began:.0f} s."]) + "\n"
  name = "flow_stats" + ("" if args.model == "conv" else f"_{args.model}") + (
      "_sn_every_call" if args.sn_every_call else "") + (
      f"_seed{args.seed}" if args.seed else "") + (
      f"_rows{args.rows.replace(',', '-')}_{args.steps}" if args.rows else "")
  experiment_report(args.out, name, text)


if __name__ == "__main__":
  main()
