"""A ``gs://`` workdir needs no code change: every file of a run goes through ``etils.epath``.

There is no bucket here, so epath's ``gs://`` backend is replaced by a local folder
(``etils.epath.testing.mock_epath``). Orbax writes its arrays with TensorStore, which speaks
``gs://`` itself and cannot be mocked this way: only the checkpoint folder is mapped to the same
local folder by hand.
"""

import json
import os

import numpy as np
import pytest
from etils.epath import testing as epath_testing

from configs import toy2d
from fdrl_jax import modes, run_lib, workdir as workdirs


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """``gs://bucket/…`` is ``tmp_path/bucket/…`` for epath and for the checkpoint manager."""
  local = lambda p: os.fspath(p).replace("gs://", f"{tmp_path}/", 1)
  one = lambda original, path, *a, **k: original(local(path), *a, **k)
  two = lambda original, path, dst, *a, **k: original(local(path), local(dst), *a, **k)

  def walk(original, top, **k):
    yield from original(local(top), **k)

  manager = workdirs.checkpoint_manager
  monkeypatch.setattr(workdirs, "checkpoint_manager",
                      lambda workdir, keep, **k: manager(local(workdir), keep, **k))
  with epath_testing.mock_epath(open=one, exists=one, isdir=one, listdir=one, makedirs=one,
                                mkdir=one, glob=one, stat=one, remove=one, rmtree=one,
                                rename=two, replace=two, copy=two, walk=walk):
    yield tmp_path / "bucket"


def test_a_run_in_a_gs_workdir(bucket):
  config = toy2d.get_config("8gaussians")
  config.training.num_steps = config.training.checkpoint_every = 4
  config.training.sample_every, config.training.log_every = 2, 2
  config.eval.num_samples, config.eval.num_reference = 200, 200
  workdir = "gs://bucket/run"
  run_lib.train_and_evaluate(config, workdir)
  run_lib.train_and_evaluate(config, workdir)  # the config check reads config.json back
  result = modes.evaluate_to_file(config, workdir)
  assert result["path"] == "gs://bucket/run/eval_step_0000004.json"
  modes.sample_to_file(config, workdir, 5, "gs://bucket/out/x.npz")
  with pytest.raises(ValueError, match="exists; choose a new file"):
    modes.sample_to_file(config, workdir, 5, "gs://bucket/out/x.npz")

  run = bucket / "run"
  assert json.loads((run / "config.json").read_text())["data"]["name"] == "8gaussians"
  assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [
      2, 4]
  assert sorted(os.listdir(run / "samples")) == ["step_0000002.png", "step_0000004.png"]
  assert json.loads((run / "eval_step_0000004.json").read_text())["rows"] == result["rows"]
  with np.load(bucket / "out" / "x.npz") as f:
    assert f["x"].shape == (5, 2)
  assert not os.path.exists("gs:")  # nothing went to a local folder named after the URI
