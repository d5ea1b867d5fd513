"""Estimators: the paper's ResNets (Table 4), spectral norm, self-attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdrl_jax import flows
from fdrl_jax.models import RESNET_PARAMETER_COUNTS, RESNETS, ResNet, SelfAttention

SIZES = {"resnet32": 32, "resnet64": 64, "resnet128": 128, "resnet64_shallow": 64}


def expected_count(arch: str, self_attention: bool, scale: float = 1.0) -> int:
  """Trainable parameters from the layer shapes of the reference implementation (PyTorch), with
  every layer's channels × ``scale``."""
  stem, stages, _ = RESNETS[arch]
  stem = round(stem * scale)
  total, width = 9 * 3 * stem, stem                      # stem conv, no bias
  for features, blocks, stride in stages:
    features = round(features * scale)
    for j in range(blocks):
      s = stride if j == 0 else 1
      total += 9 * width * features + 9 * features * features  # two 3×3 convs, no bias
      if s != 1 or width != features:
        total += width * features                        # 1×1 shortcut, no bias
      width = features
  if self_attention:
    c = round(128 * scale)
    total += 3 * (c * (c // 8) + c // 8) + (c // 8) * c + c + 1  # k, q, v, out (biased), γ
  return total + width + 1                               # Dense(256 → 1) with bias


@pytest.mark.parametrize("arch", sorted(RESNETS))
@pytest.mark.parametrize("self_attention", [False, True])
def test_parameter_counts_match_reference_shapes(arch, self_attention):
  size = SIZES[arch]
  variables = jax.eval_shape(ResNet(arch=arch, self_attention=self_attention).init,
                             jax.random.key(0), jnp.zeros((1, size, size, 3)))
  count = sum(p.size for p in jax.tree.leaves(variables["params"]))
  assert count == expected_count(arch, self_attention)
  assert count == RESNET_PARAMETER_COUNTS[arch][self_attention]


@pytest.mark.parametrize("scale", [0.125, 0.5])
def test_width_scales_every_layer(scale):
  variables = jax.eval_shape(ResNet(arch="resnet64", self_attention=True, width=scale).init,
                             jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  count = sum(p.size for p in jax.tree.leaves(variables["params"]))
  assert count == expected_count("resnet64", True, scale) - 2 * 9 * round(64 * scale)  # 1 channel


@pytest.mark.parametrize("arch", sorted(RESNETS))
def test_output_is_one_scalar_per_image(arch):
  size = SIZES[arch]
  model = ResNet(arch=arch, self_attention=True)
  x = jax.random.uniform(jax.random.key(0), (2, size, size, 3), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(1), x)
  out = jax.jit(model.apply)(variables, x)
  assert out.shape == (2,) and out.dtype == jnp.float32 and np.all(np.isfinite(out))


def test_self_attention_is_identity_at_init():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
  block = SelfAttention()
  variables = block.init(jax.random.key(1), x)
  np.testing.assert_array_equal(block.apply(variables, x), x)
  variables["params"]["gamma"] = jnp.array(1.0)
  assert not np.allclose(block.apply(variables, x), x)


def test_spectral_norm_stats_change_in_training_only():
  model = ResNet(arch="resnet64_shallow", spectral_norm=True, self_attention=True)
  # 16² inputs: every layer (self-attention included) at a fraction of the 64² cost
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(1), x)
  assert "batch_stats" in variables
  # A training call updates the power-iteration state ...
  _, updated = jax.jit(lambda v, x: model.apply(v, x, update_stats=True, mutable=["batch_stats"])
                       )(variables, x)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"],
                         updated["batch_stats"])
  assert any(jax.tree.leaves(changed))
  # ... a flow does not touch it (it runs without mutable collections, update_stats=False).
  potential = lambda y: model.apply(variables, y)
  out = flows.flow(potential, x, jax.random.key(2), num_steps=2, step_size=0.01, noise_scale=0.0)
  assert out.shape == x.shape and np.all(np.isfinite(out))


def test_spectral_norm_bounds_each_layer():
  dense = nn.SpectralNorm(nn.Dense(16))
  x = jax.random.normal(jax.random.key(0), (4, 32))
  variables = dense.init(jax.random.key(1), x, update_stats=True)
  variables = {"params": jax.tree.map(lambda p: 10 * p, variables["params"]),
               "batch_stats": variables["batch_stats"]}
  for _ in range(30):  # power iterations converge to the top singular value
    _, state = dense.apply(variables, x, update_stats=True, mutable=["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": state["batch_stats"]}
  kernel = variables["params"]["layer_instance"]["kernel"]
  normalised = kernel / np.linalg.svd(np.asarray(kernel), compute_uv=False)[0]
  out = dense.apply(variables, x, update_stats=False)
  bias = variables["params"]["layer_instance"]["bias"]
  np.testing.assert_allclose(out, x @ normalised + bias, rtol=1e-3, atol=1e-4)


def test_bf16_compute_keeps_float32_parameters():
  model = ResNet(arch="resnet32", dtype=jnp.bfloat16)
  x = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(model.apply, variables, x)
  assert out.dtype == jnp.float32


@pytest.mark.parametrize("name", ["mlp", "conv", "dcgan", "resnet64_shallow"])
def test_torch_init_is_pytorchs_uniform_fan_in(name):
  from configs import default
  from fdrl_jax import models
  config = default.get_config().model
  config.name, config.torch_init = name, True
  x = jnp.zeros((1, 32, 32, 3))
  params = models.create_model(config).init(jax.random.key(0), x)["params"]
  checked = 0
  for path, w in jax.tree_util.tree_leaves_with_path(params):
    names = [getattr(p, "key", "") for p in path]
    if names[-1] != "kernel":
      continue
    fan_in = int(np.prod(w.shape[:-1]))
    bound = fan_in ** -0.5
    assert float(jnp.abs(w).max()) <= bound, names
    if w.size > 5000:  # enough weights for the spread of U(±bound): std bound/√3
      np.testing.assert_allclose(float(w.std()), bound / 3 ** 0.5, rtol=0.1)
    checked += 1
  assert checked >= 3
  flax_init = config.copy_and_resolve_references()
  flax_init.torch_init = False
  default_params = models.create_model(flax_init).init(jax.random.key(0), x)
  kernels = [w for p, w in jax.tree_util.tree_leaves_with_path(default_params)
             if getattr(p[-1], "key", "") == "kernel" and w.size > 5000]
  assert kernels and all(float(jnp.abs(w).max()) > (np.prod(w.shape[:-1]) ** -0.5)
                         for w in kernels)  # LeCun normal's tails pass the uniform's bound


class _SpectralMLP(nn.Module):
  """Two spectrally normalised dense layers, the estimators' call signature."""

  @nn.compact
  def __call__(self, x, update_stats=False):
    h = nn.leaky_relu(nn.SpectralNorm(nn.Dense(8))(x, update_stats=update_stats))
    return nn.SpectralNorm(nn.Dense(1))(h, update_stats=update_stats)[:, 0]


@pytest.mark.parametrize("every_call", [False, True])
def test_training_step_power_iterations(every_call):
  # One power iteration per training step by default; the reference's K + 2 (every forward pass:
  # K flow steps, the flowed pass, the data pass) with sn_every_call. Power iteration does not
  # depend on the input, so the expected state is that many updating calls on anything.
  from fdrl_jax import divergences, fdrl, losses, priors
  import optax
  model, k = _SpectralMLP(), 3
  state = fdrl.create_train_state(model, optax.adam(1e-3), priors.NormalPrior((4,)),
                                  jax.random.key(0), (4,))
  spec = flows.FlowSpec(num_steps=k, num_refine_steps=0, step_size=0.1, noise_scale=0.0,
                        clip=None)
  step = fdrl.make_train_step(model.apply, optax.adam(1e-3), losses.LOSSES["lsif"],
                              divergences.flow_potential("pearson", "ratio"), spec,
                              dequantization=0.0, random_flip=False, ema_decay=0.9,
                              sn_every_call=every_call)
  expected = state.batch_stats
  x = jnp.ones((2, 4))
  for _ in range(k + 2 if every_call else 1):
    _, mutated = model.apply({"params": state.params, "batch_stats": expected}, x,
                             update_stats=True, mutable=["batch_stats"])
    expected = mutated["batch_stats"]
  new_state, metrics = jax.jit(step)(state, jax.random.normal(jax.random.key(1), (6, 4)),
                                     jax.random.key(2))
  assert np.isfinite(float(metrics["loss"]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               new_state.batch_stats, expected)
