"""Evaluation of a series of checkpoints (``--config.eval.checkpoints``) and during training
(``--config.training.eval_every``): the rows, eval.jsonl, TensorBoard, and training unchanged."""

import json
import os
import shutil
import struct

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from configs import toy2d
from fdrl_jax import metrics_log, modes, run_lib
from helpers import straight_and_resumed


def tiny_toy(num_steps=4):
  """The 8-Gaussians run, small: 4 steps, a checkpoint every 2, MMD of 64 samples."""
  config = toy2d.get_config("8gaussians")
  config.data.batch_size = 16
  config.flow.num_steps = 3
  config.training.num_steps = num_steps
  config.training.checkpoint_every = config.training.log_every = 2
  config.training.sample_every = 2
  config.training.num_grid_samples = 16
  config.eval.num_samples = 64
  config.eval.num_reference = 64
  return config


def tensorboard_tags(workdir) -> dict[str, list[int]]:
  """Tag → the steps it was written at, read from the TFRecord event files of ``workdir``."""
  tags: dict[str, list[int]] = {}
  folder = os.path.join(workdir, "tensorboard")
  for name in sorted(os.listdir(folder)):
    data = open(os.path.join(folder, name), "rb").read()
    at = 0
    while at < len(data):
      length, = struct.unpack("<Q", data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  return tags


@pytest.mark.parametrize("spec, chosen", [
    ("latest", [6]), ("all", [2, 4, 6]), ("every:4", [4]), ("every:2", [2, 4, 6]),
    ("6, 2", [2, 6]), ("4", [4])])
def test_checkpoint_choices(spec, chosen):
  assert modes.select_steps(spec, [2, 4, 6], 6) == chosen


@pytest.mark.parametrize("spec, message", [
    ("lates", "Unknown --config.eval.checkpoints='lates' (did you mean 'latest'?); available: "),
    ("3,4", "--config.eval.checkpoints='3,4': no checkpoint of step 3; steps there: 2, 4, 6."),
    ("every:5", "no checkpoint step is a multiple of 5; steps there: 2, 4, 6."),
    ("every:0", "every:N needs a whole number N >= 1."),
])
def test_bad_checkpoint_choice_is_one_line(spec, message):
  with pytest.raises(ValueError) as info:
    modes.select_steps(spec, [2, 4, 6], 6)
  assert message in str(info.value) and "\n" not in str(info.value)


def test_eval_rows_of_both_result_shapes():
  plain = {"metric": "mmd", "num_samples": 8, "mmd": 0.5}
  assert metrics_log.eval_rows(plain, 3) == [{"step": 3, **plain}]
  with_rows = {"metrics": ["fid"], "rows": [{"flow_length": 10, "fid": 2.0},
                                            {"flow_length": 20, "fid": 1.0}]}
  rows = metrics_log.eval_rows(with_rows, 3)
  assert rows == [{"step": 3, "flow_length": 10, "fid": 2.0}, {"step": 3, "flow_length": 20,
                                                                "fid": 1.0}]
  assert metrics_log.eval_scalars(rows) == {"eval/fid/flow_length=10": 2.0,
                                            "eval/fid/flow_length=20": 1.0}
  assert metrics_log.eval_scalars(metrics_log.eval_rows(plain, 3)) == {"eval/mmd": 0.5}


def test_series_of_checkpoints_in_one_file(tmp_path):
  config = tiny_toy(num_steps=6)
  workdir = str(tmp_path / "run")
  run_lib.train_and_evaluate(config, workdir)
  latest = modes.evaluate_to_file(config, workdir)
  assert os.path.basename(latest["path"]) == "eval_step_0000006.json"
  assert [row["step"] for row in latest["rows"]] == [6]
  config.eval.checkpoints = "all"
  series = modes.evaluate_to_file(config, workdir)
  assert os.path.basename(series["path"]) == "eval_steps_0000002-0000006.json"
  with open(series["path"]) as f:
    written = json.load(f)
  assert written["steps"] == [2, 4, 6] and [r["step"] for r in written["results"]] == [2, 4, 6]
  assert [row["step"] for row in written["rows"]] == [2, 4, 6]
  assert written["rows"][-1] == latest["rows"][0]  # the same keys: the same score
  assert len({row["mmd"] for row in written["rows"]}) == 3
  config.eval.checkpoints = "4"
  one = modes.evaluate_to_file(config, workdir)
  assert os.path.basename(one["path"]) == "eval_step_0000004.json"
  assert one["rows"] == [written["rows"][1]]
  config.eval.checkpoints = "5"
  with pytest.raises(ValueError, match=r"no checkpoint of step 5; steps there: 2, 4, 6\.$"):
    modes.evaluate_to_file(config, workdir)


def test_eval_during_training_changes_nothing_and_is_logged(tmp_path):
  config = tiny_toy()
  plain = run_lib.train_and_evaluate(config, str(tmp_path / "plain"))
  config.training.eval_every = 2
  workdir = str(tmp_path / "evaluated")
  evaluated = run_lib.train_and_evaluate(config, workdir)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(plain.params),
               jax.device_get(evaluated.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(plain.ema_params),
               jax.device_get(evaluated.ema_params))
  rows = metrics_log.read_records(os.path.join(workdir, "eval.jsonl"))
  assert [r["step"] for r in rows] == [2, 4] and all(np.isfinite(r["mmd"]) for r in rows)
  # the same score as --mode=eval of that checkpoint
  assert modes.evaluate_to_file(config, workdir)["rows"] == rows[-1:]
  tags = tensorboard_tags(workdir)
  assert tags["eval/mmd"] == [2, 4] and tags["samples"] == [2, 4]
  assert "train/loss" in tags
  assert os.path.getsize(os.path.join(workdir, "metrics.png")) > 0


def test_resume_with_eval_every_is_exact_and_logs_each_step_once(tmp_path):
  config = tiny_toy(num_steps=6)
  config.training.eval_every = 2
  config.training.checkpoint_every = 3
  straight, resumed = straight_and_resumed(config, tmp_path, stop=4)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params),
               jax.device_get(resumed.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.opt_state),
               jax.device_get(resumed.opt_state))
  for name in ("straight", "resumed"):
    rows = metrics_log.read_records(str(tmp_path / name / "eval.jsonl"))
    assert [r["step"] for r in rows] == [2, 4, 6], name
  # A resume from an earlier checkpoint drops the rows of the steps it replays.
  workdir = tmp_path / "resumed"
  for step in ("6", "4"):
    shutil.rmtree(workdir / "checkpoints" / step)
  again = run_lib.train_and_evaluate(config, str(workdir))  # from step 3
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params),
               jax.device_get(again.params))
  rows = metrics_log.read_records(str(workdir / "eval.jsonl"))
  assert [r["step"] for r in rows] == [2, 4, 6]
