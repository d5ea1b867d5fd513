"""tensorflow-datasets splits: the presets on tfds.testing.mock_data, any tfds set on one built
here from PNGs (the same pixels as the folder it was built from)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import default
from fdrl_jax.bundled import get_batch
from fdrl_jax.datasets import TFDS_PRESETS, build_dataset
from fdrl_jax.readers import folder_dataset
from fdrl_jax.tfds_build import build_image_folders
from fdrl_jax.tfds_sources import tfds_dataset
from helpers import assert_images, write_images

PRESET_SHAPES = {"cifar10": (32, 32, 3), "mnist": (28, 28, 1), "celeb_a": (64, 64, 3),
                 "lsun_church": (128, 128, 3)}


@pytest.mark.parametrize("preset, shape", PRESET_SHAPES.items())
def test_tfds_presets_on_mock_data(preset, shape):
  with tfds.testing.mock_data(num_examples=16):
    ds = tfds_dataset(**TFDS_PRESETS[preset])
    lazy = tfds_dataset(**TFDS_PRESETS[preset], max_fit_samples=0)
    batch = get_batch(lazy, seed=0, step=1, batch_size=4)
  assert ds.event_shape == lazy.event_shape == shape
  assert_images(ds.train, (16, *shape))
  assert_images(batch, (4, *shape))
  assert lazy.train is None and ds.test is None
  np.testing.assert_array_equal(batch, get_batch(ds, seed=0, step=1, batch_size=4))


def test_tfds_test_split_on_mock_data():
  with tfds.testing.mock_data(num_examples=16):
    ds = tfds_dataset("cifar10", image_size=16, test_split="test", max_test_samples=5)
  assert_images(ds.test, (5, 16, 16, 3))
  assert_images(ds.train, (16, 16, 16, 3))


@pytest.mark.parametrize("preset", PRESET_SHAPES)
def test_missing_tfds_dataset_is_one_line_with_the_build_command(tmp_path, preset):
  with pytest.raises(ValueError) as info:
    tfds_dataset(**TFDS_PRESETS[preset], data_dir=tmp_path)
  message, name = str(info.value), TFDS_PRESETS[preset]["name"]
  assert "\n" not in message and str(tmp_path) in message
  assert f"tfds build {name} --data_dir={tmp_path}" in message and "folder_dataset" in message
  assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unknown_or_malformed_tfds_name_is_one_line(tmp_path):
  with pytest.raises(ValueError, match="no dataset named 'not_a_dataset' .*set data.tfds_name"):
    tfds_dataset("not_a_dataset", data_dir=tmp_path, image_size=32)
  with pytest.raises(ValueError, match=r"^cannot open tfds dataset 'Not A Name': [^\n]*tfds_name"):
    tfds_dataset("Not A Name", data_dir=tmp_path, image_size=32)


def tfds_config(data_dir, **data):
  """The default config reading the tfds set "tiny" under data_dir through data.name=tfds."""
  config = default.get_config()
  config.data.update({"name": "tfds", "tfds_name": "tiny:1.0.0", "data_dir": str(data_dir),
                      "image_size": 8, **data})
  return config


@pytest.fixture
def tiny_tfds(tmp_path):
  """A tfds set "tiny" built here (array_record, no TensorFlow): 5 colour PNGs and a grey JPEG of
  several sizes as "train", 2 PNGs as "test"; returns (tfds data folder, train folder, test)."""
  write_images(tmp_path / "train", [(12, 10), (8, 8), (9, 20), (16, 16), (10, 10)], ".png")
  Image.fromarray(np.full((10, 9), 200, np.uint8)).save(tmp_path / "train" / "grey.jpg")
  write_images(tmp_path / "test", [(8, 8), (11, 9)], ".png")
  build_image_folders("tiny", {"train": tmp_path / "train", "test": tmp_path / "test"},
                      tmp_path / "tfds")
  return tmp_path / "tfds", tmp_path / "train", tmp_path / "test"


def test_any_tfds_set_by_name_reads_what_the_folder_holds(tiny_tfds):
  data_dir, train, test = tiny_tfds
  ds = build_dataset(tfds_config(data_dir, test_split="test"))
  assert ds.name == "tiny:1.0.0" and ds.event_shape == (8, 8, 3)
  assert_images(ds.train, (6, 8, 8, 3))
  assert_images(ds.test, (2, 8, 8, 3))
  folder = folder_dataset(train, image_size=8, test_path=test)
  np.testing.assert_array_equal(ds.train, folder.train)  # same order, same pixels
  np.testing.assert_array_equal(ds.test, folder.test)
  batch = get_batch(ds, seed=0, step=3, batch_size=4)
  assert_images(batch, (4, 8, 8, 3))
  lazy = build_dataset(tfds_config(data_dir, max_fit_samples=0))
  assert lazy.train is None and lazy.num_train == 6 and lazy.test is None
  np.testing.assert_array_equal(get_batch(lazy, seed=0, step=3, batch_size=4), batch)


def test_tfds_split_slices_and_preprocessing_come_from_the_config(tiny_tfds):
  data_dir, train, _ = tiny_tfds
  ds = build_dataset(tfds_config(data_dir, train_split="train[:3]", image_size=4,
                                 resize_first=12, center_crop=8))
  folder = folder_dataset(train, image_size=4, resize_first=12, center_crop=8)
  np.testing.assert_array_equal(ds.train, folder.train[:3])
  stretched = build_dataset(tfds_config(data_dir, image_size=4, stretch=True))
  np.testing.assert_array_equal(stretched.train,
                                folder_dataset(train, image_size=4, stretch=True).train)


def test_a_grey_tfds_set_keeps_one_channel(tmp_path):
  write_images(tmp_path / "digits", [(8, 8), (10, 12), (9, 9)], ".png", channels=1)
  build_image_folders("tiny", {"train": tmp_path / "digits"}, tmp_path / "tfds")
  ds = build_dataset(tfds_config(tmp_path / "tfds"))
  assert ds.event_shape == (8, 8, 1)
  np.testing.assert_array_equal(ds.train, folder_dataset(tmp_path / "digits", image_size=8).train)


@pytest.mark.parametrize("data, message", [
    ({"tfds_name": ""}, "needs --config.data.tfds_name="),
    ({"train_split": "validation"}, "Unknown split 'validation'.*; set data.train_split$"),
    ({"test_split": "valid"}, "Unknown split 'valid'.*; set data.test_split$"),
    ({"image_key": "img"}, "has no feature 'img'; set data.image_key to one of its image "
                           "features: image$"),
    ({"tfds_name": "tiny:2.0.0"}, "no dataset named 'tiny:2.0.0'"),
])
def test_bad_tfds_settings_name_what_to_set(tiny_tfds, data, message):
  with pytest.raises(ValueError, match=message) as info:
    build_dataset(tfds_config(tiny_tfds[0], **data))
  assert "\n" not in str(info.value)


def test_a_feature_that_is_not_an_image_is_one_line():
  config = tfds_config("", tfds_name="cifar10", image_key="label")
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(ValueError, match="'label' of tfds dataset 'cifar10' is a ClassLabel, not "
                       "an Image; set data.image_key to one of its image features: image$"):
      build_dataset(config)
    assert build_dataset(tfds_config("", tfds_name="cifar10")).event_shape == (8, 8, 3)
