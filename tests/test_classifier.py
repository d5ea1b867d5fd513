"""Classifiers for conditional sampling: PGD-L2 attacks, plain and adversarial training."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fdrl_jax import bundled, classifier, parallel

# Small enough to train in seconds on two CPU cores, large enough to learn the 8×8 digits.
CHANNELS, HIDDEN = (16, 32, 32), 64
BATCH = 128
# The attack the robust classifier is trained against and evaluated at: ε = 1 in [-1, 1] pixel
# units over 64 pixels (≈ 0.06 per pixel in RMS).
EPSILON, TRAIN_PGD_STEPS, EVAL_PGD_STEPS = 1.0, 2, 5


def small_net():
  return classifier.ClassifierNet(channels=CHANNELS, hidden=HIDDEN)


def train(init, images, labels, *, epsilon, num_steps, steps, seed=0):
  """Trains the small classifier from ``init`` with Adam 2e-3 on batches of 128.

  Returns the model, the final state, the last step's metrics and how often the step was traced.
  """
  model, tx, state = init
  step_fn = classifier.make_classifier_step(
      model.apply, tx, epsilon=epsilon, num_steps=num_steps,
      step_size=classifier.default_step_size(epsilon, num_steps))
  traces = []

  def counted(*args):
    traces.append(None)
    return step_fn(*args)

  step = jax.jit(chex.assert_max_traces(counted, n=1))
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.choice(len(images), BATCH, replace=False)
    state, metrics = step(state, (images[idx], labels[idx]), jax.random.key(1))
  chex.clear_trace_counter()
  return model, jax.device_get(state), jax.device_get(metrics), len(traces)


@pytest.fixture(scope="module")
def digits():
  train_x, train_y, test_x, test_y = bundled.digits_split(0)
  return (train_x.astype(np.float32), train_y.astype(np.int32), test_x.astype(np.float32),
          test_y.astype(np.int32))


@pytest.fixture(scope="module")
def init():
  """The small network, Adam 2e-3 and one initial state (its jitted init takes seconds to
  compile, so every test starts from this one)."""
  model, tx = small_net(), optax.adam(2e-3)
  return model, tx, classifier.create_classifier_state(model, tx, jax.random.key(0), (8, 8, 1))


@pytest.fixture(scope="module")
def plain(init, digits):
  train_x, train_y, _, _ = digits
  return train(init, train_x, train_y, epsilon=0.0, num_steps=0, steps=120)


@pytest.fixture(scope="module")
def robust(init, digits):
  train_x, train_y, _, _ = digits
  return train(init, train_x, train_y, epsilon=EPSILON, num_steps=TRAIN_PGD_STEPS, steps=120)


def cross_entropy(model, params):
  return lambda x, y: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": params}, x), y)


def test_network_shapes_for_digits_mnist_and_cifar():
  model = classifier.ClassifierNet()  # the default (32, 64, 64) network
  for shape in ((8, 8, 1), (28, 28, 1), (32, 32, 3)):
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    logits = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], x)
    assert logits.shape == (2, 10)


def test_log_probabilities_normalise(plain, digits):
  model, state, _, _ = plain
  log_p = classifier.log_probabilities(model.apply, state.params)(digits[2][:16])
  assert log_p.shape == (16, 10)
  np.testing.assert_allclose(jax.nn.logsumexp(log_p, axis=-1), 0.0, atol=1e-5)


def test_default_step_size():
  assert classifier.default_step_size(1.0, 4) == pytest.approx(0.625)
  assert classifier.default_step_size(1.0, 0) == 0.0


def test_pgd_raises_the_loss_within_the_ball_and_the_pixel_range(plain, digits):
  model, state, _, _ = plain
  x, y = jnp.asarray(digits[2][:64]), jnp.asarray(digits[3][:64])
  loss = cross_entropy(model, state.params)
  x_adv = classifier.pgd_l2(loss, x, y, epsilon=EPSILON, num_steps=EVAL_PGD_STEPS,
                            step_size=classifier.default_step_size(EPSILON, EVAL_PGD_STEPS))
  assert x_adv.shape == x.shape
  assert float(jnp.mean(loss(x_adv, y))) > float(jnp.mean(loss(x, y)))
  norms = jnp.sqrt(jnp.sum((x_adv - x) ** 2, axis=(1, 2, 3)))
  assert float(jnp.max(norms)) <= EPSILON + 1e-5
  assert float(jnp.min(x_adv)) >= -1.0 and float(jnp.max(x_adv)) <= 1.0


def test_pgd_against_a_linear_loss_is_the_closed_form():
  rng = np.random.default_rng(0)
  w, x = rng.normal(size=(4, 3, 2)), jnp.asarray(rng.normal(size=(5, 4, 3, 2)), jnp.float32)
  loss = lambda x, y: jnp.sum(x * w, axis=(1, 2, 3))
  x_adv = classifier.pgd_l2(loss, x, None, epsilon=0.7, num_steps=1, step_size=1.0, clip=None)
  np.testing.assert_allclose(x_adv, x + 0.7 * w / jnp.linalg.norm(w), rtol=1e-5, atol=1e-5)


def test_pgd_without_budget_or_gradient_leaves_the_input():
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 1)), jnp.float32)
  loss = lambda x, y: jnp.sum(x ** 2, axis=(1, 2, 3))
  for epsilon, num_steps in ((0.0, 3), (1.0, 0)):
    assert classifier.pgd_l2(loss, x, None, epsilon=epsilon, num_steps=num_steps,
                             step_size=1.0) is x
  flat = lambda x, y: jnp.zeros(x.shape[0])  # zero gradient: no step, and no NaN
  np.testing.assert_array_equal(
      classifier.pgd_l2(flat, x, None, epsilon=1.0, num_steps=2, step_size=1.0), x)


def test_plain_training_classifies_held_out_digits(plain, digits):
  model, state, metrics, _ = plain
  _, _, test_x, test_y = digits
  assert classifier.accuracy(model.apply, state.params, test_x, test_y) >= 0.9
  assert metrics["accuracy"] == metrics["clean_accuracy"]  # ε = 0 trains on the clean batch
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params))


def test_accuracy_does_not_depend_on_the_batching(plain, digits):
  model, state, _, _ = plain
  _, _, test_x, test_y = digits
  assert classifier.accuracy(model.apply, state.params, test_x, test_y, batch_size=100) == (
      classifier.accuracy(model.apply, state.params, test_x, test_y))


def test_adversarial_training_resists_the_attack(plain, robust, digits):
  _, _, test_x, test_y = digits
  attack = dict(epsilon=EPSILON, num_steps=EVAL_PGD_STEPS,
                step_size=classifier.default_step_size(EPSILON, EVAL_PGD_STEPS))
  (plain_model, plain_state, _, _), (robust_model, robust_state, metrics, _) = plain, robust
  plain_robust_acc = classifier.accuracy(plain_model.apply, plain_state.params, test_x, test_y,
                                         **attack)
  robust_clean_acc = classifier.accuracy(robust_model.apply, robust_state.params, test_x, test_y)
  robust_robust_acc = classifier.accuracy(robust_model.apply, robust_state.params, test_x, test_y,
                                          **attack)
  # Measured: plain ≈ 0.49 against robust ≈ 0.78 under this attack; both ≈ 0.98 clean.
  assert robust_robust_acc >= plain_robust_acc + 0.15
  assert robust_clean_acc >= 0.9
  assert robust_robust_acc < robust_clean_acc
  assert metrics["accuracy"] <= metrics["clean_accuracy"]  # trained on the attacked batch
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(robust_state.params))


def test_steps_trace_once_and_keep_parameters_finite(plain, robust):
  for model, state, metrics, traces in (plain, robust):
    assert traces == 1  # one compilation for all the training steps
    assert set(metrics) == {"loss", "accuracy", "clean_accuracy", "grad_norm"}
    assert all(np.shape(v) == () and np.isfinite(v) for v in metrics.values())
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params))


def test_sharded_step_equals_the_single_device_step(init, digits):
  assert len(jax.devices()) == 4, "tests/conftest.py fakes 4 CPU devices"
  model, tx, state = init
  batch = (jnp.asarray(digits[0][:8]), jnp.asarray(digits[1][:8]))
  build = lambda sharding: classifier.make_classifier_step(
      model.apply, tx, epsilon=1.0, num_steps=1, step_size=1.0, particle_sharding=sharding)
  single_state, single_metrics = jax.jit(build(None))(state, batch, jax.random.key(2))
  mesh = parallel.data_mesh()  # the sharded step donates its state: give it a fresh copy
  sharded_state, sharded_metrics = parallel.jit_train_step(build, mesh)(
      jax.device_put(jax.device_get(state), parallel.replicated(mesh)),
      parallel.global_batch(jax.device_get(batch), 8, mesh), jax.random.key(2))
  chex.assert_trees_all_close(jax.device_get(sharded_state.params),
                              jax.device_get(single_state.params), rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(jax.device_get(sharded_metrics), jax.device_get(single_metrics),
                              rtol=1e-4, atol=1e-5)


def test_noise_augmentation_draws_from_the_step_key(init, digits):
  model, tx, state = init
  batch = (digits[0][:BATCH], digits[1][:BATCH])
  params = lambda noise, key: jax.device_get(classifier.make_classifier_step(
      model.apply, tx, epsilon=0.0, num_steps=0, step_size=0.0, noise=noise)(
          state, batch, jax.random.key(key))[0].params)
  same = lambda a, b: all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
  assert same(params(0.0, 1), params(0.0, 2))      # no noise: the key is not used
  assert same(params(0.5, 1), params(0.5, 1))      # a key fixes the noise
  assert not same(params(0.5, 1), params(0.5, 2))  # another key, other noise
  assert not same(params(0.0, 1), params(0.5, 1))
