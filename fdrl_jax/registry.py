"""Name look-ups in the library's tables (divergences, losses, priors, models, samplers, metrics,
methods, ...), with one error for a name that is not there.

Every table of the library is a plain mapping from a name to its entry; ``lookup`` is the one way
to read one by a user-given name: an unknown name is a one-line ``ValueError`` that says which
setting was wrong, guesses the name meant, and lists the valid ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def unknown_name(name: object, names: Iterable[str], setting: str) -> ValueError:
  """The one-line error for ``name`` not among ``names``; ``setting`` says where it was given
  (``--config.sampling.name``, ``--figure``, ``divergence``)."""
  names = sorted(names)
  guess = difflib.get_close_matches(str(name), names, n=1)
  hint = f" (did you mean {guess[0]!r}?)" if guess else ""
  return ValueError(f"Unknown {setting}={name!r}{hint}; available: {', '.join(names)}.")


def lookup(table: Mapping[str, T], name: str, setting: str) -> T:
  """``table[name]``, or ``unknown_name``'s ValueError."""
  if name not in table:
    raise unknown_name(name, table, setting)
  return table[name]
