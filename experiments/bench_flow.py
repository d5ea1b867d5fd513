"""Benchmark of the particle flow's execution strategies (``fdrl_jax.flow``).

Run from the repository root::

    python experiments/bench_flow.py            # full run: about 7 min on 2 CPU cores
    python experiments/bench_flow.py --quick    # seconds: small K, small batch
    python experiments/bench_flow.py --cases conv --steps 10,100 --conv-batch 8

Potentials: the paper's toy MLP on 2-D particles (``mlp``), and a three-layer conv net on 32×32×3
images (a stand-in for the CIFAR10 ResNet) built with plain ``jax.lax`` convolutions, as a user's
``nn.Conv`` is (``conv``), or with ``fdrl_jax.conv`` as the package's estimators are
(``conv-fdrl``). For each case and number of steps K, the strategies:

* ``auto``: ``unroll=None``, what the library picks (on CPU: straight-line code for conv flows of
  at most ``fdrl_jax.flows.CPU_UNROLL_MAX_STEPS`` steps, a loop otherwise);
* ``scan``: ``unroll=1``, a ``lax.scan`` loop (the strategy before the CPU special case);
* ``unrolled`` (conv only): ``unroll=True``, straight-line code at any K (slow to compile);
* ``python-loop`` (conv only): a Python for-loop over a jitted one-step flow, which pays a dispatch
  per step and cannot run inside a user's ``jax.jit``.

Columns: compile time (lower + compile, ahead of time); steady time per call (median of repeated
calls, ``block_until_ready``), per step and in particle-steps/s; XLA's temporary buffer size from
``memory_analysis()`` (constant in K for a loop; it grows with K where the flow is unrolled) and,
on GPU, the process's peak device memory so far; for the conv net the achieved GFLOP/s, from
``cost_analysis()`` of one step times K (XLA counts a while-loop body once, so the whole program's
count would undercount ``scan``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax

from fdrl_jax import flow
from fdrl_jax.flows import auto_unroll
from fdrl_jax.conv import conv_general_dilated
from fdrl_jax.models import MLP

MiB = 2**20
STEP_SIZE = 1e-3
NOISE_SCALE = 1e-2


class ConvNet(nn.Module):
  """CIFAR10 stand-in: three 3×3 convs to 128 channels (no bias), LeakyReLU(0.2), pool, Dense.

  ``loop_friendly`` selects ``fdrl_jax.conv.conv_general_dilated`` (what the package's estimators
  use) instead of ``jax.lax.conv_general_dilated`` (what a user's plain ``nn.Conv`` uses).
  """
  loop_friendly: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kwargs = {"conv_general_dilated": conv_general_dilated} if self.loop_friendly else {}
    for _ in range(3):
      x = nn.leaky_relu(nn.Conv(128, (3, 3), use_bias=False, **kwargs)(x), 0.2)
    return nn.Dense(1)(x.mean(axis=(1, 2)))[:, 0]


@dataclass(frozen=True)
class Case:
  name: str
  model: nn.Module
  particle_shape: tuple[int, ...]
  clip: tuple[float, float] | None
  strategies: tuple[str, ...]


CASES = {
    "mlp": Case("mlp", MLP(), (2,), None, ("auto", "scan")),  # the paper's toy MLP
    "conv": Case("conv", ConvNet(loop_friendly=False), (32, 32, 3), (-1.0, 1.0),
                 ("auto", "scan", "unrolled", "python-loop")),
    "conv-fdrl": Case("conv-fdrl", ConvNet(loop_friendly=True), (32, 32, 3), (-1.0, 1.0),
                      ("auto", "python-loop")),
}
UNROLL = {"auto": None, "scan": 1, "unrolled": True, "python-loop": None}


@dataclass(frozen=True)
class Result:
  case: str
  batch: int
  steps: int
  strategy: str
  unroll: Any
  compile_s: float
  call_s: float
  temp_mib: float
  gflops: float | None
  peak_mib: float | None


def make_flow_fn(case: Case, num_steps: int, unroll: int | bool | None) -> Callable:
  """Jitted (params, x0, key) → particles after ``num_steps`` steps; params are an argument."""

  def run(params, x0, key):
    potential = lambda x: case.model.apply(params, x)
    return flow(potential, x0, key, num_steps=num_steps, step_size=STEP_SIZE,
                noise_scale=NOISE_SCALE, clip=case.clip, unroll=unroll)

  return jax.jit(run)


def compile_timed(fn: Callable, *args) -> tuple[Any, float]:
  """AOT-compile ``fn`` for ``args``; the compiled executable and the lower + compile time."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def median_call_s(call: Callable[[], jax.Array], repeats: int, budget_s: float) -> float:
  """Median time of ``call()`` after a warm-up call, over ``repeats`` calls or ``budget_s`` seconds.

  A warm-up call slower than ``budget_s`` is itself the sample (first-call overhead is noise there).
  """
  times = []
  for _ in range(repeats + 1):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
    if sum(times) > budget_s:
      break
  return statistics.median(times[1:] or times)


def step_flops(case: Case, params, x0: jax.Array, key: jax.Array) -> float | None:
  """XLA's flop count of one flow step, or None where the backend gives none."""
  compiled = make_flow_fn(case, 1, None).lower(params, x0, key).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  flops = (analysis or {}).get("flops", -1.0)
  return flops if flops > 0 else None


def gpu_peak_mib() -> float | None:
  """Peak device memory of the process so far, on GPU; None elsewhere."""
  if jax.default_backend() != "gpu":
    return None
  return jax.devices()[0].memory_stats()["peak_bytes_in_use"] / MiB


def bench_strategy(case: Case, strategy: str, num_steps: int, params, x0: jax.Array,
                   key: jax.Array, args: argparse.Namespace, flops: float | None) -> Result:
  loop = strategy == "python-loop"
  unroll = UNROLL[strategy]
  compiled, compile_s = compile_timed(make_flow_fn(case, 1 if loop else num_steps, unroll),
                                      params, x0, key)
  if loop:
    keys = list(jax.random.split(key, num_steps))

    def call():
      x = x0
      for step_key in keys:
        x = compiled(params, x, step_key)
      return x
  else:
    call = lambda: compiled(params, x0, key)
  call_s = median_call_s(call, args.repeats, args.budget)
  memory = compiled.memory_analysis()
  if unroll is None:
    unroll = auto_unroll(lambda x: case.model.apply(params, x), x0, 1 if loop else num_steps)
  return Result(case.name, x0.shape[0], num_steps, strategy, unroll, compile_s, call_s,
                memory.temp_size_in_bytes / MiB,
                None if flops is None else flops * num_steps / call_s / 1e9, gpu_peak_mib())


def bench_case(case: Case, batch: int, steps: list[int], args: argparse.Namespace) -> list[Result]:
  key_init, key_x, key_flow = jax.random.split(jax.random.key(0), 3)
  x0 = jax.random.uniform(key_x, (batch, *case.particle_shape), minval=-1.0, maxval=1.0)
  params = case.model.init(key_init, x0)
  flops = step_flops(case, params, x0, key_flow) if case.name != "mlp" else None
  return [bench_strategy(case, strategy, num_steps, params, x0, key_flow, args, flops)
          for num_steps in steps for strategy in case.strategies]


def machine_lines() -> list[str]:
  return [f"- platform: {jax.default_backend()}, devices: {jax.devices()}",
          f"- CPU count: {os.cpu_count()}, jax {jax.__version__}"]


def table(results: list[Result]) -> list[str]:
  """Markdown table; the GFLOP/s and GPU-peak columns appear only when some row has them."""
  with_flops = any(r.gflops is not None for r in results)
  with_peak = any(r.peak_mib is not None for r in results)
  header = ["case", "B", "K", "strategy", "unroll", "compile (s)", "time/call (s)", "ms/step",
            "particle-steps/s", "temp (MiB)"]
  header += ["GFLOP/s"] * with_flops + ["GPU peak (MiB)"] * with_peak
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in results:
    row = [r.case, str(r.batch), str(r.steps), r.strategy, str(r.unroll), f"{r.compile_s:.2f}",
           f"{r.call_s:.4f}", f"{1e3 * r.call_s / r.steps:.3f}",
           f"{r.batch * r.steps / r.call_s:,.0f}", f"{r.temp_mib:.2f}"]
    if with_flops:
      row.append("-" if r.gflops is None else f"{r.gflops:.1f}")
    if with_peak:
      row.append(f"{r.peak_mib:.0f}")
    lines.append("| " + " | ".join(row) + " |")
  return lines


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="small K and conv batch (overrides --steps, --conv-batch, --repeats)")
  parser.add_argument("--cases", default="mlp,conv,conv-fdrl",
                      help="comma-separated, from: mlp, conv, conv-fdrl")
  parser.add_argument("--steps", default="10,100", help="comma-separated numbers of steps K")
  parser.add_argument("--mlp-batch", type=int, default=256)
  parser.add_argument("--conv-batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up")
  parser.add_argument("--budget", type=float, default=10.0,
                      help="seconds of calls per measurement before it stops repeating")
  args = parser.parse_args()
  if args.quick:
    args.steps, args.conv_batch, args.repeats, args.budget = "2,4", 2, 3, 0.5
  return args


def main() -> None:
  args = parse_args()
  steps = [int(k) for k in args.steps.split(",")]
  batches = {"mlp": args.mlp_batch, "conv": args.conv_batch, "conv-fdrl": args.conv_batch}
  results = []
  for name in args.cases.split(","):
    results += bench_case(CASES[name], batches[name], steps, args)
  print("\n".join(machine_lines() + [""] + table(results)))


if __name__ == "__main__":
  main()
