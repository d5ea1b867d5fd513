"""A user's first hour: configs from anywhere, slips that cost nothing, Ctrl-C, broken checkpoints,
the training log in TensorBoard."""

import json
import os
import signal
import struct
import subprocess
import sys

import jax
import numpy as np

from configs import toy2d
from fdrl_jax import metrics_log, run_lib
from helpers import ROOT, TINY_FLAGS, cli

TOY = "--config=configs/toy2d.py:8gaussians"


def test_help_exits_zero_and_points_to_the_config_keys():
  result = cli("--help")
  assert result.returncode == 0, result.stderr
  assert "--mode" in result.stdout and "--mode=config" in result.stdout


def test_mistyped_config_path_is_one_line_and_creates_nothing(tmp_path):
  result = cli("--config=configs/digitz.py", f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1 and "no such file" in result.stderr
  assert "digits" in result.stderr  # the bundled names are listed
  assert not (tmp_path / "w").exists()


def test_configs_by_path_from_any_folder_by_name_and_from_a_workdir(tmp_path):
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  by_path = cli(f"--config={ROOT}/configs/toy2d.py:8gaussians", "--mode=config", cwd=elsewhere)
  by_name = cli("--config=toy2d:8gaussians", "--mode=config", cwd=elsewhere)
  assert by_path.returncode == by_name.returncode == 0, by_path.stderr + by_name.stderr
  assert json.loads(by_path.stdout) == json.loads(by_name.stdout)
  assert json.loads(by_name.stdout)["data"]["name"] == "8gaussians"
  workdir = tmp_path / "w"
  trained = cli("--config=toy2d:8gaussians", f"--workdir={workdir}",
                "--config.training.num_steps=2", cwd=elsewhere)
  assert trained.returncode == 0, trained.stderr
  # The workdir's config.json is a config: sampling needs no .py file.
  sampled = cli(f"--config={workdir / 'config.json'}", f"--workdir={workdir}", "--mode=sample",
                "--num_samples=5", f"--output={tmp_path / 's.npz'}", cwd=elsewhere)
  assert sampled.returncode == 0, sampled.stderr
  assert np.load(tmp_path / "s.npz")["x"].shape == (5, 2)


def test_a_failed_first_run_leaves_the_workdir_to_the_corrected_command(tmp_path):
  workdir = str(tmp_path / "w")
  failed = cli("--config=configs/digits.py", f"--workdir={workdir}", *TINY_FLAGS,
               "--config.data.batch_size=2000", "--config.training.num_steps=2")
  assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
  assert "2000" in failed.stderr and not os.path.exists(os.path.join(workdir, "config.json"))
  fixed = cli("--config=configs/digits.py", f"--workdir={workdir}", *TINY_FLAGS,
              "--config.training.num_steps=2")
  assert fixed.returncode == 0, fixed.stderr
  assert json.load(open(os.path.join(workdir, "config.json")))["data"]["batch_size"] == 8


def _toy_flags(num_steps: int, **extra) -> list[str]:
  settings = {"num_steps": num_steps, "checkpoint_every": 100, "log_every": 10,
              "sample_every": 10_000, "num_grid_samples": 16, **extra}
  return [TOY, *(f"--config.training.{k}={v}" for k, v in settings.items())]


def _start(workdir, flags) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "fdrl_jax.main", f"--workdir={workdir}", *flags],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _stop_at(proc: subprocess.Popen, line_start: str, sig: int) -> tuple[str, str]:
  """Sends ``sig`` once a stdout line starts with ``line_start``; the rest of the output."""
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if line.startswith(line_start):
      proc.send_signal(sig)
      break
  out, err = proc.communicate(timeout=300)
  return "".join(seen) + out, err


def _final_params(workdir):
  _, state, step = run_lib.restore_latest(toy2d.get_config("8gaussians"), str(workdir))
  return step, jax.device_get(state.params)


def test_sigint_saves_the_current_step_and_resume_equals_the_straight_run(tmp_path):
  flags = _toy_flags(400, checkpoint_every=10_000, log_every=1)
  straight = cli(f"--workdir={tmp_path / 'straight'}", *flags)
  assert straight.returncode == 0, straight.stderr
  proc = _start(tmp_path / "stopped", flags)
  out, err = _stop_at(proc, "step 3/", signal.SIGINT)
  assert proc.returncode == 128 + signal.SIGINT, err
  assert err.count("\n") == 1 and "Interrupted (SIGINT) at step" in err, err
  assert "Resume with the same command: python -m fdrl_jax.main" in err
  stopped_at = int(err.split("at step ")[1].split(":")[0])
  assert 3 <= stopped_at < 400
  assert (tmp_path / "stopped" / "checkpoints" / str(stopped_at)).is_dir()
  resumed = cli(f"--workdir={tmp_path / 'stopped'}", *flags)
  assert resumed.returncode == 0 and f"Resuming from the checkpoint of step {stopped_at}" in (
      resumed.stdout), resumed.stderr
  (s1, p1), (s2, p2) = _final_params(tmp_path / "straight"), _final_params(tmp_path / "stopped")
  assert s1 == s2 == 400
  jax.tree.map(np.testing.assert_array_equal, p1, p2)


def test_no_metric_step_twice_after_a_sigkill_and_resume(tmp_path):
  flags = _toy_flags(400)
  proc = _start(tmp_path / "w", flags)
  _stop_at(proc, "step 150/", signal.SIGKILL)  # killed between the checkpoints of 100 and 200
  resumed = cli(f"--workdir={tmp_path / 'w'}", *flags)
  assert resumed.returncode == 0, resumed.stderr
  records = metrics_log.read_records(str(tmp_path / "w" / "metrics.jsonl"))
  assert [r["step"] for r in records] == list(range(10, 401, 10))
  assert all(r["window"] == 10 for r in records)


def test_records_are_window_means(tmp_path):
  config = toy2d.get_config("8gaussians")
  config.training.num_steps = config.training.checkpoint_every = 6
  config.training.log_every = 1
  run_lib.train_and_evaluate(config, str(tmp_path / "every"))
  config.training.log_every = 3
  run_lib.train_and_evaluate(config, str(tmp_path / "window"))
  every = metrics_log.read_records(str(tmp_path / "every" / "metrics.jsonl"))
  window = metrics_log.read_records(str(tmp_path / "window" / "metrics.jsonl"))
  assert [r["step"] for r in window] == [3, 6] and [r["window"] for r in window] == [3, 3]
  for record, lo in zip(window, (0, 3)):
    for key in ("loss", "grad_norm", "ratio_data"):
      np.testing.assert_allclose(record[key], np.mean([r[key] for r in every[lo:lo + 3]]),
                                 rtol=1e-6)
  assert (tmp_path / "window" / "metrics.png").is_file()


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
  """Reads TensorBoard event files: TFRecord framing (length, crc, data, crc) of Event protos."""
  from tensorboardX.proto import event_pb2
  scalars: dict[str, list[tuple[int, float]]] = {}
  for name in sorted(os.listdir(folder)):
    data = open(os.path.join(folder, name), "rb").read()
    at = 0
    while at < len(data):
      (length,) = struct.unpack("<Q", data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_tensorboard_events_are_written_and_readable(tmp_path):
  config = toy2d.get_config("8gaussians")
  config.training.num_steps, config.training.log_every = 6, 2
  config.training.checkpoint_every = 6
  run_lib.train_and_evaluate(config, str(tmp_path))
  scalars = _tensorboard_scalars(tmp_path / "tensorboard")
  records = metrics_log.read_records(str(tmp_path / "metrics.jsonl"))
  assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in records] == [2, 4, 6]
  np.testing.assert_allclose([v for _, v in scalars["train/loss"]],
                             [r["loss"] for r in records], rtol=1e-6)


def test_an_unreadable_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
  config = toy2d.get_config("8gaussians")
  config.training.num_steps, config.training.checkpoint_every = 6, 2
  straight = run_lib.train_and_evaluate(config, str(tmp_path / "straight"))
  config.training.num_steps = 4
  run_lib.train_and_evaluate(config, str(tmp_path / "w"))
  latest = tmp_path / "w" / "checkpoints" / "4"
  files = sorted((p for p in latest.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
  with open(files[0], "r+b") as f:  # the biggest file of the latest checkpoint, cut in half
    f.truncate(files[0].stat().st_size // 2)
  capsys.readouterr()
  _, _, step = run_lib.restore_latest(config, str(tmp_path / "w"))  # eval / sample: read only
  assert step == 2 and latest.is_dir()
  assert "checkpoint of step 4" in capsys.readouterr().err
  config.training.num_steps = 6
  resumed = run_lib.train_and_evaluate(config, str(tmp_path / "w"))
  err = capsys.readouterr().err
  assert "cannot be read" in err and "unreadable_checkpoints" in err
  assert (tmp_path / "w" / "unreadable_checkpoints" / "4").is_dir()  # kept, out of the way
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params),
               jax.device_get(resumed.params))


def test_an_older_config_json_takes_new_keys_from_the_defaults(tmp_path):
  from configs import digits, from_json
  saved = digits.get_config().to_dict()
  del saved["model"]["neutral_init"], saved["flow"]["clip_every_step"]  # keys added later
  saved["flow"]["num_steps"] = 7
  path = tmp_path / "config.json"
  path.write_text(json.dumps(saved, default=list))
  config = from_json.get_config(str(path))
  assert config.model.neutral_init is True and config.flow.clip_every_step is True
  assert config.flow.num_steps == 7 and config.data.name == "digits"
