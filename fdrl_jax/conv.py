"""A convolution whose input gradient stays fast inside loops on XLA:CPU.

The flow differentiates the estimator with respect to its input at every step, inside a
``lax.scan``. For a convolution, JAX's transpose rule feeds the *reversed* kernel to a convolution
with swapped input/output feature dimensions. In straight-line code XLA:CPU re-lays the kernel out
physically and runs its fast convolution; inside a while-loop body it does not, and runs a
several-times slower path (jax-ml/jax#12868). ``conv_general_dilated`` below computes the same
function with a custom VJP: the reversed, I/O-swapped kernel is materialised behind an
``optimization_barrier`` and used as an ordinary kernel, which takes the fast path in and out of
loops. Values and gradients are identical to ``jax.lax.conv_general_dilated``.

Pass it to Flax: ``nn.Conv(..., conv_general_dilated=fdrl_jax.conv.conv_general_dilated)``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def _dilate(size: int, dilation: int) -> int:
  return 0 if size == 0 else 1 + dilation * (size - 1)


def _input_grad_padding(in_size, kernel_size, stride, out_size, pad_lo, lhs_dilation,
                        rhs_dilation) -> tuple[int, int]:
  """Padding of the input-gradient convolution along one spatial dimension."""
  kernel = _dilate(kernel_size, rhs_dilation)
  before = kernel - pad_lo - 1
  after = _dilate(in_size, lhs_dilation) + kernel - 1 - _dilate(out_size, stride) - before
  return before, after


def _flip_and_swap(kernel: jax.Array, rhs_spec: Sequence[int]) -> jax.Array:
  """Reverses the spatial dimensions and swaps the in/out feature dimensions of a kernel."""
  axes = list(range(kernel.ndim))
  axes[rhs_spec[0]], axes[rhs_spec[1]] = axes[rhs_spec[1]], axes[rhs_spec[0]]
  return jnp.flip(kernel, tuple(rhs_spec[2:])).transpose(axes)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """``jax.lax.conv_general_dilated`` with a loop-friendly input gradient (see module docstring).

  Grouped convolutions fall back to the plain operation.
  """
  kwargs = dict(precision=precision, preferred_element_type=preferred_element_type)
  plain = lambda x, k: jax.lax.conv_general_dilated(
      x, k, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, batch_group_count, **kwargs)
  if feature_group_count != 1 or batch_group_count != 1:
    return plain(lhs, rhs)

  dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  lhs_spec, rhs_spec, out_spec = dn
  ndim = len(lhs_spec) - 2
  strides = tuple(window_strides)
  lhs_dil = tuple(lhs_dilation or (1,) * ndim)
  rhs_dil = tuple(rhs_dilation or (1,) * ndim)
  in_sizes = [lhs.shape[d] for d in lhs_spec[2:]]
  k_sizes = [rhs.shape[d] for d in rhs_spec[2:]]
  if isinstance(padding, str):
    dilated_in = [_dilate(s, d) for s, d in zip(in_sizes, lhs_dil)]
    dilated_k = [_dilate(s, d) for s, d in zip(k_sizes, rhs_dil)]
    padding = jax.lax.padtype_to_pads(dilated_in, dilated_k, strides, padding)
  padding = tuple(tuple(p) for p in padding)

  @jax.custom_vjp
  def conv(x, k):
    return plain(x, k)

  def forward(x, k):
    return plain(x, k), (x, k)

  def backward(res, g):
    x, k = res
    out_sizes = [g.shape[d] for d in out_spec[2:]]
    pads = [_input_grad_padding(i, ks, s, o, p[0], ld, rd) for i, ks, s, o, p, ld, rd in zip(
        in_sizes, k_sizes, strides, out_sizes, padding, lhs_dil, rhs_dil)]
    flipped = jax.lax.optimization_barrier(_flip_and_swap(k, rhs_spec))
    grad_x = jax.lax.conv_general_dilated(
        g, flipped, window_strides=lhs_dil, padding=pads, lhs_dilation=strides,
        rhs_dilation=rhs_dil,
        dimension_numbers=jax.lax.ConvDimensionNumbers(out_spec, rhs_spec, lhs_spec), **kwargs)
    grad_k = jax.vjp(lambda kk: plain(x, kk), k)[1](g)[0]
    return grad_x.astype(x.dtype), grad_k

  conv.defvjp(forward, backward)
  return conv(lhs, rhs)

