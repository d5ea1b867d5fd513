"""Builds a tensorflow-datasets data set from folders of images, without TensorFlow.

  python -m fdrl_jax.tfds_build my_faces train=faces/train test=faces/test --data_dir=DIR

writes ``DIR/my_faces/1.0.0/`` in the ``array_record`` format, one split per folder, with one
feature, "image"; then train on it with ``--config.data.name=tfds
--config.data.tfds_name=my_faces:1.0.0 --config.data.data_dir=DIR`` (and
``--config.data.test_split=test``). The images are the files ``readers.image_files`` lists
(.png/.jpg/.jpeg, recursively, sorted), stored in that order, unresized. They are grey (one
channel) when every image of every folder is greyscale, else RGB, as ``readers.folder_dataset``
decides; a file already in that mode is stored as its own bytes, any other is converted and stored
as PNG, so the set decodes to the pixels ``folder_dataset`` reads.

Compared with ``--config.data.name=folder``: one file per split instead of one per image (quicker
on network storage), and a name with a version that tfds checks.
"""

from __future__ import annotations

import argparse
import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import tensorflow_datasets as tfds
from PIL import Image

from fdrl_jax import readers, tfds_sources

NAME_PATTERN = r"[a-z][a-z0-9_]*"  # a tfds data set name: snake_case
VERSION_PATTERN = r"\d+\.\d+\.\d+"
SPLIT_PATTERN = r"[A-Za-z0-9_]+"


# tfds has no annotations, so mypy checks skip_registration against object's __init_subclass__.
class ImageFolders(  # type: ignore[call-arg]
  tfds.core.GeneratorBasedBuilder, skip_registration=True
):
  """A tfds builder with one split per folder of images and one feature, "image".

  Not registered: the built set is read back from its files (``tfds.data_source`` with the
  ``data_dir``), as any set built elsewhere is.
  """

  VERSION = tfds.core.Version("1.0.0")  # replaced by each instance's version
  # No checksums file sits next to this module (nothing is downloaded). None also skips tfds's
  # search for one, which imports importlib_resources, a package tfds does not install.
  code_path = None

  def __init__(
    self,
    *,
    name: str,
    version: str,
    folders: Mapping[str, Sequence[Path]],
    channels: int,
    data_dir: str | os.PathLike | None,
  ):
    self.name = name
    self.VERSION = tfds.core.Version(version)  # pylint: disable=invalid-name
    self._folders = folders
    self._channels = channels
    super().__init__(data_dir=data_dir, file_format="array_record")

  def _info(self) -> tfds.core.DatasetInfo:
    features = tfds.features.FeaturesDict(
      {"image": tfds.features.Image(shape=(None, None, self._channels))}
    )
    return tfds.core.DatasetInfo(
      builder=self,
      features=features,
      disable_shuffling=True,
      description="Folders of images, by fdrl_jax.tfds_build.",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    del dl_manager  # nothing to download
    return {split: self._generate_examples(files) for split, files in self._folders.items()}

  def _generate_examples(self, files: Sequence[Path]) -> Iterator[tuple[str, dict]]:
    mode = readers.IMAGE_MODES[self._channels]
    for i, file in enumerate(files):
      yield f"{i:09d}", {"image": stored_image(file, mode)}


def stored_image(file: Path, mode: str) -> Path | bytes:
  """What the builder stores for an image file: the file if it is in ``mode``, else PNG bytes of
  it converted to ``mode``.

  Raises:
    ValueError: naming the file, if it cannot be decoded.
  """
  try:
    with Image.open(file) as image:
      if image.mode == mode:
        return file
      buffer = io.BytesIO()
      image.convert(mode).save(buffer, format="PNG")
      return buffer.getvalue()
  except readers.UNREADABLE_IMAGE_ERRORS as err:
    raise ValueError(f"cannot read image {file}: {err}") from err


def build_image_folders(
  name: str,
  folders: Mapping[str, str | os.PathLike],
  data_dir: str | os.PathLike | None = None,
  *,
  version: str = "1.0.0",
) -> Path:
  """Builds the tfds data set ``name:version`` with one split per folder of images.

  Args:
    name: the data set's tfds name, snake_case, e.g. "my_faces".
    folders: split name → folder of .png/.jpg/.jpeg images, e.g. {"train": ..., "test": ...}.
    data_dir: the tfds data folder; None means tfds's default ($TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    version: the version, MAJOR.MINOR.PATCH.

  Returns:
    The folder the set was written to, ``data_dir/name/version``.

  Raises:
    ValueError: one line, for a bad name, version or split name, a folder that is missing, empty
      or holds an unreadable image, or a set that is already there (nothing is overwritten).
  """
  if not re.fullmatch(NAME_PATTERN, name):
    raise ValueError(
      f"tfds name {name!r} must be snake_case: a lower-case letter, then lower-case "
      "letters, digits or _ (e.g. my_faces)"
    )
  if not re.fullmatch(VERSION_PATTERN, version):
    raise ValueError(f"version {version!r} must be MAJOR.MINOR.PATCH, e.g. 1.0.0")
  if not folders:
    raise ValueError("give at least one split and its folder, e.g. train=FOLDER")
  bad_splits = [split for split in folders if not re.fullmatch(SPLIT_PATTERN, split)]
  if bad_splits:
    raise ValueError(f"split names are letters, digits and _, not {bad_splits[0]!r}")
  root = Path(tfds_sources.tfds_root(data_dir))
  target = root / name / version
  if target.exists():
    raise ValueError(f"{target} already exists; delete it or give another --version")
  files = {split: readers.image_files(folder) for split, folder in folders.items()}
  channels = readers.folder_channels([file for split in files.values() for file in split])
  builder = ImageFolders(
    name=name, version=version, folders=files, channels=channels, data_dir=root
  )
  builder.download_and_prepare()
  return target


def parse_split(text: str) -> tuple[str, str]:
  """Parses a SPLIT=FOLDER argument."""
  split, sep, folder = text.partition("=")
  if not sep or not split or not folder:
    raise argparse.ArgumentTypeError(f"expected SPLIT=FOLDER, e.g. train=faces/train, not {text!r}")
  return split, folder


def main(argv: Sequence[str] | None = None) -> None:
  """The command line: prints the config flags that train on the set it builds."""
  parser = argparse.ArgumentParser(
    prog="python -m fdrl_jax.tfds_build",
    description="Builds a tensorflow-datasets data set (array_record) from folders of images, "
    "one split per folder, without TensorFlow.",
  )
  parser.add_argument("name", help="the data set's tfds name, snake_case, e.g. my_faces")
  parser.add_argument(
    "splits",
    nargs="+",
    type=parse_split,
    metavar="SPLIT=FOLDER",
    help="a split and its folder of PNG/JPEG images, e.g. train=faces/train",
  )
  parser.add_argument(
    "--data_dir",
    default="",
    help="the tfds data folder (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
  )
  parser.add_argument("--version", default="1.0.0", help="MAJOR.MINOR.PATCH (default: 1.0.0)")
  args = parser.parse_args(argv)
  folders = dict(args.splits)
  if len(folders) < len(args.splits):
    parser.error("each split is given once")
  try:
    target = build_image_folders(args.name, folders, args.data_dir or None, version=args.version)
  except ValueError as err:
    parser.error(str(err))
  flags = [
    "--config.data.name=tfds",
    f"--config.data.tfds_name={args.name}:{args.version}",
    f"--config.data.data_dir={target.parent.parent.resolve()}",
  ]
  if "train" not in folders:
    flags.append(f"--config.data.train_split={args.splits[0][0]}")
  print(f"built {target} (splits: {', '.join(folders)}); train on it with {' '.join(flags)}")


if __name__ == "__main__":
  main()
