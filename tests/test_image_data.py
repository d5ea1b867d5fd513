"""Image sources: folders of PNG/JPEG, .npz arrays and tfds splits (on tfds.testing.mock_data)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from fdrl_jax.data import fit_samples, get_batch
from fdrl_jax.image_data import (CAT2DOG_PREPROCESSING, TFDS_PRESETS, folder_dataset,
                                 indexed_dataset, npz_dataset, preprocess, tfds_dataset)


def write_images(folder, sizes, suffix):
  """Writes random RGB images of the given (width, height) sizes into folder."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(len(sizes))
  for i, (w, h) in enumerate(sizes):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}{suffix}")


@pytest.fixture
def image_folder(tmp_path):
  """A folder of 3 PNGs, 2 JPEGs, a grayscale PNG in a subfolder and a non-image file."""
  root = tmp_path / "images"
  write_images(root, [(40, 30), (32, 32), (50, 90)], ".png")
  write_images(root, [(64, 48), (100, 100)], ".JPG")
  (root / "sub").mkdir()
  Image.fromarray(np.full((20, 24), 7, np.uint8)).save(root / "sub" / "gray.jpeg")
  (root / "notes.txt").write_text("not an image")
  return root


def assert_images(x, shape):
  assert x.shape == shape
  assert x.dtype == np.float32
  assert -1.0 <= x.min() and x.max() <= 1.0


def test_folder_reads_pngs_and_jpegs_recursively(image_folder):
  ds = folder_dataset(image_folder, image_size=16)
  assert ds.name == "images" and ds.is_image and ds.event_shape == (16, 16, 3)
  assert_images(ds.train, (6, 16, 16, 3))
  assert_images(get_batch(ds, seed=0, step=0, batch_size=4), (4, 16, 16, 3))
  gray = ds.train[-1]  # sub/gray.jpeg sorts last, converted to 3 equal channels.
  np.testing.assert_allclose(gray, gray[..., :1].repeat(3, axis=-1))


def test_folder_batches_are_deterministic_and_lazy_matches_eager(image_folder):
  eager = folder_dataset(image_folder, image_size=16)
  lazy = folder_dataset(image_folder, image_size=16, max_fit_samples=0)
  assert lazy.train is None and lazy.event_shape == (16, 16, 3)
  batch = get_batch(eager, seed=3, step=7, batch_size=5)
  np.testing.assert_array_equal(batch, get_batch(eager, seed=3, step=7, batch_size=5))
  np.testing.assert_array_equal(batch, get_batch(lazy, seed=3, step=7, batch_size=5))
  assert not np.array_equal(batch, get_batch(eager, seed=3, step=8, batch_size=5))
  assert fit_samples(lazy, 6, seed=0).shape == (6, 16, 16, 3)
  with pytest.raises(ValueError, match="cannot draw 7"):
    get_batch(lazy, seed=0, step=0, batch_size=7)


def test_a_process_decodes_only_its_rows_of_a_batch():
  decoded = []

  def load(i):
    decoded.append(i)
    return np.full((2, 2, 1), i / 10, np.float32)

  lazy = indexed_dataset("counted", 10, load, max_fit_samples=0, test=None)
  assert lazy.train is None and lazy.num_train == 10
  whole = get_batch(lazy, seed=1, step=2, batch_size=6)
  decoded.clear()
  halves = [get_batch(lazy, seed=1, step=2, batch_size=6, rows=slice(lo, lo + 3))
            for lo in (0, 3)]
  assert len(decoded) == 6  # three each, not the whole batch each
  np.testing.assert_array_equal(np.concatenate(halves), whole)


def test_cat2dog_layout_and_preprocessing(tmp_path):
  write_images(tmp_path / "trainA", [(256, 256)] * 3, ".jpg")
  write_images(tmp_path / "testA", [(256, 256)] * 2, ".jpg")
  ds = folder_dataset(tmp_path / "trainA", test_path=tmp_path / "testA", **CAT2DOG_PREPROCESSING)
  assert_images(ds.train, (3, 64, 64, 3))
  assert_images(ds.test, (2, 64, 64, 3))


def test_preprocess_resize_then_crop_keeps_the_centre():
  pixels = np.zeros((100, 100, 3), np.uint8)
  pixels[25:75, 25:75] = 255  # A white square whose border the resize to 84 then crop 64 cuts.
  x = preprocess(pixels, **CAT2DOG_PREPROCESSING)
  assert x.shape == (64, 64, 3)
  assert x[32, 32, 0] == 1.0 and x[0, 0, 0] == -1.0


def test_corrupt_image_error_names_the_file(image_folder):
  bad = image_folder / "sub" / "x.png"
  bad.write_bytes(np.random.default_rng(0).bytes(300))
  with pytest.raises(ValueError, match="x.png"):
    folder_dataset(image_folder, image_size=16)
  lazy = folder_dataset(image_folder, image_size=16, max_fit_samples=0)
  with pytest.raises(ValueError, match="x.png"):
    get_batch(lazy, seed=0, step=0, batch_size=7)


def test_truncated_jpeg_error_names_the_file(tmp_path):
  write_images(tmp_path, [(64, 64)], ".jpg")
  data = (tmp_path / "0.jpg").read_bytes()
  (tmp_path / "0.jpg").write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="0.jpg"):
    folder_dataset(tmp_path, image_size=16)


def test_missing_or_empty_folder_errors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    folder_dataset(tmp_path / "nowhere", image_size=16)
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "readme.txt").write_text("no images")
  with pytest.raises(ValueError, match="holds no"):
    folder_dataset(tmp_path / "empty", image_size=16)


def test_npz_round_trip_float_and_uint8(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
  floats = pixels / 127.5 - 1.0
  np.savez(tmp_path / "u.npz", x=pixels, x_test=pixels[:2])
  np.savez(tmp_path / "f.npz", images=floats)
  u = npz_dataset(tmp_path / "u.npz", test_key="x_test")
  f = npz_dataset(tmp_path / "f.npz", key="images")
  np.testing.assert_allclose(u.train, floats, atol=1e-6)
  np.testing.assert_allclose(f.train, floats, atol=1e-6)
  assert u.test.shape == (2, 8, 8, 3) and u.name == "u" and f.event_shape == (8, 8, 3)
  assert get_batch(f, seed=0, step=0, batch_size=4).shape == (4, 8, 8, 3)


def test_npz_rejects_bad_arrays(tmp_path):
  np.savez(tmp_path / "a.npz", x=np.full((2, 4, 4, 1), 3.0), flat=np.zeros((2, 16)))
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    npz_dataset(tmp_path / "a.npz")
  with pytest.raises(ValueError, match="4-D"):
    npz_dataset(tmp_path / "a.npz", key="flat")
  with pytest.raises(ValueError, match="no array 'y'"):
    npz_dataset(tmp_path / "a.npz", key="y")


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


def test_unknown_tfds_name_is_one_line(tmp_path):
  with pytest.raises(ValueError, match="no dataset named 'not_a_dataset'$"):
    tfds_dataset("not_a_dataset", data_dir=tmp_path, image_size=32)
