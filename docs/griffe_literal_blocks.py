"""Griffe extension: reStructuredText literal blocks (``Usage::`` + an indented block) in the
library's docstrings become fenced code blocks, so the API pages show commands as code."""

import re

import griffe

_LITERAL = re.compile(r"::\n\n((?:[ \t]+\S.*\n|[ \t]*\n)+)")


def _fence(match: re.Match) -> str:
  block = match.group(1).rstrip("\n").split("\n")
  indent = min(len(line) - len(line.lstrip()) for line in block if line.strip())
  code = "\n".join(line[indent:] for line in block)
  return f":\n\n```\n{code}\n```\n\n"


class LiteralBlocks(griffe.Extension):
  """Rewrites every object's docstring once it is loaded."""

  def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: ARG002
    if obj.docstring is not None and "::\n" in obj.docstring.value:
      obj.docstring.value = _LITERAL.sub(_fence, obj.docstring.value + "\n").rstrip("\n")
