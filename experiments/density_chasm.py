"""The density chasm of FDRL (Fig. 2b and 4): a stale ratio estimator against FDRL training.

Run from the repository root (CPU, 2 cores: about 30 seconds)::

    python experiments/density_chasm.py [--steps 1000] [--out experiments/out/] [--seed 0]

q' = N(0, 0.1 I) and p = N((6, 6), 0.1 I) in 2-D, with ``configs/toy2d.py:chasm`` (LR-KL, the
reference toy MLP, η = 1, K = 30, ν = 0.01, Adam 1e-3, batch 256, EMA 0.99):

* stale: the estimator is trained once on q' against p for the same number of gradient steps
  (Algorithm 1 with the identity flow, η = 0), then prior particles follow its flow for 400 steps;
* FDRL: Algorithm 1 (each step flows prior samples K steps with the current estimator and trains
  on data against them), sampled with Algorithm 2; the mean of the flowed particles is recorded
  every few training steps (Fig. 4, bottom row).

The script prints a Markdown table (mean error ‖mean − (6, 6)‖, per-axis std against √0.1) and
writes ``density_chasm.png``: stale particles, FDRL particles, and the FDRL mean during training,
each over the prior and the data (grey).

Why the stale estimator fails, and why the toy config's former flow (η = 0.01, K = 10) failed too:
the exact log-ratio log q/p between the two Gaussians is linear with slope |(6, 6)|/0.1 ≈ 85. A
logistic (LR) estimator separates samples this far apart with a margin of a few units; its loss
then saturates (about 1e-5 after 1 000 steps), the parameter gradients vanish, and the learned
slope of log r stays of order one (about 2 at the origin) instead of 85. A flow of total time
η·K = 0.1 moves particles 0.1·|∇ log r| ≈ 0.2: the flowed samples never leave the region the
classifier has already separated, so training learns nothing new and the particles stay near the
origin. With η·K = 30 a slope of about 0.3 suffices to cross the chasm, and FDRL's loop then
calibrates it: samples that fall short or overshoot are what the next estimator trains on. The
stale estimator has no such feedback: far from both sample sets its log-ratio is an unconstrained
extrapolation, so its flow stalls or shoots past p.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from configs import toy2d  # noqa: E402
from fdrl_jax import data, images, models, train  # noqa: E402

TARGET = np.array([6.0, 6.0])              # the mean of the "chasm" data set
TARGET_STD = float(np.sqrt(data.CHASM_VARIANCE))
STALE_FLOW_STEPS = 400                     # Fig. 2b
PANEL_EXTENT = 9.0                         # the plots show [-9, 9]²
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


class Setup(NamedTuple):
  """The pieces of a chasm run built from its config."""
  config: ml_collections.ConfigDict
  dataset: data.Dataset
  model: nn.Module
  loss: train.BregmanLoss
  potential: Callable
  flow_spec: train.FlowSpec
  prior: Any


class Result(NamedTuple):
  """Final particles (n, 2), the flowed mean every ``record_every`` training steps from step 0
  (m, 2; empty for the stale run), and the wall time in seconds."""
  samples: np.ndarray
  trajectory: np.ndarray
  seconds: float


def chasm_setup(steps: int, seed: int) -> Setup:
  """Builds the chasm config (``configs/toy2d.py:chasm``) for ``steps`` training steps."""
  config = toy2d.get_config("chasm")
  config.seed = seed
  config.training.num_steps = steps
  dataset = data.create_dataset(config.data.name, seed=seed)
  loss, potential = train.build_potential(config)
  prior = train.build_prior(config, data.fit_samples(dataset, 10_000, seed), dataset.event_shape)
  return Setup(config=config, dataset=dataset, model=models.create_model(config.model), loss=loss,
               potential=potential, flow_spec=train.build_flow_spec(config), prior=prior)


def fit_estimator(setup: Setup, flow_spec: train.FlowSpec, record_every: int = 0,
                  num_record: int = 500) -> tuple[train.TrainState, np.ndarray]:
  """Trains the estimator with Algorithm 1, its training flow given by ``flow_spec``.

  Returns the final state and, if ``record_every`` > 0, the mean of ``num_record`` particles sampled
  with the EMA estimator (Algorithm 2, the config's flow) at step 0 and every ``record_every`` steps.
  """
  config = setup.config
  tx = train.build_optimizer(config)
  init_key, step_key, sample_key = jax.random.split(jax.random.key(config.seed), 3)
  state = train.create_train_state(setup.model, tx, setup.prior, init_key,
                                   setup.dataset.event_shape)
  step_fn = jax.jit(train.make_train_step(
      setup.model.apply, tx, setup.loss, setup.potential, flow_spec, dequantization=0.0,
      random_flip=False, ema_decay=config.optim.ema_decay))  # no image augmentation on 2-D data
  sampler = train.make_sampler(setup.model.apply, setup.potential, setup.flow_spec)
  means = []
  for step in range(config.training.num_steps + 1):
    if record_every and step % record_every == 0:
      x = sampler(state.ema_params, state.prior, jax.random.fold_in(sample_key, step), num_record)
      means.append(jnp.mean(x, axis=0))
    if step < config.training.num_steps:
      batch = data.get_batch(setup.dataset, config.seed, step, config.data.batch_size)
      state, _ = step_fn(state, jnp.asarray(batch), step_key)
  return state, np.asarray(means).reshape(-1, 2)


def final_samples(setup: Setup, state: train.TrainState, flow_spec: train.FlowSpec,
                  num_samples: int) -> np.ndarray:
  """Draws ``num_samples`` particles from the prior and flows them with the EMA estimator."""
  sampler = train.make_sampler(setup.model.apply, setup.potential, flow_spec)
  key = jax.random.fold_in(jax.random.key(setup.config.seed), setup.config.training.num_steps)
  return np.asarray(sampler(state.ema_params, state.prior, key, num_samples))


def run_stale(steps: int, seed: int = 0, num_samples: int = 1000,
              flow_steps: int = STALE_FLOW_STEPS) -> Result:
  """Trains the estimator once on q' against p (no flow), then flows prior particles with it."""
  start = time.perf_counter()
  setup = chasm_setup(steps, seed)
  identity_flow = setup.flow_spec.replace(num_steps=1, step_size=0.0, noise_scale=0.0)
  state, _ = fit_estimator(setup, identity_flow)
  x = final_samples(setup, state, setup.flow_spec.replace(num_steps=flow_steps,
                                                          num_refine_steps=0), num_samples)
  return Result(samples=x, trajectory=np.zeros((0, 2)), seconds=time.perf_counter() - start)


def run_fdrl(steps: int, seed: int = 0, num_samples: int = 1000, record_every: int = 10
             ) -> Result:
  """Trains FDRL (Algorithm 1), recording the flowed mean, and samples K + κ steps."""
  start = time.perf_counter()
  setup = chasm_setup(steps, seed)
  state, trajectory = fit_estimator(setup, setup.flow_spec, record_every)
  x = final_samples(setup, state, setup.flow_spec, num_samples)
  return Result(samples=x, trajectory=trajectory, seconds=time.perf_counter() - start)


def mean_error(x: np.ndarray) -> float:
  """‖mean(x) − (6, 6)‖ for particles x (n, 2)."""
  return float(np.linalg.norm(np.mean(x, axis=0) - TARGET))


def markdown_table(stale: Result, fdrl: Result, steps: int, flow_steps: tuple[int, int]) -> str:
  """The numbers of both runs as a Markdown table."""
  lines = ["| run | training steps | flow steps | mean | ‖mean − (6, 6)‖ | std x | std y | time |",
           "|---|---|---|---|---|---|---|---|"]
  for name, result, k in (("stale estimator", stale, flow_steps[0]),
                          ("FDRL", fdrl, flow_steps[1])):
    m, s = result.samples.mean(axis=0), result.samples.std(axis=0)
    lines.append(f"| {name} | {steps} | {k} | ({m[0]:.3f}, {m[1]:.3f}) | "
                 f"{mean_error(result.samples):.3f} | {s[0]:.3f} | {s[1]:.3f} | "
                 f"{result.seconds:.1f} s |")
  lines.append(f"\nTarget: mean (6, 6), std √0.1 = {TARGET_STD:.3f} per axis.")
  return "\n".join(lines)


def labelled_panel(points: np.ndarray, reference: np.ndarray, title: str) -> np.ndarray:
  """A scatter plot of ``points`` over ``reference`` on [-9, 9]², titled in its top-left corner."""
  picture = Image.fromarray(images.scatter(points, reference, extent=PANEL_EXTENT))
  ImageDraw.Draw(picture).text((4, 4), title, fill=(0, 0, 0))
  return np.asarray(picture)


def reference_points(seed: int, n: int = 500) -> np.ndarray:
  """Draws n prior particles and n data points (2n, 2), the grey background of the plots."""
  setup = chasm_setup(0, seed)
  prior = np.asarray(setup.prior.sample(jax.random.key(seed), n))
  return np.concatenate([prior, data.get_batch(setup.dataset, seed, 0, n)])


def save_plot(stale: Result, fdrl: Result, path: str, seed: int = 0) -> str:
  """Writes stale particles, FDRL particles and the FDRL mean trajectory side by side as a PNG."""
  reference = reference_points(seed)
  panels = [labelled_panel(stale.samples, reference, "stale estimator"),
            labelled_panel(fdrl.samples, reference, "FDRL"),
            labelled_panel(fdrl.trajectory, reference, "FDRL mean during training")]
  gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
  return images.save_png(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1),
                         path)


def main() -> None:
  """Runs both experiments, prints the table and writes the PNG."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=toy2d.get_config("chasm").training.num_steps,
                      help="training steps of both estimators (default: the config's, 1000)")
  parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for density_chasm.png")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  stale = run_stale(args.steps, args.seed)
  fdrl = run_fdrl(args.steps, args.seed)
  flow_spec = train.build_flow_spec(toy2d.get_config("chasm"))
  print(markdown_table(stale, fdrl, args.steps,
                       (STALE_FLOW_STEPS, flow_spec.num_steps + flow_spec.num_refine_steps)))
  print(f"\nWrote {save_plot(stale, fdrl, os.path.join(args.out, 'density_chasm.png'), args.seed)}")


if __name__ == "__main__":
  main()
