"""MonoFlow Section 4.3 (a 2-D Gaussian): every f-divergence converges when the model's density is
differentiated (a), but with the ratio frozen (b: analytic, c: a discriminator) only reverse KL and
the increasing map exp(1.5 d) do."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import monoflow_gaussian as mg

# (a): the reparameterised χ² needed 1461–7623 iterations over seeds 0–7 to come within 0.05 of p
# (its gradient has infinite variance at the start); an analytic iteration costs about 0.1 ms.
ANALYTIC_STEPS = 10_000
# (b): reverse KL and exp are exact after a few hundred iterations; by then the others have stalled
# 1.3–2.4 per coordinate away.
DETACHED_STEPS = 1000
# (c): the full run's 1500 iterations (the generator's lr decaying to 0 over the last 3/4) at an
# eighth of its batch, since the discriminator dominates the time. Over seeds 0–3 reverse KL and exp
# ended within 0.045 of p (Σ_model within 0.045 of Σ), the others 2.1–3.4 away.
GAN_STEPS = 1500
GAN_BATCH = 128
FAILED = 0.5  # the failing runs end 2–5 away; at the start ‖μ‖ = 1.41


def test_f_divergences_are_convex_with_f_of_one_zero():
  """Each f (as f(e^d)) is 0 at ρ = 1 and convex in ρ; the frozen-ratio velocity factor
  h'(d) = −f'(e^d)e^d is positive everywhere only for reverse KL."""
  rho = jnp.linspace(0.05, 20.0, 400)

  @jax.jit
  def derivatives(r):
    out = []
    for f_of_logit in mg.F_OF_LOGIT.values():
      f = lambda x, g=f_of_logit: g(jnp.log(x))
      out.append(jnp.stack([jax.vmap(f)(r), jax.vmap(jax.grad(f))(r),
                            jax.vmap(jax.grad(jax.grad(f)))(r)]))
    return jnp.stack(out), jnp.stack([g(jnp.zeros(())) for g in mg.F_OF_LOGIT.values()])

  values, at_one = (np.asarray(a) for a in derivatives(rho))
  for (name, (_, first, second)), f_one in zip(zip(mg.F_OF_LOGIT, values), at_one):
    assert abs(f_one) < 1e-6, name
    assert np.all(second > 0), name
    assert np.all(-first * np.asarray(rho) > 0) == (name == "reverse_kl"), name


@pytest.mark.parametrize("loss", list(mg.F_OF_LOGIT))
def test_every_f_divergence_converges_with_the_model_density_differentiated(loss):
  result = mg.run(loss, "analytic", ANALYTIC_STEPS, seed=0)
  assert mg.mean_error(result) < mg.MEAN_TOLERANCE
  assert mg.cov_error(result) < mg.COV_TOLERANCE


@pytest.mark.parametrize("mode, steps, batch", [("detached", DETACHED_STEPS, mg.BATCH_SIZE),
                                                ("discriminator", GAN_STEPS, GAN_BATCH)])
@pytest.mark.parametrize("loss", mg.LOSS_NAMES)
def test_with_a_frozen_ratio_only_reverse_kl_and_exp_converge(loss, mode, steps, batch):
  result = mg.run(loss, mode, steps, seed=0, batch_size=batch)
  if loss in ("reverse_kl", "exp"):
    assert mg.mean_error(result) < mg.MEAN_TOLERANCE
    assert mg.cov_error(result) < mg.COV_TOLERANCE
  else:
    assert mg.mean_error(result) > FAILED
