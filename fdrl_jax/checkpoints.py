"""A run's checkpoints: writing them (a failed write is one line), and reading the newest one that
can be read (a checkpoint of another config refused, unreadable ones set aside only when an older
one reads).

Below the training loop (``run_lib``), which passes its ``Run`` in; the checkpoint manager and the
workdir's ``errors.log`` are ``fdrl_jax.workdir``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from fdrl_jax import priors, readers, workdir as workdirs


def _reason(error: Exception) -> str:
  """A short reason for a failed checkpoint read or write: the operating system's words where
  TensorStore quotes them ("File too large"), else the first line of the message, cut."""
  text = readers.first_line(error)
  found = re.search(r":\s*([^:\[\]]+?)\s*\[os_error_code", text)
  return found.group(1) if found else text[:160]


@contextlib.contextmanager
def trainer_manager(workdir: str, keep: int):
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
      workdirs.note_orbax_failure(workdir)
  if error is not None:
    kept = (
      f"the checkpoint of step {last_good} is intact"
      if last_good is not None
      else "no checkpoint was saved before"
    )
    raise CheckpointWriteError(
      f"Could not write the checkpoint of step {step} in {workdirs.join(workdir, 'checkpoints')}"
      f" ({_reason(error)}); {kept}. Free space (or fix the folder) and resume with the same "
      f"command{where}."
    )


def save_state(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves ``state`` as the checkpoint of ``step`` (the one layout ``restore_state`` reads)."""
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))


# State fields added after checkpoints were written without them; a checkpoint that lacks one is
# still read when the run's value of it is empty (``GANState.disc_stats``: a discriminator without
# batch norm).
LATER_EMPTY_FIELDS = ("disc_stats",)


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract):
  """The state saved at ``step`` (by ``save_state``) into the shapes of ``abstract``."""
  restore = lambda template: (
    mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template))).state
  )
  try:
    return restore(abstract)
  except ValueError as e:
    later = [
      name
      for name in LATER_EMPTY_FIELDS
      if hasattr(abstract, name) and not jax.tree.leaves(getattr(abstract, name))
    ]
    if "tree structures do not match" not in str(e) or not later:
      raise
  # Written before those (empty) fields were added to the state: restore the rest.
  fields = {
    f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract) if f.name not in later
  }
  return abstract.replace(**restore(fields))


def save_checkpoint(workdir: str, config: ml_collections.ConfigDict, state) -> None:
  """Writes ``state`` as the checkpoint of its own step into ``workdir`` and waits for it (a
  state made outside the training loop: ``fdrl_jax.import_reference``)."""
  with workdirs.checkpoint_manager(workdir, config.training.keep_checkpoints) as mngr:
    save_state(mngr, int(state.step), state)
    mngr.wait_until_finished()


def restore_readable(
  run, mngr: ocp.CheckpointManager, workdir: str, *, set_aside: bool
) -> tuple[Any, int | None]:
  """The state and step of the newest checkpoint of ``run`` (a ``run_lib.Run``) that can be read,
  or (None, None) for a workdir that never had one.

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
      raise ValueError(
        f"The checkpoint of step {step} in {workdirs.join(workdir, 'checkpoints')} "
        f"{priors.NO_SOURCE}."
      )
    if mismatch:
      raise ValueError(
        f"The checkpoint of step {step} in {workdirs.join(workdir, 'checkpoints')} was trained "
        f"with another config ({describe_mismatch(run.config, workdir, mismatch)}); nothing was "
        "moved. Use that run's config (its config.json) or a new --workdir."
      )
    try:
      with workdirs.stderr_to_log(workdir):
        state = run.restore(mngr, step, abstract)
    except Exception as e:  # noqa: BLE001 — whatever Orbax / TensorStore raise for a bad file
      workdirs.log_error(workdir, e)
      unreadable.append((step, _reason(e)))
      continue
    for bad, reason in unreadable:
      moved = workdirs.set_aside_checkpoint(workdir, bad) if set_aside else None
      print(
        f"warning: the checkpoint of step {bad} in {workdir} cannot be read ({reason}); "
        + (f"moved to {moved}; " if moved else "")
        + f"using step {step}.",
        file=sys.stderr,
        flush=True,
      )
    if unreadable and set_aside:
      mngr.reload()
    return state, step
  folder = workdirs.join(workdir, "checkpoints")
  if steps:
    raise ValueError(
      f"No checkpoint in {folder} can be read (steps {', '.join(map(str, steps))}: "
      f"{unreadable[0][1]}); nothing was moved. Train in a new --workdir, or move them away to "
      "start this one again."
    )
  aside = workdirs.set_aside_steps(workdir)
  if aside:
    raise ValueError(
      f"--workdir {workdir} has no readable checkpoint, only set-aside ones in "
      f"{workdirs.join(workdir, 'unreadable_checkpoints')} (steps {', '.join(aside)}); it will "
      "not start again from step 0. Train in a new --workdir."
    )
  return None, None


def restore_step(run, mngr: ocp.CheckpointManager, workdir: str, step: int):
  """The state of the checkpoint of ``step`` (a series of ``--mode=eval``); a step the workdir
  does not hold, one of another config, or an unreadable one is a one-line ValueError."""
  folder = workdirs.join(workdir, "checkpoints")
  steps = sorted(mngr.all_steps())
  if step not in steps:
    raise ValueError(
      f"{folder} holds no checkpoint of step {step}; steps there: "
      f"{', '.join(map(str, steps)) or 'none'}."
    )
  abstract = run.abstract_state()
  mismatch = checkpoint_mismatch(abstract, mngr, workdir, step)
  if mismatch:
    raise ValueError(
      f"The checkpoint of step {step} in {folder} was trained with another config "
      f"({describe_mismatch(run.config, workdir, mismatch)})."
    )
  try:
    with workdirs.stderr_to_log(workdir):
      return run.restore(mngr, step, abstract)
  except Exception as e:  # noqa: BLE001 — whatever Orbax / TensorStore raise for a bad file
    where = workdirs.log_error(workdir, e)
    raise ValueError(
      f"The checkpoint of step {step} in {folder} cannot be read ({_reason(e)}){where}."
    ) from None


def checkpoint_steps(config: ml_collections.ConfigDict, workdir: str) -> list[int]:
  """The steps of the checkpoints in ``workdir``, oldest first."""
  with workdirs.checkpoint_manager(
    workdir, config.training.keep_checkpoints, read_only=True
  ) as mngr:
    return sorted(mngr.all_steps())


def restore_steps(run, workdir: str, steps: Sequence[int]) -> Iterator[tuple[int, object]]:
  """The state of each checkpoint of ``steps`` in ``workdir``, restored in turn into ``run``'s
  (a ``run_lib.Run``) shapes (``restore_step``: a missing step is a one-line error)."""
  with workdirs.checkpoint_manager(
    workdir, run.config.training.keep_checkpoints, read_only=True
  ) as mngr:
    for step in steps:
      yield step, restore_step(run, mngr, workdir, step)


def _leaf_name(path) -> str:
  return ".".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def checkpoint_mismatch(
  abstract, mngr: ocp.CheckpointManager, workdir: str, step: int
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
  saved = {
    _leaf_name(p): tuple(m.shape)
    for p, m in jax.tree_util.tree_flatten_with_path(saved_tree)[0]
    if hasattr(m, "shape")
  }
  expected = {
    _leaf_name(p): tuple(a.shape) for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]
  }
  if not saved:
    return []
  return [
    f"{name}: saved {saved.get(name, 'absent')}, expected {expected.get(name, 'absent')}"
    for name in sorted(set(saved) | set(expected))
    if saved.get(name) != expected.get(name)
  ]


def describe_mismatch(config: ml_collections.ConfigDict, workdir: str, arrays: list[str]) -> str:
  """The config keys that differ from the workdir's ``config.json`` with both values, or, where
  none does (the data changed shape), the first differing arrays."""
  try:
    differences = workdirs.config_differences(
      workdirs.config_dict(workdirs.read_config(workdir)), workdirs.config_dict(config)
    )
  except ValueError:
    differences = []
  if differences:
    return "; ".join(differences)
  more = f"; and {len(arrays) - 3} more arrays" if len(arrays) > 3 else ""
  return "; ".join(arrays[:3]) + more
