"""Bundled data sets: shapes, ranges, the digits split, determinism and the toy distributions."""

import numpy as np
import pytest

from fdrl_jax import bundled
from fdrl_jax.bundled import DATASETS, create_dataset, fit_samples, get_batch

TOY = ("chasm", "chasm_near", "8gaussians", "25gaussians", "swissroll")


def nearest_centre_distance(x, centres):
  return np.min(np.linalg.norm(x[:, None, :] - centres[None], axis=-1), axis=1)


def rows(a):
  return {row.tobytes() for row in a.reshape(len(a), -1)}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_batches_have_event_shape_and_float32(name):
  ds = create_dataset(name)
  x = get_batch(ds, seed=0, step=0, batch_size=64)
  assert ds.name == name
  assert x.shape == (64, *ds.event_shape)
  assert x.dtype == np.float32
  assert np.all(np.isfinite(x))


@pytest.mark.parametrize("name", TOY)
def test_toy_sets_are_infinite_2d(name):
  ds = create_dataset(name)
  assert ds.event_shape == (2,) and not ds.is_image
  assert ds.test is None and ds.train is None


def test_digits_split_sizes_and_range():
  ds = create_dataset("digits")
  assert ds.is_image and ds.event_shape == (8, 8, 1)
  assert ds.train.shape == (1500, 8, 8, 1) and ds.test.shape == (297, 8, 8, 1)
  assert ds.train.dtype == np.float32 and ds.test.dtype == np.float32
  for split in (ds.train, ds.test):
    assert split.min() == -1.0 and split.max() == 1.0


def test_digits_split_is_disjoint_and_covers_all_images():
  ds = create_dataset("digits")
  everything = rows(bundled.digits_images())  # the 1 797 images are pairwise distinct
  assert len(everything) == 1797
  assert not rows(ds.train) & rows(ds.test)
  assert rows(ds.train) | rows(ds.test) == everything


def test_digits_split_fixed_for_seed_and_varies_with_seed():
  a, b = create_dataset("digits", seed=3), create_dataset("digits", seed=3)
  np.testing.assert_array_equal(a.test, b.test)
  np.testing.assert_array_equal(a.train, b.train)
  assert not np.array_equal(a.test, create_dataset("digits", seed=4).test)


def test_digits_sample_draws_distinct_training_rows():
  ds = create_dataset("digits")
  x = ds.sample(np.random.default_rng(0), 1500)
  np.testing.assert_array_equal(np.unique(x.reshape(1500, -1), axis=0),
                                np.unique(ds.train.reshape(1500, -1), axis=0))
  with pytest.raises(ValueError, match="1500"):
    ds.sample(np.random.default_rng(0), 1501)


@pytest.mark.parametrize("name", ["swissroll", "8gaussians", "digits"])
def test_get_batch_deterministic_per_step_and_differs_across_steps(name):
  ds = create_dataset(name)
  first = get_batch(ds, seed=7, step=5, batch_size=32)
  np.testing.assert_array_equal(first, get_batch(create_dataset(name), seed=7, step=5,
                                                 batch_size=32))
  assert not np.array_equal(first, get_batch(ds, seed=7, step=6, batch_size=32))
  assert not np.array_equal(first, get_batch(ds, seed=8, step=5, batch_size=32))


@pytest.mark.parametrize("name, mean", [("chasm", 6.0), ("chasm_near", 1.0)])
def test_chasm_moments(name, mean):
  n = 20_000
  x = get_batch(create_dataset(name), seed=0, step=0, batch_size=n)
  std = np.sqrt(0.1)
  np.testing.assert_allclose(x.mean(0), [mean, mean], atol=5 * std / np.sqrt(n))
  np.testing.assert_allclose(x.std(0), [std, std], atol=5 * std / np.sqrt(2 * n))
  assert abs(np.corrcoef(x.T)[0, 1]) < 5 / np.sqrt(n)


def test_8gaussians_samples_near_centres_and_cover_all():
  centres = bundled.eight_gaussians_centres()
  np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 2.0)
  x = get_batch(create_dataset("8gaussians"), seed=0, step=0, batch_size=4000)
  assert np.all(nearest_centre_distance(x, centres) < 6 * bundled.EIGHT_GAUSSIANS_STD)
  counts = np.bincount(np.argmin(np.linalg.norm(x[:, None] - centres[None], axis=-1), 1),
                       minlength=8)
  assert np.all(np.abs(counts - 500) < 5 * np.sqrt(500))


def test_25gaussians_samples_near_grid_centres():
  centres = bundled.twenty_five_gaussians_centres()
  assert centres.shape == (25, 2) and set(np.unique(centres)) == {-2, -1, 0, 1, 2}
  x = get_batch(create_dataset("25gaussians"), seed=0, step=0, batch_size=5000)
  assert np.all(nearest_centre_distance(x, centres) < 6 * bundled.TWENTY_FIVE_GAUSSIANS_STD)
  assert len(np.unique(np.argmin(np.linalg.norm(x[:, None] - centres[None], axis=-1), 1))) == 25


def test_swissroll_span():
  x = get_batch(create_dataset("swissroll"), seed=0, step=0, batch_size=5000)
  assert np.all(np.abs(x) < 4.0)
  assert np.all(x.max(0) > 2.0) and np.all(x.min(0) < -2.0)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError) as err:
    create_dataset("mnist")
  message = str(err.value)
  assert "\n" not in message and "mnist" in message
  assert all(name in message for name in DATASETS)


def test_fit_samples_whole_train_split_for_digits():
  ds = create_dataset("digits")
  np.testing.assert_array_equal(fit_samples(ds, n=10, seed=0), ds.train)


def test_fit_samples_draws_n_for_toy_sets():
  ds = create_dataset("chasm")
  x = fit_samples(ds, n=100, seed=1)
  assert x.shape == (100, 2) and x.dtype == np.float32
  np.testing.assert_array_equal(x, fit_samples(ds, n=100, seed=1))
