"""The Euler–Maruyama flow (Eq. 9) against exact recursions, and as a JAX transform."""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdrl_jax import flows
from fdrl_jax.flows import FlowSpec, flow

A = jnp.array([[2.0, 0.5], [0.5, 1.0]])  # symmetric positive definite


def quadratic(x):
  """φ(x) = ½ xᵀ A x per particle; ∇φ = A x."""
  return 0.5 * jnp.einsum("bi,ij,bj->b", x, A, x)


def test_noise_free_quadratic_equals_exact_recursion():
  x0 = jax.random.normal(jax.random.key(0), (16, 2))
  eta, k = 0.1, 25
  out = flow(quadratic, x0, jax.random.key(1), num_steps=k, step_size=eta, noise_scale=0.0)
  expected = np.asarray(x0, np.float64) @ np.linalg.matrix_power(np.eye(2) - eta * np.asarray(A),
                                                                   k).T
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_noisy_flow_matches_recursion_moments():
  # x_{k+1} = (1 − ηa) x_k + ν ξ:  m_k = c^k m_0,  v_{k+1} = c² v_k + ν²,  c = 1 − ηa.
  a, eta, nu, k, n = 1.5, 0.2, 0.3, 12, 40_000
  x0 = jnp.full((n, 1), 2.0)
  out = flow(lambda x: 0.5 * a * jnp.sum(x**2, axis=1), x0, jax.random.key(3), num_steps=k,
             step_size=eta, noise_scale=nu)
  c = 1 - eta * a
  mean = 2.0 * c**k
  var = nu**2 * (1 - c ** (2 * k)) / (1 - c**2)
  sample_mean, sample_var = float(out.mean()), float(out.var())
  assert abs(sample_mean - mean) < 5 * np.sqrt(var / n)
  assert abs(sample_var - var) < 5 * var * np.sqrt(2 / n)


def test_deterministic_for_a_key():
  x0 = jnp.zeros((8, 2))
  run = lambda key: flow(quadratic, x0, key, num_steps=5, step_size=0.1, noise_scale=0.5)
  np.testing.assert_array_equal(run(jax.random.key(0)), run(jax.random.key(0)))
  assert not np.allclose(run(jax.random.key(0)), run(jax.random.key(1)))


def test_inside_user_jit_and_vmap():
  x0s = jax.random.normal(jax.random.key(0), (3, 8, 2))
  keys = jax.random.split(jax.random.key(1), 3)
  run = lambda x0, key: flow(quadratic, x0, key, num_steps=4, step_size=0.1, noise_scale=0.1)
  batched = jax.jit(jax.vmap(run))(x0s, keys)
  looped = jnp.stack([run(x0s[i], keys[i]) for i in range(3)])
  np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-6)


class TinyMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.leaky_relu(nn.Dense(16)(x), 0.2)
    return nn.Dense(1)(x)[:, 0]


def test_traces_once_for_different_parameters():
  net = TinyMLP()
  x0 = jnp.ones((4, 2))
  params_a = net.init(jax.random.key(0), x0)
  params_b = net.init(jax.random.key(1), x0)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def sample(params, x0, key):
    return flow(lambda x: net.apply(params, x), x0, key, num_steps=10, step_size=0.1,
                noise_scale=0.01)

  out_a = sample(params_a, x0, jax.random.key(2))
  out_b = sample(params_b, x0, jax.random.key(2))
  assert not np.allclose(out_a, out_b)
  chex.clear_trace_counter()


def test_memory_does_not_grow_with_steps():
  net = TinyMLP()
  x0 = jnp.ones((64, 2))
  params = net.init(jax.random.key(0), x0)
  def temp_bytes(k):
    fn = jax.jit(lambda p, x, key: flow(lambda y: net.apply(p, y), x, key, num_steps=k,
                                        step_size=0.1, noise_scale=0.01))
    return fn.lower(params, x0, jax.random.key(0)).compile().memory_analysis().temp_size_in_bytes
  assert temp_bytes(1000) <= temp_bytes(10) + 1024


@pytest.mark.parametrize("unroll", [1, True])
def test_state_is_advanced_once_per_step(unroll):
  # φ(x; c) = c · ½|x|² with the call counter c as state: step k moves x by −η k x, so
  # x_K = x_0 Π_{k<K} (1 − η k), and the state returned is K.
  def counted(x, c):
    return c * 0.5 * jnp.sum(x ** 2, axis=1), c + 1.0

  x0 = jax.random.normal(jax.random.key(0), (4, 3))
  eta, k = 0.05, 6
  x, count = flow(counted, x0, jax.random.key(1), num_steps=k, step_size=eta, noise_scale=0.0,
                  state=jnp.zeros(()), unroll=unroll)
  assert float(count) == k
  np.testing.assert_allclose(x, x0 * np.prod(1 - eta * np.arange(k)), rtol=1e-5)
  final, traj, count = flow(counted, x0, jax.random.key(1), num_steps=k, step_size=eta,
                            noise_scale=0.0, state=jnp.zeros(()), save_every=3, unroll=unroll)
  assert traj.shape == (3, 4, 3) and float(count) == k
  np.testing.assert_allclose(final, x, rtol=1e-6)
  np.testing.assert_allclose(traj[1], x0 * np.prod(1 - eta * np.arange(3)), rtol=1e-5)


@pytest.mark.parametrize("unroll", [1, True])
def test_trajectory(unroll):
  x0 = jax.random.normal(jax.random.key(0), (5, 2))
  final, traj = flow(quadratic, x0, jax.random.key(1), num_steps=6, step_size=0.1,
                     noise_scale=0.1, save_every=2, unroll=unroll)
  assert traj.shape == (4, 5, 2)
  np.testing.assert_array_equal(traj[0], x0)
  np.testing.assert_array_equal(traj[-1], final)
  plain = flow(quadratic, x0, jax.random.key(1), num_steps=6, step_size=0.1, noise_scale=0.1)
  np.testing.assert_allclose(final, plain, rtol=1e-6)
  mid = flow(quadratic, x0, jax.random.key(1), num_steps=2, step_size=0.1, noise_scale=0.1)
  np.testing.assert_allclose(traj[1], mid, rtol=1e-6)
  with pytest.raises(ValueError, match="save_every=4 must divide num_steps=6"):
    flow(quadratic, x0, jax.random.key(1), num_steps=6, step_size=0.1, noise_scale=0.1,
         save_every=4)


@pytest.mark.parametrize("unroll", [1, True])
@pytest.mark.parametrize("clip_every_step", [True, False])
def test_save_at_equals_separate_flows(unroll, clip_every_step):
  # Each snapshot is a flow of that many steps with the same key, clipped as its output would be.
  x0 = 2 * jax.random.normal(jax.random.key(0), (6, 2))
  kwargs = dict(step_size=0.1, noise_scale=0.3, clip=(-1.0, 1.0), clip_every_step=clip_every_step,
                unroll=unroll)
  lengths = (0, 2, 3, 7)
  final, snaps = flow(quadratic, x0, jax.random.key(1), num_steps=9, save_at=lengths, **kwargs)
  assert snaps.shape == (4, 6, 2)
  np.testing.assert_allclose(final, flow(quadratic, x0, jax.random.key(1), num_steps=9, **kwargs),
                             rtol=1e-6)
  np.testing.assert_array_equal(snaps[0], x0 if clip_every_step else jnp.clip(x0, -1, 1))
  for snap, length in zip(snaps[1:], lengths[1:]):
    alone = flow(quadratic, x0, jax.random.key(1), num_steps=length, **kwargs)
    np.testing.assert_allclose(snap, alone, rtol=1e-6, atol=1e-7)
  for bad in [(3, 2), (), (2, 10), (2, 2)]:
    with pytest.raises(ValueError, match="save_at=.* must be increasing step counts"):
      flow(quadratic, x0, jax.random.key(1), num_steps=9, save_at=bad, **kwargs)
  with pytest.raises(ValueError, match="save_every or save_at, not both"):
    flow(quadratic, x0, jax.random.key(1), num_steps=9, save_at=(1,), save_every=3, **kwargs)


def test_clip_keeps_particles_in_range():
  x0 = jnp.zeros((100, 2))
  out = flow(lambda x: -10 * x.sum(axis=1), x0, jax.random.key(0), num_steps=5, step_size=1.0,
             noise_scale=1.0, clip=(-1.0, 1.0))
  assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
  assert float(out.max()) == 1.0  # the drift pushes every particle past the upper edge


def test_clip_at_the_end_only_is_the_reference_clamp():
  # Drift +1 per step until the particles pass 2.5, then −5: clipped every step they stay at 1;
  # clipped only at the end (the reference's clamp of its final samples) they go 1, 2, 3, −2 → −1.
  potential = lambda x: -x.sum(axis=1) * jnp.where(x.mean() > 2.5, -5.0, 1.0)
  x0 = jnp.zeros((4, 2))
  kw = dict(num_steps=4, step_size=1.0, noise_scale=0.0, clip=(-1.0, 1.0))
  every = flow(potential, x0, jax.random.key(0), **kw)
  ends, saved = flow(potential, x0, jax.random.key(0), clip_every_step=False, save_every=1, **kw)
  free = flow(potential, x0, jax.random.key(0), **{**kw, "clip": None})
  np.testing.assert_allclose(free, -2.0)
  np.testing.assert_allclose(ends, -1.0)
  np.testing.assert_allclose(every, 1.0)
  np.testing.assert_allclose(saved[:, 0, 0], [0, 1, 1, 1, -1])  # saved states clipped too


def test_two_stage_is_k_plus_kappa_steps():
  x0 = jax.random.normal(jax.random.key(0), (5, 2))
  kw = dict(step_size=0.1, noise_scale=0.1)
  spec = FlowSpec(num_steps=4, num_refine_steps=3, clip=None, **kw)
  two = flow(quadratic, x0, jax.random.key(1), **spec.sampling_kwargs())
  one = flow(quadratic, x0, jax.random.key(1), num_steps=7, **kw)
  np.testing.assert_array_equal(two, one)


class TinyConv(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.leaky_relu(nn.Conv(4, (3, 3), use_bias=False)(x), 0.2)
    return nn.Dense(1)(x.mean(axis=(1, 2)))[:, 0]


def test_cpu_strategy_unrolls_conv_potentials_only():
  conv, mlp = TinyConv(), TinyMLP()
  x_img, x_2d = jnp.ones((2, 8, 8, 3)), jnp.ones((4, 2))
  p_conv, p_mlp = conv.init(jax.random.key(0), x_img), mlp.init(jax.random.key(0), x_2d)
  assert flows.auto_unroll(lambda x: conv.apply(p_conv, x), x_img, 3) is True
  assert flows.auto_unroll(lambda x: conv.apply(p_conv, x), x_img, 1000) == 1  # compile time
  assert flows.auto_unroll(lambda x: mlp.apply(p_mlp, x), x_2d, 3) == 1
  # Both strategies compute the same flow.
  run = lambda unroll: flow(lambda x: conv.apply(p_conv, x), x_img, jax.random.key(1),
                            num_steps=3, step_size=0.1, noise_scale=0.1, unroll=unroll)
  np.testing.assert_allclose(run(None), run(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad_potential, shape", [
    (lambda x: x[:, :1], "(5, 1)"), (lambda x: jnp.sum(x), "()")])
def test_wrong_potential_shape_is_one_clear_error(bad_potential, shape):
  with pytest.raises(ValueError, match=rf"one value per particle, shape \(5,\).*got shape "
                                       rf"{re.escape(shape)}"):
    flow(bad_potential, jnp.ones((5, 2)), jax.random.key(0), num_steps=2, step_size=0.1,
         noise_scale=0.0)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_step_count(steps):
  with pytest.raises(ValueError, match="num_steps must be a Python integer >= 1"):
    flow(quadratic, jnp.ones((5, 2)), jax.random.key(0), num_steps=steps, step_size=0.1,
         noise_scale=0.0)
