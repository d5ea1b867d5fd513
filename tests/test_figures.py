"""The figures: the arrays behind each picture, the promised pixel layouts, no overwriting, the CLI.

One tiny digits run (2 training steps, K + κ = 2 + 1 flow steps) is trained once for the module.
8×8 digits are enlarged 4× by images.grid's rule, so a picture of R rows and C columns is
(33 R + 1) × (33 C + 1) pixels.
"""

import os
import re

import jax
import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from configs import toy2d
from fdrl_jax import features, figure_arrays, figures, images, priors, run_lib, scores
from helpers import TINY_FLAGS, cli, tiny_digits_config

CELL = 33  # 8 pixels × 4 + a 1-pixel border


def png_size(path):
  with Image.open(path) as image:
    assert image.format == "PNG" and image.mode == "RGB"
    return image.height, image.width


def assert_layout(path, rows, cols):
  """A figure of rows × cols cells under its one-line title band (widened for a long title)."""
  height, width = png_size(path)
  assert height == CELL * rows + 1 + images.TITLE_LINE and width >= CELL * cols + 1
  with Image.open(path) as image:
    band = np.asarray(image)[:images.TITLE_LINE]
  assert (band < 128).any()  # some text in the band


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  config = tiny_digits_config(num_steps=2)
  workdir = str(tmp_path_factory.mktemp("figures") / "digits")
  run_lib.train_and_evaluate(config, workdir)
  run, state, _ = run_lib.restore_latest(config, workdir)
  return config, workdir, run, state


def test_grid_png_layout(trained, tmp_path):
  config, workdir, _, _ = trained
  path = figures.grid(config, workdir, str(tmp_path / "grid.png"), num_samples=6)
  assert_layout(path, 2, 3)  # images.grid: ⌈√6⌉ = 3 columns, 2 rows


def test_snapshot_plan():
  assert figure_arrays.snapshot_plan(120) == (12, list(range(0, 121, 12)))  # 11 columns
  assert figure_arrays.snapshot_plan(20) == (2, list(range(0, 21, 2)))
  assert figure_arrays.snapshot_plan(25) == (1, [0, 3, 6, 8, 11, 14, 17, 19, 22, 25])
  assert figure_arrays.snapshot_plan(3) == (1, [0, 1, 2, 3])
  with pytest.raises(ValueError, match="at least 2 columns"):
    figure_arrays.snapshot_plan(10, 1)


def test_strip_runs_from_the_prior_draw_to_algorithm_2s_sample(trained, tmp_path):
  config, workdir, run, state = trained
  key = jax.random.key(3)
  snaps = figure_arrays.flow_snapshots(run, state, key, 3)
  assert snaps.steps == [0, 1, 2, 3] and snaps.frames.shape == (3, 4, 8, 8, 1)
  np.testing.assert_array_equal(snaps.frames[:, 0], snaps.prior_draw)
  np.testing.assert_array_equal(snaps.frames[:, -1], snaps.final)
  # The same key gives the prior draw and the sample of Algorithm 2 (make_sampler's key use).
  prior_key, _ = jax.random.split(key)
  np.testing.assert_allclose(snaps.prior_draw, state.prior.sample(prior_key, 3), atol=1e-6)
  sample = run.draw(state, key, 3, "prior")
  np.testing.assert_allclose(snaps.final, sample, atol=1e-5)
  assert not np.allclose(snaps.frames[:, 0], snaps.frames[:, 1])  # the flow moved them
  path = figures.strip(config, workdir, str(tmp_path / "strip.png"), num_samples=3)
  assert_layout(path, 3, 4)


def test_interpolants_end_at_a_and_b_and_stay_typical(trained):
  _, _, _, state = trained
  prior = state.prior.replace(clip=None)  # unclipped: exactly Gaussian, to test the statistics
  ka, kb = jax.random.split(jax.random.key(0))
  a, b = prior.sample(ka, 400), prior.sample(kb, 400)
  # One compilation, not per op.
  interpolants = jax.jit(figure_arrays.interpolants, static_argnums=3)
  x = np.asarray(interpolants(prior, a, b, 5))
  np.testing.assert_array_equal(x[:, 0], a)
  np.testing.assert_array_equal(x[:, -1], b)
  mean, scale_tril = np.asarray(prior.mean), np.asarray(prior.scale_tril)

  def mahalanobis_sq(points):
    z = scipy.linalg.solve_triangular(scale_tril, (points.reshape(len(points), -1) - mean).T,
                                      lower=True)
    return np.mean(np.sum(z * z, axis=0))

  d = mean.shape[0]  # E‖L⁻¹(x − μ)‖² = d for a prior draw; linear midpoints would give d / 2
  for column in range(5):
    assert abs(mahalanobis_sq(x[:, column]) / d - 1) < 0.1
  uniform = priors.UniformPrior(event_shape=(8, 8, 1))
  ua, ub = uniform.sample(ka, 2), uniform.sample(kb, 2)
  linear = np.asarray(interpolants(uniform, ua, ub, 3))
  np.testing.assert_array_equal(linear[:, 0], ua)
  np.testing.assert_array_equal(linear[:, -1], ub)
  np.testing.assert_allclose(linear[:, 1], (ua + ub) / 2, atol=1e-6)


def test_interpolation_rows_share_their_noise(trained, tmp_path):
  config, workdir, run, state = trained
  result = figure_arrays.flow_interpolation(run, state, jax.random.key(5), 2, 4)
  assert result.spherical and result.starts.shape == result.flowed.shape == (2, 4, 8, 8, 1)
  np.testing.assert_array_equal(result.starts[:, 0], result.a)
  np.testing.assert_array_equal(result.starts[:, -1], result.b)
  # Both ends at the prior mean: every start is μ, so with the row's one noise draw every column
  # flows to the same point, while the two rows (two noise draws) differ.
  mean = np.broadcast_to(state.prior.centre(), result.a.shape)
  same = figure_arrays.flow_interpolation(run, state, jax.random.key(5), 2, 4, a=mean, b=mean)
  np.testing.assert_allclose(same.starts, np.broadcast_to(mean[:, None], same.starts.shape),
                             atol=1e-6)
  np.testing.assert_allclose(same.flowed, np.broadcast_to(same.flowed[:, :1], same.flowed.shape),
                             atol=1e-5)
  assert not np.allclose(same.flowed[0], same.flowed[1], atol=1e-6)
  path = figures.interpolation(config, workdir, str(tmp_path / "interp.png"), num_samples=2,
                               num_columns=4)
  assert_layout(path, 2, 4)


def test_nearest_neighbours_match_brute_force():
  rng = np.random.default_rng(0)
  reference = rng.uniform(-1, 1, (300, 8, 8, 1)).astype(np.float32)
  queries = rng.uniform(-1, 1, (5, 8, 8, 1)).astype(np.float32)
  index, dist = scores.nearest_neighbours(queries, reference, 4, chunk_size=37)
  brute = np.linalg.norm(queries.reshape(5, 1, -1).astype(np.float64)
                         - reference.reshape(1, 300, -1), axis=-1)
  np.testing.assert_array_equal(index, np.argsort(brute, axis=1)[:, :4])
  np.testing.assert_allclose(dist, np.sort(brute, axis=1)[:, :4], rtol=1e-12)
  with pytest.raises(ValueError, match="301 nearest neighbours among 300"):
    scores.nearest_neighbours(queries, reference, 301)


def test_feature_neighbours_png_layout(trained, tmp_path, monkeypatch):
  config, workdir, _, _ = trained
  # A fixed linear feature map stands in for the classifier (whose wiring is tested below): the
  # figure must search neighbours in whatever space the extractor gives.
  projection = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
  seen = []

  def extractor(config):
    def features(x):
      seen.append(len(x))
      return np.asarray(x).reshape(len(x), -1) @ projection
    return features

  monkeypatch.setattr(features, "feature_extractor", extractor)
  path = figures.neighbours(config, workdir, str(tmp_path / "feature.png"), num_samples=3, k=4,
                            space="feature")
  assert_layout(path, 3, 5)  # sample + 4 neighbours per row
  assert seen == [3, 1500]  # the samples, then the whole training split
  with pytest.raises(ValueError, match="Unknown --space='colour'.*available: feature, pixel"):
    figures.neighbours(config, workdir, str(tmp_path / "x.png"), space="colour")


def test_feature_extractor_choice(monkeypatch):
  class Classifier:
    def features(self, x):
      return "digits features"

  monkeypatch.setattr(features, "digits_classifier", lambda seed: Classifier())
  config = tiny_digits_config()
  assert features.feature_extractor(config)(None) == "digits features"
  config.data.name = "cifar10"
  with pytest.raises(ValueError, match="--config.eval.inception_weights=FILE.npz"):
    features.feature_extractor(config)
  with pytest.raises(ValueError, match="--config.eval.inception_weights=FILE.npz"):
    figures.neighbours(config, "/nonexistent", "/nonexistent/x.png", space="feature")


def test_existing_output_is_refused_and_left_untouched(trained, tmp_path):
  config, workdir, _, _ = trained
  out = tmp_path / "mine.png"
  out.write_text("mine")
  for name in figures.FIGURES:
    with pytest.raises(ValueError, match="exists; choose a new file \\(nothing was overwritten"):
      figures.make_figure(name, config, workdir, str(out))
  assert out.read_text() == "mine"
  with pytest.raises(ValueError, match="must name a .png file"):
    figures.grid(config, workdir, str(tmp_path / "grid.jpg"))
  assert sorted(os.listdir(tmp_path)) == ["mine.png"]  # no temporary file left behind


def test_points_and_unknown_figures_are_refused(tmp_path):
  toy = toy2d.get_config("8gaussians")
  for name in ("strip", "interpolation", "neighbours"):
    with pytest.raises(ValueError, match=f"The {name} figure needs image data"):
      figures.make_figure(name, toy, str(tmp_path), str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="Unknown --figure='bogus'"):
    figures.make_figure("bogus", toy, str(tmp_path), str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="--space applies to --figure=neighbours only"):
    figures.make_figure("grid", toy, str(tmp_path), str(tmp_path / "x.png"), space="pixel")
  with pytest.raises(ValueError, match="has no checkpoint yet|holds no run"):
    figures.grid(tiny_digits_config(), str(tmp_path / "empty"), str(tmp_path / "x.png"))


def test_figure_through_main(trained, tmp_path):
  _, workdir, _, _ = trained
  out = str(tmp_path / "neighbours.png")
  args = ["--config=configs/digits.py", f"--workdir={workdir}", "--mode=figure", *TINY_FLAGS]
  made = cli(*args, "--figure=neighbours", "--num_samples=2", f"--output={out}")
  assert made.returncode == 0, made.stderr
  assert_layout(out, 2, 9)  # pixel space, 8 neighbours by default
  bad = cli(*args, "--figure=bogus", f"--output={out}")
  assert bad.returncode == 2 and bad.stderr.count("\n") == 1
  assert bad.stderr.startswith("error: ") and "Unknown --figure='bogus'" in bad.stderr
  # Neither --figure nor --output: a grid, in a new file of the workdir (never overwritten).
  before = set(os.listdir(workdir))
  made = cli(*args, "--num_samples=4")
  assert made.returncode == 0, made.stderr
  new = set(os.listdir(workdir)) - before
  assert len(new) == 1 and re.fullmatch(r"figure_grid(-\d+)?\.png", new.pop())
