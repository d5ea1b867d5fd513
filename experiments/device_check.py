"""What the paper's image configs cost on this machine's accelerator, as one Markdown table:
``experiments/device_check.sh`` runs it on a GPU machine after installing the GPU requirements.

  python -m experiments.device_check [--configs cifar10,celeba64,lsun_church128,mnist]
      [--dtypes float32,bfloat16] [--batch 64] [--flow_steps 100] [--refine_steps κ]
      [--sample_batch 256]
      [--repeats 3] [--out experiments/out] [--compile_only]

For each paper config (its estimator, spectral norm and self-attention, its loss, η, ν, clipping)
and each compute dtype (``model.bf16``: bfloat16 compute, float32 parameters), at --batch and
K = --flow_steps (the paper: 64 and 100):

* the training step (Algorithm 1, ``fdrl.build_train_step``, jitted): compile time, time per step
  (median of --repeats calls after a warm-up), XLA's temporary buffer size;
* sampling: images/s of Algorithm 2's K + κ steps (the config's κ; 120 for the paper's DDP runs) on
  --sample_batch particles;
* the projected time of the config's whole training (``training.num_steps`` × time per step);
* bfloat16 against float32 (once per config): the mean and largest |Δx| of one sampling flow from
  the same start, the same parameters and the same noise.

``--compile_only`` compiles the training steps and reports their compile time and temporary
memory alone (no timing, no sampling): XLA's figure for this machine's backend at the paper's size,
which a CPU can give in minutes.

The prior is the uniform one for every config (the prior's draw is a small part of a step; the
paper's Gaussian priors need the data). Writes ``device_check.md`` into --out.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from experiments.common import argument_parser, compile_timed, median_call_s, machine_lines
from fdrl_jax import fdrl, flows, optim, parallel, priors, sampling

MiB = 2**20
IMAGE_SHAPES = {"cifar10": (32, 32, 3), "celeba64": (64, 64, 3), "lsun_church128": (128, 128, 3),
                "mnist": (28, 28, 1)}


class Images(NamedTuple):
  """What ``fdrl.build_train_step`` reads of a data set."""
  event_shape: tuple[int, ...]
  is_image: bool = True


def check_config(name: str, dtype: str, args: argparse.Namespace):
  """The paper config ``name`` at --batch, K = --flow_steps and ``dtype``."""
  config = importlib.import_module(f"fdrl_jax.configs.{name}").get_config()
  config.data.batch_size = args.batch
  config.flow.num_steps = args.flow_steps
  if args.refine_steps is not None:
    config.flow.num_refine_steps = args.refine_steps
  config.prior.name = "uniform"
  config.model.bf16 = dtype == "bfloat16"
  return config


def measure(name: str, dtype: str, args: argparse.Namespace) -> dict[str, Any]:
  """Training step and sampling of one config and dtype."""
  config = check_config(name, dtype, args)
  shape = IMAGE_SHAPES[name]
  dataset = Images(shape)
  k_init, k_data, key = jax.random.split(jax.random.key(0), 3)
  state = fdrl.create_train_state(fdrl.create_estimator(config), optim.build_optimizer(config),
                                  priors.UniformPrior(shape), k_init, shape)
  batch = jax.random.uniform(k_data, (args.batch, *shape), minval=-1.0, maxval=1.0)
  step = jax.jit(fdrl.build_train_step(config, dataset, None))
  compiled, compile_s = compile_timed(step, state, batch, key)
  temp_mib = compiled.memory_analysis().temp_size_in_bytes / MiB
  if args.compile_only:
    print(f"{name} {dtype}: compile {compile_s:.1f} s, temp {temp_mib:.0f} MiB", file=sys.stderr,
          flush=True)
    return {"config": name, "dtype": dtype, "compile_s": compile_s, "temp_mib": temp_mib}
  step_s = median_call_s(lambda: compiled(state, batch, key)[1]["loss"], args.repeats,
                         args.budget)

  parts = fdrl.sampler_parts(config, dataset)
  sampler = sampling.build_sampler(config, parts, "prior", parallel.data_mesh())
  draw, _ = compile_timed(sampler.device_sample, state, key, args.sample_batch)
  sample_s = median_call_s(lambda: draw(state, key), args.repeats, args.budget)
  row = {"config": name, "dtype": dtype, "compile_s": compile_s, "step_s": step_s,
         "temp_mib": temp_mib, "images_per_s": args.sample_batch / sample_s,
         "flow_steps": parts.spec.num_steps + parts.spec.num_refine_steps,
         "train_hours": config.training.num_steps * step_s / 3600,
         "num_steps": config.training.num_steps}
  print(f"{name} {dtype}: {step_s:.3f} s/step, compile {compile_s:.1f} s", file=sys.stderr,
        flush=True)
  return row


def bf16_difference(name: str, args: argparse.Namespace) -> tuple[float, float]:
  """Mean and largest |x_bf16 − x_f32| after one sampling flow from the same start and noise."""
  shape = IMAGE_SHAPES[name]
  outs = []
  params = None
  for dtype in ("float32", "bfloat16"):
    config = check_config(name, dtype, args)
    state = fdrl.create_train_state(fdrl.create_estimator(config), optim.build_optimizer(config),
                                    priors.UniformPrior(shape), jax.random.key(0), shape)
    params = state.params if params is None else params  # float32 parameters either way
    state = state.replace(params=params, ema_params=params)
    parts = fdrl.sampler_parts(config, Images(shape))
    x0 = jax.random.uniform(jax.random.key(1), (args.sample_batch, *shape), minval=-1.0,
                            maxval=1.0)
    run = jax.jit(lambda state, x0: flows.flow(parts.potential(state), x0, jax.random.key(2),
                                               **parts.spec.sampling_kwargs()))
    outs.append(np.asarray(run(state, x0), np.float32))
  diff = np.abs(outs[1] - outs[0])
  return float(diff.mean()), float(diff.max())


def markdown(rows: list[dict[str, Any]], diffs: dict[str, tuple[float, float]],
             args: argparse.Namespace) -> str:
  if args.compile_only:
    return "\n".join(["Machine:", *machine_lines(),
                      f"- training step at B = {args.batch}, K = {args.flow_steps}, compiled only",
                      "", "| config | dtype | compile (s) | temp memory (MiB) |", "|---|---|---|---|",
                      *(f"| {r['config']} | {r['dtype']} | {r['compile_s']:.1f} | "
                        f"{r['temp_mib']:.0f} |" for r in rows)]) + "\n"
  lines = ["Machine:", *machine_lines(),
           f"- training step at B = {args.batch}, K = {args.flow_steps}; sampling "
           f"{args.sample_batch} particles, K + κ steps", "",
           "| config | dtype | compile (s) | time/step (s) | temp memory (MiB) | sampling (images/s, "
           "K + κ) | full training (h, projected) |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['config']} | {r['dtype']} | {r['compile_s']:.1f} | {r['step_s']:.3f} | "
                 f"{r['temp_mib']:.0f} | {r['images_per_s']:.1f} ({r['flow_steps']}) | "
                 f"{r['train_hours']:.1f} ({r['num_steps']} steps) |")
  if diffs:
    lines += ["", "| config | bfloat16 − float32 after one sampling flow: mean abs | largest abs |",
              "|---|---|---|",
              *(f"| {name} | {mean:.2e} | {top:.2e} |" for name, (mean, top) in diffs.items())]
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argument_parser(__doc__)
  parser.add_argument("--configs", default="cifar10,celeba64,lsun_church128,mnist")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--flow_steps", type=int, default=100)
  parser.add_argument("--refine_steps", type=int, default=None, help="κ (default: the config's)")
  parser.add_argument("--sample_batch", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--budget", type=float, default=30.0, help="seconds per timing")
  parser.add_argument("--compile_only", action="store_true",
                      help="compile time and temporary memory of the training steps alone")
  args = parser.parse_args()
  names, dtypes = args.configs.split(","), args.dtypes.split(",")
  unknown = [n for n in names if n not in IMAGE_SHAPES] + [d for d in dtypes
                                                           if d not in ("float32", "bfloat16")]
  if unknown:
    parser.error(f"unknown config or dtype: {', '.join(unknown)}")
  began = time.perf_counter()
  rows = [measure(name, dtype, args) for name in names for dtype in dtypes]
  diffs = ({name: bf16_difference(name, args) for name in names}
           if len(dtypes) == 2 and not args.compile_only else {})
  text = markdown(rows, diffs, args) + f"\nWhole command: {time.perf_counter() - began:.0f} s.\n"
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "device_check.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
