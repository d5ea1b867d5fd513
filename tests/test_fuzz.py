"""Hypothesis fuzzing: random config values and random bad image files either work or fail with
one line (a ValueError, which the command line prints as ``error: ...`` with exit 2), never with a
traceback from deep inside, and never change a file that was there."""

import hashlib
import io
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from configs import toy2d
from fdrl_jax import config_checks, readers, run_lib
from helpers import cli

FUZZ = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _tiny_toy():
  config = toy2d.get_config("8gaussians")
  config.training.num_steps = config.training.checkpoint_every = 2
  config.training.sample_every, config.training.log_every = 2, 1
  config.training.num_grid_samples, config.data.batch_size = 8, 16
  config.flow.num_steps = 3
  return config


def _numeric_keys(config):
  keys = []
  for key in config_checks.RULES:
    section, _, name = key.rpartition(".")
    group = config.get(section) if section else config
    if group is not None and name in group and isinstance(group[name], (int, float)) \
        and not isinstance(group[name], bool):
      keys.append(key)
  return keys


KEYS = _numeric_keys(_tiny_toy())
NUMBERS = st.one_of(st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.sampled_from([0, -1, 1e30, -1e-30, math.nan, math.inf]))


def _snapshot(folder) -> dict:
  return {os.path.relpath(os.path.join(d, f), folder):
          hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
          for d, _, files in os.walk(folder) for f in files}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished toy run: a fuzzed config must not change any of its files."""
  workdir = str(tmp_path_factory.mktemp("fuzz") / "run")
  run_lib.train_and_evaluate(_tiny_toy(), workdir)
  return workdir


@settings(FUZZ, max_examples=8)  # each one that trains compiles a step (~2 s)
@given(key=st.sampled_from(KEYS), value=NUMBERS)
def test_fuzzed_config_values_train_or_fail_in_one_line(trained, key, value):
  config = _tiny_toy()
  section, _, name = key.rpartition(".")
  group = config[section] if section else config
  if isinstance(group[name], int):
    if isinstance(value, float) and not value.is_integer():
      return  # the command line refuses a float for an int key (tested in test_train)
    value = int(value) if math.isfinite(value) else 0
  group[name] = type(group[name])(value)
  before = _snapshot(trained)
  try:
    run_lib.train_and_evaluate(config, trained)  # a finished run: resumes or refuses
  except ValueError as e:
    assert "\n" not in str(e) and str(e), (key, value, str(e))
  assert _snapshot(trained) == before or config.training.num_steps > 2


def test_fuzzed_bad_values_are_one_line_on_the_command_line(tmp_path):
  for flag, wanted in (("--config.flow.step_size=-1", "flow.step_size=-1.0: must be a finite "
                        "number > 0"), ("--config.training.log_every=0", "an integer >= 1"),
                       ("--config.optim.ema_decay=nan", "a number in [0, 1)")):
    result = cli("--config=toy2d:8gaussians", f"--workdir={tmp_path / 'w'}", flag)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and wanted in result.stderr, result.stderr
    assert not (tmp_path / "w").exists()


def _png(width: int, height: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


IMAGE_BYTES = st.one_of(
    st.binary(max_size=64),                                  # junk
    st.integers(1, 40).map(lambda n: _png(8, 8)[:n]),        # a truncated PNG
    st.just(b""),                                            # an empty file
    st.just(b"GIF89a" + b"\x00" * 10))                       # another format, broken


@FUZZ
@given(bad=IMAGE_BYTES, suffix=st.sampled_from([".png", ".jpg", ".jpeg"]))
def test_fuzzed_image_folders_fail_in_one_line(tmp_path_factory, bad, suffix):
  folder = tmp_path_factory.mktemp("images")
  (folder / "good.png").write_bytes(_png(12, 10))
  (folder / f"bad{suffix}").write_bytes(bad)
  before = _snapshot(folder)
  with pytest.raises(ValueError) as info:
    readers.folder_dataset(folder, image_size=8)
  assert "\n" not in str(info.value) and "bad" in str(info.value)
  assert _snapshot(folder) == before


ARRAYS = st.one_of(
    st.builds(lambda shape, v: np.full(shape, v, np.float32),
              st.lists(st.integers(0, 3), min_size=0, max_size=5).map(tuple),
              st.floats(allow_nan=True, allow_infinity=True, width=32)),
    st.builds(lambda n: np.arange(n).astype(np.int64).reshape(-1, 1, 1, 1), st.integers(0, 5)),
    st.just(np.array(["a", "b"])), st.just(np.zeros((2, 4, 4, 1), bool)))


@FUZZ
@given(array=ARRAYS, key=st.sampled_from(["x", "images"]))
def test_fuzzed_npz_files_load_or_fail_in_one_line(tmp_path_factory, array, key):
  path = tmp_path_factory.mktemp("npz") / "data.npz"
  np.savez(path, **{key: array})
  before = _snapshot(path.parent)
  try:
    dataset = readers.npz_dataset(path)
  except ValueError as e:
    assert "\n" not in str(e) and str(e)
  else:  # it loaded: then it is images in range
    assert dataset.train.ndim == 4 and len(dataset.train) >= 1
    assert np.isfinite(dataset.train).all() and np.abs(dataset.train).max() <= 1
  assert _snapshot(path.parent) == before
