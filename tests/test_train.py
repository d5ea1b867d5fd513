"""Training (Algorithm 1): data-parallel equivalence, exact resume, the CLI end to end, bad input."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from helpers import TINY_FLAGS, cli, straight_and_resumed, tiny_digits_config

from configs import digits, toy2d
from fdrl_jax import datasets, files, modes, parallel, prior_fit, run_lib, train_hooks


def one_step(config, devices):
  """One training step of ``config`` on a mesh over ``devices``; returns parameters and metrics."""
  run = run_lib.Run(config, parallel.data_mesh(devices))
  state, metrics = run.train_step()(run.new_state(fit=True), run.batch(0), jax.random.key(1))
  return jax.device_get(state.params), jax.device_get(metrics)


def test_four_devices_equal_one_device():
  assert len(jax.devices()) == 4, "tests/conftest.py fakes 4 CPU devices"
  config = tiny_digits_config()
  config.data.random_flip = True  # exercise every random input of the step
  params_1, metrics_1 = one_step(config, jax.devices()[:1])
  params_4, metrics_4 = one_step(config, jax.devices())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params_1, params_4)
  np.testing.assert_allclose(metrics_1["loss"], metrics_4["loss"], rtol=1e-4)


def test_step_moves_every_parameter_and_keeps_them_finite():
  config = tiny_digits_config()
  params, metrics = one_step(config, jax.devices()[:1])
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))
  assert set(metrics) == {"loss", "data_term", "flowed_term", "ratio_data", "ratio_flowed",
                          "grad_norm"}


def test_hooks_run_at_the_loops_points_and_resume_where_it_does(tmp_path):
  config = toy2d.get_config("8gaussians")
  config.training.num_steps = 4
  config.training.checkpoint_every = config.training.log_every = 2
  config.training.sample_every = 4
  calls = []

  class Recorder(train_hooks.Hook):
    def begin(self, run, state, step):
      calls.append(("begin", step, int(state.step)))

    def end(self, run, state):
      calls.append(("end", int(state.step)))

  after = lambda step, state, metrics: calls.append((step, int(state.step), "loss" in metrics))
  run_lib.train_and_evaluate(config, str(tmp_path / "w"), hooks=[Recorder(), after])
  assert calls == [("begin", 0, 0), (1, 1, True), (2, 2, True), (3, 3, True), (4, 4, True),
                   ("end", 4)]
  calls.clear()
  config.training.num_steps = 6
  run_lib.train_and_evaluate(config, str(tmp_path / "w"), hooks=[Recorder(), after])
  assert calls == [("begin", 4, 4), (5, 5, True), (6, 6, True), ("end", 6)]


def test_resume_replays_exactly(tmp_path):
  config = toy2d.get_config("8gaussians")
  config.training.num_steps = 6
  config.training.checkpoint_every = 3
  config.training.sample_every = 6
  config.training.log_every = 3
  straight, resumed = straight_and_resumed(config, tmp_path, stop=3)
  assert int(resumed.step) == int(straight.step) == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params),
               jax.device_get(resumed.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.opt_state),
               jax.device_get(resumed.opt_state))


def test_training_starts_with_one_header_line(tmp_path, capsys):
  config = toy2d.get_config("8gaussians")
  config.training.num_steps = 4
  config.training.checkpoint_every = config.training.log_every = config.training.sample_every = 2
  workdir = str(tmp_path / "w")
  run_lib.train_and_evaluate(config, workdir)
  config.training.num_steps = 6
  run_lib.train_and_evaluate(config, workdir)
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Training ")]
  assert lines == [
      f"Training fdrl (config given in Python) in {workdir} on 4 cpu devices in 1 process(es): "
      f"steps {a} to {b}; samples to {os.path.join(workdir, 'samples')}, checkpoints to "
      f"{os.path.join(workdir, 'checkpoints')}" for a, b in ((0, 4), (4, 6))]


def test_interrupted_save_is_not_taken_as_latest(tmp_path):
  config = toy2d.get_config("8gaussians")
  config.training.num_steps = 2
  config.training.checkpoint_every = 2
  workdir = tmp_path / "run"
  run_lib.train_and_evaluate(config, str(workdir))
  ckpts = workdir / "checkpoints"
  # What a save killed half-way leaves: an unfinalised temporary folder of a later step.
  shutil.copytree(ckpts / "2", ckpts / "4.orbax-checkpoint-tmp-1700000000000000")
  (ckpts / "4.orbax-checkpoint-tmp-1700000000000000" / "commit_success.txt").unlink(
      missing_ok=True)
  config.training.num_steps = 4
  state = run_lib.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 4  # resumed from step 2, not from the half-written step 4
  assert (ckpts / "4").is_dir()


def test_digits_end_to_end_through_main(tmp_path):
  workdir = str(tmp_path / "digits")
  first = cli("--config=configs/digits.py", f"--workdir={workdir}",
              "--config.training.num_steps=3", *TINY_FLAGS)
  assert first.returncode == 0, first.stderr
  header = [line for line in first.stdout.splitlines() if line.startswith("Training ")]
  assert len(header) == 1 and "(config configs/digits.py)" in header[0], first.stdout
  assert f"in {workdir} on " in header[0] and "steps 0 to 3;" in header[0]
  second = cli("--config=configs/digits.py", f"--workdir={workdir}",
               "--config.training.num_steps=5", *TINY_FLAGS)
  assert second.returncode == 0, second.stderr
  assert "Resuming from the checkpoint of step 3" in second.stdout
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3", "4", "5"][-3:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [2, 3, 4, 5]
  assert all(np.isfinite(r["loss"]) for r in records)
  assert sorted(os.listdir(os.path.join(workdir, "samples"))) == [
      "step_0000003.png", "step_0000005.png"]
  out = str(tmp_path / "samples.npz")
  sampled = cli("--config=configs/digits.py", f"--workdir={workdir}", "--mode=sample",
                "--num_samples=10", f"--output={out}", *TINY_FLAGS)
  assert sampled.returncode == 0, sampled.stderr
  x = np.load(out)["x"]
  assert x.shape == (10, 8, 8, 1) and x.min() >= -1 and x.max() <= 1
  again = cli("--config=configs/digits.py", f"--workdir={workdir}", "--mode=sample",
              "--num_samples=10", f"--output={out}", *TINY_FLAGS)
  assert again.returncode == 2 and "exists" in again.stderr
  evaluated = cli("--config=configs/digits.py", f"--workdir={workdir}", "--mode=eval",
                  "--config.eval.num_samples=40", *TINY_FLAGS)
  assert evaluated.returncode == 0, evaluated.stderr
  with open(os.path.join(workdir, "eval_step_0000005.json")) as f:
    result = json.load(f)
  assert result["step"] == 5 and result["num_samples"] == 40
  (row,) = result["rows"]
  assert row["step"] == 5 and row["flow_length"] == 3  # K + κ of TINY_FLAGS
  assert 0 < row["fd_digits_floor"] < row["fd_digits_prior"]
  assert np.isfinite(row["fd_digits"]) and 0 <= row["confident_share"] <= 1


@pytest.mark.parametrize("args, message", [
    (["--config.flow.nm=3"], "unknown config key 'flow.nm'"),
    (["--config.flow.num_stepz=3"], "unknown config key 'flow.num_stepz' in a --config.* override "
                                    "(did you mean 'num_steps'?)"),
    (["--config.flow.num_steps=abc"], "invalid literal for int()"),
    (["--config.loss.name=bce"], "Unknown --config.loss.name='bce'; available: kl, lr, lsif."),
])
def test_bad_config_is_one_line(tmp_path, args, message):
  result = cli("--config=configs/toy2d.py:chasm", f"--workdir={tmp_path / 'w'}", *args)
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1 and message in result.stderr
  assert not (tmp_path / "w" / "config.json").exists()  # nothing committed by a failed start


def test_bad_workdirs(tmp_path):
  config = tiny_digits_config()
  a_file = tmp_path / "file"
  a_file.write_text("mine")
  with pytest.raises(ValueError, match="is a file"):
    run_lib.train_and_evaluate(config, str(a_file))
  assert a_file.read_text() == "mine"
  with open(tmp_path / "config.json", "w") as f:
    json.dump({**json.loads(config.to_json()), "loss": {"name": "lsif"}}, f)
  with pytest.raises(ValueError, match="different config.*loss"):
    run_lib.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(ValueError, match="has no checkpoint yet|holds no run"):
    modes.sample_to_file(config, str(tmp_path / "empty"), 4, str(tmp_path / "s.npz"))
  with pytest.raises(ValueError, match="has no checkpoint yet|holds no run"):
    modes.evaluate_to_file(config, str(tmp_path / "empty"))
  toy = toy2d.get_config("8gaussians")
  toy.eval.metric = "fd_digits"
  with pytest.raises(ValueError, match="FD-digits needs the bundled digits"):
    modes.evaluate_to_file(toy, str(tmp_path / "empty"))
  config.eval.num_samples = 1
  with pytest.raises(ValueError, match="eval.num_samples=1: a Fréchet distance needs"):
    modes.evaluate_to_file(config, str(tmp_path / "empty"))
  config.eval.num_samples = 100
  config.eval.metric = "fid"
  with pytest.raises(ValueError, match="FID needs --config.eval.inception_weights=FILE.npz"):
    modes.evaluate_to_file(config, str(tmp_path / "empty"))


def test_nan_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_digits_config(num_steps=40)
  config.optim.learning_rate = 1e6  # diverges within a few steps
  config.flow.clip = False
  workdir = tmp_path / "nan"
  stopped = r"at step \d+\. (The last good checkpoint|No checkpoint was saved)"
  with pytest.raises(run_lib.TrainingDiverged, match=stopped) as info:
    run_lib.train_and_evaluate(config, str(workdir))
  bad_step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
  saved = sorted(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())
  assert all(s < bad_step for s in saved)
  if (workdir / "metrics.jsonl").exists():
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert all(np.isfinite(r["loss"]) for r in records)


def test_batch_not_divisible_by_devices_is_refused(tmp_path):
  config = toy2d.get_config("8gaussians")
  config.data.batch_size = 6  # 4 fake devices
  with pytest.raises(ValueError, match=r"batch size \(6\) must be divisible by the number of "
                                       r"devices \(4\)"):
    run_lib.train_and_evaluate(config, str(tmp_path / "w"))


def test_prefetch_yields_in_order_and_reraises():
  assert list(datasets.prefetch(lambda s: s * s, range(3, 9))) == [9, 16, 25, 36, 49, 64]
  def boom(step):
    if step == 2:
      raise ValueError("bad batch 2")
    return step
  with pytest.raises(ValueError, match="bad batch 2"):
    list(datasets.prefetch(boom, range(5)))


@pytest.mark.parametrize("prior", ["gaussian", "low_rank", "uniform", "normal"])
def test_prior_restore_template_matches_the_fitted_prior(prior):
  config = digits.get_config()
  config.prior.name = prior
  config.prior.rank = 3
  images = np.random.default_rng(0).uniform(-1, 1, (40, 4, 4, 1)).astype(np.float32)
  fitted = prior_fit.build_prior(config, images, (4, 4, 1))
  template = prior_fit.build_prior(config, None, (4, 4, 1))
  assert jax.tree.structure(fitted) == jax.tree.structure(template)
  assert [a.shape for a in jax.tree.leaves(fitted)] == [a.shape for a in jax.tree.leaves(template)]


def test_write_new_file_never_replaces_a_file(tmp_path):
  out = tmp_path / "sub" / "x.npz"
  assert files.write_new_file(str(out), lambda p: open(p, "w").write("new")) == str(out)
  assert out.read_text() == "new"
  with pytest.raises(ValueError, match="exists; choose a new file"):
    files.write_new_file(str(out), lambda p: open(p, "w").write("newer"))

  racer = tmp_path / "race.png"
  def write_while_someone_creates_the_output(path):  # the name appears after the first check
    open(path, "w").write("mine")
    racer.write_text("theirs")
  with pytest.raises(ValueError, match="exists"):
    files.write_new_file(str(racer), write_while_someone_creates_the_output)
  assert racer.read_text() == "theirs"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["race.png", "sub"]  # no temporary left
