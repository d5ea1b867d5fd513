"""A convolution that runs fast on XLA:CPU, in and out of loops, with gradients.

``conv_general_dilated`` below computes exactly ``jax.lax.conv_general_dilated`` (values and
gradients, up to float rounding); pass it to Flax:
``nn.Conv(..., conv_general_dilated=fdrl_jax.conv.conv_general_dilated)``. On GPU and TPU it is the
plain operation, its input gradient aside. On CPU it avoids three slow paths of XLA:CPU, measured
on the ResNet32 estimator's layers (experiments/README.md, "The ResNet32 estimator"):

* **Input gradient inside loops.** The flow differentiates the estimator with respect to its input
  at every step, inside a ``lax.scan``. JAX's transpose rule feeds the *reversed* kernel to a
  convolution with swapped input/output feature dimensions; in straight-line code XLA:CPU re-lays
  that kernel out and runs its fast convolution, inside a while-loop body it does not and runs a
  several-times slower path (jax-ml/jax#12868). Here the reversed, I/O-swapped kernel is
  materialised behind an ``optimization_barrier`` and used as an ordinary kernel (every backend).
* **Kernel gradient.** JAX's transpose rule computes it as a convolution whose batch and feature
  dimensions are swapped, which XLA:CPU runs slowly inside loop bodies (as the input gradient)
  and, in any code, ever more slowly as the rows (examples × output positions) grow: 4× slower
  per example at B = 64 than at B = 8 on the ResNet32's 32² layers. Here it is one ordinary
  channels-last convolution of explicitly transposed operands (on CPU), run over batch
  chunks of at most ``KERNEL_GRAD_ROWS_PER_CALL`` rows, summed by a ``lax.scan`` (only where the
  process has one device: a sharded batch is left whole). The forward pass and the input
  gradient are not chunked: chunking them made the ResNet32 flow slower.
* **1×1 convolutions** (the strided shortcuts of the ResNets) are a strided slice and a matrix
  product; XLA:CPU's convolution runs them 2–5× slower than its matrix product.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

# Rows (examples × output positions) per kernel-gradient convolution on CPU; module docstring.
KERNEL_GRAD_ROWS_PER_CALL = 4096


def _dilate(size: int, dilation: int) -> int:
  return 0 if size == 0 else 1 + dilation * (size - 1)


def _input_grad_padding(
  in_size, kernel_size, stride, out_size, pad_lo, lhs_dilation, rhs_dilation
) -> tuple[int, int]:
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


def _chunks_batches() -> bool:
  """Whether the CPU kernel gradient runs over batch chunks: where the process has one device (a
  batch sharded over several is left whole)."""
  return jax.local_device_count() == 1


def _batch_chunk(batch: int, rows_per_example: int, rows_per_call: int) -> int:
  """Examples per convolution call: the largest divisor of ``batch`` whose rows stay within
  ``rows_per_call`` (at least one example)."""
  fits = max(1, rows_per_call // max(rows_per_example, 1))
  return max(d for d in range(1, min(batch, fits) + 1) if batch % d == 0)


def _sum_chunks(fn: Callable, chunk: int, *arrays: jax.Array) -> jax.Array:
  """Σ over chunks of ``chunk`` examples of ``fn(*chunk_arrays)``: ``fn(*arrays)`` for a function
  that sums over the examples (a kernel gradient)."""
  n = arrays[0].shape[0] // chunk
  if n == 1:
    return fn(*arrays)
  parts = tuple(a.reshape(n, chunk, *a.shape[1:]) for a in arrays)
  total = jax.eval_shape(fn, *(p[0] for p in parts))
  return jax.lax.scan(
    lambda acc, a: (acc + fn(*a), None), jnp.zeros(total.shape, total.dtype), parts
  )[0]


def _channels_last(n: int) -> jax.lax.ConvDimensionNumbers:
  """(batch, spatial..., feature) inputs and outputs, (spatial..., in, out) kernels: Flax's."""
  spec = (0, n - 1, *range(1, n - 1))
  return jax.lax.ConvDimensionNumbers(spec, (n - 1, n - 2, *range(n - 2)), spec)


def _kernel_grad_channels_last(x, g, k_sizes, strides, padding, rhs_dil, **kwargs):
  """The kernel gradient of a channels-last convolution (no input dilation), as one ordinary
  channels-last convolution of explicitly transposed operands: features as the batch, the batch
  as the contracted features, g as the kernel. XLA:CPU runs it fast inside loop bodies too (the
  form JAX's transpose rule emits is slow there, as the input gradient's)."""
  n = x.ndim
  spatial = tuple(range(1, n - 1))
  lhs = jax.lax.optimization_barrier(x.transpose(n - 1, *spatial, 0))
  rhs = jax.lax.optimization_barrier(g.transpose(*spatial, 0, n - 1))
  pads = [
    (p[0], (k - 1) * rd + s * (o - 1) + 1 - i - p[0])
    for i, o, k, s, p, rd in zip(x.shape[1:-1], g.shape[1:-1], k_sizes, strides, padding, rhs_dil)
  ]
  out = jax.lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides=rhs_dil,
    padding=pads,
    rhs_dilation=strides,
    dimension_numbers=_channels_last(n),
    **kwargs,
  )
  return out.transpose(*spatial, 0, n - 1)


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
):
  """``jax.lax.conv_general_dilated``, fast on XLA:CPU in and out of loops (module docstring).

  Grouped convolutions fall back to the plain operation.
  """
  kwargs = {"precision": precision, "preferred_element_type": preferred_element_type}
  plain = lambda x, k: jax.lax.conv_general_dilated(
    x,
    k,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    **kwargs,
  )
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

  # The CPU paths below take channels-last layouts without input dilation (Flax's convolutions).
  cpu_path = (
    jax.default_backend() == "cpu"
    and dn == _channels_last(ndim + 2)
    and all(d == 1 for d in lhs_dil)
  )
  if cpu_path and all(k == 1 for k in k_sizes) and all(p == (0, 0) for p in padding):
    picked = lhs[(slice(None), *(slice(None, None, s) for s in strides))]  # 1×1: a matmul
    return jax.lax.dot_general(
      picked, rhs.reshape(rhs.shape[-2:]), (((picked.ndim - 1,), (0,)), ((), ())), **kwargs
    )

  def forward(x, k):
    return plain(x, k), (x, k)

  def backward(res, g):
    x, k = res
    out_sizes = [g.shape[d] for d in out_spec[2:]]
    pads = [
      _input_grad_padding(i, ks, s, o, p[0], ld, rd)
      for i, ks, s, o, p, ld, rd in zip(
        in_sizes, k_sizes, strides, out_sizes, padding, lhs_dil, rhs_dil
      )
    ]
    flipped = jax.lax.optimization_barrier(_flip_and_swap(k, rhs_spec))
    grad_x = jax.lax.conv_general_dilated(
      g,
      flipped,
      window_strides=lhs_dil,
      padding=pads,
      lhs_dilation=strides,
      rhs_dilation=rhs_dil,
      dimension_numbers=jax.lax.ConvDimensionNumbers(out_spec, rhs_spec, lhs_spec),
      **kwargs,
    )
    if cpu_path:
      kernel_grad = lambda xc, gc: _kernel_grad_channels_last(
        xc, gc, k_sizes, strides, padding, rhs_dil, **kwargs
      ).astype(k.dtype)
      chunk = (
        _batch_chunk(x.shape[0], math.prod(out_sizes), KERNEL_GRAD_ROWS_PER_CALL)
        if _chunks_batches()
        else x.shape[0]
      )
      grad_k = _sum_chunks(kernel_grad, chunk, x, g)
    else:
      grad_k = jax.vjp(lambda kk: plain(x, kk), k)[1](g)[0]
    return grad_x.astype(x.dtype), grad_k

  conv = jax.custom_vjp(plain)
  conv.defvjp(forward, backward)
  return conv(lhs, rhs)
