"""Small Flax (Linen) models and the losses the simulator trains them with.

The simulator is model-agnostic: it needs ``loss_fn(params, batch) -> scalar``
and a params pytree (DESIGN.md). :func:`make_classifier` and
:func:`make_regressor` build those, plus ``init`` and ``accuracy``, from any
stateless Linen module.

Models (inputs carry a leading batch axis; images are NHWC):

* :class:`Linear`: one dense layer on the flattened input; multinomial
  logistic regression (``features=num_classes``) or linear regression
  (``features=1, use_bias=False``).
* :class:`MLP`: one hidden layer of 1000 ReLU units by default, as in Ghosh et
  al. (§7). 795,010 parameters on 28x28 inputs with 10 classes.
* :class:`LeNet`: the LeNet-style CNN of BGMD (Acharya et al.) on
  (Fashion-)MNIST, 1,163,978 parameters on 28x28x1 inputs.
* :class:`ResNet`: a CIFAR-style ResNet-(6n+2) for small images, with
  GroupNorm instead of BatchNorm (see its docstring).

The convolutions use :func:`byzjax.conv.conv_general_dilated` (same values;
a weight gradient that stays fast under ``vmap`` on XLA:CPU).

No model has dropout or batch statistics: every model is a pure function of
``(params, x)``, which is what per-worker gradients under :func:`jax.vmap`
need.

References:
  Acharya et al., `Robust Training in High Dimensions via Block Coordinate
  Geometric Median Descent <https://arxiv.org/abs/2106.08882>`_, AISTATS 2022

  Ghosh et al., `Communication-Efficient and Byzantine-Robust Distributed
  Learning with Error Feedback <https://arxiv.org/abs/1911.09721>`_, 2021

  He et al., `Deep Residual Learning for Image Recognition
  <https://arxiv.org/abs/1512.03385>`_, CVPR 2016 (§4.2, CIFAR ResNets)

  Wu & He, `Group Normalization <https://arxiv.org/abs/1803.08494>`_, ECCV 2018
"""

import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from byzjax import _checks
from byzjax import conv

PyTree = Any
Batch = Any  # a pair (x, y), e.g. a byzjax.data.partition.Dataset


class Linear(nn.Module):
  """A dense layer on the flattened input: :math:`f(x) = W^\\top x + b`.

  Attributes:
    features: number of outputs (classes, or 1 for scalar regression).
    use_bias: whether to add the bias :math:`b`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = Linear(10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> params["params"]["Dense_0"]["kernel"].shape
    (784, 10)
  """
  features: int = 10
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.features, use_bias=self.use_bias)(x)


class MLP(nn.Module):
  """A multilayer perceptron with ReLU hidden layers on the flattened input.

  The default, one hidden layer of 1000 units, is the network of Ghosh et
  al. (§7); on 28x28 inputs with 10 classes it has
  :math:`784 \\cdot 1000 + 1000 + 1000 \\cdot 10 + 10 = 795{,}010`
  parameters.

  Attributes:
    num_classes: number of outputs.
    hidden: widths of the hidden layers.
  """
  num_classes: int = 10
  hidden: Sequence[int] = (1000,)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


class LeNet(nn.Module):
  """The LeNet-style CNN that BGMD trains on (Fashion-)MNIST.

  conv 5x5, 64 channels (valid) → 2x2 max-pool → ReLU → conv 5x5, 64
  channels (valid) → 2x2 max-pool → ReLU → dense 1024 → ReLU → dense
  ``num_classes``. On a 28x28x1 input the feature maps are 24→12→8→4, so the
  flattened features have :math:`4 \\cdot 4 \\cdot 64 = 1024` entries and the
  parameter count is

  .. math::
    (5 \\cdot 5 \\cdot 1 \\cdot 64 + 64) + (5 \\cdot 5 \\cdot 64 \\cdot 64 + 64)
    + (1024 \\cdot 1024 + 1024) + (1024 \\cdot 10 + 10)
    = 1664 + 102{,}464 + 1{,}049{,}600 + 10{,}250 = 1{,}163{,}978,

  the "1.16M parameters" of the paper. BGMD's network also applies dropout
  after the first dense layer in training; it is left out here so that the
  loss is a deterministic function of ``(params, batch)``.

  Attributes:
    num_classes: number of outputs.
    channels: channels of the two convolutions.
    hidden: width of the hidden dense layer.
  """
  num_classes: int = 10
  channels: Sequence[int] = (64, 64)
  hidden: int = 1024

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim == 3:  # [B, H, W] grey images
      x = x[..., None]
    for c in self.channels:
      x = nn.Conv(c, (5, 5), padding="VALID",
                  conv_general_dilated=conv.conv_general_dilated)(x)
      x = nn.relu(nn.max_pool(x, (2, 2), strides=(2, 2)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)


class _ResidualBlock(nn.Module):
  """Two 3x3 convolutions with a (projected when needed) identity shortcut."""
  features: int
  strides: int
  num_groups: int | None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = self.num_groups is not None

    def conv_norm(y, kernel, strides):
      y = nn.Conv(self.features, kernel, strides=strides, padding="SAME",
                  use_bias=not norm,
                  conv_general_dilated=conv.conv_general_dilated)(y)
      return nn.GroupNorm(num_groups=self.num_groups)(y) if norm else y

    y = nn.relu(conv_norm(x, (3, 3), self.strides))
    y = conv_norm(y, (3, 3), 1)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv_norm(x, (1, 1), self.strides)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """A small CIFAR-style ResNet with GroupNorm, for 28x28 or 32x32 images.

  A 3x3 stem convolution, then ``len(stage_sizes)`` stages of basic residual
  blocks (the first block of every stage after the first halves the
  resolution, with a 1x1 projection shortcut), global average pooling and a
  dense classifier: ResNet-(6n+2) of He et al. (§4.2) with
  ``stage_sizes=(n, n, n)``. The default ``(1, 1, 1)`` is ResNet-8 (77,754
  parameters on 1-channel input with 10 classes); ``(3, 3, 3)`` is ResNet-20.

  Normalization is GroupNorm (Wu & He) over ``num_groups`` channel groups, or
  none with ``num_groups=None``. BatchNorm is avoided on purpose: its running
  statistics are mutable state, and its batch statistics couple the samples of
  a batch, so per-worker gradients computed under :func:`jax.vmap` would need
  per-worker state threaded through the training loop. GroupNorm normalises
  each sample on its own and has only ordinary parameters.

  Attributes:
    num_classes: number of outputs.
    stage_sizes: residual blocks per stage.
    widths: channels of each stage (same length as ``stage_sizes``).
    num_groups: GroupNorm groups (must divide every width), or ``None``.
  """
  num_classes: int = 10
  stage_sizes: Sequence[int] = (1, 1, 1)
  widths: Sequence[int] = (16, 32, 64)
  num_groups: int | None = 8

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(
          f"stage_sizes {tuple(self.stage_sizes)} and widths "
          f"{tuple(self.widths)} must have the same length.")
    if x.ndim == 3:
      x = x[..., None]
    norm = self.num_groups is not None
    x = nn.Conv(self.widths[0], (3, 3), padding="SAME", use_bias=not norm,
                conv_general_dilated=conv.conv_general_dilated)(x)
    if norm:
      x = nn.GroupNorm(num_groups=self.num_groups)(x)
    x = nn.relu(x)
    for stage, (num_blocks, width) in enumerate(zip(self.stage_sizes,
                                                    self.widths)):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = _ResidualBlock(width, strides, self.num_groups)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy :math:`-\\frac{1}{B}\\sum_i \\log \\mathrm{softmax}(z_i)_{y_i}`.

  Args:
    logits: ``[B, C]`` unnormalised scores.
    labels: ``[B]`` integer classes in ``[0, C)``.

  Returns:
    A float32 scalar.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32),
                               axis=-1)
  return -jnp.mean(picked)


def mean_squared_error(predictions: jax.Array,
                       targets: jax.Array) -> jax.Array:
  """Mean of :math:`(\\hat y - y)^2` over all entries (no factor 1/2).

  Predictions shaped ``targets.shape + (1,)`` (a one-output model on scalar
  targets) are squeezed first.
  """
  if predictions.shape == targets.shape + (1,):
    predictions = predictions[..., 0]
  if predictions.shape != targets.shape:
    raise ValueError(f"predictions of shape {predictions.shape} do not match "
                     f"targets of shape {targets.shape}.")
  diff = predictions.astype(jnp.float32) - targets.astype(jnp.float32)
  return jnp.mean(jnp.square(diff))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of rows whose largest logit is at the label."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def l2_penalty(params: PyTree) -> jax.Array:
  """:math:`\\frac12 \\|\\theta\\|^2` over all leaves; its gradient is :math:`\\theta`."""
  return 0.5 * sum(jnp.sum(jnp.square(p.astype(jnp.float32)))
                   for p in jax.tree.leaves(params))


class ModelFns(NamedTuple):
  """Pure functions of a model, for the simulator and training loops."""
  init: Callable[[jax.Array, jax.Array], PyTree]  # (key, sample_x) -> params
  apply: Callable[[PyTree, jax.Array], jax.Array]  # (params, x) -> outputs
  loss: Callable[[PyTree, Batch], jax.Array]  # (params, (x, y)) -> scalar
  accuracy: Callable[[PyTree, Batch], jax.Array] | None  # None: regression


def _model_fns(model: nn.Module, objective, metric, weight_decay) -> ModelFns:
  weight_decay = _checks.check_positive("weight_decay", weight_decay,
                                        allow_zero=True)

  def init(key: jax.Array, sample_x: jax.Array) -> PyTree:
    variables = jax.jit(model.init)(key, sample_x)  # one compiled program
    extra = sorted(set(variables) - {"params"})
    if extra:
      raise ValueError(
          f"model has non-parameter collections {extra}; only stateless "
          "models (no BatchNorm statistics) are supported.")
    return variables["params"]

  def apply(params: PyTree, x: jax.Array) -> jax.Array:
    return model.apply({"params": params}, x)

  def loss(params: PyTree, batch: Batch) -> jax.Array:
    x, y = batch
    value = objective(apply(params, x), y)
    if weight_decay:
      value = value + weight_decay * l2_penalty(params)
    return value

  accuracy_fn = None
  if metric is not None:
    def accuracy_fn(params: PyTree, batch: Batch) -> jax.Array:
      x, y = batch
      return metric(apply(params, x), y)

  return ModelFns(init=init, apply=apply, loss=loss, accuracy=accuracy_fn)


def make_classifier(model: nn.Module, *,
                    weight_decay: float = 0.0) -> ModelFns:
  """``init``, ``apply``, cross-entropy ``loss`` and ``accuracy`` of a model.

  .. math::
    \\ell(\\theta; (x, y)) = \\mathrm{CE}(f_\\theta(x), y)
      + \\frac{\\lambda}{2} \\|\\theta\\|^2,

  so that ``weight_decay`` :math:`\\lambda` adds :math:`\\lambda\\theta` to the
  gradient, like PyTorch's ``SGD(weight_decay=...)``. The penalty covers every
  parameter, biases included.

  Args:
    model: a stateless Linen module mapping ``[B, ...]`` inputs to ``[B, C]``
      logits.
    weight_decay: :math:`\\lambda \\ge 0`.

  Returns:
    A :class:`ModelFns`; ``init(key, sample_x)`` returns the ``"params"``
    collection, and ``loss``/``accuracy`` take ``(params, (x, y))``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> fns = make_classifier(MLP(num_classes=3, hidden=(8,)))
    >>> params = fns.init(jax.random.key(0), jnp.zeros((1, 5)))
    >>> batch = (jnp.ones((4, 5)), jnp.array([0, 1, 2, 0]))
    >>> fns.loss(params, batch).shape
    ()
  """
  return _model_fns(model, softmax_cross_entropy, accuracy, weight_decay)


def make_regressor(model: nn.Module, *,
                   weight_decay: float = 0.0) -> ModelFns:
  """``init``, ``apply`` and mean-squared-error ``loss`` of a model.

  .. math::
    \\ell(\\theta; (x, y)) = \\frac{1}{B} \\sum_i (f_\\theta(x_i) - y_i)^2
      + \\frac{\\lambda}{2} \\|\\theta\\|^2 .

  ``accuracy`` is ``None``. For the linear regression of Ghosh et al. and
  Chen, Su & Xu use ``make_regressor(Linear(1, use_bias=False))``; its
  parameter ``params["Dense_0"]["kernel"][:, 0]`` estimates :math:`w^\\star`.

  Args:
    model: a stateless Linen module.
    weight_decay: :math:`\\lambda \\ge 0`.

  Returns:
    A :class:`ModelFns`.
  """
  return _model_fns(model, mean_squared_error, None, weight_decay)


def num_params(params: PyTree) -> int:
  """Total number of scalar parameters in a pytree."""
  return sum(math.prod(jnp.shape(p)) for p in jax.tree.leaves(params))
