"""Workdirs: the config check, ``config.json``, the checkpoint manager, the training lock and
``errors.log`` (the files in it are written by ``fdrl_jax.files``).

A workdir holds ``config.json`` (the resolved config), ``checkpoints/`` (Orbax, the whole state),
``metrics.jsonl``, ``samples/step_*.png`` and ``eval_step_*.json``. A run may change only its
``RESUMABLE_CHANGES`` sections on the same workdir.

Paths go through ``etils.epath`` (as Orbax's and tfds's do), so a workdir may be a local folder or
an object-store URI such as ``gs://bucket/run`` (every host of a multi-host run must see the same
workdir). In a multi-process run only ``parallel.is_writer()`` (process 0) writes files; the
others read them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator

import filelock
import ml_collections
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath

from fdrl_jax import config_checks, files, parallel

# Config sections that may change between runs on the same workdir (everything else must match).
RESUMABLE_CHANGES = ("training", "eval", "refine", "sampling")
# Sections added after runs were written: a config.json without them predates them, and they do
# not affect its method (a config.json without "method" is an FDRL run). Keys added to a section
# later are likewise taken to have their current value.
LATER_SECTIONS = ("method", "gan", "generator", "refine", "classifier", "sampling")


def config_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


def parse_config(text: str, path: str) -> dict:
  """A saved config's JSON ``text`` (a workdir's ``config.json``) as a dict; a one-line ValueError
  naming ``path`` if it is not a JSON object."""
  try:
    saved = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(
      f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
      "repair it (`--mode=config` prints a config as JSON)."
    ) from None
  if not isinstance(saved, dict):
    raise ValueError(
      f"{path} holds a JSON {type(saved).__name__}, not a config (an object of "
      "sections); repair it (`--mode=config` prints a config as JSON)."
    )
  return saved


def join(workdir: str, *parts: str) -> str:
  """A path inside ``workdir`` (local or URI)."""
  return os.fspath(files.as_path(workdir).joinpath(*parts))


def _config_path(workdir: str) -> epath.Path:
  return files.as_path(workdir) / "config.json"


def check_workdir(
  workdir: str,
  config: ml_collections.ConfigDict,
  *,
  create: bool,
  unrelated_sections: tuple[str, ...] = (),
) -> str:
  """Refuses a workdir that is a file, unwritable, or written by an incompatible config; with
  ``create``, makes the folder (training commits ``config.json`` once its first step has run:
  ``write_config``). Returns the absolute path or the URI. The config's numbers are range-checked
  first (``config_checks``), before anything is created. ``unrelated_sections`` (the sections
  only other methods read, ``methods.unrelated_sections``) may differ."""
  config_checks.check_config(config)
  path = files.as_path(workdir)
  workdir = os.fspath(path)
  if path.exists() and not path.is_dir():
    raise ValueError(f"--workdir {workdir} is a file; give a directory.")
  if create:
    try:
      path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise ValueError(f"Cannot create --workdir {workdir}: {e.strerror or e}.") from None
    if not files.is_uri(workdir) and not os.access(workdir, os.W_OK):
      raise ValueError(f"--workdir {workdir} is not writable; choose another directory.")
  path = _config_path(workdir)
  new = config_dict(config)
  if path.exists():
    old = parse_config(path.read_text(), os.fspath(path))
    old.setdefault("method", "fdrl")
    for section, value in new.items():
      if section not in old and section in LATER_SECTIONS:
        old[section] = value
      elif isinstance(value, dict) and isinstance(old.get(section), dict):
        old[section] = {**value, **old[section]}
    diff = config_differences(old, new, skip=(*RESUMABLE_CHANGES, *unrelated_sections))
    if diff:
      raise ValueError(
        f"--workdir {workdir} was written by a different config ({'; '.join(diff)}); use a "
        f"new --workdir, or the config in {path}."
      )
  elif not create:
    raise ValueError(f"--workdir {workdir} holds no run (no config.json); train there first.")
  return workdir


def config_differences(
  old: dict, new: dict, *, skip: tuple[str, ...] = (), limit: int = 6
) -> list[str]:
  """``"key: OLD in the workdir, NEW now"`` for each config key (``section.name``) whose value
  differs between ``old`` (a workdir's config) and ``new``, sections in ``skip`` left out; at most
  ``limit`` of them, then how many more."""

  def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
      if isinstance(value, dict):
        out.update(flat(value, f"{prefix}{key}."))
      else:
        out[f"{prefix}{key}"] = value
    return out

  a, b = (
    flat({k: v for k, v in old.items() if k not in skip}),
    flat({k: v for k, v in new.items() if k not in skip}),
  )
  keys = sorted(k for k in set(a) | set(b) if a.get(k, "(absent)") != b.get(k, "(absent)"))
  lines = [
    f"{k}: {json.dumps(a.get(k, '(absent)'))} in the workdir, "
    f"{json.dumps(b.get(k, '(absent)'))} now"
    for k in keys[:limit]
  ]
  if len(keys) > limit:
    lines.append(f"and {len(keys) - limit} more keys")
  return lines


def has_config(workdir: str) -> bool:
  return _config_path(workdir).exists()


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Commits ``config`` to the workdir (``config.json``, the resolved config); process 0 only."""
  files.write_json(os.fspath(_config_path(workdir)), config_dict(config))


def set_aside_checkpoint(workdir: str, step: int) -> str | None:
  """Moves the unreadable checkpoint of ``step`` to ``WORKDIR/unreadable_checkpoints/<step>``
  (a new name if that exists), out of Orbax's way but kept. Returns where, or None where it was
  not moved (another process moves it; an object store, where it stays)."""
  if not parallel.is_writer() or files.is_uri(workdir):
    return None
  source = os.path.join(workdir, "checkpoints", str(step))
  if not os.path.exists(source):
    return None
  target = files.free_path(os.path.join(workdir, "unreadable_checkpoints", str(step)))
  os.makedirs(os.path.dirname(target), exist_ok=True)
  os.replace(source, target)
  return target


def set_aside_steps(workdir: str) -> list[str]:
  """The names in ``WORKDIR/unreadable_checkpoints/`` (checkpoints set aside earlier)."""
  folder = files.as_path(workdir) / "unreadable_checkpoints"
  return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


ERROR_LOG = "errors.log"


def log_error(workdir: str, error: BaseException) -> str:
  """Appends ``error``'s full trace to ``WORKDIR/errors.log`` (the terminal gets one line);
  returns ``"; details in PATH"``, or ``""`` where the log cannot be written (a full disk)."""
  import traceback

  path = join(workdir, ERROR_LOG)
  stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  try:
    files.append_line(
      path, f"--- {stamp} pid {os.getpid()}\n" + "".join(traceback.format_exception(error)).rstrip()
    )
  except OSError:
    return ""
  return f"; details in {path}"


# errors.log of the local workdir whose checkpoints this process last read or wrote, and whether
# an Orbax read or write failed: TensorStore's callbacks of a failure still report ("Event loop is
# closed") at any moment until the process ends.
_ORBAX_LOG: list[str] = []
_ORBAX_FAILED: list[bool] = []


def _late_report_hook(unraisable) -> None:
  """``sys.unraisablehook`` while the process uses Orbax: after a failed read or write, TensorStore's
  callbacks that still complete find Orbax's event loop closed and report it as an unraisable
  exception, from any thread. Those reports go to ``errors.log`` whenever they come (no race with
  the capture of ``stderr_to_log``); every other one is printed as Python would."""
  if _ORBAX_LOG and "Event loop is closed" in str(unraisable.exc_value):
    import traceback

    text = "".join(
      traceback.format_exception(
        unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback
      )
    )
    with contextlib.suppress(OSError):
      files.append_line(_ORBAX_LOG[-1], text.rstrip())
    return
  sys.__unraisablehook__(unraisable)


def _watch_orbax(workdir: str) -> None:
  _ORBAX_LOG[:] = [join(workdir, ERROR_LOG)]
  sys.unraisablehook = _late_report_hook


def note_orbax_failure(workdir: str) -> None:
  """Records that an Orbax read or write failed in ``workdir`` (``quiet_late_reports``) and gives
  TensorStore's callbacks of the failure a second to report while the standard error is still
  captured (``stderr_to_log``); later ones reach ``_late_report_hook``."""
  _watch_orbax(workdir)
  _ORBAX_FAILED[:] = [True]
  time.sleep(1.0)


def quiet_late_reports() -> None:
  """Sends what the process still writes to its standard error once the user's output is done
  (TensorStore's late callbacks of a failed read, at exit) to ``errors.log``, not the terminal;
  nothing to do where no Orbax failure happened."""
  if _ORBAX_FAILED:
    sys.stderr.flush()
    os.dup2(os.open(_ORBAX_LOG[-1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), 2)


@contextlib.contextmanager
def stderr_to_log(workdir: str) -> Iterator[None]:
  """Keeps the standard error (file descriptor 2: Python, absl logging and TensorStore's C++ alike)
  off the terminal for the duration, and appends it to ``WORKDIR/errors.log`` if the block fails:
  Orbax's failures come with dozens of tracebacks from its worker threads, which the caller
  replaces by one line. Local workdirs, main thread only; elsewhere a no-op."""
  import gc
  import threading

  if files.is_uri(workdir) or threading.current_thread() is not threading.main_thread():
    yield
    return
  _watch_orbax(workdir)
  sys.stderr.flush()
  saved = os.dup(2)
  failed = True
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
      failed = False
    finally:
      if failed:
        note_orbax_failure(workdir)
      gc.collect()  # futures that failed unobserved report themselves when collected
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      text = capture.read().decode(errors="replace").rstrip()
      if failed and text:  # what a success printed is Orbax's routine warnings
        with contextlib.suppress(OSError):
          files.append_line(join(workdir, ERROR_LOG), text)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its ``config.json``)."""
  path = _config_path(workdir)
  if not path.is_file():
    raise ValueError(f"{workdir} holds no run (no config.json); train there first.")
  return ml_collections.ConfigDict(parse_config(path.read_text(), os.fspath(path)))


def checkpoint_manager(
  workdir: str, keep: int, *, read_only: bool = False
) -> ocp.CheckpointManager:
  """The Orbax manager of ``WORKDIR/checkpoints``. The trainer (who holds the workdir's lock)
  saves, keeps the last ``keep`` and clears the temporary folders of a killed or failed save; a
  reader
  (``read_only``: sampling, evaluation, figures, possibly beside a trainer) sees only finalised
  checkpoints and never deletes or creates anything."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns that read-only is read-only
    try:
      return ocp.CheckpointManager(files.as_path(workdir) / "checkpoints", options=options)
    finally:
      absl_logging.set_verbosity(verbosity)
  else:
    # Synchronous saves: a failed write (a full disk) is caught at its step, in one line, instead
    # of surfacing steps later from Orbax's background threads. A save of the paper's ResNet state
    # (parameters, EMA, Adam moments) is tens of MB, small beside the steps between saves.
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, cleanup_tmp_directories=True, enable_async_checkpointing=False
    )
  return ocp.CheckpointManager(files.as_path(workdir) / "checkpoints", options=options)


LOCK_FILE, HOLDER_FILE = ".lock", "lock.json"


def _holder(workdir: str) -> dict | None:
  try:
    return json.loads(open(os.path.join(workdir, HOLDER_FILE)).read())
  except (OSError, ValueError):
    return None


def _describe(holder: dict | None) -> str:
  if not holder:
    return "another process"
  return (
    f"process {holder.get('pid')} on {holder.get('host')} (started "
    f"{holder.get('started')}: {holder.get('command')})"
  )


@contextlib.contextmanager
def training_lock(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock while training: one writer per workdir. A second trainer gets a
  one-line ValueError naming the holder (host, pid, start time, command). The lock is an OS file
  lock (``filelock``: ``flock``, which NFS carries across hosts; a marker file where the file
  system has no locks), so a killed holder's lock is free again; its ``lock.json`` left behind is
  reported and taken over. Process 0 holds it for a multi-process run. An object store has no
  locks: there the user keeps to one trainer."""
  if files.is_uri(workdir):
    if parallel.is_writer():
      print(
        f"warning: {workdir} is on an object store, where no lock keeps a second trainer "
        "out; run one trainer per workdir.",
        file=sys.stderr,
        flush=True,
      )
    yield
    return
  lock = filelock.FileLock(os.path.join(workdir, LOCK_FILE), timeout=0)

  def acquire() -> None:
    try:
      lock.acquire()
    except filelock.Timeout:
      raise ValueError(
        f"--workdir {workdir} is being trained by {_describe(_holder(workdir))}; two trainers "
        "would overwrite each other's checkpoints. Wait for it or stop it, or train in another "
        "--workdir (sample / eval / figure may run beside it)."
      ) from None

  parallel.check_on_writer(acquire)
  if not parallel.is_writer():
    yield
    return
  try:
    stale = _holder(workdir)
    if stale:
      print(
        f"warning: took over the lock of {workdir} from {_describe(stale)}, which ended "
        "without releasing it.",
        file=sys.stderr,
        flush=True,
      )
    files.write_json(
      os.path.join(workdir, HOLDER_FILE),
      {
        "host": files.host_name(),
        "pid": os.getpid(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m fdrl_jax.main " + " ".join(sys.argv[1:]),
      },
    )
    yield
  finally:
    with contextlib.suppress(OSError):
      os.unlink(os.path.join(workdir, HOLDER_FILE))
    lock.release()
