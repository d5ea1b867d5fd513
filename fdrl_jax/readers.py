"""Image files as ``bundled.Dataset``: folders of PNG/JPEG files and .npz arrays.

Every builder returns NHWC float32 images in [-1, 1] (uint8 pixels mapped by x/127.5 − 1),
preprocessed and decoded (whole, or lazily for a big folder) by ``preprocessing``, as the
tensorflow-datasets splits of ``tfds_sources`` are.

* ``folder_dataset``: every .png/.jpg/.jpeg under a folder (recursively, sorted). Grey when every
  image of the folder (and of its test folder) is greyscale, (H, W, 1); otherwise, colour or
  mixed, every image is converted to RGB. ``preprocessing.CAT2DOG_PREPROCESSING`` is the paper's
  resize 84 → center crop 64, used on each folder of the Cat2dog layout:
  ``folder_dataset(root / "trainA", test_path=root / "testA", **CAT2DOG_PREPROCESSING)``.
* ``npz_dataset``: an NHWC array in an .npz file, float in [-1, 1] or uint8 in 0..255.

Memory: a folder with at most ``max_fit_samples`` images is decoded whole into ``Dataset.train``
(so a corrupt file fails at once); a bigger one is decoded on demand (``indexed_dataset``).
"""

from __future__ import annotations

import os
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageMode

from fdrl_jax.bundled import Dataset, rows_batch_fn
from fdrl_jax.preprocessing import (
  DEFAULT_MAX_FIT_SAMPLES,
  Loader,
  indexed_dataset,
  load_all,
  preprocess,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError)
IMAGE_MODES = {1: "L", 3: "RGB"}  # Pillow mode of images with 1 or 3 channels


def first_line(err: Exception) -> str:
  """The first line of an error's message (tfds's messages run over several lines)."""
  return (str(err).strip().splitlines() or [type(err).__name__])[0]


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


def is_greyscale(file: Path) -> bool:
  """Whether an image file is greyscale, from its header: a Pillow mode whose base mode is "L"
  (1-bit, 8-bit, 16-bit or float grey, with or without alpha). Palette images count as colour.

  Raises:
    ValueError: naming the file, if it cannot be opened.
  """
  try:
    with Image.open(file) as image:
      return ImageMode.getmode(image.mode).basemode == "L"
  except UNREADABLE_IMAGE_ERRORS as err:
    raise ValueError(f"cannot read image {file}: {err}") from err


def folder_channels(files: Sequence[Path]) -> int:
  """1 if every file is a greyscale image, else 3: a colour or mixed folder is read as RGB.

  Stops at the first colour image; for an all-grey folder it reads every file's header.
  """
  return 1 if all(is_greyscale(file) for file in files) else 3


def has_alpha(image: Image.Image) -> bool:
  """Whether an opened image has an alpha channel or a transparent palette colour."""
  bands = ImageMode.getmode(image.mode).bands
  return "A" in bands or "a" in bands or "transparency" in image.info


def eight_bit(image: Image.Image) -> Image.Image:
  """``image`` with 8-bit channels. A 16-bit grey PNG (Pillow mode I;16 or I) is scaled to 0..255
  (÷257): Pillow's own conversion clips it to 255, which would turn it almost white."""
  if image.mode.startswith("I"):
    pixels = np.asarray(image, np.float64) / 257
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
  return image


def read_image(
  file: Path, channels: int = 3, note: Callable[[Path, Image.Image], None] | None = None
) -> np.ndarray:
  """Decodes an image file to uint8 pixels (H, W, channels), RGB for 3 channels, grey for 1;
  16-bit images at their true scale (``eight_bit``). ``note(file, image)`` sees the opened image
  first (``FolderNotes``).

  Raises:
    ValueError: naming the file, if it cannot be decoded.
  """
  try:
    with Image.open(file) as image:
      if note is not None:
        note(file, image)
      pixels = np.asarray(eight_bit(image).convert(IMAGE_MODES[channels]))
  except UNREADABLE_IMAGE_ERRORS as err:
    raise ValueError(f"cannot read image {file}: {err}") from err
  return pixels.reshape(*pixels.shape[:2], channels)


class FolderNotes:
  """Says once per folder, on stderr, what reading its images changes that the user may not
  expect: images of different sizes (each is resized and cropped on its own) and alpha channels
  (dropped). Fed every opened image by ``read_image``."""

  def __init__(self, folder: str | os.PathLike):
    self.folder = folder
    self.size: tuple[int, int] | None = None
    self.said: set[str] = set()
    self.lock = threading.Lock()  # the batch thread and the main thread may both decode

  def _say(self, kind: str, text: str) -> None:
    with self.lock:
      if kind in self.said:
        return
      self.said.add(kind)
    print(f"note: {text}", file=sys.stderr, flush=True)

  def __call__(self, file: Path, image: Image.Image) -> None:
    self.size = self.size or image.size
    if image.size != self.size:
      (w0, h0), (w, h) = self.size, image.size
      self._say(
        "size",
        f"the images in {self.folder} have different sizes (e.g. {w0}×{h0} and "
        f"{w}×{h}, {file.name}); each is resized and cropped as the data settings say.",
      )
    if has_alpha(image):
      self._say(
        "alpha",
        f"images in {self.folder} have an alpha channel (e.g. {file.name}); it "
        "is dropped (transparent pixels keep their colour).",
      )


def folder_loader(
  files: list[Path], channels: int = 3, *, folder: str | os.PathLike, **preprocessing: Any
) -> Loader:
  """Returns a function decoding image file i of ``folder`` with ``channels`` channels and
  preprocessing it; mixed sizes and alpha channels among the files are said once
  (``FolderNotes``)."""
  note = FolderNotes(folder)
  return lambda i: preprocess(read_image(files[i], channels, note), **preprocessing)


def folder_dataset(
  path: str | os.PathLike,
  *,
  image_size: int,
  center_crop: int | None = None,
  resize_first: int | None = None,
  stretch: bool = False,
  test_path: str | os.PathLike | None = None,
  channels: int | None = None,
  max_fit_samples: int = DEFAULT_MAX_FIT_SAMPLES,
) -> Dataset:
  """Builds an image Dataset from the .png/.jpg/.jpeg files under a folder (recursively).

  Args:
    path: the training folder, e.g. Cat2dog's ``trainB``.
    image_size: side of the square output images.
    center_crop: side of a square cut from the middle after ``resize_first``.
    resize_first: shorter side to resize to before cropping (Cat2dog: 84, then crop 64).
    stretch: resize both sides to ``image_size`` (no final crop; see ``preprocess``).
    test_path: an optional folder decoded whole into ``Dataset.test``, e.g. ``testB``.
    channels: 1 (grey) or 3 (RGB) to convert every image to; None decides by the folders: 1 if
      every image of ``path`` and ``test_path`` is greyscale (``is_greyscale``), else 3.
    max_fit_samples: a folder with at most this many images is decoded whole into
      ``Dataset.train`` (so a corrupt file fails here); a bigger one is decoded lazily.

  Raises:
    ValueError: if a folder is missing or empty, or (naming it) a file cannot be decoded.
  """
  files = image_files(path)
  test_files = [] if test_path is None else image_files(test_path)
  if channels is None:
    channels = folder_channels([*files, *test_files])
  elif channels not in IMAGE_MODES:
    raise ValueError(f"images are read with 1 (grey) or 3 (RGB) channels, not {channels}")
  preprocessing = {
    "image_size": image_size,
    "center_crop": center_crop,
    "resize_first": resize_first,
    "stretch": stretch,
  }
  test = None
  if test_path is not None:
    test = load_all(
      len(test_files), folder_loader(test_files, channels, folder=test_path, **preprocessing)
    )
  load = folder_loader(files, channels, folder=path, **preprocessing)
  return indexed_dataset(
    Path(path).name, len(files), load, max_fit_samples=max_fit_samples, test=test
  )


def to_model_range(array: np.ndarray, where: str) -> np.ndarray:
  """Converts NHWC images, uint8 in 0..255 or float in [-1, 1], to float32 in [-1, 1].

  Raises:
    ValueError: if the array is not 4-D uint8 or float images, holds no image, or float values are
      not finite or leave [-1, 1].
  """
  if array.ndim != 4 or not len(array):
    raise ValueError(f"{where}: expected NHWC images (4-D, at least one), got shape {array.shape}")
  if array.dtype == np.uint8:
    return array.astype(np.float32) / 127.5 - 1.0
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(
      f"{where}: images must be uint8 (0..255) or float (in [-1, 1]), not {array.dtype}"
    )
  array = array.astype(np.float32)
  if not np.isfinite(array).all():
    raise ValueError(f"{where}: the images hold NaN or infinite values")
  if array.size and (array.min() < -1 or array.max() > 1):
    raise ValueError(
      f"{where}: float images must lie in [-1, 1] (or be uint8 in 0..255), "
      f"found [{array.min():g}, {array.max():g}]"
    )
  return array


def open_npz(path: str | os.PathLike) -> np.lib.npyio.NpzFile:
  """Opens an .npz file (np.savez's zip of arrays) for ``npz_images``.

  Raises:
    ValueError: one line naming the file, if it is missing, an .npy array, a truncated or corrupt
      archive, or not an .npz file at all (numpy would blame "pickled data").
  """
  try:
    arrays = np.load(path)
  except OSError as err:  # missing, a folder, unreadable
    raise ValueError(f"cannot read {path}: {err.strerror or first_line(err)}") from None
  except (ValueError, zipfile.BadZipFile, EOFError) as err:
    what = (
      f"a truncated or corrupt .npz archive ({first_line(err)})"
      if _zip_start(path)
      else "not an .npz file (neither np.savez's zip archive nor an .npy array)"
    )
    raise ValueError(f"{path} is {what}; save the images with np.savez(FILE, x=images)") from None
  if not isinstance(arrays, np.lib.npyio.NpzFile):
    raise ValueError(
      f"{path} holds one .npy array, not an .npz archive of named arrays; save the "
      "images with np.savez(FILE, x=images)"
    )
  return arrays


def _zip_start(path: str | os.PathLike) -> bool:
  """Whether a file starts as a zip archive does (an .npz cut short has no directory at its end)."""
  with open(path, "rb") as f:
    return f.read(4) == b"PK\x03\x04"


def npz_images(arrays: Any, key: str, path: str | os.PathLike) -> np.ndarray:
  """Reads the images stored under ``key`` of an open .npz file (``open_npz``), in [-1, 1].

  Raises:
    ValueError: if the key is absent, its array cannot be read (a corrupt archive) or it is not
      valid images.
  """
  if key not in arrays.files:
    raise ValueError(f"{path} has no array {key!r}; it holds {sorted(arrays.files)}")
  try:
    array = arrays[key]
  except (ValueError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
    raise ValueError(
      f"cannot read array {key!r} of {path}: {first_line(err)} (a truncated or "
      "corrupt .npz archive)"
    ) from None
  return to_model_range(array, f"{path}[{key!r}]")


def npz_dataset(path: str | os.PathLike, *, key: str = "x", test_key: str | None = None) -> Dataset:
  """Builds an image Dataset from NHWC images in an .npz file, loaded whole into memory.

  Args:
    path: the .npz file.
    key: the training images: float in [-1, 1] or uint8 in 0..255.
    test_key: optional held-out images in the same format.

  Raises:
    ValueError: if a key is absent or its array is not valid images.
  """
  with open_npz(path) as arrays:
    train = npz_images(arrays, key, path)
    test = None if test_key is None else npz_images(arrays, test_key, path)
  return Dataset(
    name=Path(path).stem,
    event_shape=train.shape[1:],
    is_image=True,
    sample=rows_batch_fn(train),
    test=test,
    train=train,
  )
