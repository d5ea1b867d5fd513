"""Workdirs and output files: the config check, the checkpoint manager, and writers that never
replace a user's file.

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
import re
import shutil
import socket
import sys
import tempfile
import time
from typing import Callable, Iterator

import filelock
import ml_collections
from absl import logging as absl_logging
import orbax.checkpoint as ocp
from etils import epath

from configs import from_json
from fdrl_jax import config_checks, parallel

# Config sections that may change between runs on the same workdir (everything else must match).
RESUMABLE_CHANGES = ("training", "eval", "refine", "sampling")
# Sections added after runs were written: a config.json without them predates them, and they do
# not affect its method (a config.json without "method" is an FDRL run). Keys added to a section
# later are likewise taken to have their current value.
LATER_SECTIONS = ("method", "gan", "generator", "refine", "classifier", "sampling")
# Sections only one method reads: a run of another method is not tied to them.
METHOD_SECTIONS = {"gan": "gan", "generator": "gan", "classifier": "classifier"}


def config_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


def is_uri(path: str | os.PathLike) -> bool:
  """Whether ``path`` names an object store (``gs://…``, ``s3://…``) rather than a local path."""
  return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """``path`` as an ``epath.Path``: absolute if local, as given if a URI."""
  return epath.Path(path if is_uri(path) else os.path.abspath(path))


def join(workdir: str, *parts: str) -> str:
  """A path inside ``workdir`` (local or URI)."""
  return os.fspath(as_path(workdir).joinpath(*parts))


def _config_path(workdir: str) -> epath.Path:
  return as_path(workdir) / "config.json"


def check_workdir(workdir: str, config: ml_collections.ConfigDict, *, create: bool) -> str:
  """Refuses a workdir that is a file, unwritable, or written by an incompatible config; with
  ``create``, makes the folder (training commits ``config.json`` once its first step has run:
  ``write_config``). Returns the absolute path or the URI. The config's numbers are range-checked
  first (``config_checks``), before anything is created."""
  config_checks.check_config(config)
  path = as_path(workdir)
  workdir = os.fspath(path)
  if path.exists() and not path.is_dir():
    raise ValueError(f"--workdir {workdir} is a file; give a directory.")
  if create:
    try:
      path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise ValueError(f"Cannot create --workdir {workdir}: {e.strerror or e}.") from None
    if not is_uri(workdir) and not os.access(workdir, os.W_OK):
      raise ValueError(f"--workdir {workdir} is not writable; choose another directory.")
  path = _config_path(workdir)
  new = config_dict(config)
  if path.exists():
    old = from_json.parse(path.read_text(), os.fspath(path))
    old.setdefault("method", "fdrl")
    for section, value in new.items():
      if section not in old and section in LATER_SECTIONS:
        old[section] = value
      elif isinstance(value, dict) and isinstance(old.get(section), dict):
        old[section] = {**value, **old[section]}
    ignored = {s for s, method in METHOD_SECTIONS.items() if method != new.get("method")}
    diff = config_differences(old, new, skip=(*RESUMABLE_CHANGES, *ignored))
    if diff:
      raise ValueError(
          f"--workdir {workdir} was written by a different config ({'; '.join(diff)}); use a "
          f"new --workdir, or the config in {path}.")
  elif not create:
    raise ValueError(f"--workdir {workdir} holds no run (no config.json); train there first.")
  return workdir


def config_differences(old: dict, new: dict, *, skip: tuple[str, ...] = (), limit: int = 6
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

  a, b = flat({k: v for k, v in old.items() if k not in skip}), flat(
      {k: v for k, v in new.items() if k not in skip})
  keys = sorted(k for k in set(a) | set(b) if a.get(k, "(absent)") != b.get(k, "(absent)"))
  lines = [f"{k}: {json.dumps(a.get(k, '(absent)'))} in the workdir, "
           f"{json.dumps(b.get(k, '(absent)'))} now" for k in keys[:limit]]
  if len(keys) > limit:
    lines.append(f"and {len(keys) - limit} more keys")
  return lines


def has_config(workdir: str) -> bool:
  return _config_path(workdir).exists()


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Commits ``config`` to the workdir (``config.json``, the resolved config); process 0 only."""
  write_json(os.fspath(_config_path(workdir)), config_dict(config))


def set_aside_checkpoint(workdir: str, step: int) -> str | None:
  """Moves the unreadable checkpoint of ``step`` to ``WORKDIR/unreadable_checkpoints/<step>``
  (a new name if that exists), out of Orbax's way but kept. Returns where, or None where it was
  not moved (another process moves it; an object store, where it stays)."""
  if not parallel.is_writer() or is_uri(workdir):
    return None
  source = os.path.join(workdir, "checkpoints", str(step))
  if not os.path.exists(source):
    return None
  target = free_path(os.path.join(workdir, "unreadable_checkpoints", str(step)))
  os.makedirs(os.path.dirname(target), exist_ok=True)
  os.replace(source, target)
  return target


def set_aside_steps(workdir: str) -> list[str]:
  """The names in ``WORKDIR/unreadable_checkpoints/`` (checkpoints set aside earlier)."""
  folder = as_path(workdir) / "unreadable_checkpoints"
  return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


ERROR_LOG = "errors.log"


def log_error(workdir: str, error: BaseException) -> str:
  """Appends ``error``'s full trace to ``WORKDIR/errors.log`` (the terminal gets one line);
  returns ``"; details in PATH"``, or ``""`` where the log cannot be written (a full disk)."""
  import traceback
  path = join(workdir, ERROR_LOG)
  stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  try:
    append_line(path, f"--- {stamp} pid {os.getpid()}\n" + "".join(
        traceback.format_exception(error)).rstrip())
  except OSError:
    return ""
  return f"; details in {path}"


def await_failed_callbacks() -> None:
  """Waits for TensorStore's callbacks of a failed read or write, so that they report while the
  standard error is still captured (``stderr_to_log``), not later on the terminal."""
  time.sleep(1.0)


@contextlib.contextmanager
def stderr_to_log(workdir: str) -> Iterator[None]:
  """Keeps the standard error (file descriptor 2: Python, absl logging and TensorStore's C++ alike)
  off the terminal for the duration, and appends it to ``WORKDIR/errors.log`` if the block fails:
  Orbax's failures come with dozens of tracebacks from its worker threads, which the caller
  replaces by one line. Local workdirs, main thread only; elsewhere a no-op."""
  import gc
  import threading
  if is_uri(workdir) or threading.current_thread() is not threading.main_thread():
    yield
    return
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
        await_failed_callbacks()
      gc.collect()  # futures that failed unobserved report themselves when collected
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      text = capture.read().decode(errors="replace").rstrip()
      if failed and text:  # what a success printed is Orbax's routine warnings
        with contextlib.suppress(OSError):
          append_line(join(workdir, ERROR_LOG), text)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its ``config.json``)."""
  path = _config_path(workdir)
  if not path.is_file():
    raise ValueError(f"{workdir} holds no run (no config.json); train there first.")
  return ml_collections.ConfigDict(from_json.parse(path.read_text(), os.fspath(path)))


def checkpoint_manager(workdir: str, keep: int, *, read_only: bool = False
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
      return ocp.CheckpointManager(as_path(workdir) / "checkpoints", options=options)
    finally:
      absl_logging.set_verbosity(verbosity)
  else:
    # Synchronous saves: a failed write (a full disk) is caught at its step, in one line, instead
    # of surfacing steps later from Orbax's background threads. A save of the paper's ResNet state
    # (parameters, EMA, Adam moments) is tens of MB, small beside the steps between saves.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=False)
  return ocp.CheckpointManager(as_path(workdir) / "checkpoints", options=options)


LOCK_FILE, HOLDER_FILE = ".lock", "lock.json"


def _holder(workdir: str) -> dict | None:
  try:
    return json.loads(open(os.path.join(workdir, HOLDER_FILE)).read())
  except (OSError, ValueError):
    return None


def _describe(holder: dict | None) -> str:
  if not holder:
    return "another process"
  return (f"process {holder.get('pid')} on {holder.get('host')} (started "
          f"{holder.get('started')}: {holder.get('command')})")


@contextlib.contextmanager
def training_lock(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock while training: one writer per workdir. A second trainer gets a
  one-line ValueError naming the holder (host, pid, start time, command). The lock is an OS file
  lock (``filelock``: ``flock``, which NFS carries across hosts; a marker file where the file
  system has no locks), so a killed holder's lock is free again; its ``lock.json`` left behind is
  reported and taken over. Process 0 holds it for a multi-process run. An object store has no
  locks: there the user keeps to one trainer."""
  if is_uri(workdir):
    if parallel.is_writer():
      print(f"warning: {workdir} is on an object store, where no lock keeps a second trainer "
            "out; run one trainer per workdir.", file=sys.stderr, flush=True)
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
          "--workdir (sample / eval / figure may run beside it).") from None

  parallel.check_on_writer(acquire)
  if not parallel.is_writer():
    yield
    return
  try:
    stale = _holder(workdir)
    if stale:
      print(f"warning: took over the lock of {workdir} from {_describe(stale)}, which ended "
            "without releasing it.", file=sys.stderr, flush=True)
    write_json(os.path.join(workdir, HOLDER_FILE), {
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m fdrl_jax.main " + " ".join(sys.argv[1:])})
    yield
  finally:
    with contextlib.suppress(OSError):
      os.unlink(os.path.join(workdir, HOLDER_FILE))
    lock.release()


def refuse_existing(output: str) -> None:
  """A one-line ValueError if ``output`` exists: outputs never replace a user's file. A symbolic
  link is refused too, even one to a missing file: writing would create the file it names, and a
  link is never replaced."""
  if not is_uri(output) and os.path.islink(output) and not os.path.exists(output):
    raise ValueError(f"--output {output} is a symbolic link to {os.readlink(output)}, which does "
                     "not exist; give the link's target or a new file (nothing was written).")
  if as_path(output).exists():
    raise ValueError(f"--output {output} exists; choose a new file (nothing was overwritten).")


def refuse_existing_folder(output: str) -> None:
  """A one-line ValueError if ``output`` exists and is not an empty folder (a folder output is
  new, or fills an empty folder)."""
  if os.path.lexists(output) and (os.path.islink(output) or not os.path.isdir(output)
                                  or os.listdir(output)):
    raise ValueError(f"--output {output} exists and is not an empty folder; give a new folder or "
                     "an .npz file (nothing was overwritten).")


def check_writable(path: str, needed_bytes: int = 0) -> None:
  """A one-line ValueError unless a file can be created where ``path`` will be (its folder is
  made if missing) with ``needed_bytes`` free there: an unwritable or full location is refused
  before the long work, not after it. The check creates and removes an empty temporary file (and
  removes the temporaries of killed runs there); local paths only. The writing process checks, and
  in a multi-process run every process raises with it (``parallel.check_on_writer``)."""
  def check() -> None:
    if is_uri(path):
      return
    os.unlink(_new_temporary(path))
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    if free < needed_bytes:
      raise ValueError(f"Cannot write {path}: it needs {needed_bytes / 1e6:.3g} MB but only "
                       f"{free / 1e6:.3g} MB are free there; free space or choose another disk.")

  parallel.check_on_writer(check)


def write_file(path: str, write: Callable[[str], None]) -> str:
  """(Re)writes ``path`` — a run's own file (config, sample grid, statistics cache) — with
  ``write(local_temporary_path)``, whole or not at all; only on the writing process."""
  if not parallel.is_writer():
    return path
  if is_uri(path):
    with tempfile.TemporaryDirectory() as folder:
      tmp = os.path.join(folder, os.path.basename(path))
      write(tmp)
      as_path(path).parent.mkdir(parents=True, exist_ok=True)
      as_path(path).write_bytes(epath.Path(tmp).read_bytes())  # an object store writes whole
    return path
  _via_temporary(path, write, lambda tmp: os.replace(tmp, path))
  return path


# Temporary files and folders are named ".new-HOST-PID-…": those of a process that is no longer
# alive on this host are a killed run's, removed by the next write to their folder.
_TEMPORARY = re.compile(r"\.new-([\w.]+)-(\d+)-")


def _host() -> str:
  return re.sub(r"[^\w.]", "_", socket.gethostname())


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    pass
  return True


def _remove_stale_temporaries(folder: str) -> None:
  """Removes the temporaries in ``folder`` left by killed runs of this host (their process is
  gone); a live writer's, and other hosts', are left alone."""
  host = _host()
  for name in os.listdir(folder):
    match = _TEMPORARY.match(name)
    if match and match.group(1) == host and not _alive(int(match.group(2))):
      path = os.path.join(folder, name)
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        with contextlib.suppress(FileNotFoundError):  # another run removed it first
          os.unlink(path)


def _new_temporary(path: str, *, directory: bool = False) -> str:
  """A new, empty temporary file (or folder) beside ``path`` (its folder made if missing), named
  for this process; the stale temporaries of killed runs there are removed first. A one-line
  ValueError if it cannot be created (a read-only or full disk, a file in the way)."""
  folder = os.path.dirname(os.path.abspath(path))
  prefix = f".new-{_host()}-{os.getpid()}-"
  try:
    if os.path.exists(folder) and not os.path.isdir(folder):
      raise NotADirectoryError(0, f"{folder} is a file, not a folder")
    os.makedirs(folder, exist_ok=True)
    _remove_stale_temporaries(folder)
    if directory:
      return tempfile.mkdtemp(dir=folder, prefix=prefix)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=os.path.splitext(path)[1])
  except OSError as e:
    raise ValueError(f"Cannot write {path}: {e.strerror or e}; choose a writable location "
                     "(nothing was written).") from None
  os.close(handle)
  return tmp


def _readable(path: str) -> None:
  """Gives a temporary file or folder (private) the permissions of any new output."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def _via_temporary(path: str, write: Callable[[str], None], commit: Callable[[str], None]
                   ) -> None:
  """``write`` a temporary file beside ``path`` (readable like any output), then ``commit`` it
  under its name; the temporary file never outlives the call. A failed write (a full disk, a
  read-only folder) is a one-line ValueError naming ``path``."""
  tmp = _new_temporary(path)
  try:
    write(tmp)
    _readable(tmp)
    commit(tmp)
  except OSError as e:
    raise ValueError(f"Cannot write {path}: {e.strerror or e}; nothing was written there (free "
                     "space or choose another location).") from None
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def write_text(path: str, text: str) -> str:
  """``write_file`` of ``text``."""
  return write_file(path, lambda tmp: epath.Path(tmp).write_text(text))


def write_json(path: str, value) -> str:
  """``write_file`` of ``value`` as indented JSON."""
  return write_text(path, json.dumps(value, indent=2))


def experiment_report(out: str, name: str, text: str) -> str:
  """An experiment's regenerated outputs in the folder ``out``: writes (and prints) ``text`` as
  ``name.md``, removes the previous ``name.png`` so that the picture can be written anew, and
  returns that picture's path."""
  os.makedirs(out, exist_ok=True)
  write_text(os.path.join(out, f"{name}.md"), text)
  print(text)
  path = os.path.join(out, f"{name}.png")
  if os.path.exists(path):
    os.remove(path)  # the experiment's own output, regenerated
  return path


def append_line(path: str, line: str) -> None:
  """Appends one line to a run's log (``metrics.jsonl``); only on the writing process. An object
  store has no append: the file is rewritten whole."""
  if not parallel.is_writer():
    return
  if is_uri(path):
    p = as_path(path)
    p.write_text((p.read_text() if p.exists() else "") + line + "\n")
  else:
    try:
      with open(path, "a") as f:
        f.write(line + "\n")
    except OSError as e:  # the flush at close fails without naming the file
      raise OSError(e.errno, e.strerror, path) from None


def write_new_file(output: str, write: Callable[[str], None]) -> str:
  """Creates ``output`` with ``write(temporary_path)``, never replacing an existing file; only on
  the writing process of a multi-process run (the others return at once).

  The content goes to a temporary file in the same folder, which is then hard-linked to
  ``output``: atomic, and it fails (a ValueError) if the name appeared meanwhile. On a file system
  without hard links it falls back to an existence check and a rename; on an object store, to an
  existence check and a whole write.
  """
  if not parallel.is_writer():
    return output
  refuse_existing(output)
  if is_uri(output):
    return write_file(output, write)

  def link(tmp: str) -> None:
    try:
      os.link(tmp, output)
    except FileExistsError:
      refuse_existing(output)
      raise
    except OSError:  # no hard links here
      refuse_existing(output)
      os.replace(tmp, output)

  _via_temporary(output, write, link)
  return output


def write_new_folder(output: str, write: Callable[[str], None]) -> str:
  """Creates the folder ``output`` (or fills an empty one) with ``write(temporary_folder)``: the
  files go to a temporary folder beside it, renamed to ``output`` once all are written, so a
  killed run leaves no half-filled ``output`` (its temporary folder is removed by the next run).
  Only on the writing process; local paths only."""
  if not parallel.is_writer():
    return output
  refuse_existing_folder(output)
  tmp = _new_temporary(output, directory=True)
  try:
    write(tmp)
    _readable(tmp)
    os.rename(tmp, output)  # replaces an empty folder; fails if files appeared there meanwhile
  except OSError as e:
    raise ValueError(f"Cannot write {output}: {e.strerror or e}; nothing was written there (free "
                     "space or choose another location).") from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return output


def free_path(path: str) -> str:
  """``path``, or ``path`` with -2, -3, ... before its extension if it exists."""
  stem, ext = os.path.splitext(path)
  candidate, i = path, 1
  while as_path(candidate).exists():
    i += 1
    candidate = f"{stem}-{i}{ext}"
  return candidate
