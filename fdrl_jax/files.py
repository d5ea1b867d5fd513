"""Output files that are written whole or not at all and never replace a user's file.

``check_writable`` refuses an unwritable or full location before the work; ``write_new_file`` and
``write_new_folder`` create an output (a folder is renamed into place whole) and never overwrite;
``write_file``, ``write_json``, ``write_text`` and ``append_line`` (re)write a run's own files. A
failed write is a one-line ValueError. Temporaries are named ``.new-HOST-PID-…``; those of dead
processes on this host are removed by the next write to their folder.

Paths go through ``etils.epath`` (local or an object store such as ``gs://``); in a multi-process
run only ``parallel.is_writer()`` (process 0) writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable

from etils import epath

from fdrl_jax import parallel


def host_name() -> str:
  """This machine's name (in a workdir's ``lock.json`` and, made file-name safe, in temporaries)."""
  return socket.gethostname()


def is_uri(path: str | os.PathLike) -> bool:
  """Whether ``path`` names an object store (``gs://…``, ``s3://…``) rather than a local path."""
  return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """``path`` as an ``epath.Path``: absolute if local, as given if a URI."""
  return epath.Path(path if is_uri(path) else os.path.abspath(path))


def refuse_existing(output: str) -> None:
  """A one-line ValueError if ``output`` exists: outputs never replace a user's file. A symbolic
  link is refused too, even one to a missing file: writing would create the file it names, and a
  link is never replaced."""
  if not is_uri(output) and os.path.islink(output) and not os.path.exists(output):
    raise ValueError(
      f"--output {output} is a symbolic link to {os.readlink(output)}, which does "
      "not exist; give the link's target or a new file (nothing was written)."
    )
  if as_path(output).exists():
    raise ValueError(f"--output {output} exists; choose a new file (nothing was overwritten).")


def refuse_existing_folder(output: str) -> None:
  """A one-line ValueError if ``output`` exists and is not an empty folder (a folder output is
  new, or fills an empty folder)."""
  if os.path.lexists(output) and (
    os.path.islink(output) or not os.path.isdir(output) or os.listdir(output)
  ):
    raise ValueError(
      f"--output {output} exists and is not an empty folder; give a new folder or "
      "an .npz file (nothing was overwritten)."
    )


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
      raise ValueError(
        f"Cannot write {path}: it needs {needed_bytes / 1e6:.3g} MB but only "
        f"{free / 1e6:.3g} MB are free there; free space or choose another disk."
      )

  parallel.check_on_writer(check)


def write_file(path: str, write: Callable[[str], object]) -> str:
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
  return re.sub(r"[^\w.]", "_", host_name())


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
    raise ValueError(
      f"Cannot write {path}: {e.strerror or e}; choose a writable location (nothing was written)."
    ) from None
  os.close(handle)
  return tmp


def _readable(path: str) -> None:
  """Gives a temporary file or folder (private) the permissions of any new output."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def _via_temporary(
  path: str, write: Callable[[str], object], commit: Callable[[str], None]
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
    raise ValueError(
      f"Cannot write {path}: {e.strerror or e}; nothing was written there (free "
      "space or choose another location)."
    ) from None
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def write_text(path: str, text: str) -> str:
  """``write_file`` of ``text``."""
  return write_file(path, lambda tmp: epath.Path(tmp).write_text(text))


def write_json(path: str, value) -> str:
  """``write_file`` of ``value`` as indented JSON."""
  return write_text(path, json.dumps(value, indent=2))


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


def write_new_file(output: str, write: Callable[[str], object]) -> str:
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


def write_new_folder(output: str, write: Callable[[str], object]) -> str:
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
    raise ValueError(
      f"Cannot write {output}: {e.strerror or e}; nothing was written there (free "
      "space or choose another location)."
    ) from None
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
