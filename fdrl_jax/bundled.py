"""The ``Dataset`` record every data source returns, its batches, and the bundled data sets that
need no download, as float32 numpy arrays in the model's space.

Toy sets (2-D, infinite: ``sample`` draws fresh points, ``test`` is None):

* ``chasm``: FDRL's density-chasm target p = N((6, 6), 0.1·I) (its prior N(0, 0.1·I) lives elsewhere).
* ``chasm_near``: p = N((1, 1), 0.1·I), FDRL Fig. 2a, where a stale ratio estimator still works.
* ``8gaussians``: equal mixture of N(cᵢ, 0.1²·I), cᵢ = 2·(cos kπ/4, sin kπ/4), k = 0..7.
* ``25gaussians``: equal mixture of N(cᵢ, 0.05²·I), cᵢ on the grid {-2, -1, 0, 1, 2}².
* ``swissroll``: ``sklearn.datasets.make_swiss_roll(noise=1.0)``, coordinates (x, z) divided by 5
  (the FFJORD convention), spanning about [-2.8, 2.8]².

Image sets (NHWC float32 in [-1, 1], finite, with a fixed held-out split):

* ``digits``: scikit-learn's 1 797 8×8 handwritten digits, x/8 − 1, shape (8, 8, 1); a permutation
  drawn from ``seed`` holds out 297 images as ``test`` and keeps 1 500 for training.
* ``digits_bold``: unpaired translation, plain → bold digits. The 1 500 training digits are split
  (seed-fixed) into two disjoint halves of 750: the first, plain, is the source domain
  (``source``), the second, made ``bold``, the target (``train``). The 297 held-out digits are the
  test images of both domains (``source_test`` plain, ``test`` bold).

Batches are a pure function of (seed, step) (``get_batch``), so a resumed run sees the same data;
a process of a multi-process run draws the same indices and decodes only its own rows of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np
from scipy import ndimage
from sklearn import datasets as sk_datasets

from fdrl_jax import registry

# (rng, n) → n fresh points of an infinite toy distribution.
PointSource = Callable[[np.random.Generator, int], np.ndarray]


class BatchFn(Protocol):
  """(rng, n, rows) → the rows ``rows`` (a slice; default all) of a training batch of n examples
  drawn with rng."""

  def __call__(self, rng: np.random.Generator, n: int, rows: slice = ..., /) -> np.ndarray: ...


CHASM_VARIANCE = 0.1
EIGHT_GAUSSIANS_RADIUS = 2.0
EIGHT_GAUSSIANS_STD = 0.1
TWENTY_FIVE_GAUSSIANS_STD = 0.05
SWISSROLL_NOISE = 1.0
SWISSROLL_SCALE = 1.0 / 5.0
DIGITS_TEST_SIZE = 297


class Dataset(NamedTuple):
  """A data set: a training-batch function plus, for finite data, its splits.

  Attributes:
    name: the registry name.
    event_shape: shape of one example, e.g. (2,) or (8, 8, 1).
    is_image: whether examples are NHWC images in [-1, 1].
    sample: (rng, n, rows) → the rows ``rows`` (a slice) of a training batch of n examples
      (n, *event_shape), float32; only those rows are decoded.
    test: held-out examples, or None for the infinite toy sets.
    train: the full training split, or None for the infinite toy sets.
    source: translation only: the source domain's training images, what the "empirical" prior
      draws from; else None.
    source_test: translation only: held-out source images, translated at evaluation; else None.
    train_labels, test_labels: integer class labels of ``train`` and ``test`` (classifiers).
    num_train: the training split's size when ``train`` is not kept in memory (a large image
      split decoded on demand); else None.
  """

  name: str
  event_shape: tuple[int, ...]
  is_image: bool
  sample: BatchFn
  test: np.ndarray | None
  train: np.ndarray | None = None
  source: np.ndarray | None = None
  source_test: np.ndarray | None = None
  train_labels: np.ndarray | None = None
  test_labels: np.ndarray | None = None
  num_train: int | None = None


def gaussian_mixture_sampler(centres: np.ndarray, std: float) -> PointSource:
  """Returns a sampler of the equal-weight mixture of N(cᵢ, std²·I) over the rows cᵢ of centres."""
  centres = np.asarray(centres, np.float32)

  def sample(rng: np.random.Generator, n: int) -> np.ndarray:
    idx = rng.integers(len(centres), size=n)
    noise = rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    return centres[idx] + np.float32(std) * noise

  return sample


def swissroll_sample(rng: np.random.Generator, n: int) -> np.ndarray:
  """Draws n points of the 2-D swiss roll: sklearn's (x, z) coordinates scaled by 1/5."""
  x, _ = sk_datasets.make_swiss_roll(
    n_samples=n, noise=SWISSROLL_NOISE, random_state=int(rng.integers(2**31))
  )
  return (x[:, [0, 2]] * SWISSROLL_SCALE).astype(np.float32)


def rows_batch_fn(rows: np.ndarray) -> BatchFn:
  """Returns a batch function drawing n distinct rows of a finite array (n ≤ its length)."""

  def sample(rng: np.random.Generator, n: int, part: slice = slice(None)) -> np.ndarray:
    if n > len(rows):
      raise ValueError(f"cannot draw {n} distinct examples from a training split of {len(rows)}")
    return rows[rng.choice(len(rows), size=n, replace=False)[part]]

  return sample


def toy_dataset(name: str, points: PointSource) -> Dataset:
  """Wraps an infinite 2-D distribution as a Dataset (a batch's rows: all drawn, some kept)."""
  return Dataset(
    name=name,
    event_shape=(2,),
    is_image=False,
    test=None,
    sample=lambda rng, n, part=slice(None): points(rng, n)[part],
  )


def eight_gaussians_centres() -> np.ndarray:
  """Computes the 8 centres 2·(cos kπ/4, sin kπ/4), k = 0..7, shape (8, 2)."""
  angles = np.arange(8) * np.pi / 4
  return EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def twenty_five_gaussians_centres() -> np.ndarray:
  """Computes the 25 centres of the grid {-2, -1, 0, 1, 2}², shape (25, 2)."""
  grid = np.arange(-2.0, 3.0)
  return np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)


def digits_images() -> np.ndarray:
  """Loads scikit-learn's 8×8 digits as (1797, 8, 8, 1) float32 scaled from 0..16 to [-1, 1]."""
  images = sk_datasets.load_digits().images
  return (images[..., None] / 8.0 - 1.0).astype(np.float32)


def digits_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The seed-fixed split of the digits: train images, train labels, test images, test labels."""
  images, labels = digits_images(), sk_datasets.load_digits().target
  perm = np.random.default_rng(seed).permutation(len(images))
  train, test = perm[DIGITS_TEST_SIZE:], perm[:DIGITS_TEST_SIZE]
  return images[train], labels[train], images[test], labels[test]


def build_digits(seed: int) -> Dataset:
  """Builds the digits set with a seed-fixed split of 1 500 training and 297 test images."""
  train, _, test, _ = digits_split(seed)
  return Dataset(
    name="digits",
    event_shape=(8, 8, 1),
    is_image=True,
    sample=rows_batch_fn(train),
    test=test,
    train=train,
  )


def bold(images: np.ndarray) -> np.ndarray:
  """Makes digits bold: ``scipy.ndimage.grey_dilation(image, size=(1, 2))`` on each (H, W) plane.

  With size=(1, 2) scipy takes each pixel's max with its right-hand neighbour,
  y[i, j] = max(x[i, j], x[i, j + 1]); the last column reflects onto itself and is unchanged. A
  lit pixel at column j ≥ 1 thus lights columns j − 1 and j: every stroke grows one pixel to the
  left. A grey dilation commutes with the increasing map x/8 − 1, so it applies to [-1, 1] images
  as to the raw 0..16 ones. Not idempotent (twice is a max over three columns).

  Args:
    images: (N, H, W, 1) or (N, H, W).

  Returns:
    The bold images, same shape and dtype.
  """
  images = np.asarray(images)
  return ndimage.grey_dilation(images, size=(1, 1, 2) + (1,) * (images.ndim - 3))


# Held-out digits are the test images of both domains; the training split halves are unpaired.
DIGITS_BOLD_HALF = 750


def digits_bold_split(seed: int) -> dict[str, np.ndarray]:
  """The digits_bold arrays and labels: ``source``/``source_labels`` (plain half),
  ``target``/``target_labels`` (bold other half), ``test_plain``, ``test_bold``, ``test_labels``."""
  train, labels, test, test_labels = digits_split(seed)
  perm = np.random.default_rng([seed, 1]).permutation(len(train))
  src, tgt = perm[:DIGITS_BOLD_HALF], perm[DIGITS_BOLD_HALF : 2 * DIGITS_BOLD_HALF]
  return {
    "source": train[src],
    "source_labels": labels[src],
    "target": bold(train[tgt]),
    "target_labels": labels[tgt],
    "test_plain": test,
    "test_bold": bold(test),
    "test_labels": test_labels,
  }


def build_digits_bold(seed: int) -> Dataset:
  """Builds the plain → bold translation set (see the module docstring)."""
  split = digits_bold_split(seed)
  return Dataset(
    name="digits_bold",
    event_shape=(8, 8, 1),
    is_image=True,
    sample=rows_batch_fn(split["target"]),
    test=split["test_bold"],
    train=split["target"],
    source=split["source"],
    source_test=split["test_plain"],
    train_labels=split["target_labels"],
    test_labels=split["test_labels"],
  )


def chasm_sampler(mean: tuple[float, float]) -> PointSource:
  """Returns a sampler of N(mean, 0.1·I) in 2-D."""
  return gaussian_mixture_sampler(np.array([mean]), np.sqrt(CHASM_VARIANCE))


DATASETS: dict[str, Callable[[int], Dataset]] = {
  "chasm": lambda seed: toy_dataset("chasm", chasm_sampler((6.0, 6.0))),
  "chasm_near": lambda seed: toy_dataset("chasm_near", chasm_sampler((1.0, 1.0))),
  "8gaussians": lambda seed: toy_dataset(
    "8gaussians", gaussian_mixture_sampler(eight_gaussians_centres(), EIGHT_GAUSSIANS_STD)
  ),
  "25gaussians": lambda seed: toy_dataset(
    "25gaussians",
    gaussian_mixture_sampler(twenty_five_gaussians_centres(), TWENTY_FIVE_GAUSSIANS_STD),
  ),
  "swissroll": lambda seed: toy_dataset("swissroll", swissroll_sample),
  "digits": build_digits,
  "digits_bold": build_digits_bold,
}


def create_dataset(name: str, *, seed: int = 0) -> Dataset:
  """Builds the named data set; ``seed`` fixes the train/test split of finite sets.

  Raises:
    ValueError: one line, if ``name`` is not a key of ``DATASETS``.
  """
  return registry.lookup(DATASETS, name, "--config.data.name")(seed)


def get_batch(
  dataset: Dataset, seed: int, step: int, batch_size: int, rows: slice = slice(None)
) -> np.ndarray:
  """The rows ``rows`` (default all) of the training batch of step ``step``, a pure function of
  (seed, step): each process of a multi-process run asks for its own rows of the same batch."""
  return dataset.sample(np.random.default_rng([seed, step]), batch_size, rows)


def fit_samples(dataset: Dataset, n: int, seed: int) -> np.ndarray:
  """Returns samples to fit a prior on: the whole training split if finite, else n fresh draws."""
  if dataset.train is not None:
    return dataset.train
  return dataset.sample(np.random.default_rng(seed), n)
