"""A convolution whose weight gradient stays fast under ``vmap`` on XLA:CPU.

The simulator computes per-worker gradients as ``vmap(grad(loss))`` over the
workers' batches with the parameters shared. For a convolution
:math:`y = x \\star w` that is cheap for the forward pass and for the input
gradient (the worker axis folds into the image batch: one large convolution),
but the weight gradient

.. math::
  \\frac{\\partial L_r}{\\partial w_{k, i, o}}
    = \\sum_{n, p} x^{(r)}_{n, p + k, i} \\, g^{(r)}_{n, p, o}

differs per worker :math:`r`, and ``vmap`` turns it into a *grouped*
convolution (``feature_group_count = R``), for which XLA:CPU has no fast
kernel: a LeNet step at 32 workers x 64 images spent most of its 5.7 s there.

:func:`conv_general_dilated` is :func:`jax.lax.conv_general_dilated` with a
custom VJP whose weight gradient is written as im2col and one matrix
product: the patches :math:`P_{(n,p),(k,i)} = x_{n, s p + d k, i}` (``s``
strides, ``d`` kernel dilation, after padding) are gathered by
``prod(kernel_size)`` strided slices and the gradient is
:math:`P^\\top G`. Under ``vmap`` this is a batched matrix product with the
worker axis as its batch dimension, which XLA:CPU runs at BLAS speed. The
forward pass and the input gradient are unchanged. On other backends (GPU,
TPU), whose grouped convolutions are fast, the native gradient is used
(chosen at lowering by :func:`jax.lax.platform_dependent`).

Use it in a Flax model as ``nn.Conv(..., conv_general_dilated=
byzjax.conv.conv_general_dilated)`` (:class:`byzjax.models.LeNet` and
:class:`byzjax.models.ResNet` do). Convolutions with input dilation or
feature/batch groups fall back to the native gradient.

References:
  Chellapilla, Puri & Simard, `High Performance Convolutional Neural
  Networks for Document Processing
  <https://inria.hal.science/inria-00112631>`_, 2006 (convolution as
  unrolled patches times a matrix).
"""

import functools
import math
from typing import Any, Sequence

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# Which weight gradient to use on CPU: "im2col" (default) or "native" (the
# XLA convolution). Module-level so that benchmarks can compare them.
CPU_WEIGHT_GRAD = "im2col"


def _dims(dimension_numbers, ndim):
  dn = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
  return dn


def _supported(lhs, dn, lhs_dilation, feature_group_count, batch_group_count):
  if feature_group_count != 1 or batch_group_count != 1:
    return False
  if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
    return False
  n = lhs.ndim
  # Channels-last input/output and spatial-first kernel (Flax's layout).
  return (dn.lhs_spec == (0, n - 1) + tuple(range(1, n - 1))
          and dn.out_spec == dn.lhs_spec
          and dn.rhs_spec == (n - 1, n - 2) + tuple(range(n - 2)))


def _im2col_weight_grad(x, g, kernel_spatial, strides, pads, rhs_dilation,
                        precision, dtype):
  """``P^T G`` for channels-last ``x`` ``[N, *S, I]``, ``g`` ``[N, *S', O]``."""
  x = jnp.pad(x, [(0, 0)] + list(pads) + [(0, 0)])
  out_spatial = g.shape[1:-1]
  cols = []
  for offset in np.ndindex(*kernel_spatial):
    starts = [0] + [k * d for k, d in zip(offset, rhs_dilation)] + [0]
    limits = ([x.shape[0]]
              + [st + (o - 1) * s + 1 for st, o, s in
                 zip(starts[1:-1], out_spatial, strides)]
              + [x.shape[-1]])
    cols.append(lax.slice(x, starts, limits, [1] + list(strides) + [1]))
  patches = jnp.stack(cols, axis=-2)  # [N, *S', K, I]
  rows = math.prod(g.shape[:-1])
  patches = patches.reshape(rows, -1)  # feature order (kernel offset, I)
  grad = jnp.dot(patches.T, g.reshape(rows, g.shape[-1]),
                 precision=precision, preferred_element_type=dtype)
  return grad.reshape(tuple(kernel_spatial) + (x.shape[-1], g.shape[-1]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(lhs, rhs, strides, pads, rhs_dilation, dimension_numbers,
          precision):
  return lax.conv_general_dilated(
      lhs, rhs, strides, pads, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, precision=precision)


def _conv_fwd(lhs, rhs, strides, pads, rhs_dilation, dimension_numbers,
              precision):
  out = _conv(lhs, rhs, strides, pads, rhs_dilation, dimension_numbers,
              precision)
  return out, (lhs, rhs)


def _conv_bwd(strides, pads, rhs_dilation, dimension_numbers, precision, res,
              g):
  lhs, rhs = res

  def native(lhs, rhs, g):
    _, vjp = jax.vjp(
        lambda a, b: lax.conv_general_dilated(
            a, b, strides, pads, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, precision=precision),
        lhs, rhs)
    return vjp(g)[1]

  def im2col(lhs, rhs, g):
    return _im2col_weight_grad(lhs, g, rhs.shape[:-2], strides, pads,
                               rhs_dilation, precision, rhs.dtype)

  _, vjp_lhs = jax.vjp(
      lambda a: lax.conv_general_dilated(
          a, rhs, strides, pads, rhs_dilation=rhs_dilation,
          dimension_numbers=dimension_numbers, precision=precision), lhs)
  (d_lhs,) = vjp_lhs(g)
  cpu = im2col if CPU_WEIGHT_GRAD == "im2col" else native
  d_rhs = lax.platform_dependent(lhs, rhs, g, cpu=cpu, default=native)
  return d_lhs, d_rhs.astype(rhs.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array,
                         window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None,
                         feature_group_count: int = 1,
                         batch_group_count: int = 1,
                         precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """:func:`jax.lax.conv_general_dilated` with an im2col weight gradient.

  Same arguments and the same value as the :mod:`jax.lax` function; only the
  gradient with respect to ``rhs`` (the kernel) is computed differently on
  CPU (see the module docstring). Supported layout: channels-last input and
  output with a spatial-first kernel (``("NHWC", "HWIO", "NHWC")``, Flax's);
  anything else, input dilation, or feature/batch groups use the native
  gradient.
  """
  dn = _dims(dimension_numbers, lhs.ndim)
  if (preferred_element_type is not None
      or not _supported(lhs, dn, lhs_dilation, feature_group_count,
                        batch_group_count)):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  spatial = lhs.ndim - 2
  strides = tuple(int(s) for s in window_strides)
  rhs_dilation = tuple(int(d) for d in (rhs_dilation or (1,) * spatial))
  if isinstance(padding, str):
    dilated = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:-2], rhs_dilation)]
    pads = lax.padtype_to_pads(lhs.shape[1:-1], dilated, strides, padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  return _conv(lhs, rhs, strides, pads, rhs_dilation, dn, precision)
