"""The training loop, and the restored runs every other mode starts from.

A run is a method's record (``fdrl_jax.methods``: FDRL, the MonoFlow GAN, a classifier) with its
data, mesh and keys (``Run``). ``train_and_evaluate`` trains it in a workdir (``fdrl_jax.workdir``):
re-running the same command resumes from the latest checkpoint and replays exactly what an
uninterrupted run would have done. ``restore_latest`` gives the run and state of a workdir's
latest checkpoint to sampling, evaluation and figures.
"""

from __future__ import annotations

import functools
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from fdrl_jax import (
  bundled,
  checkpoints,
  conditional,
  datasets,
  files,
  images,
  methods,
  metrics_log,
  parallel,
  sampling,
  stops,
  train_hooks,
  workdir as workdirs,
)
from fdrl_jax.sampler import Sampler, SamplerParts


class TrainingDiverged(ValueError):
  """The loss became NaN or infinite."""


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
    self.init_key, self.step_key, self.sample_key = jax.random.split(jax.random.key(config.seed), 3)
    self._samplers: dict[tuple, Sampler] = {}
    # The classifier of the ``conditional`` sampler, set by whoever restores the run to sample
    # (``loading.restore_for_sampling``); the run itself never reads another workdir.
    self.guide: conditional.Guide | None = None

  def new_state(self, fit: bool):
    """A fresh state; ``fit=False`` skips fitting the prior (a template to restore into). In a
    multi-process run only process 0 fits the prior (decoding its data) and its state is
    broadcast, so every process holds the same one (``parallel.broadcast_from_writer``)."""
    if fit and jax.process_count() > 1:
      state = self.method.init_state(
        self.config, self.dataset, self.init_key, fit=parallel.is_writer()
      )
      state = parallel.broadcast_from_writer(state)
    else:
      state = self.method.init_state(self.config, self.dataset, self.init_key, fit=fit)
    return jax.device_put(state, self.replicated)

  def abstract_state(self):
    """The state's shapes and dtypes: no parameters initialised, no d×d prior materialised."""
    return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated),
      jax.eval_shape(lambda: self.new_state(fit=False)),
    )

  def restore(self, mngr: ocp.CheckpointManager, step: int, abstract=None):
    """The state saved at ``step``; ``abstract`` is ``abstract_state()`` where the caller has it."""
    return checkpoints.restore_state(
      mngr, step, self.abstract_state() if abstract is None else abstract
    )

  def train_step(self):
    """The jitted, data-parallel ``step(state, batch, key)`` of the method."""
    return parallel.jit_train_step(
      lambda sharding: self.method.train_step(self.config, self.dataset, sharding), self.mesh
    )

  def batch(self, step: int):
    """The global batch of training step ``step``, placed on the mesh; this process loads only
    its own rows."""
    size = self.config.data.batch_size
    rows = parallel.process_rows(size, self.mesh)
    local = self.method.batch(self.config, self.dataset, step, rows)
    return parallel.global_batch(local, size, self.mesh)

  def sampler_parts(self) -> SamplerParts | None:
    parts = self.method.sampler_parts
    return None if parts is None else parts(self.config, self.dataset)

  def sampler(self, name: str | None = None, lengths: tuple[int, ...] | None = None) -> Sampler:
    """The sampler ``name`` (default ``config.sampling.name``; ``sampling.SAMPLERS`` or the
    method's own ``samplers``) at flow ``lengths`` (``sampling.build_sampler``), compiled once."""
    key = (name or self.config.sampling.name, lengths)
    if key not in self._samplers:
      self._samplers[key] = sampling.build_sampler(
        self.config,
        self.sampler_parts(),
        key[0],
        self.mesh,
        self.guide,
        lengths=lengths,
        samplers=self.method.samplers,
      )
    return self._samplers[key]

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
  return None if run.dataset.is_image else bundled.fit_samples(run.dataset, 2000, run.config.seed)


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [
    jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _state_bytes(state) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, "dtype"))


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  mesh=None,
  *,
  hooks: Sequence[train_hooks.Hook | Callable] = (),
):
  """Trains ``config.method`` per ``config`` in ``workdir``, resuming from its latest readable
  checkpoint if any; returns the final state.

  The config is committed to the workdir (``config.json``) only once the first step has run, so a
  first run that fails leaves a workdir the corrected command can use. SIGINT / SIGTERM save a
  checkpoint of the current step and raise ``TrainingInterrupted``. ``hooks``
  (``train_hooks.Hook``s or callables ``hook(step, state, metrics)``) run at the loop's fixed
  points, in order.
  """
  loop_hooks = [train_hooks.as_hook(h) for h in hooks]  # + Evaluations
  workdir = workdirs.check_workdir(
    workdir, config, create=True, unrelated_sections=methods.unrelated_sections(config.method)
  )
  committed = workdirs.has_config(workdir)
  run = Run(config, mesh)
  cfg = config.training
  step_fn = run.train_step()
  reference = grid_reference(run)
  draws_grids = run.method.sampler_parts is not None

  with (
    workdirs.training_lock(workdir),
    stops.StopRequests() as stop,
    checkpoints.trainer_manager(workdir, cfg.keep_checkpoints) as mngr,
  ):
    state, latest = checkpoints.restore_readable(run, mngr, workdir, set_aside=True)
    if state is None:
      state = run.new_state(fit=True)
    start = int(state.step)
    if start < cfg.num_steps:
      # the workdir writable, with room for a checkpoint (and its temporary copy) of this state
      files.check_writable(workdirs.join(workdir, "metrics.jsonl"), 2 * _state_bytes(state))
    if latest is not None:
      print(f"Resuming from the checkpoint of step {latest} in {workdir}", flush=True)
    if start < cfg.num_steps and parallel.is_writer():
      print(
        metrics_log.header(
          config.method, workdir, run.mesh.devices.flat, start, cfg.num_steps, samples=draws_grids
        ),
        flush=True,
      )
    log = metrics_log.MetricsLog(workdir, start)
    if cfg.eval_every:
      loop_hooks.append(train_hooks.Evaluations(log, cfg.eval_every, workdir))
    for hook in loop_hooks:
      hook.begin(run, state, start)
    pending: list[tuple[int, dict]] = []
    last_good = latest
    tty = sys.stderr.isatty()
    bar = tqdm(total=cfg.num_steps, initial=start, disable=not tty, dynamic_ncols=True)
    clock = (time.perf_counter(), start)

    def diverged(s, what: str) -> TrainingDiverged:
      return TrainingDiverged(
        f"Training diverged: {what} at step {s}. "
        + (
          f"The last good checkpoint (step {last_good}) is kept in {workdir}"
          if last_good is not None
          else "No checkpoint was saved"
        )
        + "; lower the learning rate or the flow step size and train in a new --workdir."
      )

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
        values = "  ".join(
          f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "steps_per_s", "window")
        )
        print(f"step {record['step']}/{cfg.num_steps}  {values}  {rate:.1f} steps/s", flush=True)

    def save(done: int) -> None:
      nonlocal last_good
      flush(done)
      with checkpoints.checkpoint_write(workdir, done, last_good):
        checkpoints.save_state(mngr, done, state)
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
          grid = workdirs.join(workdir, "samples", f"step_{done:07d}.png")
          files.write_file(grid, functools.partial(images.save_samples, x, reference=reference))
          log.write_image("samples", grid, done)
        for hook in loop_hooks:
          hook.after_step(done, state, metrics)
        if stopping:
          with checkpoints.checkpoint_write(workdir, done, last_good):
            mngr.wait_until_finished()
          signum = stop.signal or signal.SIGTERM  # set whenever stop_now says to stop
          raise stops.TrainingInterrupted(
            f"Interrupted ({signal.Signals(signum).name}) at step {done}: its checkpoint "
            f"is saved in {workdirs.join(workdir, 'checkpoints')}. Resume with the same "
            f"command: python -m fdrl_jax.main {shlex.join(sys.argv[1:])}",
            signum,
          )
    finally:
      batches.close()
      bar.close()
      log.close()
    with checkpoints.checkpoint_write(workdir, cfg.num_steps, last_good):
      mngr.wait_until_finished()
    for hook in loop_hooks:
      hook.end(run, state)
  if start >= cfg.num_steps:
    print(
      f"Training is complete: {workdir} holds step {start} of {cfg.num_steps}; raise "
      "--config.training.num_steps to train longer.",
      flush=True,
    )
  else:
    where = f"; samples in {workdirs.join(workdir, 'samples')}" if draws_grids else ""
    print(f"Trained to step {cfg.num_steps}{where}", flush=True)
  return state


def restore_latest(
  config: ml_collections.ConfigDict, workdir: str, *, data_optional=False
) -> tuple[Run, object, int]:
  """The run and the state of the latest readable checkpoint of an existing ``workdir``
  (``data_optional``: see ``Run``; for modes that only sample or translate)."""
  workdir = workdirs.check_workdir(
    workdir, config, create=False, unrelated_sections=methods.unrelated_sections(config.method)
  )
  run = Run(config, data_optional=data_optional)
  with workdirs.checkpoint_manager(
    workdir, config.training.keep_checkpoints, read_only=True
  ) as mngr:
    state, step = checkpoints.restore_readable(run, mngr, workdir, set_aside=False)
    if state is None or step is None:  # both or neither
      raise ValueError(f"--workdir {workdir} has no checkpoint yet; train first.")
    return run, state, step
