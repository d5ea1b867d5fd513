"""Image data sets from tensorflow-datasets, image folders and .npz files, as ``data.Dataset``.

Every builder returns NHWC float32 images in [-1, 1] (uint8 pixels mapped by x/127.5 − 1).

* ``tfds_dataset``: a split prepared by tensorflow-datasets in the ``array_record`` format, read
  through ``tfds.data_source`` (random access, decoded with pillow, no TensorFlow at read time).
  ``TFDS_PRESETS`` holds the paper's preprocessing: CIFAR10 32², CelebA center crop 140 → 64²,
  LSUN church_outdoor 128², MNIST 28²×1 (grayscale keeps one channel).
* ``folder_dataset``: every .png/.jpg/.jpeg under a folder (recursively, sorted), converted to RGB;
  ``CAT2DOG_PREPROCESSING`` is the paper's resize 84 → center crop 64, used on each folder of the
  Cat2dog layout:
  ``folder_dataset(root / "trainA", test_path=root / "testA", **CAT2DOG_PREPROCESSING)``.
* ``npz_dataset``: an NHWC array in an .npz file, float in [-1, 1] or uint8 in 0..255.

Memory: a tfds split or a folder with at most ``max_fit_samples`` examples is decoded whole into
``Dataset.train``. A bigger one keeps ``train=None`` and ``sample`` decodes only the n examples it
draws; ``data.fit_samples(dataset, n, seed)`` then fits the prior on n distinct random training
examples (raise ``max_fit_samples`` to the split size to fit on all of them, as the paper does).
Either way ``sample`` draws the same indices, so ``data.get_batch`` gives the same batches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from fdrl_jax.data import Dataset, Sampler, rows_sampler

Loader = Callable[[int], np.ndarray]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RESAMPLE = Image.Resampling.BILINEAR  # Pillow's resize is antialiased when it downscales.
DEFAULT_MAX_FIT_SAMPLES = 10_000
DEFAULT_MAX_TEST_SAMPLES = 10_000
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError)
MISSING_TFDS_ERRORS = (NotImplementedError, KeyError, FileNotFoundError, AssertionError)

TFDS_PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": {"name": "cifar10", "image_size": 32},
    "celeb_a": {"name": "celeb_a", "image_size": 64, "center_crop": 140},
    "lsun_church": {"name": "lsun/church_outdoor", "image_size": 128},
    "mnist": {"name": "mnist", "image_size": 28},
}
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


def preprocess(pixels: np.ndarray, *, image_size: int, center_crop: int | None = None,
               resize_first: int | None = None) -> np.ndarray:
  """Maps uint8 pixels (H, W, C) to a float32 (image_size, image_size, C) image in [-1, 1].

  The steps, in order: resize the shorter side to ``resize_first`` (if given); center-crop a
  ``center_crop`` square (if given); resize the shorter side to ``image_size`` and center-crop an
  ``image_size`` square (a plain resize for square images, nothing for ones already that size).
  """
  channels = pixels.shape[-1]
  image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
  if resize_first:
    image = resize_shorter_side(image, resize_first)
  if center_crop:
    image = crop_center(image, center_crop)
  image = crop_center(resize_shorter_side(image, image_size), image_size)
  return np.asarray(image, np.float32).reshape(image_size, image_size, channels) / 127.5 - 1.0


def load_all(num_examples: int, load: Loader) -> np.ndarray:
  """Decodes examples 0..num_examples−1 into one array."""
  return np.stack([load(i) for i in range(num_examples)])


def index_sampler(num_examples: int, load: Loader) -> Sampler:
  """Returns a sampler decoding n distinct random examples on demand, as rows_sampler draws them."""

  def sample(rng: np.random.Generator, n: int, rows: slice = slice(None)) -> np.ndarray:
    if n > num_examples:
      raise ValueError(f"cannot draw {n} distinct examples from a training split of {num_examples}")
    return np.stack([load(int(i)) for i in rng.choice(num_examples, size=n, replace=False)[rows]])

  return sample


def indexed_dataset(name: str, num_examples: int, load: Loader, *, max_fit_samples: int,
                    test: np.ndarray | None) -> Dataset:
  """Builds an image Dataset over examples decoded by ``load``: in memory if few, else lazily."""
  if num_examples <= max_fit_samples:
    train = load_all(num_examples, load)
    return Dataset(name=name, event_shape=train.shape[1:], is_image=True,
                   sample=rows_sampler(train), test=test, train=train)
  return Dataset(name=name, event_shape=load(0).shape, is_image=True,
                 sample=index_sampler(num_examples, load), test=test, num_train=num_examples)


def missing_tfds_message(name: str, split: str, data_dir: str | os.PathLike | None) -> str:
  """Writes the one-line explanation for a tfds split that is not prepared as array_record."""
  root = os.fspath(data_dir or tfds.core.constants.get_default_data_dir())
  return (f"tfds dataset {name!r} has no split {split!r} prepared in the array_record format "
          f"under {root}; prepare it with `pip install tensorflow && tfds build {name} "
          f"--data_dir={root} --file_format=array_record` (a TFRecord copy converts with "
          f"`tfds convert_format --root_data_dir={root} --out_file_format=array_record`), "
          f"or use folder_dataset on a folder of images instead")


def open_tfds(name: str, split: str, data_dir: str | os.PathLike | None) -> Sequence[dict]:
  """Opens a prepared tfds split for random access, never downloading or preparing it.

  Raises:
    ValueError: one line, if tfds has no such dataset or it is not prepared under ``data_dir``.
  """
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except tfds.core.DatasetNotFoundError:
    raise ValueError(f"tensorflow-datasets has no dataset named {name!r}") from None
  except MISSING_TFDS_ERRORS:
    raise ValueError(missing_tfds_message(name, split, data_dir)) from None


def tfds_loader(source: Sequence[dict], **preprocessing: int | None) -> Loader:
  """Returns a function decoding and preprocessing the image of example i of a tfds source."""
  return lambda i: preprocess(source[i]["image"], **preprocessing)


def tfds_test_images(name: str, test_split: str | None, data_dir: str | os.PathLike | None,
                     max_images: int, **preprocessing: int | None) -> np.ndarray | None:
  """Decodes the first ``max_images`` images of a tfds test split, or None without a split."""
  if test_split is None:
    return None
  source = open_tfds(name, test_split, data_dir)
  return load_all(min(len(source), max_images), tfds_loader(source, **preprocessing))


def tfds_labelled(name: str, split: str, data_dir: str | os.PathLike | None, max_examples: int,
                  **preprocessing: int | None) -> tuple[np.ndarray, np.ndarray]:
  """The first ``max_examples`` images of a tfds split with their integer ``label`` (for the
  in-project classifier of an evaluation metric)."""
  source = open_tfds(name, split, data_dir)
  n = min(len(source), max_examples)
  images = load_all(n, tfds_loader(source, **preprocessing))
  return images, np.array([int(source[i]["label"]) for i in range(n)], np.int32)


def tfds_dataset(name: str, *, split: str = "train", data_dir: str | os.PathLike | None = None,
                 image_size: int, center_crop: int | None = None, test_split: str | None = None,
                 max_fit_samples: int = DEFAULT_MAX_FIT_SAMPLES,
                 max_test_samples: int = DEFAULT_MAX_TEST_SAMPLES) -> Dataset:
  """Builds an image Dataset from a tensorflow-datasets split read through ``tfds.data_source``.

  Use ``tfds_dataset(**TFDS_PRESETS["celeb_a"], data_dir=...)`` for the paper's preprocessing.
  The test splits are "test" for cifar10, celeb_a and mnist and "validation" for LSUN.

  Args:
    name: the tfds name, e.g. "cifar10" or "lsun/church_outdoor".
    split: the training split.
    data_dir: the tfds data folder; None means tfds's default ($TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    image_size: side of the square output images.
    center_crop: side of a square cut from the middle before resizing (CelebA: 140).
    test_split: a split whose first ``max_test_samples`` images become ``Dataset.test``.
    max_fit_samples: a training split at most this long is decoded whole into ``Dataset.train``;
      a longer one leaves it None and is decoded lazily, batch by batch (see the module doc).
    max_test_samples: the most test images decoded.

  Raises:
    ValueError: one line naming the data folder and the command to prepare the data, if missing.
  """
  preprocessing = {"image_size": image_size, "center_crop": center_crop}
  source = open_tfds(name, split, data_dir)
  test = tfds_test_images(name, test_split, data_dir, max_test_samples, **preprocessing)
  return indexed_dataset(name, len(source), tfds_loader(source, **preprocessing),
                         max_fit_samples=max_fit_samples, test=test)


def image_files(path: str | os.PathLike) -> list[Path]:
  """Lists the .png/.jpg/.jpeg files under a folder, recursively, in sorted order.

  Raises:
    ValueError: if the folder does not exist or holds no such file.
  """
  root = Path(path)
  if not root.is_dir():
    raise ValueError(f"image folder {root} does not exist or is not a folder")
  files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
  if not files:
    raise ValueError(f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} files")
  return files


def read_rgb(file: Path) -> np.ndarray:
  """Decodes an image file to uint8 RGB pixels (H, W, 3).

  Raises:
    ValueError: naming the file, if it cannot be decoded.
  """
  try:
    with Image.open(file) as image:
      return np.asarray(image.convert("RGB"))
  except UNREADABLE_IMAGE_ERRORS as err:
    raise ValueError(f"cannot read image {file}: {err}") from err


def folder_loader(files: list[Path], **preprocessing: int | None) -> Loader:
  """Returns a function decoding and preprocessing image file i."""
  return lambda i: preprocess(read_rgb(files[i]), **preprocessing)


def folder_dataset(path: str | os.PathLike, *, image_size: int, center_crop: int | None = None,
                   resize_first: int | None = None, test_path: str | os.PathLike | None = None,
                   max_fit_samples: int = DEFAULT_MAX_FIT_SAMPLES) -> Dataset:
  """Builds an RGB image Dataset from the .png/.jpg/.jpeg files under a folder (recursively).

  Args:
    path: the training folder, e.g. Cat2dog's ``trainB``.
    image_size: side of the square output images.
    center_crop: side of a square cut from the middle after ``resize_first``.
    resize_first: shorter side to resize to before cropping (Cat2dog: 84, then crop 64).
    test_path: an optional folder decoded whole into ``Dataset.test``, e.g. ``testB``.
    max_fit_samples: a folder with at most this many images is decoded whole into
      ``Dataset.train`` (so a corrupt file fails here); a bigger one is decoded lazily.

  Raises:
    ValueError: if a folder is missing or empty, or (naming it) a file cannot be decoded.
  """
  preprocessing = {"image_size": image_size, "center_crop": center_crop,
                   "resize_first": resize_first}
  files = image_files(path)
  test = None
  if test_path is not None:
    test_files = image_files(test_path)
    test = load_all(len(test_files), folder_loader(test_files, **preprocessing))
  return indexed_dataset(Path(path).name, len(files), folder_loader(files, **preprocessing),
                         max_fit_samples=max_fit_samples, test=test)


def to_model_range(array: np.ndarray, where: str) -> np.ndarray:
  """Converts NHWC images, uint8 in 0..255 or float in [-1, 1], to float32 in [-1, 1].

  Raises:
    ValueError: if the array is not 4-D or float values leave [-1, 1].
  """
  if array.ndim != 4:
    raise ValueError(f"{where}: expected NHWC images (4-D), got shape {array.shape}")
  if array.dtype == np.uint8:
    return array.astype(np.float32) / 127.5 - 1.0
  array = array.astype(np.float32)
  if array.size and (array.min() < -1 or array.max() > 1):
    raise ValueError(f"{where}: float images must lie in [-1, 1] (or be uint8 in 0..255), "
                     f"found [{array.min():g}, {array.max():g}]")
  return array


def npz_images(arrays: Any, key: str, path: str | os.PathLike) -> np.ndarray:
  """Reads the images stored under ``key`` of an open .npz file, in [-1, 1].

  Raises:
    ValueError: if the key is absent or the array is not valid images.
  """
  if key not in arrays.files:
    raise ValueError(f"{path} has no array {key!r}; it holds {sorted(arrays.files)}")
  return to_model_range(arrays[key], f"{path}[{key!r}]")


def npz_dataset(path: str | os.PathLike, *, key: str = "x", test_key: str | None = None) -> Dataset:
  """Builds an image Dataset from NHWC images in an .npz file, loaded whole into memory.

  Args:
    path: the .npz file.
    key: the training images: float in [-1, 1] or uint8 in 0..255.
    test_key: optional held-out images in the same format.

  Raises:
    ValueError: if a key is absent or its array is not valid images.
  """
  with np.load(path) as arrays:
    train = npz_images(arrays, key, path)
    test = None if test_key is None else npz_images(arrays, test_key, path)
  return Dataset(name=Path(path).stem, event_shape=train.shape[1:], is_image=True,
                 sample=rows_sampler(train), test=test, train=train)
