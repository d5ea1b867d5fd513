"""The training loop's hooks: work ``run_lib.train_and_evaluate`` does at its fixed points
(``Hook``: before the first step, after each, after the last), and ``Evaluations``, the hook of
``training.eval_every``.

A hook gets the loop's ``run`` (a ``run_lib.Run``) and state; this module sits below the loop,
which passes them in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fdrl_jax import metrics_log, parallel


class Hook:
  """Work the training loop does at its fixed points, so that an experiment extends the one loop
  instead of copying it (as flax's periodic actions do). Override what is needed; a plain callable
  ``hook(step, state, metrics)`` passed to ``train_and_evaluate`` is an ``after_step``. Hooks run
  on every process.

  The state a hook gets is donated to the next step: read it within the call, never keep it."""

  def begin(self, run, state, step: int) -> None:
    """Before the first step of this call; ``step`` is the restored (or fresh) state's."""

  def after_step(self, step: int, state, metrics: dict) -> None:
    """After each step, once its log, checkpoint and sample grid (if due) are written: ``step``
    steps are done, ``metrics`` are that step's (device arrays, not yet checked finite)."""

  def end(self, run, state) -> None:
    """After the last step, once every checkpoint is written (not after an interruption)."""


@dataclasses.dataclass
class _AfterStep(Hook):
  """A callable ``hook(step, state, metrics)`` as a ``Hook``."""

  fn: Callable[[int, object, dict], None]

  def after_step(self, step: int, state, metrics: dict) -> None:
    self.fn(step, state, metrics)


class Evaluations(Hook):
  """``training.eval_every``: the method's evaluation (``--mode=eval``'s, of the EMA state) every
  ``every`` steps, after that step's checkpoint, into ``log`` (``MetricsLog.write_eval``). Its keys
  are the sampling modes' (``Run.sample_key_for``), never the training's: training is the same
  with or without it."""

  def __init__(self, log: metrics_log.MetricsLog, every: int, workdir: str):
    self.log, self.every, self.workdir = log, every, workdir
    self.run: Any = None  # the run_lib.Run, from begin

  def begin(self, run, state, step: int) -> None:
    if run.config.sampling.name == "conditional":
      raise ValueError(
        "--config.training.eval_every cannot score conditional samples (their "
        "judge is a --mode=eval setting); set it to 0, or --config.sampling.name."
      )
    run.method.check_eval(run.config)
    self.run = run

  def after_step(self, step: int, state, metrics: dict) -> None:
    if step % self.every:
      return
    run = self.run
    if run is None:
      raise ValueError("Evaluations.after_step was called before its begin.")
    rows = metrics_log.eval_rows(run.method.evaluate(run.config, run, state, self.workdir), step)
    self.log.write_eval(step, rows)
    if parallel.is_writer():
      print(
        f"eval at step {step}  "
        + "  ".join(f"{k[5:]} {v:.4g}" for k, v in metrics_log.eval_scalars(rows).items()),
        flush=True,
      )


def as_hook(hook: Hook | Callable) -> Hook:
  """``hook`` itself, or a callable ``hook(step, state, metrics)`` as an ``after_step`` Hook."""
  return hook if isinstance(hook, Hook) else _AfterStep(hook)
