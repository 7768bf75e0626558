"""byzjax.conv: the im2col weight gradient against a NumPy loop oracle."""

import itertools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from byzjax import conv
from byzjax import models
from byzjax.simulation import loop

DN = ("NHWC", "HWIO", "NHWC")


def _numpy_weight_grad(x, g, kernel_shape, strides, pads, dilation):
  """dW[k, i, o] = sum_{n, p} xpad[n, s p + d k, i] g[n, p, o] (loops)."""
  x = np.pad(x, [(0, 0)] + list(pads) + [(0, 0)])
  kh, kw, ci, co = kernel_shape
  out = np.zeros(kernel_shape, np.float64)
  n, oh, ow, _ = g.shape
  for a, b in itertools.product(range(kh), range(kw)):
    for p, q in itertools.product(range(oh), range(ow)):
      row = strides[0] * p + dilation[0] * a
      col = strides[1] * q + dilation[1] * b
      # [n, ci] x [n, co] summed over n.
      out[a, b] += x[:, row, col, :].T.astype(np.float64) @ g[:, p, q, :]
  return out


@pytest.mark.parametrize("strides,padding,dilation", [
    ((1, 1), "VALID", (1, 1)),
    ((2, 1), "SAME", (1, 2)),
])
def test_weight_and_input_gradients_match_numpy_and_lax(strides, padding,
                                                        dilation):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 7, 8, 2)).astype(np.float32)
  w = rng.standard_normal((3, 2, 2, 4)).astype(np.float32)

  def f(conv_fn, x, w):
    return conv_fn(x, w, strides, padding, rhs_dilation=dilation,
                   dimension_numbers=DN)

  y = f(conv.conv_general_dilated, x, w)
  np.testing.assert_allclose(y, f(lax.conv_general_dilated, x, w),
                             rtol=1e-6, atol=1e-6)
  g = rng.standard_normal(y.shape).astype(np.float32)
  dx, dw = jax.vjp(lambda a, b: f(conv.conv_general_dilated, a, b), x, w)[1](g)
  ref_dx, _ = jax.vjp(lambda a, b: f(lax.conv_general_dilated, a, b), x, w
                      )[1](g)
  dilated = [(k - 1) * d + 1 for k, d in zip(w.shape[:2], dilation)]
  pads = lax.padtype_to_pads(x.shape[1:3], dilated, strides, padding)
  np.testing.assert_allclose(
      dw, _numpy_weight_grad(x, g, w.shape, strides, pads, dilation),
      rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)


class _TinyCNN(nn.Module):
  conv_fn: object = lax.conv_general_dilated

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(3, (3, 3), padding="VALID", conv_general_dilated=self.conv_fn)(x)
    x = nn.relu(nn.max_pool(x, (2, 2), strides=(2, 2)))
    x = nn.Conv(4, (2, 2), strides=(2, 2), padding="SAME",
                conv_general_dilated=self.conv_fn)(x)
    return nn.Dense(5)(x.reshape(x.shape[0], -1))


def test_per_worker_strategies_match_a_loop_over_workers():
  """Every per_worker_grads strategy, fast conv, equals a per-worker loop of
  jax.grad with the native convolution (the oracle)."""
  r, b = 5, 3
  key = jax.random.key(0)
  x = jax.random.normal(key, (r, b, 10, 10, 1))
  y = jnp.arange(r * b).reshape(r, b) % 5
  fast = models.make_classifier(_TinyCNN(conv.conv_general_dilated))
  native = models.make_classifier(_TinyCNN())
  params = fast.init(key, x[0])
  oracle = [jax.grad(native.loss)(params, (x[i], y[i])) for i in range(r)]
  oracle = jax.tree.map(lambda *g: np.stack(g), *oracle)
  for strategy in loop.PER_WORKER_GRADS:
    losses, grads = jax.jit(
        lambda p, bt, s=strategy: loop.per_worker_value_and_grad(
            fast.loss, p, bt, strategy=s, chunk=2))(params, (x, y))
    assert losses.shape == (r,)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(oracle)):
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6,
                                 err_msg=strategy)


def test_bad_strategy_is_rejected():
  with pytest.raises(ValueError, match="per_worker_grads"):
    loop.Simulation(loss_fn=lambda p, b: 0.0, server_tx=None, num_workers=2,
                    batch_size=1, per_worker_grads="stacked")
