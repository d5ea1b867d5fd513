"""Image readers: folders of PNG/JPEG and .npz arrays (the tfds splits: test_tfds_sources.py)."""

import numpy as np
import pytest
from PIL import Image

from fdrl_jax.bundled import fit_samples, get_batch
from fdrl_jax.preprocessing import CAT2DOG_PREPROCESSING, indexed_dataset, preprocess
from fdrl_jax.readers import folder_dataset, npz_dataset
from helpers import assert_images, write_images


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


def test_folder_reads_pngs_and_jpegs_recursively(image_folder):
  ds = folder_dataset(image_folder, image_size=16)
  assert ds.name == "images" and ds.is_image and ds.event_shape == (16, 16, 3)
  assert_images(ds.train, (6, 16, 16, 3))
  assert_images(get_batch(ds, seed=0, step=0, batch_size=4), (4, 16, 16, 3))
  gray = ds.train[-1]  # sub/gray.jpeg sorts last; a mixed folder is RGB: 3 equal channels.
  np.testing.assert_allclose(gray, gray[..., :1].repeat(3, axis=-1))


def test_an_all_grey_folder_keeps_one_channel(tmp_path):
  write_images(tmp_path / "grey", [(20, 20), (24, 30)], ".png", channels=1)
  write_images(tmp_path / "grey", [(16, 16)], ".jpg", channels=1)
  Image.fromarray(np.eye(16, dtype=bool)).save(tmp_path / "grey" / "bilevel.png")  # mode "1"
  ds = folder_dataset(tmp_path / "grey", image_size=16)
  assert ds.event_shape == (16, 16, 1)
  assert_images(ds.train, (4, 16, 16, 1))
  np.testing.assert_array_equal(ds.train[-1, ..., 0], np.where(np.eye(16), 1.0, -1.0))
  lazy = folder_dataset(tmp_path / "grey", image_size=16, max_fit_samples=0)
  np.testing.assert_array_equal(get_batch(lazy, seed=0, step=0, batch_size=3),
                                get_batch(ds, seed=0, step=0, batch_size=3))
  as_rgb = folder_dataset(tmp_path / "grey", image_size=16, channels=3)
  np.testing.assert_array_equal(as_rgb.train, ds.train.repeat(3, axis=-1))
  write_images(tmp_path / "colour", [(16, 16)], ".png")
  with_colour_test = folder_dataset(tmp_path / "grey", image_size=16,
                                    test_path=tmp_path / "colour")
  assert with_colour_test.event_shape == (16, 16, 3) and with_colour_test.test.shape[-1] == 3


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


def test_stretch_squeezes_the_whole_image_into_the_square():
  pixels = np.zeros((40, 80, 3), np.uint8)
  pixels[:, :10] = 255  # a white band at the left edge, which the centre crop would cut
  cropped = preprocess(pixels, image_size=20)
  stretched = preprocess(pixels, image_size=20, stretch=True)
  assert cropped.shape == stretched.shape == (20, 20, 3)
  assert cropped[:, 0].max() == -1.0 and stretched[:, 0].min() == 1.0
  assert stretched[:, 4:].max() == -1.0  # the band is 10/80 of the width: 2.5 of 20 columns


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
