"""The GPU readiness check (experiments/device_check.py) dry-run on CPU at tiny sizes, and the
training step's memory kept flat in the flow length K."""

import os
import subprocess
import sys

import jax

from configs import digits
from fdrl_jax import fdrl, optim, priors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_device_check_dry_run_writes_its_table(tmp_path):
  done = subprocess.run(
      [sys.executable, "-m", "experiments.device_check", "--configs", "mnist", "--batch", "2",
       "--flow_steps", "1", "--refine_steps", "0", "--sample_batch", "2", "--repeats", "1",
       "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "XLA_FLAGS": "", "PYTHONPATH": ROOT})
  assert done.returncode == 0, done.stderr[-3000:]
  text = (tmp_path / "device_check.md").read_text()
  rows = [line for line in text.splitlines() if line.startswith("| mnist |")]
  assert [row.split(" | ")[1] for row in rows[:2]] == ["float32", "bfloat16"]
  assert "(1)" in rows[0] and "(100000 steps)" in rows[0]  # K + κ = 1; the config's length
  assert len(rows) == 3  # and the bfloat16 difference row


def test_training_step_memory_is_flat_in_the_flow_length():
  def temp_bytes(k):
    config = digits.get_config()
    config.flow.num_steps = k
    shape = (8, 8, 1)
    state = fdrl.create_train_state(fdrl.create_estimator(config), optim.build_optimizer(config),
                                    priors.UniformPrior(shape), jax.random.key(0), shape)
    dataset = type("Images", (), {"event_shape": shape, "is_image": True})()
    step = jax.jit(fdrl.build_train_step(config, dataset, None))
    batch = jax.numpy.zeros((64, *shape))
    compiled = step.lower(state, batch, jax.random.key(1)).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  assert temp_bytes(200) <= temp_bytes(2) + 4096


def test_compile_only_reports_compile_time_and_memory(tmp_path, monkeypatch):
  from experiments import device_check
  monkeypatch.setattr(sys, "argv", ["device_check.py", "--configs", "mnist", "--dtypes",
                                    "float32", "--batch", "2", "--flow_steps", "1",
                                    "--compile_only", "--out", str(tmp_path)])
  device_check.main()
  text = (tmp_path / "device_check.md").read_text()
  assert "compiled only" in text
  (row,) = [line for line in text.splitlines() if line.startswith("| mnist |")]
  compile_s, temp_mib = (float(cell) for cell in row.strip(" |").split(" | ")[2:])
  assert compile_s > 0 and temp_mib > 0
