"""Data from a config: the training set, the prior's data, labelled images, and step batches.

``config.data.name`` picks a bundled set (``bundled.DATASETS``), a tensorflow-datasets preset
(``TFDS_PRESETS``), ``tfds`` (any prepared tfds set, ``data.tfds_name``), ``folder`` or ``npz``
(``readers``). Batches are a pure function of (seed, step) (``bundled.get_batch``), so a resumed
run sees the same data; ``prefetch`` makes them ahead of the device in a thread. Only this module
turns a data config into arrays; it imports ``tfds_sources`` (and with it tensorflow-datasets)
only when a tfds set is read.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import Any

import ml_collections
import numpy as np

from fdrl_jax import bundled, preprocessing, readers, registry

# The paper's tensorflow-datasets sets by ``data.name``: the tfds name and the preprocessing
# (``tfds_sources.tfds_dataset``'s arguments): CIFAR10 32², CelebA center crop 140 → 64², LSUN
# church_outdoor 128², MNIST 28²×1.
TFDS_PRESETS: dict[str, dict[str, Any]] = {
  "cifar10": {"name": "cifar10", "image_size": 32},
  "celeb_a": {"name": "celeb_a", "image_size": 64, "center_crop": 140},
  "lsun_church": {"name": "lsun/church_outdoor", "image_size": 128},
  "mnist": {"name": "mnist", "image_size": 28},
}
# The sets ``labelled_images`` reads with their labels.
LABELLED = ("digits", "mnist", "cifar10")
TEST_IMAGES = 10_000  # the most held-out labelled images read from a tfds test split


def is_translation(config: ml_collections.ConfigDict) -> bool:
  """Whether a run is an image-to-image translation: its prior is "empirical", the source domain's
  images (``source_domain``), which the flow carries to the data (the target domain) instead of
  drawing from a fitted distribution."""
  return config.prior.name == "empirical"


def _folder(
  config: ml_collections.ConfigDict, path: str, test_path: str = "", channels: int | None = None
) -> bundled.Dataset:
  d = config.data
  return readers.folder_dataset(
    path,
    image_size=d.image_size,
    center_crop=d.center_crop or None,
    resize_first=d.resize_first or None,
    stretch=d.stretch,
    test_path=test_path or None,
    channels=channels,
    max_fit_samples=d.max_fit_samples,
  )


def _tfds(config: ml_collections.ConfigDict) -> bundled.Dataset:
  from fdrl_jax import tfds_sources  # imports tensorflow-datasets: only when tfds sets are read

  d = config.data
  return tfds_sources.tfds_dataset(
    **TFDS_PRESETS[d.name],
    data_dir=d.data_dir or None,
    stretch=d.stretch,
    max_fit_samples=d.max_fit_samples,
  )


def _tfds_named(config: ml_collections.ConfigDict) -> bundled.Dataset:
  from fdrl_jax import tfds_sources

  d = config.data
  return tfds_sources.tfds_dataset(
    d.tfds_name,
    split=d.train_split,
    data_dir=d.data_dir or None,
    image_key=d.image_key,
    image_size=d.image_size,
    center_crop=d.center_crop or None,
    resize_first=d.resize_first or None,
    stretch=d.stretch,
    test_split=d.test_split or None,
    max_fit_samples=d.max_fit_samples,
  )


def _npz(config: ml_collections.ConfigDict) -> bundled.Dataset:
  return readers.npz_dataset(config.data.path)


IMAGE_SOURCES = {
  **dict.fromkeys(TFDS_PRESETS, _tfds),
  "tfds": _tfds_named,
  "folder": lambda c: _folder(c, c.data.path, c.data.test_path),
  "npz": _npz,
}


def build_dataset(config: ml_collections.ConfigDict) -> bundled.Dataset:
  """The training data named by ``config.data.name``: bundled, a tfds preset, any tfds set, a
  folder or npz."""
  name = config.data.name
  if name in bundled.DATASETS:
    return bundled.create_dataset(name, seed=config.seed)
  if name not in IMAGE_SOURCES:
    raise registry.unknown_name(name, [*bundled.DATASETS, *IMAGE_SOURCES], "--config.data.name")
  if name in ("folder", "npz") and not config.data.path:
    raise ValueError(f"--config.data.name={name} needs --config.data.path=<where the images are>.")
  if name == "tfds" and not config.data.tfds_name:
    raise ValueError(
      "--config.data.name=tfds needs --config.data.tfds_name=<a prepared tfds set, "
      "e.g. my_dataset:1.0.0>."
    )
  return IMAGE_SOURCES[name](config)


def shape_only(config: ml_collections.ConfigDict, reason: str) -> bundled.Dataset | None:
  """A stand-in for images that are not on this machine: their shape only, enough to restore a run
  and sample from it (``run_lib.Run(data_optional=True)``); drawing a batch raises ``reason``. A
  tfds preset's images, or a translation run's folders: RGB images of ``data.image_size`` and no
  source images (the "empirical" prior of a reference checkpoint imported without them, which
  translates given images). None for data of other sources (their shape is only known from the
  data)."""
  preset = TFDS_PRESETS.get(config.data.name)
  translation = config.data.name == "folder" and is_translation(config)
  if preset is None and not translation:
    return None
  size = preset["image_size"] if preset else config.data.image_size
  shape = (size, size, 1 if config.data.name == "mnist" else 3)

  def sample(*_):
    raise ValueError(reason)

  return bundled.Dataset(
    name=config.data.name,
    event_shape=shape,
    is_image=True,
    sample=sample,
    test=None,
    source=np.zeros((0, *shape), np.float32) if translation else None,
  )


def source_domain(
  config: ml_collections.ConfigDict, dataset: bundled.Dataset
) -> tuple[np.ndarray, np.ndarray | None]:
  """Translation's source domain (the "empirical" prior): training images and held-out images.

  A bundled translation set (``digits_bold``) carries its own; otherwise the folders
  ``prior.source_path`` and ``prior.source_test_path`` (e.g. Cat2dog's trainA / testA), with the
  data's preprocessing and channel count.
  """
  if dataset.source is not None:
    return dataset.source, dataset.source_test
  p = config.prior
  if not p.source_path:
    raise ValueError(
      "--config.prior.name=empirical needs --config.prior.source_path=<folder of "
      "source-domain images>."
    )
  channels = dataset.event_shape[-1] if dataset.is_image else None
  source = _folder(config, p.source_path, p.source_test_path, channels)
  return bundled.fit_samples(source, config.data.max_fit_samples, config.seed), source.test


def prior_data(config: ml_collections.ConfigDict, dataset: bundled.Dataset) -> np.ndarray:
  """What the prior is built from: the source domain for "empirical", else training samples."""
  if is_translation(config):
    return source_domain(config, dataset)[0]
  return bundled.fit_samples(dataset, config.data.max_fit_samples, config.seed)


def labelled_images(
  name: str,
  *,
  seed: int = 0,
  data_dir: str | None = None,
  max_train: int = preprocessing.DEFAULT_MAX_FIT_SAMPLES,
) -> bundled.Dataset:
  """Labelled images (``train_labels``, ``test_labels``): the bundled digits (the split fixed by
  ``seed``) or a tfds preset with labels (``mnist``, ``cifar10``: the first ``max_train`` training
  images and ``TEST_IMAGES`` test images, from ``data_dir`` or tfds's default folder). The one
  loader of labelled images, for a classifier run and for an evaluation metric's classifier.

  Raises:
    ValueError: one line, if ``name`` is not one of ``LABELLED``.
  """
  if name == "digits":
    train_x, train_y, test_x, test_y = bundled.digits_split(seed)
  elif name in LABELLED:
    from fdrl_jax import tfds_sources

    preset = TFDS_PRESETS[name]
    train_x, train_y = tfds_sources.tfds_labelled(
      preset["name"], "train", data_dir, max_train, image_size=preset["image_size"]
    )
    test_x, test_y = tfds_sources.tfds_labelled(
      preset["name"], "test", data_dir, TEST_IMAGES, image_size=preset["image_size"]
    )
  else:
    raise ValueError(
      f"A classifier trains on labelled images: --config.data.name=digits, mnist "
      f"or cifar10, not {name!r}."
    )
  return bundled.Dataset(
    name=name,
    event_shape=tuple(train_x.shape[1:]),
    is_image=True,
    sample=bundled.rows_batch_fn(train_x),
    test=test_x,
    train=train_x,
    train_labels=np.asarray(train_y, np.int32),
    test_labels=np.asarray(test_y, np.int32),
  )


def labelled_dataset(config: ml_collections.ConfigDict) -> bundled.Dataset:
  """A classifier run's labelled images (``labelled_images``): ``data.name``, up to
  ``data.max_fit_samples`` training images."""
  return labelled_images(
    config.data.name,
    seed=config.seed,
    data_dir=config.data.data_dir or None,
    max_train=config.data.max_fit_samples,
  )


def image_batch(
  config: ml_collections.ConfigDict, dataset: bundled.Dataset, step: int, rows: slice = slice(None)
) -> np.ndarray:
  """The rows ``rows`` of the global training batch of step ``step`` (``data.batch_size``
  examples)."""
  return bundled.get_batch(dataset, config.seed, step, config.data.batch_size, rows)


def labelled_batch(
  config: ml_collections.ConfigDict, dataset: bundled.Dataset, step: int, rows: slice = slice(None)
) -> tuple[np.ndarray, np.ndarray]:
  """The rows ``rows`` of the global (images, labels) batch of step ``step``, a pure function of
  (seed, step).

  Raises:
    ValueError: one line, if the batch is larger than the training split or the data set has no
      labelled training split in memory (one of ``labelled_images``' has).
  """
  train, labels = dataset.train, dataset.train_labels
  if train is None or labels is None:
    raise ValueError(
      f"The data set {dataset.name!r} has no labelled training split in memory; a "
      "classifier trains on labelled images (datasets.labelled_images)."
    )
  rng = np.random.default_rng([config.seed, step])
  n = config.data.batch_size
  if n > len(train):
    raise ValueError(
      f"--config.data.batch_size={n} is larger than the {len(train)} training images."
    )
  idx = rng.choice(len(train), size=n, replace=False)[rows]
  return train[idx], labels[idx]


def prefetch(
  make: Callable[[int], Any], steps: range, depth: int = 2
) -> Generator[Any, None, None]:
  """Yields ``make(step)`` for each step, computed up to ``depth`` steps ahead in a thread.

  A thread rather than Grain or processes: batch making is PIL decoding, NumPy and the host→device
  copy, which release the GIL, and a training step is long next to it, so one thread keeps the
  device fed without another dependency. An error in ``make`` is raised in the consumer.
  """
  items: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def work() -> None:
    try:
      for step in steps:
        if stop.is_set():
          return
        item = make(step)
        while not stop.is_set():
          try:
            items.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except Exception as e:  # noqa: BLE001 — handed to the consumer
      items.put(e)

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  try:
    for _ in steps:
      item = items.get()
      if isinstance(item, Exception):
        raise item
      yield item
  finally:  # closed early (an error, Ctrl-C): let the thread finish its batch before JAX exits
    stop.set()
    thread.join()
