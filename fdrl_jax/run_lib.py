"""The training loop, and the restored runs every other mode starts from.

A run is a method's record (``fdrl_jax.methods``: FDRL, the MonoFlow GAN, a classifier) with its
data, mesh and keys (``Run``). ``train_and_evaluate`` trains it in a workdir (``fdrl_jax.workdir``):
re-running the same command resumes from the latest checkpoint and replays exactly what an
uninterrupted run would have done. ``restore_latest`` gives the run and state of a workdir's
latest checkpoint to sampling, evaluation and figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import sys
import threading
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from fdrl_jax import (data, datasets, images, methods, metrics_log, parallel, sampling,
                      workdir as workdirs)


class TrainingDiverged(ValueError):
  """The loss became NaN or infinite."""


# State fields added after checkpoints were written without them; a checkpoint that lacks one is
# still read when the run's value of it is empty (``GANState.disc_stats``: a discriminator without
# batch norm).
LATER_EMPTY_FIELDS = ("disc_stats",)


class Run:
  """What one config builds: its method's record, data, mesh and keys; the loop and the modes
  call the record through it."""

  def __init__(self, config: ml_collections.ConfigDict, mesh=None, *, data_optional=False):
    """``data_optional``: where the data cannot be read, stand in for a tfds preset's images with
    their shape (``datasets.shape_only``: restoring and sampling need no more)."""
    self.config = config
    self.method = methods.get_method(config.method)
    try:
      self.dataset = self.method.dataset(config)
    except ValueError as e:
      standin = datasets.shape_only(config, str(e)) if data_optional else None
      if standin is None:
        raise
      self.dataset = standin
    self.mesh = parallel.data_mesh() if mesh is None else mesh
    self.replicated = parallel.replicated(self.mesh)
    self.init_key, self.step_key, self.sample_key = jax.random.split(
        jax.random.key(config.seed), 3)
    self._samplers: dict[str, sampling.Sampler] = {}

  def new_state(self, fit: bool):
    """A fresh state; ``fit=False`` skips fitting the prior (a template to restore into). In a
    multi-process run only process 0 fits the prior (decoding its data) and its state is
    broadcast, so every process holds the same one (``parallel.broadcast_from_writer``)."""
    if fit and jax.process_count() > 1:
      state = self.method.init_state(self.config, self.dataset, self.init_key,
                                     fit=parallel.is_writer())
      state = parallel.broadcast_from_writer(state)
    else:
      state = self.method.init_state(self.config, self.dataset, self.init_key, fit=fit)
    return jax.device_put(state, self.replicated)

  def restore(self, mngr: ocp.CheckpointManager, step: int):
    # Shapes only: no parameters initialised, no d×d template prior materialised.
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated),
        jax.eval_shape(lambda: self.new_state(fit=False)))
    restore = lambda template: mngr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template))).state
    try:
      return restore(abstract)
    except ValueError as e:
      later = [name for name in LATER_EMPTY_FIELDS if hasattr(abstract, name)
               and not jax.tree.leaves(getattr(abstract, name))]
      if "tree structures do not match" not in str(e) or not later:
        raise
    # Written before those (empty) fields were added to the state: restore the rest.
    fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)
              if f.name not in later}
    return abstract.replace(**restore(fields))

  def train_step(self):
    """The jitted, data-parallel ``step(state, batch, key)`` of the method."""
    return parallel.jit_train_step(
        lambda sharding: self.method.train_step(self.config, self.dataset, sharding), self.mesh)

  def batch(self, step: int):
    """The global batch of training step ``step``, placed on the mesh; this process loads only
    its own rows."""
    size = self.config.data.batch_size
    rows = parallel.process_rows(size, self.mesh)
    local = self.method.batch(self.config, self.dataset, step, rows)
    return parallel.global_batch(local, size, self.mesh)

  def sampler_parts(self) -> sampling.SamplerParts | None:
    parts = self.method.sampler_parts
    return None if parts is None else parts(self.config, self.dataset)

  def sampler(self, name: str | None = None) -> sampling.Sampler:
    """The sampler ``name`` (default ``config.sampling.name``), built and compiled once a run."""
    name = name or self.config.sampling.name
    if name not in self._samplers:
      self._samplers[name] = sampling.build_sampler(self.config, self.sampler_parts(), name,
                                                     self.mesh)
    return self._samplers[name]

  def draw(self, state, key: jax.Array, n: int, name: str | None = None) -> np.ndarray:
    """``n`` samples of the model in ``state`` by the sampler ``name`` (a host array, the same on
    every process)."""
    return self.sampler(name).sample(state, key, n)

  def sample_key_for(self, i: int) -> jax.Array:
    """Keys of the sampling modes: training grids use i = step ≥ 1, --mode=sample and
    --mode=translate i = 0, figures ``figures.FIGURE_KEY`` + i, FD prior scores 1 << 30."""
    return jax.random.fold_in(self.sample_key, i)


def grid_reference(run: Run) -> np.ndarray | None:
  """The points a 2-D sample picture is drawn over: 2 000 training points (None for images)."""
  return None if run.dataset.is_image else data.fit_samples(run.dataset, 2000, run.config.seed)


class TrainingInterrupted(Exception):
  """SIGINT or SIGTERM stopped training after a checkpoint of the current step was saved."""

  def __init__(self, message: str, signal_number: int):
    super().__init__(message)
    self.exit_code = 128 + signal_number


@contextlib.contextmanager
def _stop_requests():
  """Turns SIGINT and SIGTERM into a request (``requested[0]``, the signal) that the loop honours
  after the current step; a second signal interrupts at once. Only in the main thread."""
  requested: list[int] = []
  if threading.current_thread() is not threading.main_thread():
    yield requested
    return

  def handler(signum, frame):
    if requested:  # asked twice: stop now, without the checkpoint
      raise KeyboardInterrupt
    requested.append(signum)

  previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield requested
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mesh=None
                       ):
  """Trains ``config.method`` per ``config`` in ``workdir``, resuming from its latest readable
  checkpoint if any; returns the final state.

  The config is committed to the workdir (``config.json``) only once the first step has run, so a
  first run that fails leaves a workdir the corrected command can use. SIGINT / SIGTERM save a
  checkpoint of the current step and raise ``TrainingInterrupted``.
  """
  workdir = workdirs.check_workdir(workdir, config, create=True)
  committed = workdirs.has_config(workdir)
  run = Run(config, mesh)
  cfg = config.training
  step_fn = run.train_step()
  reference = grid_reference(run)
  draws_grids = run.method.sampler_parts is not None

  with workdirs.checkpoint_manager(workdir, cfg.keep_checkpoints) as mngr, \
      _stop_requests() as stop:
    state, latest = restore_readable(run, mngr, workdir, set_aside=True)
    if state is None:
      state = run.new_state(fit=True)
    start = int(state.step)
    if latest is not None:
      print(f"Resuming from the checkpoint of step {latest} in {workdir}", flush=True)
    log = metrics_log.MetricsLog(workdir, start)
    pending: list[tuple[int, dict]] = []
    last_good = latest
    tty = sys.stderr.isatty()
    bar = tqdm(total=cfg.num_steps, initial=start, disable=not tty, dynamic_ncols=True)
    clock = (time.perf_counter(), start)

    def flush(step: int) -> None:
      nonlocal pending, clock
      fetched = jax.device_get(pending)
      pending = []
      for s, m in fetched:
        if not np.isfinite(m["loss"]):
          raise TrainingDiverged(
              f"Training diverged: the loss is {m['loss']} at step {s}. "
              + (f"The last good checkpoint (step {last_good}) is kept in {workdir}"
                 if last_good is not None else "No checkpoint was saved")
              + "; lower the learning rate or the flow step size and train in a new --workdir.")
      if not fetched:
        return
      now = time.perf_counter()
      rate = (step - clock[1]) / max(now - clock[0], 1e-9)
      clock = (now, step)
      record = log.write(fetched[-1][0], [m for _, m in fetched], rate)
      if tty:
        bar.set_postfix(loss=f"{record['loss']:.4g}", steps_per_s=f"{rate:.1f}")
      else:
        values = "  ".join(f"{k} {v:.4g}" for k, v in record.items()
                           if k not in ("step", "steps_per_s", "window"))
        print(f"step {record['step']}/{cfg.num_steps}  {values}  {rate:.1f} steps/s", flush=True)

    def save(done: int) -> None:
      nonlocal last_good
      flush(done)
      save_state(mngr, done, state)
      last_good = done
      log.plot()

    steps = range(start, cfg.num_steps)
    batches = datasets.prefetch(run.batch, steps)
    try:
      for step, batch in zip(steps, batches):
        state, metrics = step_fn(state, batch, run.step_key)
        pending.append((step + 1, metrics))
        bar.update(1)
        done = step + 1
        if not committed:  # training has started: the workdir is this config's from now on
          workdirs.write_config(workdir, config)
          committed = True
        last = done == cfg.num_steps
        if done % cfg.log_every == 0 or last:
          flush(done)
        if done % cfg.checkpoint_every == 0 or last:
          save(done)
        if draws_grids and (done % cfg.sample_every == 0 or last):
          x = run.draw(state, run.sample_key_for(done), cfg.num_grid_samples, "prior")
          workdirs.write_file(workdirs.join(workdir, "samples", f"step_{done:07d}.png"),
                              lambda path: images.save_samples(x, path, reference))
        if stop and not last:
          if last_good != done:
            save(done)
          mngr.wait_until_finished()
          raise TrainingInterrupted(
              f"Interrupted ({signal.Signals(stop[0]).name}) at step {done}: its checkpoint is "
              f"saved in {workdirs.join(workdir, 'checkpoints')}. Resume with the same command: "
              f"python -m fdrl_jax.main {shlex.join(sys.argv[1:])}", stop[0])
    finally:
      batches.close()
      bar.close()
      log.close()
    mngr.wait_until_finished()
  if start >= cfg.num_steps:
    print(f"Training is complete: {workdir} holds step {start} of {cfg.num_steps}; raise "
          "--config.training.num_steps to train longer.", flush=True)
  else:
    where = f"; samples in {workdirs.join(workdir, 'samples')}" if draws_grids else ""
    print(f"Trained to step {cfg.num_steps}{where}", flush=True)
  return state


def save_state(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves ``state`` as the checkpoint of ``step`` (the one layout ``Run.restore`` reads)."""
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))


def save_checkpoint(workdir: str, config: ml_collections.ConfigDict, state) -> None:
  """Writes ``state`` as the checkpoint of its own step into ``workdir`` and waits for it (a
  state made outside the training loop: ``fdrl_jax.import_reference``)."""
  with workdirs.checkpoint_manager(workdir, config.training.keep_checkpoints) as mngr:
    save_state(mngr, int(state.step), state)
    mngr.wait_until_finished()


def restore_readable(run: Run, mngr: ocp.CheckpointManager, workdir: str, *, set_aside: bool
                     ) -> tuple[object | None, int | None]:
  """The state and step of the newest checkpoint that can be read, or (None, None) if there is
  none. An unreadable one (a truncated or missing file) is skipped with a warning and, with
  ``set_aside`` (training, which will save that step again), moved to
  ``WORKDIR/unreadable_checkpoints/`` — kept, never deleted. A ValueError if checkpoints exist
  but none can be read."""
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      return run.restore(mngr, step), step
    except Exception as e:  # noqa: BLE001 — whatever Orbax / TensorStore raise for a bad file
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      moved = workdirs.set_aside_checkpoint(workdir, step) if set_aside else None
      if moved:
        mngr.reload()
      print(f"warning: the checkpoint of step {step} in {workdir} cannot be read ({reason}); "
            + (f"moved to {moved}; " if moved else "") + "using the one before.",
            file=sys.stderr, flush=True)
  if steps:
    raise ValueError(f"No checkpoint in {workdirs.join(workdir, 'checkpoints')} can be read "
                     f"(steps {', '.join(map(str, steps))}); train in a new --workdir.")
  return None, None


def restore_latest(config: ml_collections.ConfigDict, workdir: str, *, data_optional=False
                   ) -> tuple[Run, object, int]:
  """The run and the state of the latest readable checkpoint of an existing ``workdir``
  (``data_optional``: see ``Run``; for modes that only sample)."""
  workdir = workdirs.check_workdir(workdir, config, create=False)
  run = Run(config, data_optional=data_optional)
  with workdirs.checkpoint_manager(workdir, config.training.keep_checkpoints) as mngr:
    state, step = restore_readable(run, mngr, workdir, set_aside=False)
    if state is None:
      raise ValueError(f"--workdir {workdir} has no checkpoint yet; train first.")
    return run, state, step


def evaluate_to_file(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """``--mode=eval``: the method's evaluation of the latest checkpoint (``Method.evaluate``:
  sample scores of a generative run, accuracies of a classifier), written to
  ``workdir/eval_step_<step>.json`` (a new name if that exists) and returned with its path."""
  methods.get_method(config.method).check_eval(config)
  run, state, step = restore_latest(config, workdir)
  workdir = os.fspath(workdirs.as_path(workdir))
  # Named before the evaluation's collectives, so every process names the same file.
  path = workdirs.free_path(workdirs.join(workdir, f"eval_step_{step:07d}.json"))
  parallel.sync("eval_path")
  result = {"step": step, **run.method.evaluate(config, run, state, workdir)}
  workdirs.write_json(path, result)
  return {**result, "path": path}
