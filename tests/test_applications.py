"""The paper's applications end to end: a robust classifier run, class-conditional sampling through
the CLI (the issue's commands), translation (--mode=translate, eval, figures), and bad input."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import digits_bold
from fdrl_jax import bundled, figures, images, modes, run_lib, sampling
from helpers import (CLASSIFIER_FLAGS, TINY_FLAGS, cat2dog_folders, cli, straight_and_resumed,
                     tiny_cat2dog_config, tiny_classifier_config, tiny_digits_config)

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny robust classifier (through the CLI), a tiny FDRL digits run and a tiny digits_bold
  run (in process: the same code the CLI calls, without two more interpreter starts)."""
  root = tmp_path_factory.mktemp("apps")
  clf = str(root / "clf")
  result = cli("--config=configs/digits_classifier.py", f"--workdir={clf}", *CLASSIFIER_FLAGS)
  assert result.returncode == 0, result.stderr
  fdrl = str(root / "fdrl")
  run_lib.train_and_evaluate(tiny_digits_config(6), fdrl)
  bold = str(root / "bold")
  run_lib.train_and_evaluate(tiny_digits_config(6, digits_bold.get_config()), bold)
  return {"root": root, "clf": clf, "fdrl": fdrl, "bold": bold}


def test_classifier_run_evaluates_clean_and_adversarial_accuracy(trained):
  result = modes.evaluate_to_file(tiny_classifier_config(), trained["clf"])
  assert 0.5 < result["clean_accuracy"] <= 1  # 30 steps of a small net already beat chance
  assert 0 <= result["adversarial_accuracy"] <= result["clean_accuracy"]
  assert result["attack"].startswith("PGD-L2, epsilon 1")


def test_classifier_training_resumes_exactly(tmp_path):
  config = tiny_classifier_config(4)
  config.training.checkpoint_every = 2
  straight, resumed = straight_and_resumed(config, tmp_path, stop=2)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight), jax.device_get(resumed))


def test_conditional_sampling_through_main(trained):
  out = str(trained["root"] / "three.npz")
  result = cli("--config=configs/digits.py", f"--workdir={trained['fdrl']}", "--mode=sample",
               "--num_samples=20", f"--output={out}", "--config.sampling.name=conditional",
               "--config.sampling.label=3", f"--config.sampling.classifier_workdir={trained['clf']}",
               "--config.sampling.classifier_weight=1.0", *TINY_FLAGS)
  assert result.returncode == 0, result.stderr
  x = np.load(out)["x"]
  assert x.shape == (20, 8, 8, 1) and x.min() >= -1 and x.max() <= 1
  # ϕ moves the samples: the same key without the classifier gives other samples.
  config = tiny_digits_config(6)
  run, state, _ = run_lib.restore_latest(config, trained["fdrl"])
  plain = sampling.draw(run.sampler("prior"), state, run.sample_key_for(0), 20, 8)
  assert np.abs(plain - x).max() > 1e-3


def test_bad_label_is_one_line_through_main(trained):
  result = cli("--config=configs/digits.py", f"--workdir={trained['fdrl']}", "--mode=sample",
               "--num_samples=4", f"--output={trained['root'] / 'never.npz'}",
               "--config.sampling.name=conditional", "--config.sampling.label=10",
               f"--config.sampling.classifier_workdir={trained['clf']}", *TINY_FLAGS,
               "--config.training.num_steps=6")
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert "--config.sampling.label=10 is not a class of the classifier" in result.stderr
  assert not os.path.exists(trained["root"] / "never.npz")


@pytest.mark.parametrize("classifier_workdir, message", [
    ("{fdrl}", "holds a 'fdrl' run, not a classifier"),
    ("{root}/nothing", "holds no run"),
])
def test_a_workdir_without_a_classifier_is_refused(trained, classifier_workdir, message):
  config = tiny_digits_config(6)
  config.sampling.name = "conditional"
  config.sampling.classifier_workdir = classifier_workdir.format(**trained)
  with pytest.raises(ValueError, match=message) as info:
    modes.sample_to_file(config, trained["fdrl"], 4, str(trained["root"] / "never.npz"))
  assert "\n" not in str(info.value)
  assert not os.path.exists(trained["root"] / "never.npz")


def test_classifier_of_other_image_shapes_is_refused(trained, tmp_path):
  images = np.random.default_rng(0).uniform(-1, 1, (64, 4, 4, 1)).astype(np.float32)
  np.savez(tmp_path / "small.npz", x=images)
  config = tiny_digits_config(2)
  config.data.name, config.data.path = "npz", str(tmp_path / "small.npz")
  run_lib.train_and_evaluate(config, str(tmp_path / "small"))
  config.sampling.name, config.sampling.classifier_workdir = "conditional", trained["clf"]
  with pytest.raises(ValueError, match=r"trained on images of shape \(8, 8, 1\)"):
    modes.sample_to_file(config, str(tmp_path / "small"), 4, str(tmp_path / "x.npz"))


def test_translate_through_main_npz_and_folders(trained, tmp_path):
  bold_flags = ["--config=configs/digits_bold.py", f"--workdir={trained['bold']}",
                "--config.training.num_steps=6", *TINY_FLAGS]
  sources = bundled.digits_bold_split(0)["test_plain"][:5]
  np.savez(tmp_path / "src.npz", x=sources)
  out = str(tmp_path / "out.npz")
  result = cli(*bold_flags, "--mode=translate", f"--input={tmp_path / 'src.npz'}",
               f"--output={out}")
  assert result.returncode == 0, result.stderr
  y = np.load(out)["x"]
  assert y.shape == (5, 8, 8, 1) and y.min() >= -1 and y.max() <= 1
  assert np.abs(y - sources).max() > 1e-3
  again = cli(*bold_flags, "--mode=translate", f"--input={tmp_path / 'src.npz'}",
              f"--output={out}")
  assert again.returncode == 2 and "exists" in again.stderr
  # A folder of grey PNGs in, a folder of PNGs out, named after the inputs.
  folder = tmp_path / "pngs"
  folder.mkdir()
  for i, image in enumerate(sources):
    Image.fromarray(np.round((image[..., 0] + 1) * 127.5).astype(np.uint8)).save(
        folder / f"digit{i}.png")
  result = cli(*bold_flags, "--mode=translate", f"--input={folder}",
               f"--output={tmp_path / 'translated'}")
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(tmp_path / "translated")) == [f"digit{i}.png" for i in range(5)]


def test_translate_without_input_is_one_line(trained, tmp_path):
  result = cli("--config=configs/digits_bold.py", f"--workdir={trained['bold']}",
               "--mode=translate", f"--output={tmp_path / 'out.npz'}")
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert "--mode=translate needs --input" in result.stderr


@pytest.mark.parametrize("images, message", [
    (np.zeros((5, 4, 4, 1)), "holds images of shape (4, 4, 1); this run's images have shape"),
    (np.full((5, 8, 8, 1), 3.0), "must lie in [-1, 1]"),
])
def test_bad_translate_input_is_refused(trained, tmp_path, images, message):
  np.savez(tmp_path / "in.npz", x=images.astype(np.float32))
  config = tiny_digits_config(6, digits_bold.get_config())
  with pytest.raises(ValueError) as info:
    modes.translate_to_file(config, trained["bold"], str(tmp_path / "in.npz"),
                               str(tmp_path / "out.npz"))
  assert message in str(info.value) and "\n" not in str(info.value)
  assert not os.path.exists(tmp_path / "out.npz")


def test_translation_eval_and_figures(trained, tmp_path):
  config = tiny_digits_config(6, digits_bold.get_config())
  result = modes.evaluate_to_file(config, trained["bold"])
  assert result["num_samples"] == 297  # every held-out digit, translated
  (row,) = result["rows"]  # the untranslated sources are the empirical prior's draws
  assert 0 < row["fd_digits_floor"] < row["fd_digits_prior"]
  assert np.isfinite(row["fd_digits"])
  path = figures.translation(config, trained["bold"], str(tmp_path / "pairs.png"), num_samples=3)
  width, height = Image.open(path).size  # sources above their translations, under a title
  assert height == 2 * 33 + 1 + images.TITLE_LINE and width >= 3 * 33 + 1
  conditional = tiny_digits_config(6)
  conditional.sampling.classifier_workdir = trained["clf"]
  path = figures.classes(conditional, trained["fdrl"], str(tmp_path / "classes.png"),
                         num_samples=4)
  width, height = Image.open(path).size
  assert height == 10 * 33 + 1 + images.TITLE_LINE and width >= 4 * 33 + 1


def test_cat2dog_translation_on_generated_folders(tmp_path):
  root = cat2dog_folders(tmp_path)
  config = tiny_cat2dog_config(root)
  run_lib.train_and_evaluate(config, str(tmp_path / "run"))
  out = modes.translate_to_file(config, str(tmp_path / "run"), str(root / "testA"),
                                   str(tmp_path / "dogs"))
  names = sorted(os.listdir(out))
  assert names == [f"testA_{i}.png" for i in range(4)]
  assert Image.open(os.path.join(out, names[0])).size == (64, 64)
  path = figures.translation(config, str(tmp_path / "run"), str(tmp_path / "pairs.png"),
                             num_samples=2)
  width, height = Image.open(path).size
  assert height == 2 * 65 + 1 + images.TITLE_LINE and width >= 2 * 65 + 1
  with pytest.raises(ValueError, match="FID needs --config.eval.inception_weights"):
    modes.evaluate_to_file(config, str(tmp_path / "run"))

