"""The loop-friendly convolution equals jax.lax.conv_general_dilated, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdrl_jax import conv, flows

CASES = [  # (input shape, kernel shape, strides, padding, lhs_dilation, rhs_dilation, dims)
    ((2, 9, 9, 3), (3, 3, 3, 5), (1, 1), "SAME", None, None, ("NHWC", "HWIO", "NHWC")),
    ((2, 9, 9, 3), (3, 3, 3, 5), (2, 2), "SAME", None, None, ("NHWC", "HWIO", "NHWC")),
    ((2, 8, 8, 3), (3, 3, 3, 5), (2, 2), "VALID", None, None, ("NHWC", "HWIO", "NHWC")),
    ((2, 8, 7, 3), (3, 2, 3, 4), (2, 1), ((1, 2), (0, 1)), None, (2, 1), ("NHWC", "HWIO", "NHWC")),
    ((2, 3, 8, 8), (4, 3, 3, 3), (1, 2), "SAME", (1, 1), (1, 1), ("NCHW", "OIHW", "NCHW")),
    ((2, 6, 6, 3), (2, 2, 3, 4), (1, 1), ((0, 1), (1, 0)), (2, 2), None, ("NHWC", "HWIO", "NHWC")),
]


@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_match_lax(case):
  x_shape, k_shape, strides, padding, lhs_dil, rhs_dil, dims = case
  x = jax.random.normal(jax.random.key(0), x_shape)
  k = jax.random.normal(jax.random.key(1), k_shape)
  def run(fn):
    f = lambda x, k: fn(x, k, strides, padding, lhs_dil, rhs_dil, dims)
    out, vjp = jax.vjp(f, x, k)
    return (out, *vjp(jnp.cos(out)))
  for ours, ref in zip(run(conv.conv_general_dilated), run(jax.lax.conv_general_dilated)):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


class Net(nn.Module):
  fast: bool

  @nn.compact
  def __call__(self, x):
    kw = {"conv_general_dilated": conv.conv_general_dilated} if self.fast else {}
    x = nn.leaky_relu(nn.Conv(4, (3, 3), strides=2, use_bias=False, **kw)(x), 0.2)
    return nn.Dense(1)(x.mean(axis=(1, 2)))[:, 0]


def test_flow_keeps_the_loop_only_for_the_loop_friendly_conv():
  x = jnp.ones((2, 8, 8, 3))
  params = Net(False).init(jax.random.key(0), x)
  plain = lambda y: Net(False).apply(params, y)
  ours = lambda y: Net(True).apply(params, y)
  assert flows._auto_unroll(plain, x, 5) is True
  assert flows._auto_unroll(ours, x, 5) == 1
  run = lambda potential: flows.flow(potential, x, jax.random.key(1), num_steps=5,
                                     step_size=0.1, noise_scale=0.1)
  np.testing.assert_allclose(run(ours), run(plain), rtol=1e-5, atol=1e-6)
