"""Tests for the Flax models and the loss helpers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byzjax import models

KEY = jax.random.key(0)
IMAGES = jnp.zeros((2, 28, 28, 1))


def _np_params(model, x, seed=0, scale=0.3):
  """Random params shaped like model.init's, drawn with NumPy.

  Compiling Flax's initializers costs seconds per model on a loaded CPU;
  the forward-pass tests only need some parameters of the right shapes.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, KEY, x)["params"]
  return jax.tree.map(
      lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shapes)


def _resnet_count(stage_sizes, widths, in_ch=1, classes=10, norm=True):
  """Parameter count of models.ResNet, layer by layer."""
  def conv(k, cin, cout):  # bias only without GroupNorm; GN has 2 per channel
    return k * k * cin * cout + (2 * cout if norm else cout)
  total = conv(3, in_ch, widths[0])
  cin = widths[0]
  for stage, (n, w) in enumerate(zip(stage_sizes, widths)):
    for block in range(n):
      total += conv(3, cin, w) + conv(3, w, w)
      if cin != w or (stage > 0 and block == 0):
        total += conv(1, cin, w)
      cin = w
  return total + cin * classes + classes


@pytest.mark.parametrize("model,count", [
    (models.Linear(10), 784 * 10 + 10),
    (models.Linear(1, use_bias=False), 784),
    (models.MLP(), 784 * 1000 + 1000 + 1000 * 10 + 10),
    (models.LeNet(), 1664 + 102_464 + 1_049_600 + 10_250),
    (models.ResNet(), _resnet_count((1, 1, 1), (16, 32, 64))),
    (models.ResNet(stage_sizes=(3, 3, 3)),
     _resnet_count((3, 3, 3), (16, 32, 64))),
    (models.ResNet(num_groups=None), _resnet_count((1, 1, 1), (16, 32, 64),
                                                   norm=False)),
])
def test_parameter_counts_and_output_shapes(model, count):
  # Shapes only (no compilation): jax.eval_shape traces init and apply.
  variables = jax.eval_shape(model.init, KEY, IMAGES)
  assert set(variables) == {"params"}
  assert models.num_params(variables["params"]) == count
  out = jax.eval_shape(model.apply, variables, IMAGES)
  assert out.shape == (2, model.features if isinstance(model, models.Linear)
                       else 10)


def test_documented_counts():
  for model, count in ((models.LeNet(), 1_163_978), (models.MLP(), 795_010)):
    shapes = jax.eval_shape(model.init, KEY, IMAGES)
    assert models.num_params(shapes) == count
  assert _resnet_count((1, 1, 1), (16, 32, 64)) == 77_754
  assert _resnet_count((3, 3, 3), (16, 32, 64)) == 272_186


# -- NumPy oracles for the forward passes --------------------------------------


def _np_conv_valid(x, kernel, bias):
  """Cross-correlation, NHWC input, HWIO kernel, no padding."""
  kh, kw = kernel.shape[:2]
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  out = np.zeros((x.shape[0], h, w, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      out += np.einsum("bhwc,co->bhwo", x[:, i:i + h, j:j + w], kernel[i, j])
  return out + bias


def _np_maxpool2(x):
  b, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(
      b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _np_lenet(p, x):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  relu = lambda a: np.maximum(a, 0)
  x = relu(_np_maxpool2(_np_conv_valid(x, p["Conv_0"]["kernel"],
                                       p["Conv_0"]["bias"])))
  x = relu(_np_maxpool2(_np_conv_valid(x, p["Conv_1"]["kernel"],
                                       p["Conv_1"]["bias"])))
  x = x.reshape(x.shape[0], -1)
  x = relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
  return x @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def test_lenet_matches_numpy():
  model = models.LeNet(channels=(4, 6), hidden=12)  # same graph, smaller
  x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)
  params = _np_params(model, x)
  assert params["Conv_0"]["kernel"].shape == (5, 5, 1, 4)
  assert params["Dense_0"]["kernel"].shape == (4 * 4 * 6, 12)
  got = jax.jit(model.apply)({"params": params}, x)
  np.testing.assert_allclose(got, _np_lenet(params, x.astype(np.float64)),
                             rtol=1e-4, atol=1e-4)
  # Grey images without a channel axis are accepted.
  np.testing.assert_allclose(
      jax.jit(model.apply)({"params": params}, x[..., 0]), got, rtol=1e-6,
      atol=1e-6)


def test_mlp_matches_numpy():
  model = models.MLP(num_classes=3, hidden=(7, 5))
  x = np.random.default_rng(1).normal(size=(4, 2, 3)).astype(np.float32)
  p = _np_params(model, x)
  h = x.reshape(4, -1).astype(np.float64)
  for name in ("Dense_0", "Dense_1"):
    h = np.maximum(h @ np.asarray(p[name]["kernel"]) + p[name]["bias"], 0)
  want = h @ np.asarray(p["Dense_2"]["kernel"]) + p["Dense_2"]["bias"]
  np.testing.assert_allclose(model.apply({"params": p}, x), want, rtol=1e-5,
                             atol=1e-5)


def test_resnet_groupnorm_is_per_sample_and_scale_invariant():
  model = models.ResNet(widths=(8, 8, 16), num_groups=4)
  x = jax.random.uniform(jax.random.key(1), (3, 12, 12, 1))
  params = {"params": _np_params(model, x)}
  apply = jax.jit(model.apply)
  out = apply(params, x)
  # No batch statistics: a sample's output does not depend on its batch.
  np.testing.assert_allclose(apply(params, x[::-1])[::-1], out, rtol=1e-4,
                             atol=1e-5)
  # The stem conv has no bias and is followed by GroupNorm: scale-invariant.
  np.testing.assert_allclose(apply(params, 5.0 * x), out, rtol=1e-3,
                             atol=1e-3)
  # Without normalization the network is not scale-invariant.
  plain = models.ResNet(widths=(8, 8, 16), num_groups=None)
  pp = {"params": _np_params(plain, x)}
  papply = jax.jit(plain.apply)
  assert not np.allclose(papply(pp, 5.0 * x), papply(pp, x), rtol=1e-2,
                         atol=1e-2)
  with pytest.raises(ValueError, match="stage_sizes"):
    models.ResNet(stage_sizes=(1, 1)).init(KEY, x)


# -- losses --------------------------------------------------------------------


def _np_cross_entropy(logits, labels):
  z = logits.astype(np.float64)
  z = z - z.max(axis=1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  return -logp[np.arange(len(labels)), labels].mean()


@pytest.mark.parametrize("jit", [False, True])
def test_loss_helpers_match_numpy(jit):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 4)).astype(np.float32) * 3
  logits[0] += 1e4  # a huge common shift must not overflow
  labels = rng.integers(0, 4, size=6).astype(np.int32)
  ce, mse, acc = (jax.jit(f) if jit else f for f in (
      models.softmax_cross_entropy, models.mean_squared_error,
      models.accuracy))
  np.testing.assert_allclose(ce(logits, labels),
                             _np_cross_entropy(logits, labels), rtol=1e-5)
  np.testing.assert_allclose(acc(logits, labels),
                             (logits.argmax(1) == labels).mean(), rtol=1e-6)
  pred, target = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
  np.testing.assert_allclose(mse(pred, target), ((pred - target) ** 2).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(mse(pred[:, :1], target[:, 0]),
                             ((pred[:, 0] - target[:, 0]) ** 2).mean(),
                             rtol=1e-5)


def test_mse_shape_mismatch():
  with pytest.raises(ValueError, match="shape"):
    models.mean_squared_error(jnp.zeros((3, 2)), jnp.zeros((3,)))


def test_classifier_loss_weight_decay_and_grad():
  model = models.MLP(num_classes=3, hidden=(5,))
  x = jax.random.normal(jax.random.key(1), (8, 4))
  y = jnp.arange(8) % 3
  plain = models.make_classifier(model)
  decayed = models.make_classifier(model, weight_decay=0.1)
  params = plain.init(KEY, x)

  @jax.jit  # one compilation for everything below
  def evaluate(params):
    batch = (x, y)
    return (plain.apply(params, x), plain.loss(params, batch),
            decayed.loss(params, batch), plain.accuracy(params, batch),
            jax.grad(plain.loss)(params, batch),
            jax.grad(decayed.loss)(params, batch))

  logits, loss, loss_wd, acc, g_plain, g_decay = evaluate(params)
  logits = np.asarray(logits)
  np.testing.assert_allclose(loss, _np_cross_entropy(logits, np.asarray(y)),
                             rtol=1e-5)
  np.testing.assert_allclose(acc, (logits.argmax(1) == np.asarray(y)).mean())
  sq = sum(float(np.sum(np.asarray(p, np.float64) ** 2))
           for p in jax.tree.leaves(params))
  np.testing.assert_allclose(loss_wd - loss, 0.05 * sq, rtol=1e-4)
  # The decay adds exactly weight_decay * theta to the gradient.
  jax.tree.map(lambda a, b, p: np.testing.assert_allclose(
      b - a, 0.1 * p, rtol=1e-4, atol=1e-6), g_plain, g_decay, params)


@pytest.mark.slow  # several compilations; keeps the default suite under 5 min
def test_per_worker_gradients_under_vmap():
  """The simulator's use: vmap(grad(loss)) over stacked worker batches."""
  fns = models.make_classifier(models.LeNet(channels=(2, 3), hidden=8))
  x = jax.random.uniform(jax.random.key(2), (3, 4, 16, 16, 1))  # [R, b, ...]
  y = jnp.array([[0, 1, 2, 3]] * 3)
  params = _np_params(models.LeNet(channels=(2, 3), hidden=8), x[0])

  @jax.jit
  def stacked_and_looped(params):
    grad = jax.grad(fns.loss)
    stacked = jax.vmap(grad, in_axes=(None, 0))(params, (x, y))
    return stacked, [grad(params, (x[r], y[r])) for r in range(3)]

  grads, looped = stacked_and_looped(params)
  for r, one in enumerate(looped):
    jax.tree.map(lambda g, o: np.testing.assert_allclose(
        g[r], o, rtol=1e-4, atol=1e-6), grads, one)


def test_regressor_on_linear_data():
  a = jax.random.normal(jax.random.key(3), (50, 6))
  w = jnp.arange(6.0)
  fns = models.make_regressor(models.Linear(1, use_bias=False))
  assert fns.accuracy is None
  params = fns.init(KEY, a)
  assert jax.tree.map(jnp.shape, params) == {"Dense_0": {"kernel": (6, 1)}}
  params = {"Dense_0": {"kernel": w[:, None]}}
  np.testing.assert_allclose(fns.loss(params, (a, a @ w)), 0.0, atol=1e-8)
  np.testing.assert_allclose(fns.loss(params, (a, a @ w + 2.0)), 4.0,
                             rtol=1e-5)


def test_bad_weight_decay_and_stateful_model():
  with pytest.raises(ValueError, match="weight_decay"):
    models.make_classifier(models.Linear(3), weight_decay=-0.1)

  class WithBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.BatchNorm(use_running_average=False)(nn.Dense(3)(x))

  fns = models.make_classifier(WithBatchNorm())
  with pytest.raises(ValueError, match="non-parameter"):
    fns.init(KEY, jnp.zeros((2, 4)))
