"""Training steps per second of the toy and digits configs (a Markdown table).

  python -m experiments.bench_train [--steps 50] [--configs toy2d.py:8gaussians,digits.py]

Each config is built exactly as `python -m fdrl_jax.main` builds it (fdrl_jax.run_lib.Run, all
devices of the process), compiled once, then timed over --steps steady steps.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

import jax

from fdrl_jax import run_lib


def load_config(spec: str):
  """``toy2d.py:chasm`` → configs.toy2d.get_config("chasm")."""
  module, _, arg = spec.partition(":")
  name = module.removesuffix(".py")
  get_config = importlib.import_module(f"fdrl_jax.configs.{name}").get_config
  return get_config(arg) if arg else get_config()


def bench(spec: str, steps: int) -> dict:
  config = load_config(spec)
  run = run_lib.Run(config)
  step_fn = run.train_step()
  state = run.new_state(fit=True)
  start = time.perf_counter()
  state, metrics = step_fn(state, run.batch(0), run.step_key)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for i in range(1, steps + 1):
    state, metrics = step_fn(state, run.batch(i), run.step_key)
  jax.block_until_ready(metrics)
  rate = steps / (time.perf_counter() - start)
  return {"config": spec, "batch": config.data.batch_size, "K": config.flow.num_steps,
          "model": config.model.name, "first step (s)": compile_s, "steps/s": rate}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--configs",
                      default="toy2d.py:8gaussians,toy2d.py:25gaussians,toy2d.py:chasm,digits.py")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {len(jax.devices())}, "
        f"{os.cpu_count()} CPUs\n")
  rows = [bench(spec, args.steps) for spec in args.configs.split(",")]
  print("| " + " | ".join(rows[0]) + " |")
  print("|" + "---|" * len(rows[0]))
  for row in rows:
    print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values())
          + " |")


if __name__ == "__main__":
  main()
