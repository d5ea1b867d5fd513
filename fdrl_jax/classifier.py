"""Image classifiers p(y | x) for class-conditional FDRL, made robust by PGD-L2 adversarial training.

FDRL Sec. 6.4 composes its estimator with a classifier, N p(y = n | x) = p(x | y = n) / p(x), and
moves particles along ∇ log p(y = n | x); a non-robust classifier's input gradients barely change
the images it is pushed along, so the paper guides with an L2-robust ResNet-50 (ε = 1). This
module trains such a classifier here (Madry et al.'s adversarial training):

    x_adv = argmax_{‖δ‖₂ ≤ ε} CE(f_θ(x + δ), y)   (PGD: normalised gradient steps, projection)
    θ     ← Adam(∇θ CE(f_θ(x_adv), y))

with ε = 0 meaning plain training. The step's signature is every method's ``step(state, batch,
key)`` (batch = (images, labels)), so ``run_lib``'s loop, checkpoints and resume serve it too.
Only ``build_*`` and the method hooks read a config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding

from fdrl_jax import optim, registry, robust_resnet, torch_objects
from fdrl_jax.configs import cifar10_classifier
from fdrl_jax.conv import conv_general_dilated

Array = jax.Array


class ClassifierNet(nn.Module):
  """Conv classifier for NHWC images in [-1, 1]: 3×3 convs with ReLU (stride 1 first, then
  stride 2 while the image side exceeds 4), Dense(hidden), ReLU, Dense(num_classes) logits.

  Convolutions use ``conv.conv_general_dilated``: its input gradient drives a ``lax.scan`` flow
  in conditional sampling, where the plain convolution's gradient is slow on CPU. With
  ``features=True`` the call returns the ``hidden``-d penultimate activations instead of the
  logits (the FD-digits features, ``fdrl_jax.features``)."""

  channels: Sequence[int] = (32, 64, 64)
  num_classes: int = 10
  hidden: int = 128

  @nn.compact
  def __call__(self, x: Array, features: bool = False) -> Array:
    for i, c in enumerate(self.channels):
      stride = 2 if i > 0 and x.shape[1] > 4 else 1
      x = nn.relu(nn.Conv(c, (3, 3), strides=stride, conv_general_dilated=conv_general_dilated)(x))
    x = nn.relu(nn.Dense(self.hidden)(x.reshape((x.shape[0], -1))))
    return x if features else nn.Dense(self.num_classes)(x)


class ClassifierState(struct.PyTreeNode):
  """A classifier's training state; saved whole by the checkpoints."""

  step: Array
  params: Any
  opt_state: Any


def log_probabilities(apply_fn: Callable, params) -> Callable[[Array], Array]:
  """x ↦ log p(y | x), (B, N): the log-softmax of the logits (what conditional sampling uses)."""
  return lambda x: jax.nn.log_softmax(apply_fn({"params": params}, x))


def default_step_size(epsilon: float, num_steps: int) -> float:
  """The usual PGD step, 2.5 ε / steps (0 without steps)."""
  return 2.5 * epsilon / num_steps if num_steps else 0.0


def _per_example_norm(x: Array) -> Array:
  return jnp.sqrt(jnp.sum(x * x, axis=tuple(range(1, x.ndim)), keepdims=True))


def pgd_l2(
  loss_fn: Callable[[Array, Array], Array],
  x: Array,
  y: Array,
  *,
  epsilon: float,
  num_steps: int,
  step_size: float,
  clip: tuple[float, float] | None = (-1.0, 1.0),
) -> Array:
  """Projected gradient ascent of ``loss_fn(x, y) -> (B,)`` in the L2 ball ‖x' − x‖₂ ≤ ε.

  Starts at x; each step moves every example by ``step_size`` along its L2-normalised gradient,
  projects back onto its ball and clips to ``clip``. Returns x itself when ε or the number of
  steps is 0. The result carries no gradient.

  Args:
    loss_fn: (x, y) ↦ the per-example loss, shape (B,), to increase.
    x: the clean inputs (B, ...); each example's ball is centred on it (no random start).
    y: the labels, passed to ``loss_fn`` unchanged.
    epsilon: the radius of the L2 ball, the norm taken over all non-batch axes (static).
    num_steps: the number of ascent steps (static).
    step_size: the L2 length of each step before the projection.
    clip: the (low, high) range of valid inputs, or None for no clipping.

  Returns:
    The adversarial inputs, shaped like x, with ‖x_adv − x‖₂ ≤ ε per example.
  """
  if epsilon == 0 or num_steps == 0:
    return x
  grad_fn = jax.grad(lambda x_adv: jnp.sum(loss_fn(x_adv, y)))

  def step(_, x_adv):
    g = grad_fn(x_adv)
    x_adv = x_adv + step_size * g / jnp.maximum(_per_example_norm(g), 1e-12)
    delta = x_adv - x
    delta = delta * jnp.minimum(1.0, epsilon / jnp.maximum(_per_example_norm(delta), 1e-12))
    x_adv = x + delta
    return x_adv if clip is None else jnp.clip(x_adv, *clip)

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, num_steps, step, x))


def _cross_entropy(apply_fn: Callable, params) -> Callable[[Array, Array], Array]:
  """(x, y) ↦ the per-example cross-entropy (B,) of the classifier at ``params``."""
  return lambda x, y: optax.softmax_cross_entropy_with_integer_labels(
    apply_fn({"params": params}, x), y
  )


def create_classifier_state(
  model: nn.Module, tx: optax.GradientTransformation, key: Array, event_shape: tuple[int, ...]
) -> ClassifierState:
  """Initialises the classifier and its optimizer state in one jitted call.

  Args:
    model: the classifier, e.g. ``ClassifierNet``.
    tx: its optimizer.
    key: the initialisation key.
    event_shape: the shape of one image, (H, W, C).

  Returns:
    The state at step 0.
  """

  @jax.jit
  def init(key):
    params = model.init(key, jnp.zeros((1, *event_shape)))["params"]
    return ClassifierState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return init(key)


def make_classifier_step(
  apply_fn: Callable,
  tx: optax.GradientTransformation,
  *,
  epsilon: float,
  num_steps: int,
  step_size: float,
  noise: float = 0.0,
  particle_sharding: NamedSharding | None = None,
) -> Callable[[ClassifierState, tuple[Array, Array], Array], tuple[ClassifierState, dict]]:
  """One step of (adversarial) training: PGD-L2 examples with the current parameters, then one
  optimiser step on their mean cross-entropy (plain training when ε = 0). With ``noise`` > 0 the
  images first get Gaussian noise of that σ (drawn from ``fold_in(key, state.step)``, clipped to
  [-1, 1]), so that the classifier, and its gradient, is defined on the noisy, half-formed images a
  flow passes through; the attack starts at the (noisy) data.

  Args:
    apply_fn: the classifier's ``apply`` (Flax module's ``apply``), giving logits (B, N).
    tx: its optimizer.
    epsilon, num_steps, step_size: the PGD-L2 attack of ``pgd_l2`` (ε = 0: plain training).
    noise: σ of the Gaussian noise added to the images (0: none).
    particle_sharding: the sharding of the images (the data sharding), when data-parallel.

  Returns:
    ``step(state, (images, labels), key) -> (state, metrics)``; the metrics are the loss and the
    accuracy on the trained-on (attacked) images, the accuracy on the clean images, and the
    gradient norm.
  """

  def step(state: ClassifierState, batch: tuple[Array, Array], key: Array):
    x, y = batch
    if noise:
      key = jax.random.fold_in(key, state.step)
      x = jnp.clip(x + noise * jax.random.normal(key, x.shape, x.dtype), -1.0, 1.0)
    if particle_sharding is not None:
      x = jax.lax.with_sharding_constraint(x, particle_sharding)
    x_adv = pgd_l2(
      _cross_entropy(apply_fn, state.params),
      x,
      y,
      epsilon=epsilon,
      num_steps=num_steps,
      step_size=step_size,
    )

    def objective(params):
      logits = apply_fn({"params": params}, x_adv)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    clean = apply_fn({"params": state.params}, x)
    metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
      "clean_accuracy": jnp.mean(jnp.argmax(clean, -1) == y),
      "grad_norm": optax.tree.norm(grads),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def accuracy(
  apply_fn: Callable,
  params,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  epsilon: float = 0.0,
  num_steps: int = 0,
  step_size: float = 0.0,
  batch_size: int = 500,
) -> float:
  """The share of ``images`` classified as ``labels``, clean or under a PGD-L2 attack.

  Args:
    apply_fn, params: the classifier.
    images, labels: the examples, (N, ...) and (N,).
    epsilon, num_steps, step_size: the attack of ``pgd_l2`` (ε = 0: clean accuracy).
    batch_size: the number of examples per call of the jitted function.
  """

  @jax.jit
  def correct(x, y):
    x = pgd_l2(
      _cross_entropy(apply_fn, params),
      x,
      y,
      epsilon=epsilon,
      num_steps=num_steps,
      step_size=step_size,
    )
    return jnp.sum(jnp.argmax(apply_fn({"params": params}, x), -1) == y)

  total = sum(
    int(correct(jnp.asarray(images[i : i + batch_size]), jnp.asarray(labels[i : i + batch_size])))
    for i in range(0, len(images), batch_size)
  )
  return total / len(images)


# ----------------------------------------------------------------------------------------------
# The method's hooks (``fdrl_jax.methods``, ``--config.method=classifier``).

# The networks ``classifier.name`` picks: the conv net, or one of robustness's ResNets.
NETWORKS = ("conv", *robust_resnet.RESNETS)


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The classifier of ``config.classifier``: the conv net, or a ``robust_resnet.RobustResNet``."""
  c = config.classifier
  name = c.get("name", "conv")
  registry.lookup(dict.fromkeys(NETWORKS), name, "--config.classifier.name")
  if name != "conv":
    return robust_resnet.RobustResNet(
      arch=name,
      num_classes=c.num_classes,
      width=c.resnet_width,
      input_mean=tuple(c.input_mean),
      input_std=tuple(c.input_std),
    )
  return ClassifierNet(channels=tuple(c.channels), num_classes=c.num_classes, hidden=c.hidden)


def _attack(config: ml_collections.ConfigDict) -> dict:
  """The PGD-L2 settings of ``config.classifier`` (step 0: ``default_step_size``)."""
  c = config.classifier
  return {
    "epsilon": c.epsilon,
    "num_steps": c.num_steps,
    "step_size": c.step_size or default_step_size(c.epsilon, c.num_steps),
  }


def init_state(
  config: ml_collections.ConfigDict, dataset, key: jax.Array, *, fit: bool
) -> ClassifierState:
  """A freshly initialised classifier (nothing is fitted, so ``fit`` is unused)."""
  del fit
  return create_classifier_state(
    build_model(config), optim.build_optimizer(config), key, dataset.event_shape
  )


def build_train_step(config: ml_collections.ConfigDict, dataset, particle_sharding):
  """``step(state, (images, labels), key)``: adversarial (PGD-L2) or plain training."""
  return make_classifier_step(
    build_model(config).apply,
    optim.build_optimizer(config),
    noise=config.classifier.noise,
    particle_sharding=particle_sharding,
    **_attack(config),
  )


def evaluate_accuracy(config: ml_collections.ConfigDict, run, state, workdir: str) -> dict:
  """``--mode=eval`` of a classifier: clean accuracy on the held-out split, and accuracy under the
  training's PGD-L2 attack (ε = ``classifier.epsilon``; with ε = 0 the robust accuracy is also
  reported at ε = 1, the paper's classifier's radius in [0, 1] pixel units being 1)."""
  apply, params = build_model(config).apply, jax.device_get(state.params)
  x, y = run.dataset.test, run.dataset.test_labels
  attack = _attack(config)
  if attack["epsilon"] == 0:
    attack = {
      "epsilon": 1.0,
      "num_steps": config.classifier.num_steps or 7,
      "step_size": default_step_size(1.0, config.classifier.num_steps or 7),
    }
  return {
    "clean_accuracy": accuracy(apply, params, x, y),
    "adversarial_accuracy": accuracy(apply, params, x, y, **attack),
    "attack": f"PGD-L2, epsilon {attack['epsilon']:g}, {attack['num_steps']} steps of "
    f"{attack['step_size']:g}",
    "num_test": len(x),
  }


def robustness_run(ckpt: dict, source: str) -> tuple[ml_collections.ConfigDict, ClassifierState]:
  """(config, state) of a robustness checkpoint (``robust_resnet.is_checkpoint``):
  ``configs/cifar10_classifier.py`` with its ResNet and input normalisation, fresh Adam, step 0."""
  raw = ckpt.get("model", ckpt.get("state_dict"))
  state = torch_objects.strip_prefix(torch_objects.state_dict(raw, source, "its model state_dict"))
  model_sd = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
  arch, width, num_classes = robust_resnet.detect(model_sd, source)
  mean, std = (
    np.asarray(state.get(f"normalizer.new_{k}"), np.float64).ravel() for k in ("mean", "std")
  )
  if mean.shape != (3,) or std.shape != (3,):
    raise ValueError(
      f"{source}: its normalizer holds {mean.shape} / {std.shape} values, not one per RGB channel"
    )
  config = cifar10_classifier.get_config()
  c = config.classifier
  c.name, c.resnet_width, c.num_classes = arch, width, int(num_classes)
  c.input_mean, c.input_std = tuple(map(float, mean)), tuple(map(float, std))
  model = build_model(config)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  params = jax.tree.map(
    jnp.asarray, robust_resnet.convert(model_sd, arch, template["params"], source)
  )
  tx = optim.build_optimizer(config)
  return config, ClassifierState(
    step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)
  )
