"""mkdocs hooks: the tutorials run with this checkout, and the lab book is a page of the site.

markdown-exec runs ``bash`` blocks in a subprocess; putting the build's own Python first on
``PATH`` (and the repository root on ``PYTHONPATH``) makes ``python -m fdrl_jax.main`` in them the
package being documented, whichever virtual environment ``mkdocs`` was started from.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def on_startup(command, dirty):  # noqa: ARG001 (mkdocs hook signature)
  """Sets ``PATH`` and ``PYTHONPATH`` once, before the build, and runs from the repository root."""
  os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
  paths = [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  os.chdir(ROOT)


def on_files(files, config):
  """Adds the lab book, ``experiments/README.md``, as the page ``lab-book.md`` with the pictures
  it shows (``experiments/out/*.png`` as ``out/*.png``), so that the site renders it unchanged."""
  from mkdocs.structure.files import File
  experiments = os.path.join(ROOT, "experiments")
  files.append(File.generated(config, "lab-book.md",
                              abs_src_path=os.path.join(experiments, "README.md")))
  out = os.path.join(experiments, "out")
  for name in sorted(os.listdir(out)):
    if name.endswith(".png"):
      files.append(File.generated(config, f"out/{name}", abs_src_path=os.path.join(out, name)))
  return files
