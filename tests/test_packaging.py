"""The package as users install it: the wheel holds ``fdrl_jax`` alone (the bundled configs inside
it, ``py.typed``), and installed into a folder of its own it trains ``--config=digits`` from any
folder through the ``fdrl-jax`` console script. Offline: the wheel is built without build isolation
(setuptools from the test environment) and installed without its dependencies."""

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from helpers import ROOT, TINY_FLAGS

with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
  VERSION = tomllib.load(f)["project"]["version"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """The wheel of a copy of the sources (a build writes its own files next to them)."""
  if importlib.util.find_spec("setuptools.command.bdist_wheel") is None:
    pytest.skip("building the wheel offline needs setuptools>=70.1 (the test extra, "
                "requirements.lock)")
  tmp = tmp_path_factory.mktemp("wheel")
  source = tmp / "source"
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), source / name)
  for name in ("fdrl_jax", "configs"):  # fdrl_jax/configs stays a link to configs/
    shutil.copytree(os.path.join(ROOT, name), source / name, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
  built = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
       "--disable-pip-version-check", "-w", str(tmp / "dist"), str(source)],
      capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stdout + built.stderr
  (path,) = (tmp / "dist").glob("*.whl")
  return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
  """The wheel installed, without dependencies, into a folder of its own."""
  target = tmp_path_factory.mktemp("installed")
  result = subprocess.run(
      [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
       "--disable-pip-version-check", "--target", str(target), str(wheel)],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  return target


def _elsewhere(target, tmp_path):
  """Environment and folder of a user outside the repository: only the installed copy is found."""
  env = {**os.environ, "PYTHONPATH": str(target), "JAX_PLATFORMS": "cpu"}
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  return env, cwd


def test_wheel_holds_the_package_alone_with_its_configs_and_py_typed(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  assert {n.split("/")[0] for n in names} == {"fdrl_jax", f"fdrl_jax-{VERSION}.dist-info"}
  for name in ("py.typed", "main.py", "configs/__init__.py", "configs/default.py",
               "configs/digits.py", "configs/from_json.py", "configs/toy2d.py"):
    assert f"fdrl_jax/{name}" in names, name
  bundled = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))
  assert bundled == sorted(n.split("/")[-1] for n in names if n.startswith("fdrl_jax/configs/"))
  entry_points = zipfile.ZipFile(wheel).read(
      f"fdrl_jax-{VERSION}.dist-info/entry_points.txt").decode()
  assert "fdrl-jax = fdrl_jax.main:run" in entry_points


def test_installed_package_has_its_version_and_configs(installed, tmp_path):
  env, cwd = _elsewhere(installed, tmp_path)
  result = subprocess.run(
      [sys.executable, "-c", "import fdrl_jax; from fdrl_jax.configs import default; "
       "print(fdrl_jax.__file__); print(fdrl_jax.__version__); "
       "print(default.get_config().data.name)"],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  where, version, data = result.stdout.split()
  assert where.startswith(str(installed)), where  # not the repository's copy
  assert version == VERSION
  assert data == "digits"


def test_installed_console_script_trains_a_bundled_config_from_another_folder(installed,
                                                                             tmp_path):
  script = installed / "bin" / "fdrl-jax"  # pip writes console scripts under --target/bin
  assert script.is_file()
  env, cwd = _elsewhere(installed, tmp_path)
  workdir = tmp_path / "w"
  result = subprocess.run(
      [str(script), "--config=digits", f"--workdir={workdir}",
       "--config.training.num_steps=20", *TINY_FLAGS],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  assert "20" in os.listdir(workdir / "checkpoints")
  assert not os.listdir(cwd)  # nothing written outside the workdir
