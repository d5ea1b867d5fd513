"""Speed of the CIFAR10 ResNet32 estimator (Table 4): its particle flow and its training step.

Run from the repository root::

    python -m experiments.bench_resnet                # B×K = 8×5, 64×1: about 3 min on 2 CPU cores
    python -m experiments.bench_resnet --cases 8x1 --repeats 1
    python -m experiments.bench_resnet --bf16         # also 64×100 in float32 and bfloat16
    python -m experiments.bench_resnet --bf16 --bf16-cases 8x1    # the same at a CPU-sized case

For each case B×K (particles or batch, flow steps) and dtype, two rows:

* ``flow``: ``jax.jit`` of ``fdrl_jax.flow`` along the LSIF estimator's Pearson potential
  f'(r) = 2r − 2 (η = 3, ν = 0.01, clipped to [−1, 1]) from B particles uniform in [−1, 1];
* ``train``: one jitted step of Algorithm 1 (``fdrl.make_train_step``: LSIF loss, Adam 1e-4,
  EMA 0.998, uniform prior, the paper's dequantisation and flips) on a uniform random batch.

The 64×100 rows (the paper's training flow) run in float32 and with ``ResNet(dtype=bfloat16)``;
they are timed by default on a GPU and on a CPU only with ``--bf16``.

Columns: compile time (lower + compile, ahead of time); time per call (median of steady calls
after a warm-up, ``block_until_ready``); particle-steps/s of the flow; XLA's temporary buffer size
(``memory_analysis()``); GFLOP/s from the nominal figure of 4.07 GFLOP per forward pass and image
(XLA's own count, ``cost_analysis()``, is printed for one forward pass; it cannot count calls
whose loops, the flow's and on CPU the kernel gradients' batch chunks, run several times).
Nominally a flow step is 2 forwards (forward and input gradient) and each of the training step's
two loss passes (data, flowed batch) 3 forwards (forward and gradients): (2K + 6)·B forwards per
training step.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from experiments.common import compile_timed, median_call_s, machine_lines
from fdrl_jax import fdrl, flow, flow_potential, flows, losses, models, priors
from fdrl_jax.models import ResNet

MiB = 2**20
NOMINAL_FORWARD_FLOPS = 4.07e9  # per image, the figure for ResNet32
IMAGE_SHAPE = (32, 32, 3)
STEP_SIZE, NOISE_SCALE, CLIP = 3.0, 0.01, (-1.0, 1.0)
LOSS = losses.get_loss("lsif")
POTENTIAL = flow_potential("pearson", LOSS.output)
TX = optax.adam(1e-4)
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


@dataclass(frozen=True)
class Row:
  run: str
  dtype: str
  batch: int
  steps: int
  compile_s: float
  call_s: float
  nominal_flops: float
  temp_mib: float


def xla_flops(compiled: Any) -> float | None:
  """XLA's flop count of a compiled executable, or None where the backend gives none."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  flops = (analysis or {}).get("flops", -1.0)
  return flops if flops > 0 else None


def make_flow(model: nn.Module, num_steps: int) -> Callable:
  """Jitted (variables, x0, key) → particles after ``num_steps`` flow steps."""

  def run(model_vars, x0, key):
    return flow(fdrl.estimator_potential(model.apply, POTENTIAL, model_vars), x0, key,
                num_steps=num_steps, step_size=STEP_SIZE, noise_scale=NOISE_SCALE, clip=CLIP)

  return jax.jit(run)


def make_train(model: nn.Module, num_steps: int) -> Callable:
  """Jitted (state, batch, key) → (state, metrics): Algorithm 1 with a K = ``num_steps`` flow."""
  spec = flows.FlowSpec(num_steps=num_steps, num_refine_steps=0, step_size=STEP_SIZE,
                        noise_scale=NOISE_SCALE, clip=CLIP)
  return jax.jit(fdrl.make_train_step(model.apply, TX, LOSS, POTENTIAL, spec,
                                       dequantization=0.03, random_flip=True, ema_decay=0.998))


def forward_flops(model: nn.Module) -> float | None:
  """XLA's flop count of one forward pass at B = 1."""
  x = jnp.zeros((1, *IMAGE_SHAPE))
  model_vars = jax.jit(model.init)(jax.random.key(0), x)
  return xla_flops(jax.jit(model.apply).lower(model_vars, x).compile())


def timed_row(run: str, dtype: str, batch: int, steps: int, compiled: Any, compile_s: float,
              call: Callable, nominal_forwards: int,
              args: argparse.Namespace) -> Row:
  row = Row(run, dtype, batch, steps, compile_s, median_call_s(call, args.repeats, args.budget),
            nominal_forwards * NOMINAL_FORWARD_FLOPS,
            compiled.memory_analysis().temp_size_in_bytes / MiB)
  print(f"{run} {dtype} {batch}x{steps}: {row.call_s:.3f} s/call", file=sys.stderr, flush=True)
  return row


def bench_case(dtype: str, batch: int, steps: int, args: argparse.Namespace) -> list[Row]:
  """The flow row and the training-step row of one (dtype, B, K): the CIFAR10 config's estimator
  (spectral norm, no self-attention)."""
  model = ResNet(arch="resnet32", spectral_norm=True, dtype=DTYPES[dtype])
  k_init, k_x, k_data, key = jax.random.split(jax.random.key(0), 4)
  state = fdrl.create_train_state(model, TX, priors.UniformPrior(IMAGE_SHAPE), k_init,
                                  IMAGE_SHAPE)
  model_vars = models.variables(state.params, state.batch_stats)
  x0 = jax.random.uniform(k_x, (batch, *IMAGE_SHAPE), minval=-1.0, maxval=1.0)
  data = jax.random.uniform(k_data, (batch, *IMAGE_SHAPE), minval=-1.0, maxval=1.0)

  flow_fn, flow_compile_s = compile_timed(make_flow(model, steps), model_vars, x0, key)
  flow_row = timed_row("flow", dtype, batch, steps, flow_fn, flow_compile_s,
                       lambda: flow_fn(model_vars, x0, key), 2 * batch * steps, args)

  train_fn, train_compile_s = compile_timed(make_train(model, steps), state, data, key)
  train_row = timed_row("train", dtype, batch, steps, train_fn, train_compile_s,
                        lambda: train_fn(state, data, key), (2 * steps + 6) * batch,
                        args)
  return [flow_row, train_row]


def gflops(flops: float, seconds: float) -> str:
  return f"{flops / seconds / 1e9:.1f}"


def table(rows: list[Row]) -> list[str]:
  header = ["run", "dtype", "B", "K", "compile (s)", "time/call (s)", "particle-steps/s",
            "GFLOP/s (nominal)", "temp (MiB)"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    rate = f"{r.batch * r.steps / r.call_s:.1f}" if r.run == "flow" else "-"
    cells = [r.run, r.dtype, str(r.batch), str(r.steps), f"{r.compile_s:.1f}", f"{r.call_s:.3f}",
             rate, gflops(r.nominal_flops, r.call_s), f"{r.temp_mib:.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def parse_cases(text: str) -> list[tuple[int, int]]:
  """``"8x5,64x1"`` → [(8, 5), (64, 1)]."""
  return [tuple(int(n) for n in case.split("x")) for case in text.split(",")]


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cases", default="8x5,64x1", help="comma-separated BxK, run in float32")
  parser.add_argument("--bf16", action="store_true",
                      help="also run --bf16-cases in float32 and bfloat16 (default on GPU)")
  parser.add_argument("--bf16-cases", default="64x100", help="comma-separated BxK")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up")
  parser.add_argument("--budget", type=float, default=60.0,
                      help="seconds of calls per measurement before it stops repeating")
  return parser.parse_args()


def main() -> None:
  args = parse_args()
  runs = [("float32", b, k) for b, k in parse_cases(args.cases)]
  if args.bf16 or jax.default_backend() == "gpu":
    runs += [(dtype, b, k) for b, k in parse_cases(args.bf16_cases) for dtype in DTYPES]
  rows = [row for dtype, b, k in runs for row in bench_case(dtype, b, k, args)]
  measured = forward_flops(ResNet(arch="resnet32"))
  forward = "-" if measured is None else f"{measured / 1e9:.2f}"
  print("\n".join(machine_lines() + [
      f"- ResNet32 forward pass: {forward} GFLOP per image (XLA, B = 1); nominal "
      f"{NOMINAL_FORWARD_FLOPS / 1e9:.2f}", ""] + table(rows)))


if __name__ == "__main__":
  main()
