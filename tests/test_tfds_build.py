"""fdrl_jax.tfds_build: tfds sets built from image folders without TensorFlow, and its errors."""

import numpy as np
import pytest
from PIL import Image

from configs import default
from fdrl_jax import datasets, tfds_build


def write_pngs(folder, n, mode="RGB"):
  """Writes n random 6×5 PNGs of a Pillow mode ("RGB", "RGBA", "L", "P") into folder."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(n)
  for i in range(n):
    image = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    image.convert(mode).save(folder / f"{i}.png")


def test_command_line_builds_a_set_and_prints_the_flags_that_read_it(tmp_path, capsys):
  write_pngs(tmp_path / "a", 3)
  write_pngs(tmp_path / "b", 2, mode="RGBA")  # converted to RGB PNGs
  tfds_build.main(["faces", f"fit={tmp_path / 'a'}", f"held={tmp_path / 'b'}",
                   f"--data_dir={tmp_path / 'tfds'}", "--version=2.1.0"])
  out = capsys.readouterr().out
  assert (tmp_path / "tfds" / "faces" / "2.1.0").is_dir()
  flags = out.split("train on it with ")[1].split()
  assert flags[:2] == ["--config.data.name=tfds", "--config.data.tfds_name=faces:2.1.0"]
  assert flags[-1] == "--config.data.train_split=fit"
  config = default.get_config()
  config.data.image_size = 4
  for flag in flags:
    key, value = flag.removeprefix("--config.data.").split("=")
    config.data[key] = value
  config.data.test_split = "held"
  ds = datasets.build_dataset(config)
  assert ds.train.shape == (3, 4, 4, 3) and ds.test.shape == (2, 4, 4, 3)


@pytest.mark.parametrize("args, message", [
    (["Faces", "train=X"], "must be snake_case"),
    (["faces", "train=X", "--version=1.0"], "must be MAJOR.MINOR.PATCH"),
    (["faces", "tr-ain=X"], "split names are letters, digits and _, not 'tr-ain'"),
    (["faces", "train"], "expected SPLIT=FOLDER"),
    (["faces", "train=X", "train=Y"], "each split is given once"),
    (["faces", "train=nowhere"], "image folder nowhere does not exist"),
])
def test_command_line_errors_are_one_line_with_exit_status_2(tmp_path, capsys, args, message):
  with pytest.raises(SystemExit) as info:
    tfds_build.main([*args, f"--data_dir={tmp_path}"])
  assert info.value.code == 2
  assert message in capsys.readouterr().err.splitlines()[-1]


def test_nothing_is_overwritten_and_an_unreadable_image_is_named(tmp_path):
  write_pngs(tmp_path / "a", 2)
  tfds_build.build_image_folders("faces", {"train": tmp_path / "a"}, tmp_path / "tfds")
  with pytest.raises(ValueError, match="faces/1.0.0 already exists; delete it or give another"):
    tfds_build.build_image_folders("faces", {"train": tmp_path / "a"}, tmp_path / "tfds")
  (tmp_path / "a" / "bad.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match="cannot read image .*bad.png"):
    tfds_build.build_image_folders("faces", {"train": tmp_path / "a"}, tmp_path / "tfds",
                                   version="1.0.1")


def test_palette_and_grey_images_are_stored_as_the_folder_decides(tmp_path):
  write_pngs(tmp_path / "grey", 2, mode="L")
  write_pngs(tmp_path / "palette", 2, mode="P")  # palette images count as colour
  assert tfds_build.stored_image(tmp_path / "grey" / "0.png", "L") == tmp_path / "grey" / "0.png"
  converted = tfds_build.stored_image(tmp_path / "palette" / "0.png", "RGB")
  assert isinstance(converted, bytes) and converted.startswith(b"\x89PNG")
  tfds_build.build_image_folders("mixed", {"train": tmp_path / "grey",
                                           "test": tmp_path / "palette"}, tmp_path / "tfds")
  config = default.get_config()
  config.data.update({"name": "tfds", "tfds_name": "mixed", "data_dir": str(tmp_path / "tfds"),
                      "image_size": 4, "test_split": "test"})
  ds = datasets.build_dataset(config)
  assert ds.event_shape == (4, 4, 3) and ds.test.shape == (2, 4, 4, 3)
  np.testing.assert_array_equal(ds.train, ds.train[..., :1].repeat(3, axis=-1))
