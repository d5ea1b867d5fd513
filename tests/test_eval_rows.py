"""--mode=eval's rows (issue 24's contract): several flow lengths from one flow, KID / precision-
recall beside FD-digits, a GAN's refinement before and after, class-conditional rows by a judge."""

import json
import shutil

import numpy as np
import pytest

from configs import cifar10, toy2d
from fdrl_jax import features, loading, metric_table, modes, run_lib, sampling, scores
from helpers import tiny_classifier_config, tiny_digits_config, tiny_gan_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny FDRL digits run (K + κ = 3), a tiny MonoFlow GAN and two tiny classifier runs."""
  root = tmp_path_factory.mktemp("rows")
  run_lib.train_and_evaluate(tiny_digits_config(4), str(root / "fdrl"))
  run_lib.train_and_evaluate(tiny_gan_config(2), str(root / "gan"))
  run_lib.train_and_evaluate(tiny_classifier_config(10), str(root / "clf"))
  shutil.copytree(root / "clf", root / "judge")  # another workdir: the judge is never the guide
  return {name: str(root / name) for name in ("fdrl", "gan", "clf", "judge")}


def evaluate(config, workdir, **changes):
  for key, value in changes.items():
    setattr(config.eval, key, value)
  result = modes.evaluate_to_file(config, workdir)
  with open(result["path"]) as f:
    assert json.load(f) == {k: v for k, v in result.items() if k != "path"}
  return result


def fdrl_config():
  config = tiny_digits_config(4)
  config.eval.num_samples = 24
  return config


def test_one_pass_lengths_equal_separate_flows(runs):
  config = fdrl_config()
  together = evaluate(config, runs["fdrl"], flow_lengths="1,3,5")
  assert together["flow_lengths"] == [1, 3, 5]
  assert [r["flow_length"] for r in together["rows"]] == [1, 3, 5]
  default = evaluate(fdrl_config(), runs["fdrl"])  # K + κ = 3 by the run's own sampler
  alone = [evaluate(fdrl_config(), runs["fdrl"], flow_lengths=str(n))["rows"][0]
           for n in (1, 5)]
  for row, expected in zip(together["rows"], [alone[0], default["rows"][0], alone[1]]):
    assert row.keys() == expected.keys()
    for key in row:
      np.testing.assert_allclose(row[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
  prior, floor = together["rows"][0]["fd_digits_prior"], together["rows"][0]["fd_digits_floor"]
  assert all(r["fd_digits_prior"] == prior and r["fd_digits_floor"] == floor
             for r in together["rows"])  # the baseline and the floor are computed once


def test_rows_hold_fd_kid_pr_and_equal_the_scores_of_the_samples_features(runs):
  config = fdrl_config()
  result = evaluate(config, runs["fdrl"], metrics="fd_digits,kid,pr", flow_lengths="2,3")
  assert result["metrics"] == ["fd_digits", "kid", "pr"] and result["quantize"] is False
  for row in result["rows"]:
    for key in ("step", "flow_length", "fd_digits", "kid", "kid_std", "precision", "recall"):
      assert np.isfinite(row[key]), key
    for key in ("fd_digits", "kid", "kid_std", "precision", "recall"):
      assert f"{key}_prior" in row and f"{key}_floor" in row
  # The row of K + κ = 3 against scores.* on the same samples' features (the run's own sampler).
  run, state, _ = loading.restore_for_sampling(config, runs["fdrl"])
  x = sampling.draw(run.sampler(), state, run.sample_key_for(0), 24, config.data.batch_size)
  extract = features.extractor(config, run.dataset).features
  mine, reference = extract(x), extract(run.dataset.test)
  row = result["rows"][1]
  kid, kid_std = scores.kernel_inception_distance(mine, reference)
  precision, recall = scores.precision_recall(mine, reference)
  np.testing.assert_allclose([row["kid"], row["kid_std"]], [kid, kid_std], rtol=1e-4, atol=1e-6)
  assert (row["precision"], row["recall"]) == pytest.approx((precision, recall), abs=1e-9)
  np.testing.assert_allclose(row["fd_digits"], scores.frechet_distance(
      *scores.feature_statistics(mine), *scores.feature_statistics(reference)), rtol=1e-4)


def test_unknown_or_foreign_metrics_are_one_line(runs):
  with pytest.raises(ValueError, match="Unknown --config.eval.metrics='kdi'") as info:
    evaluate(fdrl_config(), runs["fdrl"], metrics="fd_digits,kdi")
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="this evaluation's are --config.eval.metric=fd_digits's"):
    evaluate(fdrl_config(), runs["fdrl"], metrics="fid")
  with pytest.raises(ValueError, match="flow_lengths='2,x' must be comma-separated step counts"):
    evaluate(fdrl_config(), runs["fdrl"], flow_lengths="2,x")


def test_fast_evaluation_reports_kid_beside_the_frechet_distance():
  config = cifar10.get_config()
  assert metric_table.metric_names(config) == ["fid"]
  config.eval.fast = True  # 1 000 samples: FID is biased there, KID is not
  assert metric_table.metric_names(config) == ["fid", "kid"]
  config.eval.metrics = "fid,pr"  # a list given is the list scored
  assert metric_table.metric_names(config) == ["fid", "pr"]
  config.eval.metrics, config.eval.reference_stats = "", "published_mu_sigma.npz"
  assert metric_table.metric_names(config) == ["fid"]  # such a file holds no feature rows
  toy = toy2d.get_config("8gaussians")
  toy.eval.fast = True
  assert metric_table.metric_names(toy) == ["mmd"]


def test_gan_refinement_rows_before_and_after(runs):
  config = tiny_gan_config(2)
  config.eval.num_samples = 16
  config.sampling.name, config.refine.num_steps = "refine", 2
  result = evaluate(config, runs["gan"], flow_lengths="1,2")
  assert [r["flow_length"] for r in result["rows"]] == [0, 1, 2]  # 0: G(z) before refinement
  for row in result["rows"]:
    assert np.isfinite(row["fd_digits"]) and np.isfinite(row["fd_digits_floor"])
    assert "fd_digits_prior" not in row  # a GAN has no prior
  assert result["rows"][0]["fd_digits"] != result["rows"][2]["fd_digits"]
  default = evaluate(config, runs["gan"], flow_lengths="")  # refine.num_steps, and before
  assert [r["flow_length"] for r in default["rows"]] == [0, 2]
  for row, expected in zip(default["rows"], [result["rows"][0], result["rows"][2]]):
    np.testing.assert_allclose(row["fd_digits"], expected["fd_digits"], rtol=1e-5)


def conditional_config(runs):
  config = fdrl_config()
  config.eval.num_samples = 50  # 5 per class
  config.sampling.name, config.sampling.classifier_workdir = "conditional", runs["clf"]
  return config


def test_conditional_rows_per_class_by_a_judge(runs):
  config = conditional_config(runs)
  result = evaluate(config, runs["fdrl"], judge_workdir=runs["judge"], flow_lengths="1,3")
  rows = result["rows"]
  assert [r["class"] for r in rows] == [n for n in range(10) for _ in (1, 3)] + ["all", "all"]
  assert [r["flow_length"] for r in rows] == [1, 3] * 11
  for row in rows:
    assert 0 <= row["on_class"] <= 1 and np.isfinite(row["fd_digits"])
    assert ("fd_digits_prior" in row) == (row["class"] == "all")
  for i, length in enumerate((1, 3)):
    per_class = [r["on_class"] for r in rows[i:20:2]]
    assert rows[20 + i]["on_class"] == pytest.approx(np.mean(per_class))


@pytest.mark.parametrize("judge", ["", "clf"])
def test_the_judge_is_never_the_guide(runs, judge):
  config = conditional_config(runs)
  with pytest.raises(ValueError, match="judged by --config.eval.judge_workdir=DIR, a classifier "
                                       "run other than the guiding") as info:
    evaluate(config, runs["fdrl"], judge_workdir=runs.get(judge, ""))
  assert "\n" not in str(info.value)
