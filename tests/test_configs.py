"""Every paper config builds and runs one training step, through the real loading code (tfds mock
data, a generated image folder), with tiny overrides (batch 2, K = 2)."""

import importlib
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from fdrl_jax import datasets, parallel, run_lib


EXPECTED_SHAPES = {"cifar10": (32, 32, 3), "celeba64": (64, 64, 3),
                   "lsun_church128": (128, 128, 3), "cat2dog": (64, 64, 3), "mnist": (28, 28, 1)}


def write_images(folder, n, size=(90, 100)):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
        os.path.join(folder, f"{i}.png"))


def tiny(config):
  config.data.batch_size = 2
  config.data.max_fit_samples = 8
  config.flow.num_steps = 2
  config.flow.num_refine_steps = 1
  config.prior.rank = 4
  return config


# The two slowest here (~45 s and ~30 s on 2 cores) run with -m slow: CelebA's resnet64 is counted in
# test_models and Cat2dog trains end to end (a tiny copy) in test_applications.
SLOW_CONFIGS = ("celeba64", "cat2dog")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CONFIGS
                                  else n for n in sorted(EXPECTED_SHAPES)])
def test_config_runs_one_training_step(name, tmp_path):
  config = tiny(importlib.import_module(f"configs.{name}").get_config())
  if name == "cat2dog":
    write_images(tmp_path / "trainA", 5)
    write_images(tmp_path / "trainB", 6)
    config.data.path = str(tmp_path / "trainB")
    config.prior.source_path = str(tmp_path / "trainA")
  with tfds.testing.mock_data(num_examples=8):
    run = run_lib.Run(config, parallel.data_mesh(jax.devices()[:1]))
    state = run.new_state(fit=True)
    batch = run.batch(0)
  assert run.dataset.event_shape == EXPECTED_SHAPES[name]
  before = jax.device_get(state.batch_stats)  # the step donates the state
  new_state, metrics = run.train_step()(state, batch, jax.random.key(0))
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
  if config.model.spectral_norm:
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before,
                           jax.device_get(new_state.batch_stats))
    assert any(jax.tree.leaves(changed))


def test_folder_source_without_path_is_one_clear_error():
  config = importlib.import_module("configs.cat2dog").get_config()
  with pytest.raises(ValueError, match="needs --config.data.path"):
    datasets.build_dataset(config)


@pytest.mark.parametrize("name, shape", [("mnist_classifier", (28, 28, 1)),
                                         ("cifar10_classifier", (32, 32, 3))])
def test_classifier_config_runs_one_training_step(name, shape):
  """The tfds classifier configs read labelled mock data and take one PGD-L2 step."""
  config = importlib.import_module(f"configs.{name}").get_config()
  config.data.batch_size, config.data.max_fit_samples = 4, 8
  config.classifier.num_steps = 1
  with tfds.testing.mock_data(num_examples=8):
    run = run_lib.Run(config, parallel.data_mesh(jax.devices()[:1]))
    state = run.new_state(fit=True)
    images, labels = batch = run.batch(0)
  assert run.dataset.event_shape == shape and images.shape == (4, *shape)
  assert labels.shape == (4,) and run.dataset.test_labels is not None
  new_state, metrics = run.train_step()(state, batch, jax.random.key(0))
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_cifar10_up_is_the_papers_uniform_prior_schedule():
  from configs import cifar10
  up, ddp = cifar10.get_config("up"), cifar10.get_config()
  assert (up.prior.name, up.flow.num_refine_steps) == ("uniform", 10)
  # App. E.1: × 0.1 when 20 000 and 10 000 steps remain, 120 000 steps for CIFAR10-UP
  assert up.training.num_steps == 120_000 and tuple(up.optim.decay_steps) == (100_000, 110_000)
  assert ddp.training.num_steps == 100_000 and tuple(ddp.optim.decay_steps) == (80_000, 90_000)
  with pytest.raises(ValueError, match="the variants are ddp"):
    cifar10.get_config("upp")
