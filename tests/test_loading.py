"""fdrl_jax.load: a workdir's latest checkpoint as pure functions inside jax.jit and jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdrl_jax
from configs import digits, digits_classifier, monoflow_digits
from fdrl_jax import run_lib
from helpers import tiny_digits_config


def _trained(config, workdir):
  state = run_lib.train_and_evaluate(config, str(workdir))
  return state


def test_fdrl_run_inside_jit_and_grad(tmp_path):
  state = _trained(tiny_digits_config(2, digits.get_config()), tmp_path / "fdrl")
  run = fdrl_jax.load(tmp_path / "fdrl")
  assert run.step == 2 and run.config.method == "fdrl"
  jax.tree.map(np.testing.assert_array_equal, run.params, state.ema_params)
  x = run.prior.sample(jax.random.key(0), 3)
  assert x.shape == (3, 8, 8, 1)
  out = jax.jit(run.output)(x)
  assert out.shape == (3,)
  np.testing.assert_allclose(jax.jit(run.potential)(x), run.potential(x), rtol=1e-5, atol=1e-6)
  grad = jax.jit(jax.grad(lambda y: run.potential(y).sum()))(x)
  assert grad.shape == x.shape and np.all(np.isfinite(grad))
  # The potential is ready for fdrl_jax.flow; sample() is Algorithm 2 and jits with n static.
  moved = fdrl_jax.flow(run.potential, x, jax.random.key(1), num_steps=2, step_size=0.1,
                        noise_scale=0.0)
  assert moved.shape == x.shape
  samples = jax.jit(run.sample, static_argnums=1)(jax.random.key(2), 5)
  assert samples.shape == (5, 8, 8, 1) and np.all(np.abs(np.asarray(samples)) <= 1)
  np.testing.assert_allclose(samples, run.sample(jax.random.key(2), 5), rtol=1e-5, atol=1e-5)


def test_classifier_run_gives_log_probabilities(tmp_path):
  config = tiny_digits_config(2, digits_classifier.get_config())
  _trained(config, tmp_path / "clf")
  run = fdrl_jax.load(tmp_path / "clf")
  x = jnp.zeros((4, 8, 8, 1))
  logp = jax.jit(run.output)(x)
  assert logp.shape == (4, config.classifier.num_classes)
  np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, rtol=1e-5)
  assert run.potential is None and run.prior is None
  with pytest.raises(ValueError, match="does not sample"):
    run.sample(jax.random.key(0), 2)


def test_gan_run_gives_generator_and_discriminator(tmp_path):
  config = tiny_digits_config(2, monoflow_digits.get_config())
  _trained(config, tmp_path / "gan")
  run = fdrl_jax.load(tmp_path / "gan")
  z = jax.random.normal(jax.random.key(0), (3, config.generator.latent_dim))
  x = jax.jit(run.generator)(z)
  assert x.shape == (3, 8, 8, 1)
  assert jax.jit(run.discriminator)(x).shape == (3,)
  assert run.sample(jax.random.key(1), 3).shape == (3, 8, 8, 1)


def test_missing_workdir_is_one_line(tmp_path):
  with pytest.raises(ValueError, match="holds no run") as info:
    fdrl_jax.load(tmp_path)
  assert "\n" not in str(info.value)
