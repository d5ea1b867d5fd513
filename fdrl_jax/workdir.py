"""Workdirs and output files: the config check, the checkpoint manager, and writers that never
replace a user's file.

A workdir holds ``config.json`` (the resolved config), ``checkpoints/`` (Orbax, the whole state),
``metrics.jsonl``, ``samples/step_*.png`` and ``eval_step_*.json``. A run may change only its
``RESUMABLE_CHANGES`` sections on the same workdir.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Callable

import ml_collections
import orbax.checkpoint as ocp

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


def _config_path(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


def check_workdir(workdir: str, config: ml_collections.ConfigDict, *, create: bool) -> str:
  """Refuses a workdir that is a file, unwritable, or written by an incompatible config; with
  ``create``, makes it and writes ``config.json``. Returns the absolute path."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file; give a directory.")
  if create:
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise ValueError(f"Cannot create --workdir {workdir}: {e.strerror}.") from None
    if not os.access(workdir, os.W_OK):
      raise ValueError(f"--workdir {workdir} is not writable; choose another directory.")
  path = _config_path(workdir)
  new = config_dict(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    old.setdefault("method", "fdrl")
    for section, value in new.items():
      if section not in old and section in LATER_SECTIONS:
        old[section] = value
      elif isinstance(value, dict) and isinstance(old.get(section), dict):
        old[section] = {**value, **old[section]}
    ignored = {s for s, method in METHOD_SECTIONS.items() if method != new.get("method")}
    diff = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES
                  and k not in ignored and old.get(k) != new.get(k))
    if diff:
      raise ValueError(
          f"--workdir {workdir} was written by a different config (sections differ: "
          f"{', '.join(diff)}); use a new --workdir, or the config in {path}.")
  elif not create:
    raise ValueError(f"--workdir {workdir} holds no run (no config.json); train there first.")
  if create:
    with open(path, "w") as f:
      json.dump(new, f, indent=2)
  return workdir


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its ``config.json``)."""
  path = _config_path(os.path.abspath(workdir))
  if not os.path.isfile(path):
    raise ValueError(f"{workdir} holds no run (no config.json); train there first.")
  with open(path) as f:
    saved = json.load(f)
  return ml_collections.ConfigDict(saved)


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(workdir, "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def refuse_existing(output: str) -> None:
  """A one-line ValueError if ``output`` exists: outputs never replace a user's file."""
  if os.path.exists(output):
    raise ValueError(f"--output {output} exists; choose a new file (nothing was overwritten).")


def write_new_file(output: str, write: Callable[[str], None]) -> str:
  """Creates ``output`` with ``write(temporary_path)``, never replacing an existing file.

  The content goes to a temporary file in the same folder, which is then hard-linked to
  ``output``: atomic, and it fails (a ValueError) if the name appeared meanwhile. On a file system
  without hard links it falls back to an existence check and a rename.
  """
  refuse_existing(output)
  folder = os.path.dirname(os.path.abspath(output))
  os.makedirs(folder, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=folder, prefix=".new-", suffix=os.path.splitext(output)[1],
                                   delete=False) as f:
    tmp = f.name
  try:
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # a temporary file is private; the output need not be
    try:
      os.link(tmp, output)
    except FileExistsError:
      refuse_existing(output)
    except OSError:  # no hard links here
      refuse_existing(output)
      os.replace(tmp, output)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return output


def free_path(path: str) -> str:
  """``path``, or ``path`` with -2, -3, ... before its extension if it exists."""
  stem, ext = os.path.splitext(path)
  candidate, i = path, 1
  while os.path.exists(candidate):
    i += 1
    candidate = f"{stem}-{i}{ext}"
  return candidate
