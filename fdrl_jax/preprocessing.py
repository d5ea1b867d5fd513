"""What every image source shares (``readers``' folders, ``tfds_sources``' splits): the
preprocessing of one image (resize, center crop, uint8 → float32 in [-1, 1]) and a split of
``Loader``-decoded examples as a ``bundled.Dataset``, decoded whole or on demand.

``CAT2DOG_PREPROCESSING`` is the paper's resize 84 → center crop 64 of Cat2dog. Memory
(``indexed_dataset``): a split with at most ``max_fit_samples`` examples is decoded whole into
``Dataset.train``. A bigger one keeps ``train=None`` and ``sample`` decodes only the n examples it
draws; ``bundled.fit_samples(dataset, n, seed)`` then fits the prior on n distinct random training
examples (raise ``max_fit_samples`` to the split size to fit on all of them, as the paper does).
Either way ``sample`` draws the same indices, so ``bundled.get_batch`` gives the same batches.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from fdrl_jax.bundled import BatchFn, Dataset, rows_batch_fn

Loader = Callable[[int], np.ndarray]

RESAMPLE = Image.Resampling.BILINEAR  # Pillow's resize is antialiased when it downscales.
DEFAULT_MAX_FIT_SAMPLES = 10_000

CAT2DOG_PREPROCESSING: dict[str, int] = {"resize_first": 84, "center_crop": 64, "image_size": 64}


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
  """Resizes an image so that its shorter side is ``size`` pixels, keeping the aspect ratio."""
  width, height = image.size
  scale = size / min(width, height)
  if scale == 1:
    return image
  new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
  return image.resize(new_size, RESAMPLE)


def crop_center(image: Image.Image, size: int) -> Image.Image:
  """Crops the central size×size square of an image.

  Raises:
    ValueError: if the image is smaller than ``size`` on either side.
  """
  width, height = image.size
  if min(width, height) < size:
    raise ValueError(f"cannot center-crop {size}×{size} pixels from a {width}×{height} image")
  left, top = (width - size) // 2, (height - size) // 2
  return image.crop((left, top, left + size, top + size))


def preprocess(
  pixels: np.ndarray,
  *,
  image_size: int,
  center_crop: int | None = None,
  resize_first: int | None = None,
  stretch: bool = False,
) -> np.ndarray:
  """Maps uint8 pixels (H, W, C) to a float32 (image_size, image_size, C) image in [-1, 1].

  The steps, in order: resize the shorter side to ``resize_first`` (if given); center-crop a
  ``center_crop`` square (if given); resize the shorter side to ``image_size`` and center-crop an
  ``image_size`` square (a plain resize for square images, nothing for ones already that size).
  With ``stretch`` the last step resizes both sides to ``image_size`` instead, squeezing a
  non-square image whole into the square (the reference's LSUN ``Resize((128, 128))``).
  """
  channels = pixels.shape[-1]
  image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
  if resize_first:
    image = resize_shorter_side(image, resize_first)
  if center_crop:
    image = crop_center(image, center_crop)
  if stretch:
    image = (
      image
      if image.size == (image_size, image_size)
      else image.resize((image_size, image_size), RESAMPLE)
    )
  else:
    image = crop_center(resize_shorter_side(image, image_size), image_size)
  return np.asarray(image, np.float32).reshape(image_size, image_size, channels) / 127.5 - 1.0


def load_all(num_examples: int, load: Loader) -> np.ndarray:
  """Decodes examples 0..num_examples−1 into one array."""
  return np.stack([load(i) for i in range(num_examples)])


def index_batch_fn(num_examples: int, load: Loader) -> BatchFn:
  """Returns a batch function decoding n distinct random examples on demand, as rows_batch_fn
  draws them."""

  def sample(rng: np.random.Generator, n: int, rows: slice = slice(None)) -> np.ndarray:
    if n > num_examples:
      raise ValueError(f"cannot draw {n} distinct examples from a training split of {num_examples}")
    return np.stack([load(int(i)) for i in rng.choice(num_examples, size=n, replace=False)[rows]])

  return sample


def indexed_dataset(
  name: str, num_examples: int, load: Loader, *, max_fit_samples: int, test: np.ndarray | None
) -> Dataset:
  """Builds an image Dataset over examples decoded by ``load``: in memory if few, else lazily."""
  if num_examples <= max_fit_samples:
    train = load_all(num_examples, load)
    return Dataset(
      name=name,
      event_shape=train.shape[1:],
      is_image=True,
      sample=rows_batch_fn(train),
      test=test,
      train=train,
    )
  return Dataset(
    name=name,
    event_shape=load(0).shape,
    is_image=True,
    sample=index_batch_fn(num_examples, load),
    test=test,
    num_train=num_examples,
  )
