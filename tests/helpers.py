"""What several test files share: the tiny configs, the command line, a straight-vs-resumed
training pair, and generated image folders."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from configs import digits, digits_classifier, monoflow_digits
from fdrl_jax import run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_digits_config(num_steps=4, config=None):
  """``config`` (default: the digits config) with a batch of 8, K = 2, κ = 1 and ``num_steps``
  training steps that log and checkpoint every 2 steps."""
  config = digits.get_config() if config is None else config
  config.data.batch_size = 8
  config.flow.num_steps = 2
  config.flow.num_refine_steps = 1
  config.training.num_steps = num_steps
  config.training.log_every = 2
  config.training.checkpoint_every = 2
  config.training.sample_every = num_steps
  config.training.num_grid_samples = 4
  return config


def straight_and_resumed(config, tmp_path, stop: int, between=None):
  """The final states of ``config`` trained straight through and trained to ``stop``, then
  resumed to ``config.training.num_steps`` in a new process's way (a fresh ``train_and_evaluate``).
  ``between(workdir)``, if given, runs on the stopped run's workdir before the resume."""
  total = config.training.num_steps
  straight = run_lib.train_and_evaluate(config, str(tmp_path / "straight"))
  config.training.num_steps = stop
  run_lib.train_and_evaluate(config, str(tmp_path / "resumed"))
  if between is not None:
    between(str(tmp_path / "resumed"))
  config.training.num_steps = total
  return straight, run_lib.train_and_evaluate(config, str(tmp_path / "resumed"))


def cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "fdrl_jax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


TINY_FLAGS = ["--config.data.batch_size=8", "--config.flow.num_steps=2",
              "--config.flow.num_refine_steps=1", "--config.training.log_every=2",
              "--config.training.checkpoint_every=2", "--config.training.sample_every=3",
              "--config.training.num_grid_samples=4"]


def conv_nchw(x, w, stride=1, pad=0, bias=None):
  """NCHW convolution of x (B, C, H, W) with OIHW w, as torch.nn.functional.conv2d."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  o, _, kh, kw = w.shape
  h = (x.shape[2] - kh) // stride + 1
  wd = (x.shape[3] - kw) // stride + 1
  out = np.zeros((x.shape[0], o, h, wd))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, :, i:i + stride * h:stride, j:j + stride * wd:stride]
      out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
  return out if bias is None else out + bias[None, :, None, None]


CLASSIFIER_FLAGS = ["--config.training.num_steps=30", "--config.training.checkpoint_every=30",
                    "--config.data.batch_size=64", "--config.classifier.num_steps=2",
                    "--config.classifier.channels=(16,16)", "--config.classifier.hidden=32"]


def tiny_classifier_config(num_steps=30):
  config = digits_classifier.get_config()
  config.training.num_steps = config.training.checkpoint_every = num_steps
  config.data.batch_size = 64
  config.classifier.num_steps = 2
  config.classifier.channels, config.classifier.hidden = (16, 16), 32
  return config


def cat2dog_folders(root, size=(96, 80), count=4):
  """Cat2dog's layout (trainA, trainB, testA, testB) with a few generated RGB images each."""
  rng = np.random.default_rng(0)
  for name in ("trainA", "trainB", "testA", "testB"):
    (root / name).mkdir()
    for i in range(count):
      pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(root / name / f"{name}_{i}.jpg")
  return root


def tiny_cat2dog_config(root):
  from configs import cat2dog
  config = tiny_digits_config(2, cat2dog.get_config())
  config.data.path, config.data.test_path = str(root / "trainB"), str(root / "testB")
  config.prior.source_path, config.prior.source_test_path = (str(root / "trainA"),
                                                             str(root / "testA"))
  config.data.batch_size = 4
  config.model.name = "conv"  # the paper's ResNet is exercised by test_configs; keep this light
  return config


def tiny_gan_config(num_steps=4):
  config = tiny_digits_config(num_steps, monoflow_digits.get_config())
  config.generator.latent_dim = 4
  config.generator.channels = (16, 8)
  config.model.channels = (8, 8)
  return config


def write_images(folder, sizes, suffix, channels=3):
  """Writes random RGB (or, with channels=1, grey) images of the given (width, height) sizes."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(len(sizes))
  for i, (w, h) in enumerate(sizes):
    pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(folder / f"{i}{suffix}")


def assert_images(x, shape):
  assert x.shape == shape
  assert x.dtype == np.float32
  assert -1.0 <= x.min() and x.max() <= 1.0
