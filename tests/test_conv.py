"""The package's convolution equals jax.lax.conv_general_dilated, values and gradients, on each of
its paths: the custom input gradient, batch chunks on CPU, the kernel gradient as a channels-last
convolution, 1×1 convolutions as matrix products."""

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
    ((6, 8, 8, 4), (1, 1, 4, 5), (2, 2), "VALID", None, None, ("NHWC", "HWIO", "NHWC")),
    ((6, 7, 5, 4), (1, 1, 4, 3), (1, 1), "SAME", None, None, ("NHWC", "HWIO", "NHWC")),
    ((6, 9, 9, 3), (3, 3, 3, 4), (2, 2), "SAME", None, (2, 2), ("NHWC", "HWIO", "NHWC")),
    ((6, 5, 3), (3, 3, 2), (1,), "SAME", None, None, ("NWC", "WIO", "NWC")),
]


@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_match_lax(case, monkeypatch):
  # A few examples per call: the batch runs in chunks, as on a one-device CPU (the rest of the
  # suite runs on four devices, whole batches).
  monkeypatch.setattr(conv, "_chunks_batches", lambda: True)
  monkeypatch.setattr(conv, "KERNEL_GRAD_ROWS_PER_CALL", 20)
  x_shape, k_shape, strides, padding, lhs_dil, rhs_dil, dims = case
  x = jax.random.normal(jax.random.key(0), x_shape)
  k = jax.random.normal(jax.random.key(1), k_shape)
  def run(fn):
    f = lambda x, k: fn(x, k, strides, padding, lhs_dil, rhs_dil, dims)
    out, vjp = jax.vjp(f, x, k)
    return (out, *vjp(jnp.cos(out)))
  for ours, ref in zip(run(conv.conv_general_dilated), run(jax.lax.conv_general_dilated)):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_batch_chunks_divide_the_batch_within_the_rows():
  assert conv._batch_chunk(64, 32 * 32, 4096) == 4  # 4 × 1024 rows
  assert conv._batch_chunk(64, 4 * 4, 4096) == 64  # all fit
  assert conv._batch_chunk(12, 1000, 4096) == 4  # 5 would fit, but 4 divides 12
  assert conv._batch_chunk(7, 5000, 4096) == 1  # one example exceeds the rows: one at a time


def test_kernel_gradient_inside_a_loop_matches(monkeypatch):
  """The chunked kernel gradient inside a lax.scan (a training step inside a user's loop)."""
  monkeypatch.setattr(conv, "_chunks_batches", lambda: True)
  monkeypatch.setattr(conv, "KERNEL_GRAD_ROWS_PER_CALL", 40)
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 3))
  k = jax.random.normal(jax.random.key(1), (3, 3, 3, 2))
  def grads(fn):
    loss = lambda kk, xx: jnp.sum(jnp.sin(fn(xx, kk, (1, 1), "SAME", None, None,
                                            ("NHWC", "HWIO", "NHWC"))))
    step = lambda kk, _: (kk - 0.1 * jax.grad(loss)(kk, x), None)
    return jax.jit(lambda kk: jax.lax.scan(step, kk, length=3)[0])(k)
  np.testing.assert_allclose(grads(conv.conv_general_dilated), grads(jax.lax.conv_general_dilated),
                             rtol=1e-5, atol=1e-5)


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
  assert flows.auto_unroll(plain, x, 5) is True
  assert flows.auto_unroll(ours, x, 5) == 1
  run = lambda potential: flows.flow(potential, x, jax.random.key(1), num_steps=5,
                                     step_size=0.1, noise_scale=0.1)
  np.testing.assert_allclose(run(ours), run(plain), rtol=1e-5, atol=1e-6)
