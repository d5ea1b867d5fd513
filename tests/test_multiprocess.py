"""Two real processes (gloo CPU collectives, 2 CPU devices each) form one run: training equals one
process on 4 devices checkpoint for checkpoint, resumes and runs hundreds of steps (steps
dispatched ahead once deadlocked gloo after ~50–250 of them), and sample / eval / figure write
each file once."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import toy2d
from fdrl_jax import run_lib, workdir as workdirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=configs/toy2d.py:8gaussians"
LONG = 300  # steps of the resumed run
FLAGS = ["--config.training.num_steps=6", "--config.training.checkpoint_every=3",
         "--config.training.log_every=2", "--config.training.sample_every=3",
         "--config.training.num_grid_samples=64", "--config.eval.num_samples=100",
         "--config.eval.num_reference=200", "--config.data.batch_size=64"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def two_processes(*args: str) -> list[subprocess.CompletedProcess]:
  """``python -m fdrl_jax.main ARGS`` as processes 0 and 1 of one run, 2 CPU devices each."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "fdrl_jax.main", *args, "--distributed",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  done = []
  for p in procs:
    out, err = p.communicate(timeout=300)
    done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
  for d in done:
    assert d.returncode == 0, d.stderr[-3000:]
  return done


def one_process(*args: str) -> subprocess.CompletedProcess:
  done = subprocess.run([sys.executable, "-m", "fdrl_jax.main", *args], cwd=ROOT, env=_env(4),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def _restore(workdir: str, step: int):
  config = toy2d.get_config("8gaussians")
  for flag in FLAGS:
    key, value = flag[len("--config."):].split("=")
    section, name = key.split(".")
    config[section][name] = type(config[section][name])(value)
  run = run_lib.Run(config)
  with workdirs.checkpoint_manager(workdir, 5) as mngr:
    return run.restore(mngr, step)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("mp")
  multi, single = str(root / "multi"), str(root / "single")
  trained = two_processes(CONFIG, f"--workdir={multi}", *FLAGS)
  one_process(CONFIG, f"--workdir={single}", *FLAGS)
  longer = [f"--config.training.num_steps={LONG}", "--config.training.checkpoint_every=150",
            "--config.training.log_every=50", f"--config.training.sample_every={LONG}",
            "--config.training.keep_checkpoints=5"]
  resumed = two_processes(CONFIG, f"--workdir={multi}", *FLAGS, *longer)
  one_process(CONFIG, f"--workdir={single}", *FLAGS, *longer)
  return root, multi, single, trained + resumed


def test_two_processes_train_as_one_process_on_four_devices(runs):
  _, multi, single, done = runs
  assert all("Resuming from the checkpoint of step 6" in d.stdout for d in done[2:])
  # After hundreds of steps the parameters drift apart by the reduction order, as they do
  # between one process on 4 and on 2 devices (both ~0.02 at step 150: Adam's normalised steps
  # amplify last-bit differences of near-zero gradients); the losses stay together.
  losses = [[json.loads(line)["loss"] for line in open(os.path.join(w, "metrics.jsonl"))]
            for w in (multi, single)]
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-2)
  for step in (3, 6):
    a, b = _restore(multi, step), _restore(single, step)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                 jax.device_get(a.params), jax.device_get(b.params))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                 jax.device_get(a.ema_params), jax.device_get(b.ema_params))


def test_one_writer_during_training(runs):
  _, multi, single, _ = runs
  steps = [json.loads(line)["step"] for line in open(os.path.join(multi, "metrics.jsonl"))]
  # each logged step once: 3 and 6 flush for their checkpoints, then the resumed run's
  assert steps == [2, 3, 4, 6, 50, 100, 150, 200, 250, 300]
  assert steps == [json.loads(line)["step"]
                   for line in open(os.path.join(single, "metrics.jsonl"))]
  assert sorted(os.listdir(os.path.join(multi, "samples"))) == [
      "step_0000003.png", "step_0000006.png", f"step_{LONG:07d}.png"]
  assert not [f for f in os.listdir(multi) if f.startswith(".new-")]


def test_sample_eval_and_figure_write_once(runs):
  root, multi, single, _ = runs
  # No --output: a new samples.npz in the workdir, as the command gives it.
  two_processes(CONFIG, f"--workdir={multi}", *FLAGS, "--mode=sample", "--num_samples=10")
  out = os.path.join(multi, "samples.npz")
  reference = str(root / "x1.npz")
  # the same checkpoint sampled by one process on 4 devices
  one_process(CONFIG, f"--workdir={multi}", *FLAGS, "--mode=sample", "--num_samples=10",
              f"--output={reference}")
  with np.load(out) as a, np.load(reference) as b:
    assert a["x"].shape == (10, 2)  # 10 asked for, 12 drawn on 4 devices, 10 kept
    np.testing.assert_allclose(a["x"], b["x"], rtol=1e-4, atol=1e-4)

  evals = two_processes(CONFIG, f"--workdir={multi}", *FLAGS, "--mode=eval")
  written = [f for f in os.listdir(multi) if f.startswith("eval_step_")]
  assert written == [f"eval_step_{LONG:07d}.json"]
  results = [json.loads(e.stdout[e.stdout.index("{"):]) for e in evals]
  assert results[0] == results[1] and results[0]["mmd"] < results[0]["mmd_prior"]

  two_processes(CONFIG, f"--workdir={multi}", *FLAGS, "--mode=figure")  # a grid by default
  made = [f for f in os.listdir(multi) if f.endswith((".png", ".npz"))]
  assert sorted(made) == ["figure_grid.png", "metrics.png", "samples.npz"]
  assert not [f for f in os.listdir(multi) if f.startswith(".new-")]
