"""Fault injection: the outputs, data and config files of issue 21's fault table (rows 6, 7, 8, 9,
11, 13, 14, 16). Each test makes the fault happen for real where CI allows it (a file-size limit
for a full disk, SIGKILL and SIGINT of real processes, broken files), then checks what the user
sees (one line, no traceback) and that nothing was lost.

The tests run as root in CI, and root ignores permission bits: an unwritable location is a path
under a regular file (``file/sub``), which fails for every user.
"""

import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest
from PIL import Image

from configs import default, toy2d
from fdrl_jax import (config_checks, figures, files, images, loading, modes, readers, run_lib,
                      sampling, workdir)
from helpers import ROOT, cli

_TOY = ["--config=toy2d:8gaussians", "--config.training.num_steps=2",
        "--config.training.num_grid_samples=16"]


def _toy_config():
  config = toy2d.get_config("8gaussians")
  config.training.num_steps = 2
  config.training.num_grid_samples = 16
  return config


def _image_flags(target: str, source: str) -> list[str]:
  """A tiny translation run: 4×4 grey target images in an .npz, source images in a folder."""
  return ["--config=digits", "--config.data.name=npz", f"--config.data.path={target}",
          "--config.prior.name=empirical", f"--config.prior.source_path={source}",
          "--config.data.image_size=4", "--config.model.name=mlp", "--config.model.width=8",
          "--config.model.depth=1", "--config.data.batch_size=8", "--config.flow.num_steps=2",
          "--config.flow.num_refine_steps=1", "--config.training.num_steps=2",
          "--config.training.num_grid_samples=4"]


def _one_line(stderr: str) -> str:
  """The error line of a failed command: the last line of stderr, the only ``error:`` line, with no
  traceback anywhere."""
  assert "Traceback" not in stderr, stderr
  lines = stderr.strip().splitlines()
  assert [line for line in lines if line.startswith("error:")] == lines[-1:], stderr
  return lines[-1]


def _temporaries(folder) -> list[str]:
  return [name for name in os.listdir(folder) if name.startswith(".new-")]


def _grey16(folder, values: np.ndarray) -> None:
  """Writes each (H, W) uint16 array of ``values`` as a 16-bit grey PNG."""
  os.makedirs(folder, exist_ok=True)
  for i, v in enumerate(values):
    Image.fromarray(v.astype(np.uint16)).save(os.path.join(folder, f"{i:02d}.png"))


def _killed_writer(code: str) -> subprocess.CompletedProcess:
  """Runs ``code`` (with ``files`` and ``kill`` defined) in a fresh interpreter; ``kill()``
  SIGKILLs it where it stands, as the OOM killer or a lost node would."""
  prelude = ("import os, signal\nfrom fdrl_jax import files\n"
             "kill = lambda: os.kill(os.getpid(), signal.SIGKILL)\n")
  return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> str:
  """A 2-step 8gaussians run (the same code the CLI calls)."""
  path = str(tmp_path_factory.mktemp("toy") / "run")
  run_lib.train_and_evaluate(_toy_config(), path)
  return path


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> dict:
  """A 2-step translation run on 4×4 grey images: target in ``target.npz``, source a folder of
  16-bit PNGs; ``flags`` is its command line."""
  root = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  np.savez(root / "target.npz", x=rng.integers(0, 256, (16, 4, 4, 1), dtype=np.uint8))
  _grey16(root / "source", rng.integers(0, 65536, (6, 4, 4)))
  flags = [*_image_flags(str(root / "target.npz"), str(root / "source")),
           f"--workdir={root / 'run'}"]
  trained = cli(*flags)
  assert trained.returncode == 0, trained.stderr
  return {"root": root, "flags": flags, "workdir": str(root / "run"),
          "config": workdir.read_config(str(root / "run"))}


def test_row06_eval_on_a_full_disk_prints_its_numbers_then_one_line(toy_run):
  # The child limits its own file size (every write beyond 1 byte fails with EFBIG, as on a full
  # disk; SIGXFSZ ignored so that the write fails rather than the process) before it runs main: a
  # preexec_fn would run Python in a fork of this multithreaded (JAX) process. No compilation
  # cache there: its writes would fail too (warnings, not errors, but noise).
  full_disk = ("import resource, runpy, signal, sys\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))\n"
               "sys.argv[0] = 'fdrl_jax.main'\n"
               "runpy.run_module('fdrl_jax.main', run_name='__main__')\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_COMPILATION_CACHE": "false"}
  result = subprocess.run(
      [sys.executable, "-c", full_disk, *_TOY, f"--workdir={toy_run}", "--mode=eval",
       "--config.eval.num_samples=50", "--config.eval.num_reference=50"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert result.returncode == 2
  line = _one_line(result.stderr)
  assert "Cannot write" in line and "eval_step_0000002.json" in line, line
  assert "the results above are not saved" in line
  numbers = json.loads(result.stdout)  # nothing lost: the numbers were printed
  assert numbers["step"] == 2 and np.isfinite(numbers["rows"][0]["mmd"])
  assert not [f for f in os.listdir(toy_run) if f.startswith("eval_step")]
  assert not _temporaries(toy_run)


def test_row06_unwritable_or_full_output_is_refused_before_the_work(toy_run, tmp_path,
                                                                      monkeypatch):
  def no_work(*args, **kwargs):
    raise AssertionError("sampled before the output was checked")

  monkeypatch.setattr(sampling, "draw", no_work)
  monkeypatch.setattr(figures, "_write", no_work)
  blocker = tmp_path / "file"
  blocker.write_text("a regular file, not a folder")
  config = _toy_config()
  for output in (blocker / "sub" / "x.npz", blocker / "x.npz"):  # a folder that is a file
    with pytest.raises(ValueError, match="Cannot write .*; choose a writable location") as e:
      modes.sample_to_file(config, toy_run, 1000, str(output))
    assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="Cannot write .*: Not a directory"):
    figures.make_figure("grid", config, toy_run, str(blocker / "sub" / "grid.png"))
  monkeypatch.setattr(files.shutil, "disk_usage", lambda _: types.SimpleNamespace(free=1000))
  with pytest.raises(ValueError, match=r"needs 0\.008 MB but only 0\.001 MB are free") as e:
    modes.sample_to_file(config, toy_run, 1000, str(tmp_path / "x.npz"))  # 8 kB of samples
  assert "\n" not in str(e.value) and os.listdir(tmp_path) == ["file"]


def test_row07_a_dangling_symlink_as_output_is_refused(toy_run, tmp_path):
  config = _toy_config()
  for name, make in (("x.npz", lambda out: modes.sample_to_file(config, toy_run, 5, out)),
                     ("grid.png", lambda out: figures.make_figure("grid", config, toy_run, out))):
    link = tmp_path / name
    link.symlink_to(tmp_path / "gone" / name)
    with pytest.raises(ValueError, match="is a symbolic link to .*, which does not exist") as e:
      make(str(link))
    assert "\n" not in str(e.value)
    assert link.is_symlink() and not link.exists()  # nothing reported written, nothing written
  assert sorted(os.listdir(tmp_path)) == ["grid.png", "x.npz"]


def test_row08_a_killed_translation_leaves_no_partial_folder_and_the_rerun_works(image_run,
                                                                                 tmp_path,
                                                                                 monkeypatch):
  output = tmp_path / "translated"
  killed = _killed_writer(
      "def write(folder):\n"
      "  for i in range(3):\n"
      "    open(os.path.join(folder, f'{i}.png'), 'w').write('half')\n"
      "  kill()\n"
      f"files.write_new_folder({str(output)!r}, write)\n")
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert not output.exists() and len(_temporaries(tmp_path)) == 1  # the final name is never partial
  config, run, source = image_run["config"], image_run["workdir"], image_run["root"] / "source"
  saved = images.save_png
  calls = []

  def interrupted_save(array, path):  # Ctrl-C after the second image
    calls.append(path)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return saved(array, path)

  monkeypatch.setattr(images, "save_png", interrupted_save)
  with pytest.raises(KeyboardInterrupt):
    modes.translate_to_file(config, run, str(source), str(output))
  # The kill's temporary folder was removed by this run; its own, interrupted, by itself.
  assert not output.exists() and not _temporaries(tmp_path)
  monkeypatch.setattr(images, "save_png", saved)
  assert modes.translate_to_file(config, run, str(source), str(output)) == str(output)
  assert sorted(os.listdir(output)) == sorted(os.listdir(source))
  assert not _temporaries(tmp_path)


def test_row09_16_bit_pngs_are_read_at_their_true_scale(image_run, tmp_path):
  rng = np.random.default_rng(1)
  values = rng.integers(0, 65536, (6, 4, 4))
  values[:, 0, 0] = 65535  # a few pixels at the maximum, 1 in 16
  _grey16(tmp_path / "grey16", values)
  expected = np.round(values / 257)[..., None] / 127.5 - 1  # the same images in 8 bits
  data = readers.folder_dataset(tmp_path / "grey16", image_size=4)
  np.testing.assert_allclose(data.train, expected, atol=1e-6)
  assert (data.train == 1).mean() < 0.1  # Pillow's clipping had put almost all at the maximum
  translated_input, _ = loading.read_images(str(tmp_path / "grey16"), image_run["config"],
                                             (4, 4, 1))
  np.testing.assert_allclose(translated_input, expected, atol=1e-6)


def _bad_npz_files(folder) -> dict[str, str]:
  """Broken data files, each with (a piece of) the one-line message it gets."""
  os.makedirs(folder, exist_ok=True)
  x = np.zeros((4, 4, 4, 1), np.uint8)
  np.save(os.path.join(folder, "plain.npy"), x)
  np.save(os.path.join(folder, "npy"), x)
  os.rename(os.path.join(folder, "npy.npy"), os.path.join(folder, "npy.npz"))
  np.savez(os.path.join(folder, "whole.npz"), x=x)
  whole = open(os.path.join(folder, "whole.npz"), "rb").read()
  open(os.path.join(folder, "truncated.npz"), "wb").write(whole[:len(whole) // 2])
  open(os.path.join(folder, "text.npz"), "w").write("x = [1, 2, 3]\n")
  np.savez_compressed(os.path.join(folder, "corrupt.npz"),
                      x=np.random.default_rng(0).integers(0, 256, (50, 8, 8, 1), np.uint8))
  corrupt = bytearray(open(os.path.join(folder, "corrupt.npz"), "rb").read())
  corrupt[100:140] = bytes(40)
  open(os.path.join(folder, "corrupt.npz"), "wb").write(corrupt)
  return {"plain.npy": "holds one .npy array, not an .npz archive",
          "npy.npz": "holds one .npy array, not an .npz archive",
          "truncated.npz": "is a truncated or corrupt .npz archive",
          "text.npz": "is not an .npz file",
          "corrupt.npz": "a truncated or corrupt .npz archive"}


def test_row11_a_bad_data_file_is_one_line_naming_it(image_run, tmp_path):
  bad = _bad_npz_files(tmp_path / "bad")
  for name, message in bad.items():
    path = str(tmp_path / "bad" / name)
    with pytest.raises(ValueError) as e:
      readers.npz_dataset(path)
    assert path in str(e.value) and message in str(e.value) and "\n" not in str(e.value)
    if name.endswith(".npz"):  # translate's --input
      with pytest.raises(ValueError, match=re.escape(path)) as e:
        loading.read_images(path, image_run["config"], (4, 4, 1))
      assert message in str(e.value) and "pickled" not in str(e.value)
  text = str(tmp_path / "bad" / "text.npz")
  result = cli(*_image_flags(text, str(image_run["root"] / "source")),
               f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 2
  line = _one_line(result.stderr)
  assert text in line and "is not an .npz file" in line
  assert not (tmp_path / "w" / "config.json").exists()


def test_row13_a_broken_config_json_is_named(toy_run, tmp_path):
  broken = tmp_path / "config.json"
  broken.write_text('{"data": {"name": "8gaussians",')
  result = cli(f"--config={broken}", "--mode=config")
  assert result.returncode == 2
  line = _one_line(result.stderr)
  assert str(broken) in line and "is not valid JSON" in line
  copy = tmp_path / "run"
  shutil.copytree(toy_run, copy)
  (copy / "config.json").write_text("[]")
  for read in (lambda: workdir.read_config(str(copy)),
               lambda: workdir.check_workdir(str(copy), _toy_config(), create=False)):
    with pytest.raises(ValueError, match=re.escape(str(copy / "config.json"))) as e:
      read()
    assert "not a config" in str(e.value) and "\n" not in str(e.value)


def test_row13_ctrl_c_outside_training_promises_no_resume(image_run, tmp_path):
  # The run's data file becomes a FIFO: --mode=sample then blocks while reading its data (inside
  # the work, not at start-up), and opening the FIFO here tells exactly when to press Ctrl-C.
  target = image_run["root"] / "target.npz"
  kept = tmp_path / "target.npz"
  shutil.move(target, kept)
  os.mkfifo(target)
  try:
    proc = subprocess.Popen([sys.executable, "-m", "fdrl_jax.main", *image_run["flags"],
                             "--mode=sample", f"--output={tmp_path / 'x.npz'}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    writer = None
    while writer is None and proc.poll() is None:  # until the sampler opens its data
      try:
        writer = os.open(target, os.O_WRONLY | os.O_NONBLOCK)
      except OSError:  # ENXIO: no reader yet
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    if writer is not None:
      os.close(writer)
  finally:
    os.remove(target)
    shutil.move(kept, target)
  assert proc.returncode == 130, err
  assert err.strip() == "Interrupted; --mode=sample wrote no output: run it again.", err
  assert not (tmp_path / "x.npz").exists() and not _temporaries(tmp_path)


def test_row13_temporary_files_of_killed_runs_are_removed_by_the_next_run(toy_run, tmp_path):
  output = tmp_path / "x.npz"
  killed = _killed_writer("def write(path):\n"
                          "  open(path, 'w').write('half')\n"
                          "  kill()\n"
                          f"files.write_new_file({str(output)!r}, write)\n")
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  [stale] = _temporaries(tmp_path)
  host = re.sub(r"[^\w.]", "_", files.host_name())
  live = f".new-{host}-{os.getpid()}-live.npz"  # a concurrent writer's: never touched
  other = f".new-elsewhere-{stale.split('-')[2]}-x.npz"  # another host's: its pid means nothing
  for name in (live, other):
    (tmp_path / name).write_text("in progress")
  modes.sample_to_file(_toy_config(), toy_run, 5, str(output))
  assert np.load(output)["x"].shape == (5, 2)
  assert sorted(_temporaries(tmp_path)) == sorted([live, other])


def test_row14_an_unknown_key_in_a_config_file_is_one_line_with_a_guess(tmp_path):
  typo = tmp_path / "typo.py"
  typo.write_text("from fdrl_jax.configs import default\n\n\ndef get_config():\n"
                  "  config = default.get_config()\n  config.data.imagesize = 32\n"
                  "  return config\n")
  result = cli(f"--config={typo}", f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 2
  line = _one_line(result.stderr)
  assert "unknown config key 'data.imagesize'" in line
  assert "did you mean 'data.image_size'?" in line
  assert not (tmp_path / "w").exists()


def test_row14_every_bundled_config_has_only_known_keys():
  import configs
  folder = os.path.dirname(configs.__file__)
  for name in sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py")
                     and not f.startswith(("_", "from_json"))):
    source = open(os.path.join(folder, f"{name}.py")).read()
    module = importlib.import_module(f"configs.{name}")
    variants = set(re.findall(r'(?:name|variant) == "(\w+)"', source))
    for args in [(), *((v,) for v in sorted(variants))]:
      config_checks.check_keys(module.get_config(*args))
  config_checks.check_keys(default.get_config())


def test_row16_mixed_sizes_and_alpha_in_a_folder_are_said_once(image_run, tmp_path, capsys):
  folder = tmp_path / "mixed"
  folder.mkdir()
  rng = np.random.default_rng(2)
  for i, (size, mode) in enumerate([((4, 4), "RGB"), ((6, 5), "RGB"), ((4, 4), "RGBA"),
                                    ((8, 8), "RGBA"), ((5, 7), "LA")]):
    image = Image.fromarray(rng.integers(0, 256, (*size, len(mode)), dtype=np.uint8))
    assert image.mode == mode
    image.save(folder / f"{i}.png")
  data = readers.folder_dataset(folder, image_size=4)
  assert data.train.shape == (5, 4, 4, 3)  # every image kept
  notes = capsys.readouterr().err.strip().splitlines()
  assert len(notes) == 2, notes
  assert "have different sizes" in notes[0] and str(folder) in notes[0]
  assert "have an alpha channel" in notes[1] and "dropped" in notes[1]
  config = image_run["config"]
  loading.read_images(str(folder), config, (4, 4, 1))  # translate's --input: said there too
  assert len(capsys.readouterr().err.strip().splitlines()) == 2


# ------------------------------------------------------------------------------------------------
# Training's own faults (rows 1-5, 10, 12, 15): mismatched checkpoints, two trainers, full disks,
# divergence, a deleted manifest, a stop request during slow steps. Row 3 (a signal to one process
# of a multi-process run) is in tests/test_multiprocess.py.

def _train_flags(workdir, num_steps: int, **training) -> list[str]:
  settings = {"num_steps": num_steps, "checkpoint_every": 2, "log_every": 2,
              "sample_every": 10_000, "num_grid_samples": 16, **training}
  return ["--config=toy2d:8gaussians", f"--workdir={workdir}", "--config.data.batch_size=32",
          *(f"--config.training.{k}={v}" for k, v in settings.items())]


def _limited_cli(limit: int, *args: str) -> subprocess.CompletedProcess:
  """The CLI with every file limited to ``limit`` bytes (writes beyond fail with EFBIG, as on a
  full disk), set by the child itself (see row 6), without the compilation cache."""
  full_disk = ("import resource, runpy, signal, sys\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
               "sys.argv[0] = 'fdrl_jax.main'\n"
               "runpy.run_module('fdrl_jax.main', run_name='__main__')\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_COMPILATION_CACHE": "false"}
  return subprocess.run([sys.executable, "-c", full_disk, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=env)


def _hashes(folder) -> dict[str, str]:
  """The SHA-256 of every file under ``folder`` by relative path: a checkpoint's leaves."""
  import hashlib
  return {os.path.relpath(os.path.join(d, f), folder):
          hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
          for d, _, names in os.walk(folder) for f in names}


def _params(workdir, steps: int):
  config = toy2d.get_config("8gaussians")
  config.data.batch_size, config.training.num_steps = 32, steps
  _, state, step = run_lib.restore_latest(config, str(workdir))
  return step, jax.device_get(state.params)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> str:
  """The toy run trained straight to step 8 (checkpoints 2, 4, 6, 8): what every faulted run must
  end equal to."""
  path = tmp_path_factory.mktemp("straight") / "run"
  done = cli(*_train_flags(path, 8))
  assert done.returncode == 0, done.stderr
  return str(path)


def test_row01_another_config_is_refused_naming_keys_and_nothing_is_moved(straight, tmp_path):
  work = tmp_path / "run"
  assert cli(*_train_flags(work, 4)).returncode == 0
  before, log = _hashes(work / "checkpoints"), (work / "metrics.jsonl").read_text()
  slip = cli(*_train_flags(work, 8), "--config.model.width=32", "--config.optim.learning_rate=0.5")
  assert slip.returncode == 2
  line = _one_line(slip.stderr)
  assert "model.width: 64 in the workdir, 32 now" in line, line
  assert "optim.learning_rate: 0.001 in the workdir, 0.5 now" in line, line
  # A config.json gone (or another run's checkpoints copied in): the checkpoint's own shapes.
  os.rename(work / "config.json", tmp_path / "config.json")
  slip = cli(*_train_flags(work, 8), "--config.model.width=32")
  assert slip.returncode == 2
  line = _one_line(slip.stderr)
  assert "trained with another config" in line and "saved (2, 64), expected (2, 32)" in line, line
  assert "nothing was moved" in line
  assert _hashes(work / "checkpoints") == before and not (work / "unreadable_checkpoints").exists()
  assert (work / "metrics.jsonl").read_text() == log
  os.rename(tmp_path / "config.json", work / "config.json")
  fixed = cli(*_train_flags(work, 8))  # the corrected command resumes, not from step 0
  assert fixed.returncode == 0 and "Resuming from the checkpoint of step 4" in fixed.stdout
  (s1, p1), (s2, p2) = _params(straight, 8), _params(work, 8)
  assert s1 == s2 == 8
  jax.tree.map(np.testing.assert_array_equal, p1, p2)


def test_row01_no_readable_checkpoint_refuses_and_moves_nothing(tmp_path):
  work = tmp_path / "run"
  assert cli(*_train_flags(work, 4)).returncode == 0
  for step in ("2", "4"):  # every checkpoint's biggest file cut in half
    paths = [os.path.join(d, f) for d, _, fs in os.walk(work / "checkpoints" / step) for f in fs]
    biggest = max(paths, key=os.path.getsize)
    with open(biggest, "r+b") as f:
      f.truncate(os.path.getsize(biggest) // 2)
  before = _hashes(work / "checkpoints")
  refused = cli(*_train_flags(work, 6))
  assert refused.returncode == 2
  line = _one_line(refused.stderr)
  assert "No checkpoint in" in line and "steps 4, 2" in line and "nothing was moved" in line, line
  assert _hashes(work / "checkpoints") == before and not (work / "unreadable_checkpoints").exists()
  assert (work / "errors.log").is_file()  # the full traces, off the terminal
  # A workdir whose checkpoints were all set aside earlier never starts again from step 0.
  os.makedirs(work / "unreadable_checkpoints")
  os.rename(work / "checkpoints" / "4", work / "unreadable_checkpoints" / "4")
  shutil.rmtree(work / "checkpoints")
  refused = cli(*_train_flags(work, 6))
  assert refused.returncode == 2 and "not start again from step 0" in _one_line(refused.stderr)


def _start(*args: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "fdrl_jax.main", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _wait_for(path, proc: subprocess.Popen, timeout: float = 120) -> None:
  deadline = time.time() + timeout
  while not os.path.exists(path):
    assert proc.poll() is None, proc.communicate()[1]
    assert time.time() < deadline, f"{path} did not appear"
    time.sleep(0.1)


def test_row02_a_second_trainer_is_refused_naming_the_holder(straight, tmp_path):
  work = tmp_path / "run"
  first = _start(*_train_flags(work, 100_000, checkpoint_every=100_000, log_every=100_000))
  try:
    _wait_for(work / "config.json", first)  # committed after its first step
    second = cli(*_train_flags(work, 100_000, checkpoint_every=100_000, log_every=100_000))
    assert second.returncode == 2
    line = _one_line(second.stderr)
    assert f"is being trained by process {first.pid} on {socket.gethostname()}" in line, line
    assert first.poll() is None  # the first trainer runs on, untouched
  finally:
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
  assert first.returncode == 130, err
  steps = [r["step"] for r in map(json.loads, open(work / "metrics.jsonl"))]
  assert steps == sorted(set(steps))  # one writer: each logged step once, in order
  assert not (work / "lock.json").exists()  # released
  # A holder killed outright leaves its lock.json; the next trainer takes over with a warning.
  killed = _start(*_train_flags(work, 100_000, checkpoint_every=100_000, log_every=1))
  try:
    _wait_for(work / "lock.json", killed)
  finally:
    killed.kill()
    killed.communicate(timeout=60)
  again = cli(*_train_flags(work, 2))
  assert again.returncode == 0, again.stderr
  assert f"took over the lock of {work} from process {killed.pid}" in again.stderr


def test_row04_a_torn_metrics_line_is_dropped_on_resume(straight, tmp_path):
  work = tmp_path / "run"
  # A file-size limit between the checkpoints: metrics.jsonl grows past it line by line (a
  # checkpoint every 1 000 steps never comes), so the write that crosses it is torn.
  full = _limited_cli(3000, *_train_flags(work, 30, checkpoint_every=1000, log_every=1))
  assert full.returncode == 2
  line = _one_line(full.stderr)
  assert "could not write" in line and "metrics.jsonl" in line and "File too large" in line, line
  assert not open(work / "metrics.jsonl").read().endswith("\n")  # torn
  resumed = cli(*_train_flags(work, 8))  # space is back (no checkpoint yet: from step 0)
  assert resumed.returncode == 0, resumed.stderr
  assert "is not a whole record" in resumed.stderr and "Traceback" not in resumed.stderr
  records = [json.loads(line) for line in open(work / "metrics.jsonl")]
  assert [r["step"] for r in records] == [2, 4, 6, 8]
  (_, p1), (_, p2) = _params(straight, 8), _params(work, 8)
  jax.tree.map(np.testing.assert_array_equal, p1, p2)


def test_row05_a_failed_checkpoint_write_is_one_line_and_keeps_the_others(straight, tmp_path):
  work = tmp_path / "run"
  assert cli(*_train_flags(work, 4)).returncode == 0
  before = _hashes(work / "checkpoints")
  full = _limited_cli(40_000, *_train_flags(work, 8))  # a checkpoint holds ~200 kB of data
  assert full.returncode == 2
  line = _one_line(full.stderr)
  # Step 6's data is over the limit (TensorStore's packing may let it through, then 8's is); the
  # write that fails is a data file ("File too large") or, as TensorStore reports it, a zarr
  # array's metadata in the OCDBT database (OUT_OF_RANGE).
  failed = re.search(r"Could not write the checkpoint of step (\d+) ", line)
  assert failed and failed.group(1) in ("6", "8"), line
  assert "File too large" in line or "OUT_OF_RANGE" in line, line
  assert f"the checkpoint of step {int(failed.group(1)) - 2} is intact" in line, line
  assert "errors.log" in line and len(full.stderr.splitlines()) == 1
  assert {k: v for k, v in _hashes(work / "checkpoints").items()
          if k.split(os.sep)[0] == "4"} == {k: v for k, v in before.items()
                                            if k.split(os.sep)[0] == "4"}
  resumed = cli(*_train_flags(work, 8))
  assert resumed.returncode == 0, resumed.stderr
  assert f"Resuming from the checkpoint of step {int(failed.group(1)) - 2}" in resumed.stdout
  assert sorted(os.listdir(work / "checkpoints")) == ["4", "6", "8"]  # the last 3; no temporaries
  (_, p1), (_, p2) = _params(straight, 8), _params(work, 8)
  jax.tree.map(np.testing.assert_array_equal, p1, p2)


def test_row10_no_grid_or_checkpoint_from_non_finite_parameters(tmp_path):
  work = tmp_path / "run"
  blown = cli(*_train_flags(work, 8, sample_every=3, log_every=5, checkpoint_every=7),
              "--config.optim.learning_rate=1e10")
  assert blown.returncode == 2
  line = _one_line(blown.stderr)
  assert "Training diverged" in line and "No checkpoint was saved" in line, line
  assert not (work / "samples").exists() or not os.listdir(work / "samples")
  assert not (work / "checkpoints").exists() or not os.listdir(work / "checkpoints")


def test_row12_a_deleted_manifest_is_one_warning(straight, tmp_path):
  work = tmp_path / "run"
  shutil.copytree(straight, work)
  os.remove(work / "checkpoints" / "8" / "state" / "manifest.ocdbt")
  longer = cli(*_train_flags(work, 10))
  assert longer.returncode == 0, longer.stderr
  assert "Traceback" not in longer.stderr and "Exception ignored" not in longer.stderr
  assert longer.stderr.count("\n") == 1 and "checkpoint of step 8" in longer.stderr
  assert "Resuming from the checkpoint of step 6" in longer.stdout
  assert (work / "unreadable_checkpoints" / "8").is_dir()  # kept, out of the way


def test_row15_a_stop_request_is_honoured_at_the_current_step(tmp_path):
  # Slow steps (a long flow on the digits) and a log line only every 50: the stop must not wait
  # for the logging boundary.
  work = tmp_path / "run"
  proc = _start("--config=digits", f"--workdir={work}", "--config.flow.num_steps=40",
                "--config.data.batch_size=32", "--config.training.num_steps=1000",
                "--config.training.log_every=50", "--config.training.sample_every=1000")
  try:
    _wait_for(work / "config.json", proc)  # step 1 is done
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 130, err
  stopped = int(err.split("at step ")[1].split(":")[0])
  assert 1 <= stopped <= 4, err  # the step in flight, not step 50
  assert (work / "checkpoints" / str(stopped)).is_dir()
