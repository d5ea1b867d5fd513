"""Bregman density-ratio losses (Eq. 11, 18–21) against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fdrl_jax.losses import LOSSES, bregman_loss, get_loss

# Convex generators g of each built-in loss (notes/FDRL.md §3), for the generic constructor.
GENERATORS = {
    "lsif": lambda y: 0.5 * (y - 1.0) ** 2,
    "lr": lambda y: y * jnp.log(y) - (1.0 + y) * jnp.log1p(y),
    "kl": lambda y: y * jnp.log(y) - y,
}

# q = N(MU_Q, 1) (flowed samples), p = N(MU_P, 1) (data): log r(x) = log q/p = A x + B.
MU_Q, MU_P = 0.5, -0.25
A_TRUE, B_TRUE = MU_Q - MU_P, (MU_P**2 - MU_Q**2) / 2
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(80)  # exact E over N(0, 1) of smooth f
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def expected_loss(name, theta):
  """Exact population loss (Gauss–Hermite quadrature) for the family log r_θ(x) = a x + b."""
  loss = LOSSES[name]
  a, b = theta
  def output(x):
    l = a * x + b
    return jnp.exp(l) if loss.output == "ratio" else l
  w = jnp.asarray(_WEIGHTS, jnp.float32)
  data = jnp.sum(w * loss.data_term(output(MU_P + _NODES)))
  flowed = jnp.sum(w * loss.flowed_term(output(MU_Q + _NODES)))
  return data + flowed


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_minimised_at_true_ratio(name):
  theta_true = jnp.array([A_TRUE, B_TRUE])
  grad = jax.grad(lambda t: expected_loss(name, t))(theta_true)
  np.testing.assert_allclose(grad, 0.0, atol=2e-5)
  at_truth = expected_loss(name, theta_true)
  for delta in [(0.1, 0), (-0.1, 0), (0, 0.1), (0, -0.1), (0.07, -0.07)]:
    assert expected_loss(name, theta_true + jnp.array(delta)) > at_truth + 1e-4


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_training_recovers_true_ratio(name):
  opt = optax.adam(0.05)
  theta = jnp.zeros(2)
  state = opt.init(theta)
  @jax.jit
  def step(theta, state):
    g = jax.grad(lambda t: expected_loss(name, t))(theta)
    updates, state = opt.update(g, state)
    return optax.apply_updates(theta, updates), state
  for _ in range(1500):
    theta, state = step(theta, state)
  np.testing.assert_allclose(theta, [A_TRUE, B_TRUE], atol=2e-2)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_generic_constructor_matches_builtin(name):
  builtin = LOSSES[name]
  generic = bregman_loss(GENERATORS[name], output=builtin.output)
  out_p = jax.random.uniform(jax.random.key(0), (64,), minval=0.1, maxval=3.0)
  out_q = jax.random.uniform(jax.random.key(1), (64,), minval=0.1, maxval=3.0)
  if builtin.output == "log_ratio":
    out_p, out_q = jnp.log(out_p), jnp.log(out_q)
  # Equal up to a constant (Eq. 18 drops LSIF's +½): compare values shifted, gradients exactly.
  shift = builtin(out_p, out_q) - generic(out_p, out_q)
  np.testing.assert_allclose(shift, -0.5 if name == "lsif" else 0.0, atol=1e-5)
  for argnum in (0, 1):
    np.testing.assert_allclose(jax.grad(builtin, argnum)(out_p, out_q),
                               jax.grad(generic, argnum)(out_p, out_q), rtol=1e-4, atol=1e-6)


def test_generic_constructor_with_explicit_derivative():
  g = GENERATORS["kl"]
  auto = bregman_loss(g, output="log_ratio")
  manual = bregman_loss(g, jnp.log, output="log_ratio")
  l = jnp.linspace(-3, 3, 11)
  np.testing.assert_allclose(auto(l, -l), manual(l, -l), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_stable_at_extreme_outputs(name):
  loss = LOSSES[name]
  out = jnp.array([-80.0, -5.0, 0.0, 5.0, 80.0])
  value, grads = jax.value_and_grad(loss, argnums=(0, 1))(out, out[::-1])
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_terms_add_up():
  for loss in LOSSES.values():
    a, b = jnp.array([0.3, 1.2]), jnp.array([0.7, 0.1])
    np.testing.assert_allclose(loss(a, b), loss.data_term(a).mean() + loss.flowed_term(b).mean())


def test_unknown_loss_and_output():
  with pytest.raises(ValueError, match="^Unknown --config.loss.name='bce'.*; available: kl, lr, "
                     "lsif.$"):
    get_loss("bce")
  with pytest.raises(ValueError, match="^Unknown network output='logit'.*; available: log_ratio, "
                     "ratio.$"):
    bregman_loss(GENERATORS["lsif"], output="logit")
