"""GAN training in the MonoFlow view: data-parallel equivalence, resume, the CLI, bad input."""

import dataclasses
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from configs import monoflow_mnist
from fdrl_jax import (features, gan, generators, models, modes, monoflow, parallel, run_lib,
                      workdir as workdirs)
from helpers import cli, straight_and_resumed, tiny_digits_config, tiny_gan_config


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


def _as_written_before_disc_stats(workdir, step):
  """Rewrites checkpoint ``step`` as it was saved before GANState had ``disc_stats``."""
  config = tiny_gan_config()
  with workdirs.checkpoint_manager(workdir, 5) as mngr:
    state = run_lib.Run(config).restore(mngr, step)
    old = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
           if f.name != "disc_stats"}
    mngr.delete(step)
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(old)))
    mngr.wait_until_finished()


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_resume_replays_exactly(tmp_path, old_checkpoint):
  between = (lambda workdir: _as_written_before_disc_stats(workdir, 2)) if old_checkpoint else None
  straight, resumed = straight_and_resumed(tiny_gan_config(num_steps=4), tmp_path, stop=2,
                                           between=between)
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
    ("gan.h", "tanh", "Unknown --config.gan.h='tanh'"),
    ("refine.h", "tanh", "Unknown --config.refine.h='tanh'"),
    ("generator.name", "vae", "Unknown --config.generator.name='vae'"),
    ("method", "vae", "Unknown --config.method='vae'"),
    ("refine.space", "pixels", "refine.space='pixels'"),
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
  gen = generators.MLPGenerator(event_shape=(8, 8, 3))
  with pytest.raises(ValueError, match=r"generator makes samples of shape \(8, 8, 3\) but the data "
                     r"have shape \(8, 8, 1\)"):
    gan.create_gan_state(gen, models.ConvNet(), optax.sgd(0.1), optax.sgd(0.1),
                         jax.random.key(0), (8, 8, 1), 4)

  class TwoOutputs(models.MLP):
    def __call__(self, x, update_stats=False):
      return super().__call__(x)[:, None].repeat(2, axis=1)

  gen = generators.MLPGenerator(event_shape=(2,))
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
  monkeypatch.setattr(features, "MNIST_CLASSIFIER_IMAGES", 40)
  monkeypatch.setattr(features, "MNIST_CLASSIFIER_STEPS", 3)
  config = importlib.import_module("configs.monoflow_mnist").get_config()
  config.data.batch_size = 4
  config.generator.channels, config.model.channels = (8, 4), (4, 8)
  config.training.num_steps = config.training.checkpoint_every = config.training.sample_every = 1
  config.training.num_grid_samples = 4
  config.eval.num_samples = 8
  with tfds.testing.mock_data(num_examples=40):
    run_lib.train_and_evaluate(config, str(tmp_path))
    result = modes.evaluate_to_file(config, str(tmp_path))
  assert result["metrics"] == ["fd_mnist"] and result["num_samples"] == 8
  (row,) = result["rows"]
  assert row["flow_length"] == 0  # a GAN's own samples
  assert np.isfinite(row["fd_mnist"]) and np.isfinite(row["fd_mnist_floor"])
  assert "fd_mnist_prior" not in row  # a GAN has no prior
  assert 0 <= result["classifier_test_accuracy"] <= 1
  config.data.name = "cifar10"
  with pytest.raises(ValueError, match="FD-MNIST needs tfds MNIST"):
    modes.evaluate_to_file(config, str(tmp_path))


def _conv(cin, cout, k):
  return cin * cout * k * k


# MonoFlow's nets.py, layer by layer: (conv in, out, kernel) and batch-norm widths; no biases.
REFERENCE_NETS = {
    # Discriminator_mnist(ndf=32, nc=1), DCG_mnist(nz=100, ngf=32, nc=1)
    "monoflow_mnist": ((28, 28, 1),
                       [_conv(1, 32, 4), _conv(32, 64, 4), 2 * 64, _conv(64, 128, 4), 2 * 128,
                        _conv(128, 1, 4)],
                       [_conv(100, 256, 4), 2 * 256, _conv(256, 128, 4), 2 * 128,
                        _conv(128, 64, 4), 2 * 64, _conv(64, 32, 4), 2 * 32, _conv(32, 1, 1)]),
    # Discriminator(ndf=64, nc=3), DCG_cifar10(nz=100, ngf=64, nc=3)
    "monoflow_cifar10": ((32, 32, 3),
                         [_conv(3, 64, 4), _conv(64, 128, 4), 2 * 128, _conv(128, 256, 4),
                          2 * 256, _conv(256, 1, 4)],
                         [_conv(100, 512, 4), 2 * 512, _conv(512, 256, 4), 2 * 256,
                          _conv(256, 128, 4), 2 * 128, _conv(128, 3, 4)]),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_NETS))
def test_reference_variant_has_monoflows_networks(name):
  shape, disc_layers, gen_layers = REFERENCE_NETS[name]
  config = importlib.import_module(f"configs.{name}").get_config("reference")
  assert config.gan.reuse_fake
  generator = generators.create_generator(config.generator, shape, True)
  discriminator = models.create_model(config.model)
  z, x = jnp.zeros((3, 100)), jnp.zeros((3, *shape))
  gen_out, gen_vars = jax.eval_shape(lambda: generator.init_with_output(jax.random.key(0), z))
  disc_out, disc_vars = jax.eval_shape(
      lambda: discriminator.init_with_output(jax.random.key(0), x))
  assert gen_out.shape == (3, *shape) and disc_out.shape == (3,)
  count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
  assert count(gen_vars["params"]) == sum(gen_layers)
  assert count(disc_vars["params"]) == sum(disc_layers)
  assert "batch_stats" in gen_vars and "batch_stats" in disc_vars
  with pytest.raises(ValueError, match=r"monoflow_dcgan generator with \d widths ends on"):
    generators.create_generator(config.generator, (48, 48, 3), True)


def test_reference_initialisation_is_dcgans():
  config = monoflow_mnist.get_config("reference")
  variables = models.create_model(config.model).init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
  kernels = [a for path, a in jax.tree_util.tree_leaves_with_path(variables["params"])
             if "kernel" in jax.tree_util.keystr(path)]
  scales = [a for path, a in jax.tree_util.tree_leaves_with_path(variables["params"])
            if "scale" in jax.tree_util.keystr(path)]
  big = max(kernels, key=lambda a: a.size)
  assert abs(float(big.std()) - 0.02) < 0.002 and abs(float(big.mean())) < 0.002
  both = np.concatenate([np.ravel(s) for s in scales])
  assert abs(both.mean() - 1.0) < 0.01 and abs(both.std() - 0.02) < 0.005


def test_reuse_fake_moves_the_generator_along_the_discriminators_own_fakes():
  # MonoFlow's step: the generator's gradient flows through the same G(z) that trained D. With
  # D's learning rate 0, that is plain SGD on −mean h(d(G(z))) at the discriminator step's z.
  gen = generators.MLPGenerator(event_shape=(2,), width=8, depth=1)
  disc = models.MLP(width=8, depth=1)
  hmap = monoflow.get_map("logit")
  state = gan.create_gan_state(gen, disc, optax.sgd(0.1), optax.sgd(0.0), jax.random.key(0),
                               (2,), 3)
  batch, key = jax.random.normal(jax.random.key(1), (5, 2)), jax.random.key(7)
  k_disc, _ = jax.random.split(jax.random.fold_in(key, state.step))
  z = jax.random.normal(k_disc, (5, 3))
  logit = gan.discriminator_logit(disc.apply, state.disc_params)
  grads = jax.grad(lambda p: -jnp.mean(hmap.h(logit(gen.apply({"params": p}, z)))))(
      state.gen_params)
  expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.gen_params, grads)
  for reuse in (True, False):
    step = gan.make_gan_step(gen.apply, disc.apply, optax.sgd(0.1), optax.sgd(0.0), hmap, 3,
                             reuse_fake=reuse)
    new_state, _ = step(state, batch, key)
    close = jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-5, atol=1e-7),
                         new_state.gen_params, expected)
    assert all(jax.tree.leaves(close)) == reuse  # without reuse: fresh latents, another step


def test_reference_gan_step_uses_batch_statistics_and_samples_per_sample():
  config = monoflow_mnist.get_config("reference")
  config.data.batch_size = 4
  with tfds.testing.mock_data(num_examples=8):
    run = run_lib.Run(config, parallel.data_mesh(jax.devices()[:1]))
    state = run.new_state(fit=True)
    batch = run.batch(0)
  before = jax.device_get(state.disc_stats)
  state, metrics = run.train_step()(state, batch, jax.random.key(0))
  assert np.isfinite(float(metrics["loss"]))
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before,
                         jax.device_get(state.disc_stats))
  assert all(jax.tree.leaves(changed))  # running averages of both batch norms moved
  logit = gan.discriminator_logit(models.create_model(config.model).apply, state.disc_params,
                                  state.disc_stats)
  x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1), minval=-1, maxval=1)
  np.testing.assert_allclose(logit(x)[:1], logit(x[:1]), rtol=1e-4, atol=1e-5)
