"""GAN training in the MonoFlow view: data-parallel equivalence, resume, the CLI, bad input."""

import importlib
import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import monoflow_digits
from fdrl_jax import evaluate, parallel, run_lib, workdir as workdirs
from tests.test_train import cli, straight_and_resumed, tiny_digits_config


def tiny_gan_config(num_steps=4):
  config = tiny_digits_config(num_steps, monoflow_digits.get_config())
  config.generator.latent_dim = 4
  config.generator.channels = (16, 8)
  config.model.channels = (8, 8)
  return config


def two_steps(config, devices):
  run = run_lib.Run(config, parallel.data_mesh(devices))
  step = run.train_step()
  state = run.new_state(fit=True)
  for i in range(2):
    state, metrics = step(state, run.batch(i), jax.random.key(1))
  return jax.device_get(state), jax.device_get(metrics)


def test_four_devices_equal_one_device():
  assert len(jax.devices()) == 4, "tests/conftest.py fakes 4 CPU devices"
  config = tiny_gan_config()  # batch-norm generator: its statistics must be global, not per device
  state_1, metrics_1 = two_steps(config, jax.devices()[:1])
  state_4, metrics_4 = two_steps(config, jax.devices())
  for a, b in ((state_1.gen_params, state_4.gen_params), (state_1.gen_stats, state_4.gen_stats),
               (state_1.disc_params, state_4.disc_params)):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)
  for key in ("disc_loss", "gen_loss", "h_slope"):
    np.testing.assert_allclose(metrics_1[key], metrics_4[key], rtol=1e-4)
  assert set(metrics_1) == {"loss", "disc_loss", "gen_loss", "d_data", "d_fake", "h_slope",
                            "gen_grad_norm"}


def test_resume_replays_exactly(tmp_path):
  straight, resumed = straight_and_resumed(tiny_gan_config(num_steps=4), tmp_path, stop=2)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight), jax.device_get(resumed))


def test_gan_end_to_end_through_main(tmp_path):
  workdir = str(tmp_path / "gan")
  args = ["--config=configs/monoflow_digits.py", f"--workdir={workdir}",
          "--config.training.num_steps=2", "--config.training.checkpoint_every=2",
          "--config.data.batch_size=8", "--config.generator.latent_dim=4",
          "--config.generator.channels=(16,8)", "--config.model.channels=(8,8)",
          "--config.gan.h=vanilla", "--config.gan.shift=5"]
  result = cli(*args)
  assert result.returncode == 0, result.stderr
  assert os.path.exists(os.path.join(workdir, "samples", "step_0000002.png"))
  out = str(tmp_path / "x.npz")
  result = cli(*args, "--mode=sample", "--num_samples=5", f"--output={out}",
               "--config.refine.num_steps=2", "--config.sampling.name=refine")
  assert result.returncode == 0, result.stderr
  with np.load(out) as f:
    x = f["x"]
  assert x.shape == (5, 8, 8, 1) and np.all(np.abs(x) <= 1)


def test_bad_gan_config_is_one_line_through_main(tmp_path):
  result = cli("--config=configs/monoflow_digits.py", f"--workdir={tmp_path / 'w'}",
               "--config.training.num_steps=1", "--config.generator.channels=(16,8,4,2)")
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1, result.stderr
  assert "makes images whose sides are multiples of 16" in result.stderr


@pytest.mark.parametrize("key,value,message", [
    ("gan.h", "tanh", "Unknown monotone map 'tanh'"),
    ("refine.h", "tanh", "Unknown monotone map 'tanh'"),
    ("generator.name", "vae", "Unknown generator 'vae'"),
    ("method", "vae", "Unknown --config.method='vae'"),
    ("refine.space", "pixels", "refinement space 'pixels'"),
])
def test_bad_gan_config_is_refused(key, value, message):
  config = tiny_gan_config()
  section, _, name = key.rpartition(".")
  setattr(config[section] if section else config, name, value)
  with pytest.raises(ValueError, match=message) as error:
    run = run_lib.Run(config, parallel.data_mesh(jax.devices()[:1]))
    run.train_step()
    run.sampler("refine")
  assert "\n" not in str(error.value)


def test_generator_that_does_not_fit_the_data_is_refused():
  from fdrl_jax import gan, models
  import optax
  gen = models.MLPGenerator(event_shape=(8, 8, 3))
  with pytest.raises(ValueError, match=r"generator makes samples of shape \(8, 8, 3\) but the data "
                     r"have shape \(8, 8, 1\)"):
    gan.create_gan_state(gen, models.ConvNet(), optax.sgd(0.1), optax.sgd(0.1),
                         jax.random.key(0), (8, 8, 1), 4)

  class TwoOutputs(models.MLP):
    def __call__(self, x, update_stats=False):
      return super().__call__(x)[:, None].repeat(2, axis=1)

  gen = models.MLPGenerator(event_shape=(2,))
  with pytest.raises(ValueError, match="one value per sample"):
    gan.create_gan_state(gen, TwoOutputs(), optax.sgd(0.1), optax.sgd(0.1), jax.random.key(0),
                         (2,), 4)


@pytest.mark.parametrize("name,shape", [("monoflow_mnist", (28, 28, 1)),
                                        ("monoflow_cifar10", (32, 32, 3))])
def test_dcgan_configs_run_one_step(name, shape):
  config = importlib.import_module(f"configs.{name}").get_config()
  config.data.batch_size = 2
  with tfds.testing.mock_data(num_examples=8):
    run = run_lib.Run(config, parallel.data_mesh(jax.devices()[:1]))
    state = run.new_state(fit=True)
    batch = run.batch(0)
  assert run.dataset.event_shape == shape
  state, metrics = run.train_step()(state, batch, jax.random.key(0))
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
  assert run.draw(state, jax.random.key(1), 3).shape == (3, *shape)


def test_fdrl_workdir_written_before_newer_sections_and_keys_still_resumes(tmp_path):
  config = tiny_digits_config(num_steps=2)
  workdir = str(tmp_path / "old")
  run_lib.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    old = json.load(f)
  with open(path, "w") as f:
    old = {k: v for k, v in old.items() if k not in workdirs.LATER_SECTIONS}
    del old["prior"]["source_test_path"]  # a key added to a section later
    json.dump(old, f)
  config.training.num_steps = 4
  config.classifier.epsilon = 3.0  # another method's section does not tie an FDRL run
  assert int(run_lib.train_and_evaluate(config, workdir).step) == 4
  config.method = "gan"  # but it is not a GAN run
  with pytest.raises(ValueError, match="different config"):
    run_lib.train_and_evaluate(config, workdir)


def test_fd_mnist_eval_of_a_mnist_gan_on_mock_data(tmp_path, monkeypatch):
  """--mode=eval with fd_mnist: the classifier is trained on labelled tfds MNIST (mock data here,
  so the numbers mean nothing; the path through loading, training and scoring is what is tested)."""
  monkeypatch.setattr(evaluate, "MNIST_CLASSIFIER_IMAGES", 40)
  monkeypatch.setattr(evaluate, "MNIST_CLASSIFIER_STEPS", 3)
  config = importlib.import_module("configs.monoflow_mnist").get_config()
  config.data.batch_size = 4
  config.generator.channels, config.model.channels = (8, 4), (4, 8)
  config.training.num_steps = config.training.checkpoint_every = config.training.sample_every = 1
  config.training.num_grid_samples = 4
  config.eval.num_samples = 8
  with tfds.testing.mock_data(num_examples=40):
    run_lib.train_and_evaluate(config, str(tmp_path))
    result = run_lib.evaluate_to_file(config, str(tmp_path))
  assert result["metric"] == "fd_mnist" and result["num_samples"] == 8
  assert np.isfinite(result["fd_mnist"]) and np.isfinite(result["fd_mnist_floor"])
  assert "fd_mnist_prior" not in result  # a GAN has no prior
  assert 0 <= result["classifier_test_accuracy"] <= 1
  config.data.name = "cifar10"
  with pytest.raises(ValueError, match="FD-MNIST needs tfds MNIST"):
    run_lib.evaluate_to_file(config, str(tmp_path))
