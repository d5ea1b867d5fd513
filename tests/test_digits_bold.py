"""digits_bold: the bold map, the unpaired split of the digits and the target-domain batches."""

import numpy as np
import pytest
from scipy import ndimage

from fdrl_jax import bundled

SEED = 0


def neighbour_max(x):
  """Hand-written bold on (N, H, W, C): max with the right-hand neighbour, last column kept."""
  right = np.concatenate([x[:, :, 1:], x[:, :, -1:]], axis=2)
  return np.maximum(x, right)


def row_index(a):
  """Maps each flattened row of ``a`` to its index (rows must be distinct)."""
  index = {row.tobytes(): i for i, row in enumerate(a.reshape(len(a), -1))}
  assert len(index) == len(a)
  return index


def indices_in(rows, index):
  """The index of each row of ``rows`` in ``index`` (every row must be found)."""
  found = [index.get(row.tobytes()) for row in rows.reshape(len(rows), -1)]
  assert None not in found
  return np.array(found)


@pytest.fixture(scope="module")
def ds():
  return bundled.create_dataset("digits_bold", seed=SEED)


@pytest.fixture(scope="module")
def plain_split():
  return bundled.digits_split(SEED)


@pytest.mark.parametrize("shape", [(5, 8, 8, 1), (5, 8, 8), (3, 6, 7, 1)])
def test_bold_is_max_with_right_neighbour(shape):
  x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  expected = neighbour_max(x[..., None] if x.ndim == 3 else x).reshape(shape)
  y = bundled.bold(x)
  assert y.shape == x.shape and y.dtype == x.dtype
  np.testing.assert_array_equal(y, expected)
  np.testing.assert_array_equal(y[0], ndimage.grey_dilation(x[0].reshape(shape[1:3]),
                                                            size=(1, 2)).reshape(shape[1:]))
  assert np.all(y >= x)


@pytest.mark.parametrize("col", range(8))
def test_bold_of_one_lit_pixel_lights_it_and_its_left_neighbour(col):
  x = -np.ones((1, 8, 8, 1), np.float32)
  x[0, 3, col, 0] = 1.0
  y = bundled.bold(x)[0, :, :, 0]
  assert set(np.unique(y)) == {-1.0, 1.0}
  lit = [tuple(p) for p in np.argwhere(y == 1.0)]
  assert lit == [(3, c) for c in sorted({max(col - 1, 0), col})]  # column 0 has no left pixel


def test_bold_is_not_idempotent_but_monotone(ds):
  twice = bundled.bold(ds.train)
  assert np.all(twice >= ds.train)
  assert not np.array_equal(twice, ds.train)  # a max over three columns, not two


def test_shapes_dtype_range_and_fields(ds):
  assert ds.name == "digits_bold" and ds.event_shape == (8, 8, 1) and ds.is_image
  for a, n in ((ds.source, 750), (ds.train, 750), (ds.source_test, 297), (ds.test, 297)):
    assert a.shape == (n, 8, 8, 1) and a.dtype == np.float32
    assert a.min() >= -1.0 and a.max() <= 1.0
  np.testing.assert_array_equal(ds.test, bundled.bold(ds.source_test))
  assert ds.train_labels.shape == (750,) and ds.test_labels.shape == (297,)


def test_halves_are_disjoint_and_cover_the_training_digits(ds, plain_split):
  train, labels, _, _ = plain_split
  src = indices_in(ds.source, row_index(train))
  tgt = indices_in(ds.train, row_index(bundled.bold(train)))
  assert len(set(src)) == 750 and len(set(tgt)) == 750
  assert not set(src) & set(tgt)
  assert set(src) | set(tgt) == set(range(1500))
  split = bundled.digits_bold_split(SEED)
  source_labels, target_labels, test_labels = (split["source_labels"], split["target_labels"],
                                                split["test_labels"])
  np.testing.assert_array_equal(source_labels, labels[src])
  np.testing.assert_array_equal(target_labels, labels[tgt])
  np.testing.assert_array_equal(ds.train_labels, target_labels)
  np.testing.assert_array_equal(ds.test_labels, test_labels)


def test_held_out_digits_are_both_test_sets_and_unseen(ds, plain_split):
  train, _, test, test_labels = plain_split
  np.testing.assert_array_equal(ds.source_test, test)
  np.testing.assert_array_equal(ds.test, bundled.bold(test))
  np.testing.assert_array_equal(bundled.digits_bold_split(SEED)["test_labels"], test_labels)
  assert not set(row_index(test)) & set(row_index(ds.source))
  assert not set(row_index(ds.test)) & set(row_index(ds.train))
  assert not set(row_index(test)) & set(row_index(train))


def test_split_is_seed_fixed():
  a, b = bundled.build_digits_bold(SEED), bundled.build_digits_bold(SEED)
  np.testing.assert_array_equal(a.source, b.source)
  np.testing.assert_array_equal(a.train, b.train)
  assert not np.array_equal(bundled.build_digits_bold(SEED + 1).source, a.source)


def test_batches_come_from_the_bold_target(ds):
  target = row_index(ds.train)
  for step in range(3):
    x = bundled.get_batch(ds, seed=SEED, step=step, batch_size=64)
    assert x.shape == (64, 8, 8, 1) and x.dtype == np.float32
    assert len(set(indices_in(x, target))) == 64
  np.testing.assert_array_equal(bundled.get_batch(ds, SEED, 1, 64),
                                bundled.get_batch(ds, SEED, 1, 64))
  assert bundled.fit_samples(ds, 10, SEED) is ds.train


def test_bold_target_is_brighter_than_source(ds):
  source_mean, target_mean = float(ds.source.mean()), float(ds.train.mean())
  print(f"mean intensity: source (plain) {source_mean:.4f}, target (bold) {target_mean:.4f}")
  assert target_mean > source_mean + 0.15
  assert float(ds.test.mean()) > float(ds.source_test.mean()) + 0.15
