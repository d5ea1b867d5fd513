"""Data from a config: the training set, the prior's data, labelled images, and step batches.

``config.data.name`` picks a bundled set (``data.DATASETS``), a tensorflow-datasets preset
(``image_data.TFDS_PRESETS``), ``tfds`` (any prepared tfds set, ``data.tfds_name``), ``folder`` or
``npz``. Batches are a pure function of (seed, step) (``data.get_batch``), so a resumed run sees
the same data; ``prefetch`` makes them ahead of the device in a thread. Only this module (and
``image_data``, imported lazily since it imports tensorflow-datasets) turns a data config into
arrays.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

import ml_collections
import numpy as np

from fdrl_jax import data


def _folder(config: ml_collections.ConfigDict, path: str, test_path: str = "",
            channels: int | None = None):
  from fdrl_jax import image_data  # imports tensorflow-datasets: only when images are used
  d = config.data
  return image_data.folder_dataset(
      path, image_size=d.image_size, center_crop=d.center_crop or None,
      resize_first=d.resize_first or None, stretch=d.stretch, test_path=test_path or None,
      channels=channels, max_fit_samples=d.max_fit_samples)


def _tfds(config: ml_collections.ConfigDict):
  from fdrl_jax import image_data
  d = config.data
  return image_data.tfds_dataset(**image_data.TFDS_PRESETS[d.name], data_dir=d.data_dir or None,
                                 stretch=d.stretch, max_fit_samples=d.max_fit_samples)


def _tfds_named(config: ml_collections.ConfigDict):
  from fdrl_jax import image_data
  d = config.data
  return image_data.tfds_dataset(
      d.tfds_name, split=d.train_split, data_dir=d.data_dir or None, image_key=d.image_key,
      image_size=d.image_size, center_crop=d.center_crop or None,
      resize_first=d.resize_first or None, stretch=d.stretch, test_split=d.test_split or None,
      max_fit_samples=d.max_fit_samples)


def _npz(config: ml_collections.ConfigDict):
  from fdrl_jax import image_data
  return image_data.npz_dataset(config.data.path)


IMAGE_SOURCES = {"cifar10": _tfds, "celeb_a": _tfds, "lsun_church": _tfds, "mnist": _tfds,
                 "tfds": _tfds_named,
                 "folder": lambda c: _folder(c, c.data.path, c.data.test_path), "npz": _npz}


def build_dataset(config: ml_collections.ConfigDict) -> data.Dataset:
  """The training data named by ``config.data.name``: bundled, a tfds preset, any tfds set, a
  folder or npz."""
  name = config.data.name
  if name in data.DATASETS:
    return data.create_dataset(name, seed=config.seed)
  if name not in IMAGE_SOURCES:
    raise ValueError(f"Unknown data set {name!r}. Available: "
                     f"{', '.join(sorted([*data.DATASETS, *IMAGE_SOURCES]))}.")
  if name in ("folder", "npz") and not config.data.path:
    raise ValueError(f"--config.data.name={name} needs --config.data.path=<where the images are>.")
  if name == "tfds" and not config.data.tfds_name:
    raise ValueError("--config.data.name=tfds needs --config.data.tfds_name=<a prepared tfds set, "
                     "e.g. my_dataset:1.0.0>.")
  return IMAGE_SOURCES[name](config)


def shape_only(config: ml_collections.ConfigDict, reason: str) -> data.Dataset | None:
  """A stand-in for images that are not on this machine: their shape only, enough to restore a run
  and sample from it (``run_lib.Run(data_optional=True)``); drawing a batch raises ``reason``. A
  tfds preset's images, or a translation run's folders: RGB images of ``data.image_size`` and no
  source images (the "empirical" prior of a reference checkpoint imported without them, which
  translates given images). None for data of other sources (their shape is only known from the
  data)."""
  from fdrl_jax import image_data
  preset = image_data.TFDS_PRESETS.get(config.data.name)
  translation = config.data.name == "folder" and config.prior.name == "empirical"
  if preset is None and not translation:
    return None
  size = preset["image_size"] if preset else config.data.image_size
  shape = (size, size, 1 if config.data.name == "mnist" else 3)

  def sample(*_):
    raise ValueError(reason)

  return data.Dataset(name=config.data.name, event_shape=shape, is_image=True, sample=sample,
                      test=None, source=np.zeros((0, *shape), np.float32) if translation else None)


def source_domain(config: ml_collections.ConfigDict, dataset: data.Dataset
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
    raise ValueError("--config.prior.name=empirical needs --config.prior.source_path=<folder of "
                     "source-domain images>.")
  channels = dataset.event_shape[-1] if dataset.is_image else None
  source = _folder(config, p.source_path, p.source_test_path, channels)
  return data.fit_samples(source, config.data.max_fit_samples, config.seed), source.test


def prior_data(config: ml_collections.ConfigDict, dataset: data.Dataset) -> np.ndarray:
  """What the prior is built from: the source domain for "empirical", else training samples."""
  if config.prior.name == "empirical":
    return source_domain(config, dataset)[0]
  return data.fit_samples(dataset, config.data.max_fit_samples, config.seed)


def labelled_dataset(config: ml_collections.ConfigDict) -> data.Dataset:
  """Labelled images for a classifier: the bundled digits (its seed-fixed split) or a tfds preset
  with labels (``mnist``, ``cifar10``; up to ``data.max_fit_samples`` training images)."""
  name = config.data.name
  if name == "digits":
    train_x, train_y, test_x, test_y = data.digits_split(config.seed)
  elif name in ("mnist", "cifar10"):
    from fdrl_jax import image_data
    preset = image_data.TFDS_PRESETS[name]
    data_dir = config.data.data_dir or None
    train_x, train_y = image_data.tfds_labelled(preset["name"], "train", data_dir,
                                                config.data.max_fit_samples,
                                                image_size=preset["image_size"])
    test_x, test_y = image_data.tfds_labelled(preset["name"], "test", data_dir, 10_000,
                                              image_size=preset["image_size"])
  else:
    raise ValueError(f"A classifier trains on labelled images: --config.data.name=digits, mnist "
                     f"or cifar10, not {name!r}.")
  return data.Dataset(name=name, event_shape=tuple(train_x.shape[1:]), is_image=True,
                      sample=data.rows_sampler(train_x), test=test_x, train=train_x,
                      train_labels=np.asarray(train_y, np.int32),
                      test_labels=np.asarray(test_y, np.int32))


def image_batch(config: ml_collections.ConfigDict, dataset: data.Dataset, step: int,
                rows: slice = slice(None)) -> np.ndarray:
  """The rows ``rows`` of the global training batch of step ``step`` (``data.batch_size``
  examples)."""
  return data.get_batch(dataset, config.seed, step, config.data.batch_size, rows)


def labelled_batch(config: ml_collections.ConfigDict, dataset: data.Dataset, step: int,
                   rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
  """The rows ``rows`` of the global (images, labels) batch of step ``step``, a pure function of
  (seed, step)."""
  rng = np.random.default_rng([config.seed, step])
  n = config.data.batch_size
  if n > len(dataset.train):
    raise ValueError(f"--config.data.batch_size={n} is larger than the {len(dataset.train)} "
                     "training images.")
  idx = rng.choice(len(dataset.train), size=n, replace=False)[rows]
  return dataset.train[idx], dataset.train_labels[idx]


def prefetch(make: Callable[[int], Any], steps: range, depth: int = 2) -> Iterator[Any]:
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
