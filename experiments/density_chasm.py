"""The density chasm of FDRL (Fig. 2b and 4): a stale ratio estimator against FDRL training.

Run from the repository root (CPU, 2 cores: about 30 seconds)::

    python -m experiments.density_chasm [--steps 1000] [--out experiments/out/] [--seed 0]

q' = N(0, 0.1 I) and p = N((6, 6), 0.1 I) in 2-D, with ``configs/toy2d.py:chasm`` (LR-KL, the
reference toy MLP, η = 1, K = 30, ν = 0.01, Adam 1e-3, batch 256, EMA 0.95):

* stale: the estimator is trained once on q' against p for the same number of gradient steps
  (Algorithm 1 with the identity flow: one step of η = 1e-12, no noise), then prior particles
  follow its flow for 400 steps;
* FDRL: Algorithm 1 (each step flows prior samples K steps with the current estimator and trains
  on data against them), sampled with Algorithm 2; the mean of the flowed particles is recorded
  every few training steps (Fig. 4, bottom row);
* near (Fig. 2a): the stale estimator again, with p = N((1, 1), 0.1 I) close to q'.

The script prints a Markdown table (mean error ‖mean − (6, 6)‖, per-axis std against √0.1) and
writes ``density_chasm.png``: the near stale flow, the stale flow (the path of its mean and its
final particles, on its own scale), the FDRL particles, and the FDRL mean during training, over the prior and data (grey).

Why the former toy flow (η = 0.01, K = 10) failed, and why the stale estimator fails: the exact
log-ratio log q/p of the two Gaussians is linear, ±360 at the two means with slope
|(6, 6)|/0.1 ≈ 85 everywhere. A logistic (LR) estimator separates samples this far apart with a
margin of about ±15; its loss then saturates (about 1e-5), its parameter gradients vanish, and
log r stays a steep wall around the prior samples (slope about 20) and nearly flat across the chasm
(slope about 2). A flow of total time η·K = 0.1 moved particles about 0.25: the flowed samples
never left the region the classifier had already separated, so training had nothing new to learn
and the particles stayed at the origin. With η·K = 30 a slope of about 0.3 carries them across, and
FDRL's loop calibrates it: samples that fall short or overshoot are what the next estimator trains
on, until q_τ ≈ p and log r ≈ 0 there. The stale estimator has no such feedback: its log r keeps
decreasing past p (a classifier logit, extrapolated), so its flow goes through p without stopping
(with η = 0.1 instead of 1 its mean passes within about 0.1 of (6, 6) after some 20 steps and
ends about 80 away after 400).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from experiments.common import argument_parser
from fdrl_jax import bundled, flows, images, prior_fit, run_lib, train_hooks
from fdrl_jax.configs import toy2d

TARGET = np.array([6.0, 6.0])              # the mean of the "chasm" data set
NEAR_TARGET = np.array([1.0, 1.0])         # "chasm_near" (Fig. 2a): p close to q'
TARGET_STD = float(np.sqrt(bundled.CHASM_VARIANCE))
STALE_FLOW_STEPS = 400                     # Fig. 2b
PANEL_CENTRE = TARGET / 2                  # the FDRL plots show (3, 3) ± 6.5
PANEL_EXTENT = 6.5
PANEL_SIZE = 320


class Result(NamedTuple):
  """Final particles (n, 2), the path of their mean (m, 2) and the wall time in seconds.

  The path is the mean after every flow step for the stale run, and the mean of freshly flowed
  particles at step 0 and every ``record_every`` training steps for FDRL.
  """
  samples: np.ndarray
  path: np.ndarray
  seconds: float


# A training flow of one step this small is the identity in float32 (particles of size ~0.3 move
# by < 1e-9): the stale estimator is trained on q' itself. The config check wants η > 0.
STALE_TRAINING_STEP_SIZE = 1e-12


def chasm_config(steps: int, seed: int, name: str = "chasm") -> ml_collections.ConfigDict:
  """The chasm config (``configs/toy2d.py:chasm``) for ``steps`` training steps on the data set
  ``name`` (``chasm_near``: the same prior, p = N((1, 1), 0.1 I)), saving and drawing only at the
  end."""
  config = toy2d.get_config("chasm")
  config.data.name = name
  config.seed = seed
  config.training.num_steps = steps
  config.training.log_every = config.training.checkpoint_every = steps
  config.training.sample_every = steps
  return config


class Record(train_hooks.Hook):
  """Records, in the training loop, the mean of ``num_record`` particles sampled with the EMA
  estimator (Algorithm 2) at step 0 and every ``record_every`` steps (if > 0), and at the end
  the final ``finish(run, state)``."""

  def __init__(self, record_every: int, num_record: int, finish: Callable):
    self.record_every, self.num_record, self.finish = record_every, num_record, finish
    self.means: list[np.ndarray] = []
    self.run, self.result = None, None

  def begin(self, run: run_lib.Run, state, step: int) -> None:
    self.run = run
    self.after_step(step, state, {})

  def after_step(self, step: int, state, metrics: dict) -> None:
    if self.record_every and step % self.record_every == 0:
      x = self.run.draw(state, self.run.sample_key_for(step), self.num_record, "prior")
      self.means.append(np.mean(x, axis=0))

  def end(self, run: run_lib.Run, state) -> None:
    self.result = self.finish(run, state)


def train(config: ml_collections.ConfigDict, record: Record) -> Record:
  """Trains ``config`` with the library's loop (``run_lib.train_and_evaluate``) in a temporary
  workdir, ``record`` hooked in."""
  with tempfile.TemporaryDirectory() as workdir:
    run_lib.train_and_evaluate(config, workdir, hooks=[record])
  return record


def run_stale(steps: int, seed: int = 0, num_samples: int = 1000,
              flow_steps: int = STALE_FLOW_STEPS, name: str = "chasm") -> Result:
  """Trains the estimator once on q' against p (no flow), then flows prior particles with it."""
  start = time.perf_counter()
  config = chasm_config(steps, seed, name)
  spec = flows.build_flow_spec(config)
  config.flow.num_steps, config.flow.step_size, config.flow.noise_scale = (
      1, STALE_TRAINING_STEP_SIZE, 0.0)

  def flow(run: run_lib.Run, state) -> tuple[np.ndarray, np.ndarray]:
    parts = run.sampler_parts()
    k_prior, k_flow = jax.random.split(run.sample_key_for(0))
    x, path = flows.flow(parts.potential(state), parts.start(state, k_prior, num_samples),
                         k_flow, num_steps=flow_steps, step_size=spec.step_size,
                         noise_scale=spec.noise_scale, clip=spec.clip, save_every=1)
    return np.asarray(x), np.asarray(path.mean(axis=1))

  x, path = train(config, Record(0, 0, flow)).result
  return Result(samples=x, path=path, seconds=time.perf_counter() - start)


def run_fdrl(steps: int, seed: int = 0, num_samples: int = 1000, record_every: int = 5,
             num_record: int = 500) -> Result:
  """Trains FDRL (Algorithm 1), recording the flowed mean, and samples K + κ steps."""
  start = time.perf_counter()
  record = train(chasm_config(steps, seed), Record(
      record_every, num_record,
      lambda run, state: run.draw(state, run.sample_key_for(0), num_samples, "prior")))
  return Result(samples=np.asarray(record.result), path=np.asarray(record.means).reshape(-1, 2),
                seconds=time.perf_counter() - start)


def mean_error(x: np.ndarray, target: np.ndarray = TARGET) -> float:
  """‖mean(x) − target‖ for particles x (n, 2)."""
  return float(np.linalg.norm(np.mean(x, axis=0) - target))


def near_line(near: Result) -> str:
  """Fig. 2a: the stale estimator when p is near q' (``chasm_near``)."""
  errors = np.linalg.norm(near.path - NEAR_TARGET, axis=1)
  s = near.samples.std(axis=0)
  return (f"Near (Fig. 2a, p = N((1, 1), 0.1 I)): the stale estimator's flow ends "
          f"{mean_error(near.samples, NEAR_TARGET):.3g} from (1, 1) after {len(near.path) - 1} "
          f"steps (std {s[0]:.3f}, {s[1]:.3f}); its mean passes closest at step "
          f"{int(np.argmin(errors))} (error {errors.min():.3g}).")


def markdown_table(stale: Result, fdrl: Result, steps: int, fdrl_flow_steps: int) -> str:
  """The numbers of both runs as a Markdown table, and where the stale flow passed closest to p."""
  lines = ["| run | training steps | flow steps | mean | ‖mean − (6, 6)‖ | std x | std y | time |",
           "|---|---|---|---|---|---|---|---|"]
  for name, result, k in (("stale estimator", stale, len(stale.path) - 1),
                          ("FDRL", fdrl, fdrl_flow_steps)):
    m, s = result.samples.mean(axis=0), result.samples.std(axis=0)
    lines.append(f"| {name} | {steps} | {k} | ({m[0]:.3g}, {m[1]:.3g}) | "
                 f"{mean_error(result.samples):.3g} | {s[0]:.3f} | {s[1]:.3f} | "
                 f"{result.seconds:.1f} s |")
  errors = np.linalg.norm(stale.path - TARGET, axis=1)
  lines += ["", f"Target: mean (6, 6), std √0.1 = {TARGET_STD:.3f} per axis. The stale flow's mean "
            f"passes closest to (6, 6) at flow step {int(np.argmin(errors))} (error "
            f"{errors.min():.3g}) and does not stop there."]
  return "\n".join(lines)


def labelled_panel(points: np.ndarray, reference: np.ndarray, title: str, centre: np.ndarray,
                   extent: float) -> np.ndarray:
  """A scatter plot of ``points`` over ``reference`` on centre ± extent, titled at the top."""
  picture = Image.fromarray(images.scatter(points - centre, reference - centre, extent=extent,
                                           size=PANEL_SIZE))
  ImageDraw.Draw(picture).text((4, 4), title, fill=(0, 0, 0))
  return np.asarray(picture)


def reference_points(seed: int, n: int = 500, name: str = "chasm") -> np.ndarray:
  """Draws n prior particles and n data points (2n, 2), the grey background of the plots."""
  config = chasm_config(1, seed, name)
  dataset = bundled.create_dataset(name, seed=seed)
  prior = prior_fit.build_prior(config, bundled.fit_samples(dataset, 10_000, seed), dataset.event_shape)
  return np.concatenate([np.asarray(prior.sample(jax.random.key(seed), n)),
                         bundled.get_batch(dataset, seed, 0, n)])


def save_plot(stale: Result, fdrl: Result, path: str, seed: int = 0,
              near: Result | None = None) -> str:
  """Writes the stale flow, the FDRL particles and the FDRL mean path side by side as a PNG,
  after the stale flow toward the near target (Fig. 2a) if given."""
  reference = reference_points(seed)
  stale_points = np.concatenate([stale.path, stale.samples])
  stale_extent = max(PANEL_EXTENT, 1.1 * float(np.abs(stale_points).max()))
  panels = [labelled_panel(stale_points, reference,
                           f"stale: {len(stale.path) - 1} flow steps, axes +-{stale_extent:.0f}",
                           np.zeros(2), stale_extent),
            labelled_panel(fdrl.samples, reference, "FDRL samples", PANEL_CENTRE, PANEL_EXTENT),
            labelled_panel(fdrl.path, reference, "FDRL mean during training", PANEL_CENTRE,
                           PANEL_EXTENT)]
  if near is not None:
    near_points = np.concatenate([near.path, near.samples])
    extent = max(2.0, 1.1 * float(np.abs(near_points).max()))
    panels.insert(0, labelled_panel(near_points, reference_points(seed, name="chasm_near"),
                                    f"near, stale: axes +-{extent:.0f}", np.zeros(2), extent))
  gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
  row = [part for panel in panels for part in (panel, gap)][:-1]
  return images.save_png(np.concatenate(row, axis=1), path)


def main() -> None:
  """Runs both experiments, prints the table and writes the PNG."""
  parser = argument_parser(__doc__)
  parser.add_argument("--steps", type=int, default=toy2d.get_config("chasm").training.num_steps,
                      help="training steps of both estimators (default: the config's, 1000)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  stale = run_stale(args.steps, args.seed)
  fdrl = run_fdrl(args.steps, args.seed)
  near = run_stale(args.steps, args.seed, name="chasm_near")
  spec = flows.build_flow_spec(toy2d.get_config("chasm"))
  print(markdown_table(stale, fdrl, args.steps, spec.num_steps + spec.num_refine_steps))
  print("\n" + near_line(near))
  path = save_plot(stale, fdrl, os.path.join(args.out, "density_chasm.png"), args.seed, near)
  print(f"\nWrote {path}")


if __name__ == "__main__":
  main()
