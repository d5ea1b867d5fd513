"""MonoFlow: the monotone maps, the FDRL ↔ MonoFlow identity, particle flows and refinement."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fdrl_jax import flow, gan, generators, models, monoflow
from fdrl_jax.divergences import DIVERGENCES, flow_potential

GRID = jnp.linspace(-8.0, 8.0, 161)
MAPS = [("logit", {}), ("vanilla", {"shift": 0.0}), ("vanilla", {"shift": 5.0}),
        ("non_saturating", {}), ("arcsinh", {}), ("exp", {"scale": 1.5}), ("exp", {"scale": 0.3})]


def autodiff_slope(h, d):
  return jax.vmap(jax.grad(h))(d)


@pytest.mark.parametrize("name,params", MAPS)
def test_each_map_derivative_is_its_gradient_and_it_increases(name, params):
  hmap = monoflow.get_map(name, **params)
  np.testing.assert_allclose(hmap.h_prime(GRID), autodiff_slope(hmap.h, GRID), rtol=1e-5,
                             atol=1e-7)
  assert monoflow.check_increasing(hmap) is hmap
  assert np.all(np.diff(np.asarray(hmap.h(GRID))) >= 0)


def test_map_parameters_act_and_unknown_names_are_refused():
  d = jnp.array([-5.0, 0.0, 2.0])
  np.testing.assert_allclose(monoflow.get_map("vanilla", shift=5.0).h_prime(d),
                             jax.nn.sigmoid(d + 5.0), rtol=1e-6)
  np.testing.assert_allclose(monoflow.get_map("exp", scale=2.0).h(d), jnp.exp(2.0 * d), rtol=1e-6)
  with pytest.raises(ValueError, match="Unknown --config.gan.h='tanh'.*arcsinh"):
    monoflow.get_map("tanh")


# The velocities of FDRL's flows written with the logit d = log p/q (notes/MONOFLOW.md).
CLOSED_FORM_SLOPES = {"kl": lambda d: jnp.ones_like(d), "js": jax.nn.sigmoid,
                      "logd": lambda d: jax.nn.sigmoid(-d), "pearson": lambda d: 2 * jnp.exp(-d)}


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_fdrl_divergence_is_the_monoflow_of_h_equal_minus_f_prime_of_exp_minus_d(name):
  hmap = monoflow.from_divergence(name)
  d = jnp.linspace(-6.0, 6.0, 121)
  # h(d) = −f'(e^{−d}) by the naive formula of Table 1, and its slope by the closed form.
  np.testing.assert_allclose(hmap.h(d), -DIVERGENCES[name].f_prime(jnp.exp(-d)), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(hmap.h_prime(d), CLOSED_FORM_SLOPES[name](d), rtol=1e-5, atol=1e-6)
  monoflow.check_increasing(hmap)

  # The FDRL flow of a log-ratio network and the MonoFlow of its logit are the same trajectory.
  model = models.MLP(width=16, depth=2)
  params = model.init(jax.random.key(0), jnp.zeros((1, 2)))
  log_ratio = lambda x: model.apply(params, x)
  x0 = jax.random.normal(jax.random.key(1), (64, 2))
  kwargs = dict(num_steps=20, step_size=0.05, noise_scale=0.1)
  fdrl = flow(lambda x: flow_potential(name, "log_ratio")(log_ratio(x)), x0, jax.random.key(2),
              **kwargs)
  mono = flow(monoflow.potential(lambda x: monoflow.logit_from_log_ratio(log_ratio(x)), hmap), x0,
              jax.random.key(2), **kwargs)
  np.testing.assert_allclose(fdrl, mono, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h,message", [
    (lambda d: -d, "not increasing at d = -10"),
    (lambda d: d ** 2, "not increasing at d = -10"),
    (lambda d: 0.0 * d, "not increasing anywhere"),
    (jnp.log, "not finite on the test grid"),
    (lambda d: jnp.exp(20.0 * d), "not finite on the test grid"),
])
def test_bad_user_maps_are_refused_in_one_line(h, message):
  with pytest.raises(ValueError, match=message) as error:
    monoflow.custom_map(h)
  assert "\n" not in str(error.value)


def test_user_map_gets_its_derivative_by_autodiff_and_may_saturate():
  hmap = monoflow.custom_map(jnp.tanh)  # h' underflows to 0 far out in float32: allowed
  np.testing.assert_allclose(hmap.h_prime(GRID), 1 - jnp.tanh(GRID) ** 2, rtol=1e-4, atol=1e-6)
  cubic = monoflow.custom_map(lambda d: d ** 3 + d)
  np.testing.assert_allclose(cubic.h_prime(GRID), 3 * GRID ** 2 + 1, rtol=1e-5)


def test_particle_monoflow_moves_towards_the_data_for_every_map():
  # q = N(m, 1), p = N(0, 1) in 1-D: d(x) = log p/q = m²/2 − m x, ∇d = −m, so every increasing h
  # moves each particle by −η h'(d) m: towards p's side, at a speed set by h'.
  m = 2.0
  logit = lambda x: (m * m / 2 - m * x)[:, 0]
  x0 = m + jax.random.normal(jax.random.key(0), (256, 1))
  for name, params in MAPS:
    hmap = monoflow.get_map(name, **params)
    x1 = flow(monoflow.potential(logit, hmap), x0, jax.random.key(1), num_steps=1, step_size=0.01,
              noise_scale=0.0)
    np.testing.assert_allclose(x1 - x0, -0.01 * m * hmap.h_prime(logit(x0))[:, None], rtol=1e-4,
                               atol=1e-6)  # float32 resolution of x ≈ 2


class Translate(nn.Module):
  """G(z) = z + b: a generator whose parameter step equals the mean step of its samples."""

  @nn.compact
  def __call__(self, z, train=False):
    return z + self.param("b", nn.initializers.zeros, (z.shape[-1],))


@pytest.mark.parametrize("name,params", MAPS)
def test_generator_step_moves_samples_along_h_prime_times_grad_d(name, params):
  hmap = monoflow.get_map(name, **params)
  disc = models.MLP(width=16, depth=2)
  gen = Translate()
  lr, n = 0.01, 32
  state = gan.create_gan_state(gen, disc, optax.sgd(lr), optax.sgd(0.0), jax.random.key(0), (2,),
                               latent_dim=2)
  step = gan.make_gan_step(gen.apply, disc.apply, optax.sgd(lr), optax.sgd(0.0), hmap, 2)
  batch = jax.random.normal(jax.random.key(1), (n, 2))
  key = jax.random.key(2)
  new_state, _ = jax.jit(step)(state, batch, key)
  # The latent draw of the generator half of the step (the step's documented key schedule).
  _, k_gen = jax.random.split(jax.random.fold_in(key, 0))
  x = jax.random.normal(k_gen, (n, 2)) + state.gen_params["b"]
  logit = gan.discriminator_logit(disc.apply, state.disc_params)  # lr 0: D unchanged
  grad_d = jax.grad(lambda x: jnp.sum(logit(x)))(x)
  velocity = hmap.h_prime(logit(x))[:, None] * grad_d
  moved = new_state.gen_params["b"] - state.gen_params["b"]  # every sample moved by this
  np.testing.assert_allclose(moved, lr * velocity.mean(axis=0), rtol=1e-4, atol=1e-8)
  assert float(jnp.dot(moved, velocity.mean(axis=0))) > 0


def test_refinement_in_latent_and_data_space_raises_the_logit():
  disc = models.MLP(width=16, depth=2)
  disc_params = disc.init(jax.random.key(0), jnp.zeros((1, 2)))["params"]
  gen = generators.MLPGenerator(event_shape=(2,), width=16, depth=1)
  gen_vars = gen.init(jax.random.key(1), jnp.zeros((1, 3)))
  logit = gan.discriminator_logit(disc.apply, disc_params)
  z = jax.random.normal(jax.random.key(2), (128, 3))
  before = logit(gen.apply(gen_vars, z)).mean()
  generator = lambda z: gen.apply(gen_vars, z)
  for space in ("latent", "data"):
    x = monoflow.refine(generator, logit, monoflow.get_map("logit"), z, jax.random.key(3),
                        space=space, num_steps=5, step_size=0.05, noise_scale=0.0)
    assert x.shape == (128, 2)
    assert float(logit(x).mean()) > float(before) + 1e-3
  with pytest.raises(ValueError, match="refine.space='pixels'"):
    monoflow.refine(generator, logit, monoflow.get_map("logit"), z, jax.random.key(3),
                    space="pixels", num_steps=1, step_size=0.1, noise_scale=0.0)
