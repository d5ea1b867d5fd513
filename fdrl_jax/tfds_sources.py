"""tensorflow-datasets splits as ``bundled.Dataset``: any split prepared in the ``array_record``
format (a catalogue set, or one's own, e.g. built by ``fdrl_jax.tfds_build``), read through
``tfds.data_source`` (random access, decoded with pillow, no TensorFlow at read time); the
channels are the image feature's (1 or 3). The paper's presets (their names and preprocessing) are
``datasets.TFDS_PRESETS``. Images are preprocessed and decoded (whole or lazily) by
``preprocessing``, as ``readers`` does for folders.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np
import tensorflow_datasets as tfds

from fdrl_jax.bundled import Dataset
from fdrl_jax.preprocessing import (
  DEFAULT_MAX_FIT_SAMPLES,
  Loader,
  indexed_dataset,
  load_all,
  preprocess,
)
from fdrl_jax.readers import IMAGE_MODES, first_line

DEFAULT_MAX_TEST_SAMPLES = 10_000
MISSING_TFDS_ERRORS = (NotImplementedError, KeyError, FileNotFoundError, AssertionError)


class Source(Protocol):
  """A tfds split opened for random access (what ``tfds.data_source`` returns): example i as a
  dict of decoded features, and the set's ``tfds.core.DatasetInfo``."""

  dataset_info: Any

  def __len__(self) -> int: ...

  def __getitem__(self, i: int) -> dict: ...


def tfds_root(data_dir: str | os.PathLike | None) -> str:
  """The tfds data folder: ``data_dir``, else tfds's default ($TFDS_DATA_DIR or
  ~/tensorflow_datasets)."""
  return os.fspath(data_dir or tfds.core.constants.get_default_data_dir())


def missing_tfds_message(name: str, split: str, data_dir: str | os.PathLike | None) -> str:
  """Writes the one-line explanation for a tfds split that is not prepared as array_record."""
  root = tfds_root(data_dir)
  return (
    f"tfds dataset {name!r} has no split {split!r} prepared in the array_record format "
    f"under {root}; prepare it with `pip install tensorflow apache-beam mlcroissant "
    f"importlib_resources && tfds build {name} --data_dir={root} "
    f"--file_format=array_record` (a TFRecord copy converts with "
    f"`tfds convert_format --root_data_dir={root} --out_file_format=array_record`), "
    f"or use folder_dataset on a folder of images instead"
  )


def open_tfds(
  name: str, split: str, data_dir: str | os.PathLike | None, split_key: str = "data.train_split"
) -> Source:
  """Opens a prepared tfds split for random access, never downloading or preparing it.

  Args:
    name: a tfds name, ``name[/config][:version]``.
    split: a split in tfds's syntax: "train", "train[:90%]", "train+test".
    data_dir: the tfds data folder; None means tfds's default.
    split_key: the config key that chose ``split``, named by the error for a bad split.

  Raises:
    ValueError: one line, if the name is malformed or unknown, the split unknown, or the split not
      prepared in the array_record format under ``data_dir``.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:
    raise ValueError(
      f"tensorflow-datasets has no dataset named {name!r} in its catalogue or "
      f"under {tfds_root(data_dir)}; set data.tfds_name (and data.data_dir) to "
      "one that is there"
    ) from None
  except (ValueError, AssertionError) as err:  # a malformed name or a version not prepared
    raise ValueError(
      f"cannot open tfds dataset {name!r}: {first_line(err).rstrip('.')}; set "
      "data.tfds_name to name[/config][:version], e.g. my_dataset:1.0.0"
    ) from None
  try:
    return builder.as_data_source(split=split)
  except MISSING_TFDS_ERRORS:
    raise ValueError(missing_tfds_message(name, split, data_dir)) from None
  except ValueError as err:  # an unknown split or a bad slice
    raise ValueError(
      f"tfds dataset {name!r}: {first_line(err).rstrip('.')}; set {split_key}"
    ) from None


def check_tfds_image(source: Source, name: str, image_key: str) -> None:
  """Checks that feature ``image_key`` of a tfds source is a uint8 image of 1 or 3 channels.

  Raises:
    ValueError: one line naming the image features there are, if it is missing or not one.
  """
  features = source.dataset_info.features
  images = [key for key, feature in features.items() if isinstance(feature, tfds.features.Image)]
  hint = (
    f"set data.image_key to one of its image features: {', '.join(images)}"
    if images
    else "it has no image feature"
  )
  if image_key not in features:
    raise ValueError(f"tfds dataset {name!r} has no feature {image_key!r}; {hint}")
  feature = features[image_key]
  if not isinstance(feature, tfds.features.Image):
    raise ValueError(
      f"feature {image_key!r} of tfds dataset {name!r} is a "
      f"{type(feature).__name__}, not an Image; {hint}"
    )
  if feature.np_dtype != np.uint8 or feature.shape[-1] not in IMAGE_MODES:
    raise ValueError(
      f"feature {image_key!r} of tfds dataset {name!r} holds {feature.np_dtype} "
      f"images of {feature.shape[-1]} channels; only uint8 grey or RGB images are "
      "read: rebuild the set with those or set data.image_key to another feature"
    )


def tfds_loader(source: Source, image_key: str = "image", **preprocessing: Any) -> Loader:
  """Returns a function decoding and preprocessing the image of example i of a tfds source."""
  return lambda i: preprocess(source[i][image_key], **preprocessing)


def tfds_test_images(
  name: str,
  test_split: str | None,
  data_dir: str | os.PathLike | None,
  max_images: int,
  image_key: str = "image",
  **preprocessing: Any,
) -> np.ndarray | None:
  """Decodes the first ``max_images`` images of a tfds test split, or None without a split."""
  if test_split is None:
    return None
  source = open_tfds(name, test_split, data_dir, split_key="data.test_split")
  return load_all(min(len(source), max_images), tfds_loader(source, image_key, **preprocessing))


def tfds_labelled(
  name: str, split: str, data_dir: str | os.PathLike | None, max_examples: int, **preprocessing: Any
) -> tuple[np.ndarray, np.ndarray]:
  """The first ``max_examples`` images of a tfds split with their integer ``label`` (for the
  in-project classifier of an evaluation metric)."""
  source = open_tfds(name, split, data_dir)
  n = min(len(source), max_examples)
  images = load_all(n, tfds_loader(source, **preprocessing))
  return images, np.array([int(source[i]["label"]) for i in range(n)], np.int32)


def tfds_dataset(
  name: str,
  *,
  split: str = "train",
  data_dir: str | os.PathLike | None = None,
  image_key: str = "image",
  image_size: int,
  center_crop: int | None = None,
  resize_first: int | None = None,
  stretch: bool = False,
  test_split: str | None = None,
  max_fit_samples: int = DEFAULT_MAX_FIT_SAMPLES,
  max_test_samples: int = DEFAULT_MAX_TEST_SAMPLES,
) -> Dataset:
  """Builds an image Dataset from a tensorflow-datasets split read through ``tfds.data_source``.

  Use ``tfds_dataset(**datasets.TFDS_PRESETS["celeb_a"], data_dir=...)`` for the paper's
  preprocessing.
  The test splits are "test" for cifar10, celeb_a and mnist and "validation" for LSUN.

  Args:
    name: the tfds name, e.g. "cifar10", "lsun/church_outdoor" or "my_dataset:1.0.0".
    split: the training split, in tfds's syntax ("train", "train[:90%]").
    data_dir: the tfds data folder; None means tfds's default ($TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    image_key: the image feature: uint8, grey (one channel kept) or RGB.
    image_size: side of the square output images.
    center_crop: side of a square cut from the middle before resizing (CelebA: 140).
    resize_first: shorter side to resize to before ``center_crop``.
    stretch: resize both sides to ``image_size`` (no final crop; see ``preprocess``).
    test_split: a split whose first ``max_test_samples`` images become ``Dataset.test``.
    max_fit_samples: a training split at most this long is decoded whole into ``Dataset.train``;
      a longer one leaves it None and is decoded lazily, batch by batch (see the module doc).
    max_test_samples: the most test images decoded.

  Raises:
    ValueError: one line naming what to set (``open_tfds``, ``check_tfds_image``) or, for a set
      not prepared, the data folder and the command to prepare it.
  """
  preprocessing = {
    "image_size": image_size,
    "center_crop": center_crop,
    "resize_first": resize_first,
    "stretch": stretch,
  }
  source = open_tfds(name, split, data_dir)
  check_tfds_image(source, name, image_key)
  test = tfds_test_images(name, test_split, data_dir, max_test_samples, image_key, **preprocessing)
  return indexed_dataset(
    name,
    len(source),
    tfds_loader(source, image_key, **preprocessing),
    max_fit_samples=max_fit_samples,
    test=test,
  )
