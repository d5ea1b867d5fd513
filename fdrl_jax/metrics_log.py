"""A run's training log: ``metrics.jsonl``, TensorBoard events and ``metrics.png``.

Each record is the mean of the metrics over the steps since the previous record (its ``window``),
with the training speed. A resumed run first drops the records of steps after the checkpoint it
resumes from — steps it is about to replay — so every step appears once, and its TensorBoard
writer purges the same steps from the event files (``purge_step``). ``metrics.png`` plots the loss,
the ratio terms and the gradient norm against the step. TensorBoard events are written with
tensorboardX (no TensorFlow) into ``WORKDIR/tensorboard``: ``tensorboard --logdir WORKDIR``. Only
the writing process of a multi-process run writes.

Evaluations during training (``training.eval_every``) go beside it: their rows, one JSON object a
line, in ``eval.jsonl`` (replayed steps dropped the same way), TensorBoard scalars ``eval/<key>``
and panels of ``metrics.png``; the training's sample grids go to TensorBoard as images.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw

from fdrl_jax import files, parallel, workdir as workdirs

# The curves of metrics.png, one panel each (those a method logs): FDRL's loss, ratio terms and
# gradient norm, the GAN's two losses and generator gradient, the classifier's accuracy.
PLOTTED = (
  "loss",
  "data_term",
  "flowed_term",
  "ratio_data",
  "ratio_flowed",
  "grad_norm",
  "disc_loss",
  "gen_loss",
  "gen_grad_norm",
  "accuracy",
)


def header(method: str, workdir: str, devices, start: int, end: int, *, samples: bool) -> str:
  """The line a training run starts with: its method and config (``--config`` of the command
  line), workdir, devices (count and kind) and processes, steps, and where its files go."""
  argv = sys.argv[1:]
  config = (
    [a[len("--config=") :] for a in argv if a.startswith("--config=")]
    + [b for a, b in itertools.pairwise(argv) if a == "--config"]
    + ["given in Python"]
  )[0]
  devices = list(devices)
  kinds = "/".join(sorted({d.device_kind for d in devices}))
  grids = f"samples to {workdirs.join(workdir, 'samples')}, " if samples else ""
  return (
    f"Training {method} (config {config}) in {workdir} on {len(devices)} {kinds} device"
    f"{'s' * (len(devices) > 1)} in {jax.process_count()} process(es): steps {start} to "
    f"{end}; {grids}checkpoints to {workdirs.join(workdir, 'checkpoints')}"
  )


class MetricsLog:
  """Appends window means to ``metrics.jsonl`` and evaluation rows to ``eval.jsonl``, mirrors both
  to TensorBoard, and plots them."""

  def __init__(self, workdir: str, start_step: int):
    self.workdir = workdir
    self.path = workdirs.join(workdir, "metrics.jsonl")
    self.eval_path = workdirs.join(workdir, EVAL_LOG)
    self.plot_path = workdirs.join(workdir, "metrics.png")
    self.writer = parallel.is_writer()
    self.records = _keep_until(self.path, start_step)
    self.eval_rows = _keep_until(self.eval_path, start_step)
    self.tensorboard: Any = None  # a tensorboardX SummaryWriter, once opened
    # tensorboardX writes local event files, opened with the first record (a finished run that is
    # merely asked to resume writes nothing).
    self.tensorboard_dir = None if files.is_uri(workdir) else os.path.join(workdir, "tensorboard")
    self.start_step = start_step

  def _board(self):
    """The TensorBoard writer (None on other processes and for a ``gs://`` workdir)."""
    if self.writer and self.tensorboard is None and self.tensorboard_dir is not None:
      from tensorboardX import SummaryWriter

      _quiet_tensorboard_thread()
      self.tensorboard = SummaryWriter(
        self.tensorboard_dir, purge_step=self.start_step + 1, flush_secs=30
      )
    return self.tensorboard

  def write(self, step: int, window: list[dict], steps_per_s: float) -> dict:
    """Records the mean of ``window`` (one dict of floats per step) at ``step``."""
    record = {
      "step": step,
      **{k: float(np.mean([m[k] for m in window])) for k in window[0]},
      "window": len(window),
      "steps_per_s": steps_per_s,
    }
    self.records.append(record)
    files.append_line(self.path, json.dumps(record))
    board = self._board()
    if board is not None:
      for key, value in record.items():
        if key not in ("step", "window"):
          board.add_scalar(f"train/{key}", value, step)
    return record

  def write_eval(self, step: int, rows: list[dict]) -> None:
    """Records the rows of the evaluation at ``step`` (``eval_rows``) and redraws the plot."""
    self.eval_rows += rows
    for row in rows:
      files.append_line(self.eval_path, json.dumps(row))
    board = self._board()
    if board is not None:
      for tag, value in eval_scalars(rows).items():
        board.add_scalar(tag, value, step)
    self.plot()

  def write_image(self, tag: str, png_path: str, step: int) -> None:
    """Mirrors a PNG the run wrote (a sample grid) to TensorBoard."""
    board = self._board()
    if board is not None:
      with Image.open(png_path) as image:
        board.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")

  def plot(self) -> None:
    """Writes ``metrics.png`` (each plotted metric against the step) from the records so far."""
    if not (self.writer and (self.records or self.eval_rows)):
      return
    panels = [plot_records(self.records)] if self.records else []
    if self.eval_rows:
      by_step: dict[int, list[dict]] = {}
      for row in self.eval_rows:
        by_step.setdefault(row["step"], []).append(row)
      series = [{"step": step, **eval_scalars(rows)} for step, rows in by_step.items()]
      keys = list(dict.fromkeys(k for r in series for k in r if k != "step"))
      panels.append(plot_records(series, keys=keys))
    picture = np.concatenate(panels, axis=0)
    files.write_file(self.plot_path, lambda tmp: Image.fromarray(picture).save(tmp))

  def close(self) -> None:
    if self.tensorboard is not None:
      try:
        with workdirs.stderr_to_log(self.workdir):  # its writer thread's dying words
          self.tensorboard.close()
      except OSError as e:  # a full disk: metrics.jsonl is the record; say it, mask nothing
        print(
          f"warning: TensorBoard events in {self.tensorboard_dir} not flushed: {e.strerror or e}.",
          file=sys.stderr,
          flush=True,
        )


class _QuietTensorboardThread:
  """A ``threading.excepthook``: a tensorboardX writer thread that dies of a failed write (a full
  disk) says so in one line instead of a traceback; other threads' errors go to ``previous``."""

  def __init__(self, previous: Callable[[threading.ExceptHookArgs], object]):
    self.previous = previous

  def __call__(self, args: threading.ExceptHookArgs) -> None:
    if type(args.thread).__module__.startswith("tensorboardX") and issubclass(
      args.exc_type, OSError
    ):
      print(
        f"warning: TensorBoard events are no longer written: {args.exc_value}.",
        file=sys.stderr,
        flush=True,
      )
    else:
      self.previous(args)


def _quiet_tensorboard_thread() -> None:
  """Installs ``_QuietTensorboardThread`` once: metrics.jsonl, the run's record, reports the disk
  itself."""
  if not isinstance(threading.excepthook, _QuietTensorboardThread):
    threading.excepthook = _QuietTensorboardThread(threading.excepthook)


# Evaluation rows during training, one JSON object a line.
EVAL_LOG = "eval.jsonl"
# Row keys that say which row it is (and what it counts), not how good it is: no scalars of them.
ROW_LABELS = ("step", "flow_length", "class", "num_samples")


def eval_rows(result: dict, step: int) -> list[dict]:
  """The rows of a method's evaluation ``result`` (its ``rows``), each with ``step`` first; a
  result without rows is one row of its own entries."""
  rows = result.get("rows", [result])
  return [{"step": step, **{k: v for k, v in row.items() if k != "step"}} for row in rows]


def eval_scalars(rows: list[dict]) -> dict[str, float]:
  """The TensorBoard scalars of one evaluation's rows: ``eval/<key>`` for each numeric key; where
  there are several rows, each tag names its row (``eval/fid/flow_length=25``)."""
  scalars = {}
  for row in rows:
    label = "".join(f"/{k}={row[k]}" for k in ROW_LABELS[1:3] if k in row) if len(rows) > 1 else ""
    for key, value in row.items():
      if key not in ROW_LABELS and isinstance(value, (int, float)) and not isinstance(value, bool):
        scalars[f"eval/{key}{label}"] = float(value)
  return scalars


def _keep_until(path: str, step: int) -> list[dict]:
  """The records of ``path`` up to ``step``; the file is rewritten without the others (steps a
  resumed run replays) and without a torn line."""
  records = [r for r in read_records(path) if r["step"] <= step]
  kept = "".join(json.dumps(r) + "\n" for r in records)
  p = files.as_path(path)
  if p.exists() and p.read_bytes().decode(errors="replace") != kept:
    files.write_text(path, kept)
  return records


def read_records(path: str) -> list[dict]:
  """The records of a ``metrics.jsonl`` (none if it does not exist). A line that is not a whole
  record — the torn last line of a run that a full disk or a kill stopped mid-write — is dropped
  with a warning (a resumed run rewrites the file without it)."""
  p = files.as_path(path)
  if not p.exists():
    return []
  records = []
  for number, line in enumerate(p.read_bytes().decode(errors="replace").splitlines(), start=1):
    try:
      record = json.loads(line) if line.strip() else None
    except ValueError:
      record = line
    if isinstance(record, dict) and "step" in record:
      records.append(record)
    elif record is not None:
      print(
        f"warning: line {number} of {path} is not a whole record ({line[:40]!r}); dropped.",
        file=sys.stderr,
        flush=True,
      )
  return records


def plot_records(
  records: list[dict], *, keys: Sequence[str] | None = None, width: int = 360, height: int = 150
) -> np.ndarray:
  """One panel per key (default: each logged metric of ``PLOTTED``): its values against the step,
  titled with its name and its last value; the step axis is labelled at both ends. An RGB
  array."""
  keys = [k for k in PLOTTED if k in records[-1]] if keys is None else list(keys)
  steps = np.array([r["step"] for r in records], np.float64)
  canvas = Image.new("RGB", (width, height * len(keys)), "white")
  draw = ImageDraw.Draw(canvas)
  left, right, top, bottom = 50, width - 10, 18, height - 20
  for i, key in enumerate(keys):
    y0 = i * height
    values = np.array([r.get(key, np.nan) for r in records], np.float64)
    finite = np.isfinite(values)
    draw.text((left, y0 + 3), f"{key}  (last {values[-1]:.4g})", fill="black")
    draw.rectangle((left, y0 + top, right, y0 + bottom), outline="grey")
    draw.text((left, y0 + bottom + 4), f"step {int(steps[0])}", fill="black")
    draw.text((right - 70, y0 + bottom + 4), f"step {int(steps[-1])}", fill="black")
    if not finite.any():
      continue
    lo, hi = float(values[finite].min()), float(values[finite].max())
    draw.text((2, y0 + top), f"{hi:.3g}", fill="black")
    draw.text((2, y0 + bottom - 10), f"{lo:.3g}", fill="black")
    span_x = max(steps[-1] - steps[0], 1.0)
    span_y = max(hi - lo, 1e-12)
    xs = left + (steps - steps[0]) / span_x * (right - left)
    ys = y0 + bottom - (values - lo) / span_y * (bottom - top)
    points = [(float(x), float(y)) for x, y, ok in zip(xs, ys, finite) if ok]
    if len(points) > 1:
      draw.line(points, fill=(31, 119, 180), width=2)
    else:
      draw.ellipse(
        (points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2),
        fill=(31, 119, 180),
      )
  return np.asarray(canvas)
