"""fdrl_jax.torch_files / torch_objects: torch.save files (written here without torch) read back
with NumPy, and what their objects mean."""

import collections
import os

import numpy as np
import pytest

from fdrl_jax import torch_files, torch_objects
from tests import torch_format
from tests.torch_format import Call, FakeStorage, View, fake_class, fake_function, instance


def _one_line_error(fn, *args, match):
  with pytest.raises(ValueError, match=match) as info:
    fn(*args)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_checkpoint_dict_with_nested_state_dicts_and_dtypes(tmp_path, legacy):
  rng = np.random.default_rng(0)
  weights = collections.OrderedDict([
      ("module.conv1.weight_orig", rng.normal(size=(4, 3, 3, 3)).astype(np.float32)),
      ("module.conv1.weight_u", rng.normal(size=4).astype(np.float32)),
      ("module.linear.bias", np.array([0.5], np.float32))])
  half = np.arange(6, dtype=np.float16).reshape(2, 3)
  ckpt = {"step": 41, "model": weights, "ema": dict(weights),
          "optim": {"state": {0: {"step": np.array(42.0, np.float32),
                                  "exp_avg": np.ones(3, np.float32)}},
                    "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]},
          "scheduler": instance("torch.optim.lr_scheduler", "ExponentialLR", gamma=0.1,
                                lr_lambda=Call(fake_function("dill._dill", "_create_function"),
                                               b"code", {}, "<lambda>")),
          "config": {"dataset": "cifar10", "scheduler_steps": [80000, 90000]},
          "best_fid": np.float64(3.25), "raw": b"\x00\xffbytes", "ids": {1, 2},
          "extras": [half, np.array([True, False]), np.arange(3, dtype=np.int64),
                     np.zeros((0, 2), np.float64)]}
  path = torch_format.torch_save(tmp_path / "ckpt.pt", ckpt, legacy)
  got = torch_files.load(path)
  assert got["step"] == 41 and got["config"] == ckpt["config"]
  assert got["best_fid"] == 3.25 and isinstance(got["best_fid"], np.float64)
  assert got["raw"] == b"\x00\xffbytes" and got["ids"] == {1, 2}
  assert isinstance(got["model"], collections.OrderedDict)
  assert list(got["model"]) == list(weights)
  for name, value in weights.items():
    np.testing.assert_array_equal(got["model"][name], value)
    np.testing.assert_array_equal(got["ema"][name], value)
  assert got["optim"]["state"][0]["step"] == 42.0
  assert got["optim"]["param_groups"][0]["betas"] == (0.9, 0.999)
  for want, have in zip(ckpt["extras"], got["extras"]):
    assert have.dtype == want.dtype and have.shape == want.shape
    np.testing.assert_array_equal(have, want)
  scheduler = got["scheduler"]
  assert isinstance(scheduler, torch_files.Opaque)
  assert scheduler.qualname == "torch.optim.lr_scheduler.ExponentialLR"
  assert scheduler.state["gamma"] == 0.1
  assert scheduler.state["lr_lambda"].qualname == "dill._dill._create_function"
  assert scheduler.state["lr_lambda"].args[2] == "<lambda>"
  state = torch_objects.strip_prefix(torch_objects.state_dict(got["model"], path))
  assert list(state) == ["conv1.weight_orig", "conv1.weight_u", "linear.bias"]
  assert torch_objects.strip_prefix({"a": 1, "module.b": 2}) == {"a": 1, "module.b": 2}


def test_strided_views_and_shared_storages(tmp_path):
  floats = FakeStorage("0", "FloatStorage", np.arange(12, dtype="<f4"))
  obj = {"view": View(floats, 2, (2, 3), (1, 2)), "expanded": View(floats, 1, (2, 3), (0, 1)),
         "again": View(floats, 0, (12,), (1,))}
  got = torch_files.load(torch_format.torch_save(tmp_path / "v.pt", obj))
  np.testing.assert_array_equal(got["view"], [[2, 4, 6], [3, 5, 7]])
  np.testing.assert_array_equal(got["expanded"], [[1, 2, 3], [1, 2, 3]])
  np.testing.assert_array_equal(got["again"], np.arange(12))


def test_multivariate_normal_as_dataset_setup_saves_it(tmp_path):
  rng = np.random.default_rng(1)
  a = rng.normal(size=(6, 6))
  cov, loc = a @ a.T + 1e-4 * np.eye(6), rng.normal(size=6)
  path = torch_format.torch_save(tmp_path / "cifar10_ddp.pt",
                                 torch_format.multivariate_normal(loc, cov))
  dist = torch_files.load(path)
  assert dist.qualname == "torch.distributions.multivariate_normal.MultivariateNormal"
  assert dist.state["_event_shape"] == (6,) and dist.state["_batch_shape"] == ()
  mean, tril = torch_objects.multivariate_normal(dist, path)
  np.testing.assert_allclose(mean, loc, rtol=1e-6)
  np.testing.assert_allclose(tril @ tril.T, cov, rtol=1e-4, atol=1e-5)
  assert np.all(np.triu(tril, 1) == 0)
  # Only the covariance stored: the factor is its Cholesky factor.
  del dist.state["_unbroadcasted_scale_tril"]
  _, tril = torch_objects.multivariate_normal(dist, path)
  np.testing.assert_allclose(tril @ tril.T, cov, rtol=1e-4, atol=1e-5)
  _one_line_error(torch_objects.multivariate_normal, {"loc": loc}, path,
                  match=r"holds a pickled dict, not a torch.distributions.MultivariateNormal")


def test_unknown_globals_are_never_called(tmp_path):
  marker = tmp_path / "ran"
  obj = {"model": {"w": np.ones(2, np.float32)}, "evil": Call(os.mkdir, str(marker)),
         "fn": Call(fake_function("dill._dill", "_create_function"),
                    Call(fake_function("dill._dill", "_create_code"), 1, 2), {}, "f"),
         "type": Call(fake_function("dill._dill", "_load_type"), "lambda")}
  got = torch_files.load(torch_format.torch_save(tmp_path / "dill.pt", obj))
  assert not marker.exists()
  assert got["evil"].qualname in ("os.mkdir", "posix.mkdir")
  assert got["fn"].args[0].qualname == "dill._dill._create_code"
  np.testing.assert_array_equal(got["model"]["w"], [1, 1])
  _one_line_error(torch_objects.state_dict, got, "dill.pt",
                  match=r"dill.pt: a state_dict entry 'model' is a dict, not a tensor")
  _one_line_error(torch_objects.state_dict, got["evil"], "dill.pt",
                  match=r"dill.pt holds a pickled (os|posix).mkdir, not a state_dict")


def test_bad_files_are_one_line_errors(tmp_path):
  (tmp_path / "junk.pt").write_bytes(b"junk" * 10)
  _one_line_error(torch_files.load, str(tmp_path / "junk.pt"),
                  match="junk.pt is not a readable torch.save file: it is neither")
  _one_line_error(torch_files.load, str(tmp_path / "none.pt"), match="none.pt does not exist")
  fake_class("torch", "FloatStorage")
  bad = {"w": View(FakeStorage("0", "FloatStorage", np.zeros(4, "<f4")), 2, (3,), (1,))}
  _one_line_error(torch_files.load, torch_format.torch_save(tmp_path / "past.pt", bad),
                  match=r"reaches outside its storage 0")
