"""The sampling layer: the conditional potential against closed forms, conditional flows,
translation of a 1-D Gaussian source onto its target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

from configs import default
from fdrl_jax import bundled, conditional, fdrl, flows, parallel, sampler, sampling
from fdrl_jax.divergences import flow_potential

# Two balanced classes in 1-D: p(x | y = 0) = N(-M, 1), p(x | y = 1) = N(M, 1); q = N(0, S²).
M, S = 2.0, 2.0


def log_p_given(x, y):
  return norm.logpdf(x, (2 * y - 1) * M, 1.0)


def log_p(x):
  return jnp.logaddexp(log_p_given(x, 0), log_p_given(x, 1)) - jnp.log(2.0)


def log_q(x):
  return norm.logpdf(x, 0.0, S)


def exact_log_ratio(x):  # l = log q/p, the LR estimator's output
  return (log_q(x) - log_p(x))[:, 0]


def exact_log_probs(x):  # log p(y | x) = log ½ p(x | y) / p(x), (B, 2)
  return jnp.stack([log_p_given(x, 0), log_p_given(x, 1)], -1)[:, 0] - jnp.log(2.0) - log_p(x)


@pytest.mark.parametrize("divergence", ["kl", "js", "logd", "pearson"])
@pytest.mark.parametrize("output", ["log_ratio", "ratio"])
@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_conditional_potential_is_f_prime_of_the_class_conditional_ratio(divergence, output,
                                                                          weight):
  if output == "ratio" and divergence != "pearson":
    pytest.skip("a ratio output pairs with Pearson only")
  x = jnp.linspace(-4.0, 4.0, 41)[:, None]
  output_fn = exact_log_ratio if output == "log_ratio" else (lambda x: jnp.exp(exact_log_ratio(x)))
  for label in (0, 1):
    phi = conditional.conditional_potential(output_fn, exact_log_probs, label=label, weight=weight,
                                         output=output, divergence=divergence)(x)
    # Closed form: r(x | y)^… = q / (p · (N p(y|x))^ϕ); with ϕ = 1 this is q(x) / p(x | y).
    log_r_cond = (log_q(x) - log_p(x) - weight * (exact_log_probs(x)[:, label:label + 1]
                                                  + jnp.log(2.0)))[:, 0]
    if weight == 1.0:
      np.testing.assert_allclose(log_r_cond, (log_q(x) - log_p_given(x, label))[:, 0],
                                 rtol=1e-5, atol=1e-5)
    expected = flow_potential(divergence, "log_ratio")(log_r_cond)
    np.testing.assert_allclose(phi, expected, rtol=1e-4, atol=1e-4)


def test_zero_weight_gives_the_unconditional_potential():
  x = jnp.linspace(-3.0, 3.0, 7)[:, None]
  phi = conditional.conditional_potential(exact_log_ratio, exact_log_probs, label=1, weight=0.0,
                                       output="log_ratio", divergence="kl")(x)
  np.testing.assert_allclose(phi, flow_potential("kl", "log_ratio")(exact_log_ratio(x)), rtol=1e-6)


@pytest.mark.parametrize("label", [0, 1])
def test_conditional_flow_concentrates_on_the_requested_class(label):
  potential = conditional.conditional_potential(exact_log_ratio, exact_log_probs, label=label,
                                             weight=1.0, output="log_ratio", divergence="kl")
  x0 = S * jax.random.normal(jax.random.key(0), (2000, 1))
  x = flows.flow(potential, x0, jax.random.key(1), num_steps=400, step_size=0.02,
                 noise_scale=0.2)
  side = np.asarray(x[:, 0] > 0) if label == 1 else np.asarray(x[:, 0] < 0)
  assert side.mean() > 0.97, side.mean()
  # Unconditionally (ϕ = 0) the same flow splits between the classes.
  plain = conditional.conditional_potential(exact_log_ratio, exact_log_probs, label=label,
                                         weight=0.0, output="log_ratio", divergence="kl")
  y = flows.flow(plain, x0, jax.random.key(1), num_steps=400, step_size=0.02, noise_scale=0.2)
  assert 0.3 < float(np.mean(np.asarray(y[:, 0]) > 0)) < 0.7


def gaussian_translation_task(n=4000, seed=0):
  """Source N(-1.5, 0.5²), target N(1.5, 0.5²) in 1-D, unpaired."""
  rng = np.random.default_rng(seed)
  source = (-1.5 + 0.5 * rng.standard_normal((n, 1))).astype(np.float32)
  target = (1.5 + 0.5 * rng.standard_normal((n, 1))).astype(np.float32)
  return bundled.Dataset(name="gauss1d", event_shape=(1,), is_image=False,
                      sample=bundled.rows_batch_fn(target), test=target[:500], train=target,
                      source=source, source_test=source[:500])


def test_translation_moves_a_gaussian_source_onto_the_target():
  config = default.get_config()
  config.data.name = "gauss1d"
  config.data.batch_size = 256
  config.model.name, config.model.width, config.model.depth = "mlp", 32, 2
  config.prior.name = "empirical"
  config.flow.num_steps, config.flow.num_refine_steps = 10, 0
  config.flow.step_size, config.flow.noise_scale, config.flow.clip = 0.3, 0.0, False
  config.optim.decay_steps = ()
  config.optim.ema_decay = 0.95  # a short run: the default 0.998 would still weigh the init
  dataset = gaussian_translation_task()
  state = fdrl.init_state(config, dataset, jax.random.key(0), fit=True)
  step = jax.jit(fdrl.build_train_step(config, dataset, None))
  for i in range(600):
    state, _ = step(state, jnp.asarray(bundled.get_batch(dataset, 0, i, 256)), jax.random.key(1))
  sampler = sampling.build_sampler(config, fdrl.sampler_parts(config, dataset), "translate")
  assert sampler.takes_inputs
  held_out = np.random.default_rng(1).normal(-1.5, 0.5, (1000, 1)).astype(np.float32)
  moved = sampling.draw(sampler, state, jax.random.key(2), held_out, 500)
  assert moved.shape == held_out.shape
  assert abs(float(moved.mean()) - 1.5) < 0.3, moved.mean()  # it starts at -1.5
  assert 0.25 < float(moved.std()) < 0.8, moved.std()
  assert np.mean(moved > held_out) > 0.95  # each source point moved towards the target


def test_unknown_sampler_and_refine_without_a_generator_are_one_line():
  config = default.get_config()
  dataset = bundled.create_dataset("digits")
  parts = fdrl.sampler_parts(config, dataset)
  with pytest.raises(ValueError, match="Unknown --config.sampling.name='magic'") as info:
    sampling.build_sampler(config, parts, "magic")
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="refines a generator's samples"):
    sampling.build_sampler(config, parts, "refine")
  with pytest.raises(ValueError, match="needs --config.sampling.classifier_workdir"):
    sampling.build_sampler(config, parts, "conditional")


@pytest.mark.parametrize("name", ["prior", "translate"])
def test_sampler_particles_are_split_over_the_devices(name):
  assert len(jax.devices()) == 4, "tests/conftest.py fakes 4 CPU devices"
  config = default.get_config()
  config.flow.num_steps, config.flow.num_refine_steps = 2, 1
  dataset = bundled.create_dataset("digits")
  state = fdrl.init_state(config, dataset, jax.random.key(0), fit=True)
  parts = fdrl.sampler_parts(config, dataset)
  sampler = sampling.build_sampler(config, parts, name, parallel.data_mesh())
  key = jax.random.key(3)
  arg = 8 if name == "prior" else parallel.put_particles(dataset.test[:8], parallel.data_mesh())
  x = sampler.device_sample(state, key, arg)
  assert [shard.data.shape[0] for shard in x.addressable_shards] == [2, 2, 2, 2]
  assert {shard.device for shard in x.addressable_shards} == set(jax.devices())
  # 7 asked for: 8 computed (two per device), 7 returned, the same as one device's 7.
  seven = sampler.sample(state, key, 7 if name == "prior" else dataset.test[:7])
  one = sampling.build_sampler(config, parts, name, parallel.data_mesh(jax.devices()[:1]))
  alone = one.sample(state, key, 7 if name == "prior" else dataset.test[:7])
  assert seven.shape == (7, 8, 8, 1)
  np.testing.assert_allclose(seven, np.asarray(x)[:7], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(seven, alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["prior", "translate"])
def test_a_sampler_of_several_lengths_equals_one_sampler_per_length(name):
  # One flow to the longest length, split over 4 devices, gives each length's samples as the
  # sampler of that length alone (the same keys); draw_batches yields every length's batch.
  config = default.get_config()
  config.flow.num_steps, config.flow.num_refine_steps = 2, 1
  dataset = bundled.create_dataset("digits")
  state = fdrl.init_state(config, dataset, jax.random.key(0), fit=True)
  parts = fdrl.sampler_parts(config, dataset)
  arg = 7 if name == "prior" else dataset.test[:7]
  lengths = (4, 1, 2)
  several = sampling.build_sampler(config, parts, name, lengths=lengths)
  assert several.lengths == (1, 2, 4)
  batches = list(sampling.draw_batches(several, state, jax.random.key(3), arg, 4))
  assert [b.shape for b in batches] == [(3, 4, 8, 8, 1), (3, 3, 8, 8, 1)]
  for i, length in enumerate(several.lengths):
    config.flow.num_steps, config.flow.num_refine_steps = length, 0
    alone = sampling.build_sampler(config, fdrl.sampler_parts(config, dataset), name)
    expected = sampling.draw(alone, state, jax.random.key(3), arg, 4)
    np.testing.assert_allclose(np.concatenate([b[i] for b in batches]), expected, rtol=1e-5,
                               atol=1e-5)
  with pytest.raises(ValueError, match="Flow lengths must be step counts >= 1"):
    sampling.build_sampler(config, parts, name, lengths=(0, 2))


def test_a_method_brings_its_own_sampler(monkeypatch):
  # A sampler that is not "start + potential -> flow" lives with its method
  # (Method.samplers): --config.sampling.name finds it beside sampling.SAMPLERS, through the
  # run, with its particles split over the devices like every sampler.
  from fdrl_jax import methods, run_lib

  def uniform(config, parts, mesh, guide, lengths):
    del config, parts, guide, lengths
    draw = lambda state, key, n: sampler.shard(jax.random.uniform(key, (n, 8, 8, 1)), mesh)
    return sampler.split_sampler(draw, mesh)

  method = methods.METHODS["fdrl"]._replace(samplers={"uniform_noise": uniform})
  monkeypatch.setitem(methods.METHODS, "fdrl", method)
  config = default.get_config()
  config.sampling.name = "uniform_noise"
  run = run_lib.Run(config)
  x = run.draw(None, jax.random.key(0), 6)
  assert x.shape == (6, 8, 8, 1) and 0.0 <= x.min() and x.max() <= 1.0
  with pytest.raises(ValueError, match="did you mean 'uniform_noise'"):
    run.sampler("uniform_nois")
