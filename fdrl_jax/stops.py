"""Stopping a training run cleanly: SIGINT and SIGTERM, or a cluster's preemption notice, become a
request to save a checkpoint of the current step and stop (``StopRequests``), on every process at
the same step; the loop then raises ``TrainingInterrupted``, whose exit code says which signal it
was (130 for SIGINT, 143 for SIGTERM)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Self

import jax
from jax.experimental import multihost_utils


class TrainingInterrupted(Exception):
  """SIGINT or SIGTERM stopped training after a checkpoint of the current step was saved."""

  def __init__(self, message: str, signal_number: int):
    super().__init__(message)
    self.exit_code = 128 + signal_number


# A signal handler as ``signal.signal`` takes and returns it (None: one set outside Python).
_Handler = Callable[[int, FrameType | None], Any] | int | None


class StopRequests:
  """SIGINT and SIGTERM as a request to stop after the current step (``stop_now(step)``); a second
  SIGINT interrupts at once. Only in the main thread.

  One process: a Python handler records the signal. Several processes: SIGTERM is left to JAX's
  preemption notifier and SIGINT is passed on to it as a SIGTERM, so a signal to any one process
  reaches all of them, and ``multihost_utils.reached_preemption_sync_point`` gives every process
  the same step to save at (the step after the furthest one any process had reached)."""

  def __init__(self) -> None:
    self.signal: int | None = None
    self._previous: dict[int, _Handler] = {}
    self._sync = jax.process_count() > 1

  def __enter__(self) -> Self:
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT,) if self._sync else (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, old in self._previous.items():
      signal.signal(sig, old)

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # asked twice: stop now, without the checkpoint
    self.signal = signum
    if self._sync:
      signal.raise_signal(signal.SIGTERM)  # to the preemption notifier, which tells every process

  def stop_now(self, step: int) -> bool:
    """Whether to save ``step`` and stop; called by every process after every step."""
    if self._sync:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal = self.signal or signal.SIGTERM
        return True
      return False
    return self.signal is not None
