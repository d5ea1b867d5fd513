"""Test set-up (before anything imports jax): four fake CPU devices for the data-parallel tests, and
one XLA compilation cache for the whole run.

The cache is shared by the pytest-xdist workers and every command-line subprocess a test starts
(they inherit the environment), so the many runs of the same tiny configs (resumes, interrupts, the
multi-process runs) compile each program once. It lives in a fresh temporary folder that the run
removes at its end; a cache folder already set in the environment is used and kept. The tests'
shared helpers (``helpers.py``) are importable as ``helpers`` whatever pytest's import mode.
"""

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_OWN_CACHE = None
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="fdrl_jax_tests_xla_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
