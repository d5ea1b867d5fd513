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
import re
import shlex
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm

from fdrl_jax import (data, datasets, image_data, images, methods, metrics_log, parallel, priors,
                      sampling, workdir as workdirs)


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
    """``data_optional``: where the data cannot be read, stand in for a tfds preset's images or a
    translation run's folders with their shape (``datasets.shape_only``: restoring and sampling
    need no more); ``missing_data`` is then why they cannot be read (else None)."""
    self.config = config
    self.method = methods.get_method(config.method)
    self.missing_data: str | None = None
    try:
      self.dataset = self.method.dataset(config)
    except ValueError as e:
      standin = datasets.shape_only(config, str(e)) if data_optional else None
      if standin is None:
        raise
      self.dataset, self.missing_data = standin, str(e)
    self.mesh = parallel.data_mesh() if mesh is None else mesh
    self.replicated = parallel.replicated(self.mesh)
    self.init_key, self.step_key, self.sample_key = jax.random.split(
        jax.random.key(config.seed), 3)
    self._samplers: dict[str, sampling.Sampler] = {}
    # The classifier of the ``conditional`` sampler, set by whoever restores the run to sample
    # (``loading.restore_for_sampling``); the run itself never reads another workdir.
    self.guide: sampling.Guide | None = None

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

  def abstract_state(self):
    """The state's shapes and dtypes: no parameters initialised, no d×d prior materialised."""
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated),
        jax.eval_shape(lambda: self.new_state(fit=False)))

  def restore(self, mngr: ocp.CheckpointManager, step: int, abstract=None):
    """The state saved at ``step``; ``abstract`` is ``abstract_state()`` where the caller has it."""
    abstract = self.abstract_state() if abstract is None else abstract
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
                                                     self.mesh, self.guide)
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


class StopRequests:
  """SIGINT and SIGTERM as a request to stop after the current step (``stop_now(step)``); a second
  SIGINT interrupts at once. Only in the main thread.

  One process: a Python handler records the signal. Several processes: SIGTERM is left to JAX's
  preemption notifier and SIGINT is passed on to it as a SIGTERM, so a signal to any one process
  reaches all of them, and ``multihost_utils.reached_preemption_sync_point`` gives every process
  the same step to save at (the step after the furthest one any process had reached)."""

  def __init__(self):
    self.signal: int | None = None
    self._previous: dict[int, object] = {}
    self._sync = jax.process_count() > 1

  def __enter__(self) -> "StopRequests":
    if threading.current_thread() is threading.main_thread():
      for sig in ((signal.SIGINT,) if self._sync else (signal.SIGINT, signal.SIGTERM)):
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


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _state_bytes(state) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, "dtype"))


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

  with workdirs.training_lock(workdir), _trainer_manager(workdir, cfg.keep_checkpoints) as mngr, \
      StopRequests() as stop:
    state, latest = restore_readable(run, mngr, workdir, set_aside=True)
    if state is None:
      state = run.new_state(fit=True)
    start = int(state.step)
    if start < cfg.num_steps:
      # the workdir writable, with room for a checkpoint (and its temporary copy) of this state
      workdirs.check_writable(workdirs.join(workdir, "metrics.jsonl"), 2 * _state_bytes(state))
    if latest is not None:
      print(f"Resuming from the checkpoint of step {latest} in {workdir}", flush=True)
    log = metrics_log.MetricsLog(workdir, start)
    pending: list[tuple[int, dict]] = []
    last_good = latest
    tty = sys.stderr.isatty()
    bar = tqdm(total=cfg.num_steps, initial=start, disable=not tty, dynamic_ncols=True)
    clock = (time.perf_counter(), start)

    def diverged(s, what: str) -> TrainingDiverged:
      return TrainingDiverged(
          f"Training diverged: {what} at step {s}. "
          + (f"The last good checkpoint (step {last_good}) is kept in {workdir}"
             if last_good is not None else "No checkpoint was saved")
          + "; lower the learning rate or the flow step size and train in a new --workdir.")

    def flush(step: int) -> None:
      """Checks and logs the metrics since the last flush, and that the parameters are finite:
      nothing is saved or drawn from a diverged state."""
      nonlocal pending, clock
      fetched = jax.device_get(pending)
      pending = []
      for s, m in fetched:
        if not np.isfinite(m["loss"]):
          raise diverged(s, f"the loss is {m['loss']}")
      if not bool(_all_finite(state)):
        raise diverged(step, "the parameters are not finite")
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
      with checkpoint_write(workdir, done, last_good):
        save_state(mngr, done, state)
      last_good = done
      log.plot()

    steps = range(start, cfg.num_steps)
    batches = datasets.prefetch(run.batch, steps)
    try:
      for step, batch in zip(steps, batches):
        state, metrics = step_fn(state, batch, run.step_key)
        if pending:  # at most one step in flight, so that a stop request waits for one step only
          jax.block_until_ready(pending[-1][1])
        pending.append((step + 1, metrics))
        bar.update(1)
        done = step + 1
        if not committed:  # training has started: the workdir is this config's from now on
          workdirs.write_config(workdir, config)
          committed = True
        last = done == cfg.num_steps
        stopping = stop.stop_now(done) and not last
        if done % cfg.log_every == 0 or last:
          flush(done)
        if done % cfg.checkpoint_every == 0 or last or stopping:
          save(done)
        if draws_grids and (done % cfg.sample_every == 0 or last):
          flush(done)
          x = run.draw(state, run.sample_key_for(done), cfg.num_grid_samples, "prior")
          workdirs.write_file(workdirs.join(workdir, "samples", f"step_{done:07d}.png"),
                              lambda path: images.save_samples(x, path, reference))
        if stopping:
          with checkpoint_write(workdir, done, last_good):
            mngr.wait_until_finished()
          raise TrainingInterrupted(
              f"Interrupted ({signal.Signals(stop.signal).name}) at step {done}: its checkpoint "
              f"is saved in {workdirs.join(workdir, 'checkpoints')}. Resume with the same "
              f"command: python -m fdrl_jax.main {shlex.join(sys.argv[1:])}", stop.signal)
    finally:
      batches.close()
      bar.close()
      log.close()
    with checkpoint_write(workdir, cfg.num_steps, last_good):
      mngr.wait_until_finished()
  if start >= cfg.num_steps:
    print(f"Training is complete: {workdir} holds step {start} of {cfg.num_steps}; raise "
          "--config.training.num_steps to train longer.", flush=True)
  else:
    where = f"; samples in {workdirs.join(workdir, 'samples')}" if draws_grids else ""
    print(f"Trained to step {cfg.num_steps}{where}", flush=True)
  return state


def _reason(error: Exception) -> str:
  """A short reason for a failed checkpoint read or write: the operating system's words where
  TensorStore quotes them ("File too large"), else the first line of the message, cut."""
  text = image_data.first_line(error)
  found = re.search(r":\s*([^:\[\]]+?)\s*\[os_error_code", text)
  return found.group(1) if found else text[:160]


@contextlib.contextmanager
def _trainer_manager(workdir: str, keep: int):
  """The trainer's checkpoint manager, closed with the standard error kept off the terminal: after
  a failed write, TensorStore's leftover callbacks report a closed event loop at the close."""
  mngr = workdirs.checkpoint_manager(workdir, keep)
  try:
    yield mngr
  finally:
    with workdirs.stderr_to_log(workdir):
      mngr.close()


class CheckpointWriteError(ValueError):
  """A checkpoint could not be written; the earlier ones are intact."""


@contextlib.contextmanager
def checkpoint_write(workdir: str, step: int, last_good: int | None):
  """Turns a failed checkpoint write (a full disk, a file-size limit, a vanished folder) into one
  line; the full trace goes to ``WORKDIR/errors.log``. Orbax writes a step into a temporary folder
  and renames it when complete, so the checkpoints before it are untouched."""
  error, where = None, ""
  with workdirs.stderr_to_log(workdir):
    try:
      yield
    except Exception as e:  # noqa: BLE001 — whatever Orbax / TensorStore raise for a failed write
      error, where = e, workdirs.log_error(workdir, e)  # the trace first, while there is room
      time.sleep(1.0)  # TensorStore's callbacks of the failed write report here, not later
  if error is not None:
    kept = (f"the checkpoint of step {last_good} is intact" if last_good is not None
            else "no checkpoint was saved before")
    raise CheckpointWriteError(
        f"Could not write the checkpoint of step {step} in {workdirs.join(workdir, 'checkpoints')}"
        f" ({_reason(error)}); {kept}. Free space (or fix the folder) and resume with the same "
        f"command{where}.")


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
  """The state and step of the newest checkpoint that can be read, or (None, None) for a workdir
  that never had one.

  A checkpoint whose files read but whose arrays do not fit this config is not damage: a one-line
  ValueError names the differing config keys (or arrays), and nothing is moved. An unreadable one
  (a truncated or missing file) is skipped with a warning and, with ``set_aside`` (training, which
  will save that step again), moved to ``WORKDIR/unreadable_checkpoints/`` — kept, never deleted —
  but only once an older one has been read: where none can be read, a ValueError names the folder
  and nothing is moved. A workdir whose checkpoints were all set aside before is refused too: it
  never silently starts again from step 0."""
  steps = sorted(mngr.all_steps(), reverse=True)
  abstract = run.abstract_state()
  unreadable: list[tuple[int, str]] = []
  for step in steps:
    mismatch = checkpoint_mismatch(abstract, mngr, workdir, step)
    if mismatch and run.missing_data and run.dataset.source is not None:
      raise ValueError(run.missing_data)  # a translation run whose prior holds its source images
    if mismatch and all(m.startswith("prior.data: saved absent") for m in mismatch):
      raise ValueError(f"The checkpoint of step {step} in {workdirs.join(workdir, 'checkpoints')} "
                       f"{priors.NO_SOURCE}.")
    if mismatch:
      raise ValueError(
          f"The checkpoint of step {step} in {workdirs.join(workdir, 'checkpoints')} was trained "
          f"with another config ({describe_mismatch(run.config, workdir, mismatch)}); nothing was "
          "moved. Use that run's config (its config.json) or a new --workdir.")
    try:
      with workdirs.stderr_to_log(workdir):
        state = run.restore(mngr, step, abstract)
    except Exception as e:  # noqa: BLE001 — whatever Orbax / TensorStore raise for a bad file
      workdirs.log_error(workdir, e)
      unreadable.append((step, _reason(e)))
      continue
    for bad, reason in unreadable:
      moved = workdirs.set_aside_checkpoint(workdir, bad) if set_aside else None
      print(f"warning: the checkpoint of step {bad} in {workdir} cannot be read ({reason}); "
            + (f"moved to {moved}; " if moved else "") + f"using step {step}.",
            file=sys.stderr, flush=True)
    if unreadable and set_aside:
      mngr.reload()
    return state, step
  folder = workdirs.join(workdir, "checkpoints")
  if steps:
    raise ValueError(
        f"No checkpoint in {folder} can be read (steps {', '.join(map(str, steps))}: "
        f"{unreadable[0][1]}); nothing was moved. Train in a new --workdir, or move them away to "
        "start this one again.")
  aside = workdirs.set_aside_steps(workdir)
  if aside:
    raise ValueError(
        f"--workdir {workdir} has no readable checkpoint, only set-aside ones in "
        f"{workdirs.join(workdir, 'unreadable_checkpoints')} (steps {', '.join(aside)}); it will "
        "not start again from step 0. Train in a new --workdir.")
  return None, None


def _leaf_name(path) -> str:
  return ".".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def checkpoint_mismatch(abstract, mngr: ocp.CheckpointManager, workdir: str, step: int
                        ) -> list[str]:
  """How the arrays saved at ``step`` differ from the state ``abstract`` (``"name: saved (…),
  expected (…)"``); empty when they fit or when the checkpoint's metadata cannot be read (then the
  restore finds out what is wrong)."""
  path = epath.Path(mngr.directory) / str(step) / "state"
  try:
    with workdirs.stderr_to_log(workdir):
      saved_tree = ocp.StandardCheckpointer().metadata(path).item_metadata
  except Exception:  # noqa: BLE001 — unreadable metadata: an unreadable checkpoint
    return []
  saved = {_leaf_name(p): tuple(m.shape)
           for p, m in jax.tree_util.tree_flatten_with_path(saved_tree)[0] if hasattr(m, "shape")}
  expected = {_leaf_name(p): tuple(a.shape)
              for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  if not saved:
    return []
  return [f"{name}: saved {saved.get(name, 'absent')}, expected {expected.get(name, 'absent')}"
          for name in sorted(set(saved) | set(expected)) if saved.get(name) != expected.get(name)]


def describe_mismatch(config: ml_collections.ConfigDict, workdir: str, arrays: list[str]) -> str:
  """The config keys that differ from the workdir's ``config.json`` with both values, or, where
  none does (the data changed shape), the first differing arrays."""
  try:
    differences = workdirs.config_differences(workdirs.config_dict(workdirs.read_config(workdir)),
                                              workdirs.config_dict(config))
  except ValueError:
    differences = []
  if differences:
    return "; ".join(differences)
  more = f"; and {len(arrays) - 3} more arrays" if len(arrays) > 3 else ""
  return "; ".join(arrays[:3]) + more


def restore_latest(config: ml_collections.ConfigDict, workdir: str, *, data_optional=False
                   ) -> tuple[Run, object, int]:
  """The run and the state of the latest readable checkpoint of an existing ``workdir``
  (``data_optional``: see ``Run``; for modes that only sample or translate)."""
  workdir = workdirs.check_workdir(workdir, config, create=False)
  run = Run(config, data_optional=data_optional)
  with workdirs.checkpoint_manager(workdir, config.training.keep_checkpoints,
                                   read_only=True) as mngr:
    state, step = restore_readable(run, mngr, workdir, set_aside=False)
    if state is None:
      raise ValueError(f"--workdir {workdir} has no checkpoint yet; train first.")
    return run, state, step
