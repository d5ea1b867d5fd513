"""f-divergences (Table 1) and their stable flow potentials (Eq. 22–24)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdrl_jax.divergences import DIVERGENCES, flow_potential, get_divergence

R = jnp.linspace(0.05, 8.0, 200)
L = jnp.linspace(-12.0, 12.0, 241)

TABLE_1_F_PRIME = {  # written out independently of the module, from the paper's Table 1
    "pearson": lambda r: 2 * (r - 1),
    "kl": lambda r: np.log(r) + 1,
    "js": lambda r: np.log(2 * r / (r + 1)),
    "logd": lambda r: np.log(r + 1) + 1,
}


def test_table_is_complete():
  assert set(DIVERGENCES) == set(TABLE_1_F_PRIME)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_f_prime_is_grad_of_f_and_matches_table(name):
  div = DIVERGENCES[name]
  autodiff = jax.vmap(jax.grad(div.f))(R)
  np.testing.assert_allclose(div.f_prime(R), autodiff, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(div.f_prime(R), TABLE_1_F_PRIME[name](np.asarray(R)), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_f_is_convex_with_f_of_one_zero_or_constant(name):
  div = DIVERGENCES[name]
  assert np.all(np.diff(np.asarray(div.f_prime(R))) > 0)  # f' increasing ⇔ f convex


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_stable_log_ratio_potential_equals_naive(name):
  stable = flow_potential(name, "log_ratio")
  naive = DIVERGENCES[name].f_prime(jnp.exp(L))
  np.testing.assert_allclose(stable(L), naive, rtol=1e-5, atol=1e-5)
  # ... and so do their derivatives, which is what moves the particles.
  np.testing.assert_allclose(jax.vmap(jax.grad(stable))(L),
                             jax.vmap(jax.grad(lambda l: DIVERGENCES[name].f_prime(jnp.exp(l))))(L),
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_stable_potential_finite_at_extreme_outputs(name):
  stable = flow_potential(name, "log_ratio")
  out = jnp.array([-110.0, -80.0, 80.0])
  assert np.all(np.isfinite(stable(out)))
  assert np.all(np.isfinite(jax.vmap(jax.grad(stable))(out)))
  if name in ("kl", "js"):  # e^-110 underflows: the naive log-based f' breaks, the stable one not
    assert not np.isfinite(DIVERGENCES[name].f_prime(jnp.exp(out[0])))


def test_pearson_from_ratio_output():
  np.testing.assert_allclose(flow_potential("pearson", "ratio")(R), 2 * R - 2, rtol=1e-6)
  assert np.all(np.isfinite(flow_potential("pearson", "ratio")(jnp.array([-80.0, 80.0]))))


@pytest.mark.parametrize("name", ["kl", "js", "logd"])
def test_unstable_pairing_is_refused_with_valid_pairings(name):
  with pytest.raises(ValueError, match="cannot be computed stably") as info:
    flow_potential(name, "ratio")
  assert "pearson+ratio" in str(info.value) and f"{name}+log_ratio" in str(info.value)


def test_unknown_names():
  with pytest.raises(ValueError, match="^Unknown --config.loss.divergence='chi2'; available: js, "
                     "kl, logd, pearson.$"):
    get_divergence("chi2")
  with pytest.raises(ValueError, match="^Unknown network output='logit'.*; available: log_ratio, "
                     "ratio.$"):
    flow_potential("kl", "logit")
