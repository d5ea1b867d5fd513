"""A run's training log: ``metrics.jsonl``, TensorBoard events and ``metrics.png``.

Each record is the mean of the metrics over the steps since the previous record (its ``window``),
with the training speed. A resumed run first drops the records of steps after the checkpoint it
resumes from — steps it is about to replay — so every step appears once, and its TensorBoard
writer purges the same steps from the event files (``purge_step``). ``metrics.png`` plots the loss,
the ratio terms and the gradient norm against the step. TensorBoard events are written with
tensorboardX (no TensorFlow) into ``WORKDIR/tensorboard``: ``tensorboard --logdir WORKDIR``. Only
the writing process of a multi-process run writes.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import numpy as np
from PIL import Image, ImageDraw

from fdrl_jax import files, parallel, workdir as workdirs

# The curves of metrics.png, one panel each (those a method logs): FDRL's loss, ratio terms and
# gradient norm, the GAN's two losses and generator gradient, the classifier's accuracy.
PLOTTED = ("loss", "data_term", "flowed_term", "ratio_data", "ratio_flowed", "grad_norm",
           "disc_loss", "gen_loss", "gen_grad_norm", "accuracy")


class MetricsLog:
  """Appends window means to ``metrics.jsonl``, mirrors them to TensorBoard, and plots them."""

  def __init__(self, workdir: str, start_step: int):
    self.workdir = workdir
    self.path = workdirs.join(workdir, "metrics.jsonl")
    self.plot_path = workdirs.join(workdir, "metrics.png")
    self.writer = parallel.is_writer()
    logged = read_records(self.path)
    self.records = [r for r in logged if r["step"] <= start_step]
    self.tensorboard = None
    # tensorboardX writes local event files, opened with the first record (a finished run that is
    # merely asked to resume writes nothing).
    self.tensorboard_dir = None if files.is_uri(workdir) else os.path.join(workdir,
                                                                               "tensorboard")
    self.start_step = start_step
    kept = "".join(json.dumps(r) + "\n" for r in self.records)
    p = files.as_path(self.path)
    if p.exists() and p.read_bytes().decode(errors="replace") != kept:
      files.write_text(self.path, kept)  # steps to be replayed, or a torn line: dropped

  def write(self, step: int, window: list[dict], steps_per_s: float) -> dict:
    """Records the mean of ``window`` (one dict of floats per step) at ``step``."""
    record = {"step": step, **{k: float(np.mean([m[k] for m in window])) for k in window[0]},
              "window": len(window), "steps_per_s": steps_per_s}
    self.records.append(record)
    files.append_line(self.path, json.dumps(record))
    if self.writer:
      if self.tensorboard is None and self.tensorboard_dir is not None:
        from tensorboardX import SummaryWriter
        _quiet_tensorboard_thread()
        self.tensorboard = SummaryWriter(self.tensorboard_dir, purge_step=self.start_step + 1,
                                         flush_secs=30)
      if self.tensorboard is not None:
        for key, value in record.items():
          if key not in ("step", "window"):
            self.tensorboard.add_scalar(f"train/{key}", value, step)
    return record

  def plot(self) -> None:
    """Writes ``metrics.png`` (each plotted metric against the step) from the records so far."""
    if self.writer and self.records:
      picture = plot_records(self.records)
      files.write_file(self.plot_path, lambda tmp: Image.fromarray(picture).save(tmp))

  def close(self) -> None:
    if self.tensorboard is not None:
      try:
        with workdirs.stderr_to_log(self.workdir):  # its writer thread's dying words
          self.tensorboard.close()
      except OSError as e:  # a full disk: metrics.jsonl is the record; say it, mask nothing
        print(f"warning: TensorBoard events in {self.tensorboard_dir} not flushed: "
              f"{e.strerror or e}.", file=sys.stderr, flush=True)


def _quiet_tensorboard_thread() -> None:
  """A tensorboardX writer thread that dies of a failed write (a full disk) says so in one line
  instead of a traceback; metrics.jsonl, the run's record, reports the disk itself."""
  previous = threading.excepthook
  if getattr(previous, "fdrl_jax", False):
    return

  def hook(args) -> None:
    if type(args.thread).__module__.startswith("tensorboardX") and issubclass(args.exc_type,
                                                                                 OSError):
      print(f"warning: TensorBoard events are no longer written: {args.exc_value}.",
            file=sys.stderr, flush=True)
    else:
      previous(args)

  hook.fdrl_jax = True
  threading.excepthook = hook


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
      print(f"warning: line {number} of {path} is not a whole record ({line[:40]!r}); dropped.",
            file=sys.stderr, flush=True)
  return records


def plot_records(records: list[dict], *, width: int = 360, height: int = 150) -> np.ndarray:
  """One panel per logged metric of ``PLOTTED``: its window means against the step, titled with
  its name and its last value; the step axis is labelled at both ends. An RGB array."""
  keys = [k for k in PLOTTED if k in records[-1]]
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
      draw.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2),
                   fill=(31, 119, 180))
  return np.asarray(canvas)
