"""Data attacks: corrupt a Byzantine worker's batch before its gradient.

Every factory here returns a function ``attack(key, x, y) -> (x, y)`` that
acts on **one worker's** batch (features ``x`` with a leading batch axis,
labels ``y``), keeps shapes and dtypes, and draws randomness only from
``key``. The simulator applies it to the Byzantine workers with
:func:`apply_to_workers` (a ``vmap`` with a per-worker switch), so honest
workers' batches pass through bit for bit:

.. code-block:: python

  attack = label_flip(num_classes=10)
  xs, ys = apply_to_workers(attack, key, xs, ys, byzantine=mask)  # [R, B, ...]
  grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(params, (xs, ys))

========================  =================================================
attack                    what a Byzantine worker's batch becomes
========================  =================================================
:func:`label_flip`        labels uniformly random in ``[0, C)``
:func:`label_shift`       labels :math:`y \\mapsto C - 1 - y` (Ghosh et al.)
:func:`backdoor`          every label set to a target class (BGMD: class 8)
:func:`feature_noise`     features plus :math:`\\mathcal{N}(0, \\sigma^2)`
                          (BGMD: :math:`\\sigma^2 = 100`)
:func:`impulse_noise`     salt-and-pepper noise on a fraction of the
                          entries (BGMD: 90%)
========================  =================================================

References:
  Acharya et al., `Robust Training in High Dimensions via Block Coordinate
  Geometric Median Descent <https://arxiv.org/abs/2106.08882>`_, 2022
  (feature noise, impulse noise, backdoor).

  Ghosh et al., `Communication-Efficient and Byzantine-Robust Distributed
  Learning with Error Feedback <https://arxiv.org/abs/1911.09721>`_, 2020
  (label shift :math:`y \\mapsto 9 - y` on MNIST).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from byzjax import _checks

PyTree = Any
DataAttack = Callable[[jax.Array, jax.Array, jax.Array],
                      tuple[jax.Array, jax.Array]]


def label_flip(num_classes: int) -> DataAttack:
  """Replaces every label by a uniformly random class in ``[0, C)``.

  Args:
    num_classes: the number of classes :math:`C`, a Python int >= 2.

  Returns:
    ``attack(key, x, y) -> (x, y')`` with ``y'`` i.i.d. uniform labels of
    ``y``'s shape and dtype; ``x`` is unchanged.

  Raises:
    ValueError: if ``num_classes`` is not an int >= 2.
  """
  _checks.check_int("num_classes", num_classes, low=2)

  def attack(key, x, y):
    y = jnp.asarray(y)
    new = jax.random.randint(key, y.shape, 0, num_classes)
    return x, new.astype(y.dtype)

  return attack


def label_shift(num_classes: int) -> DataAttack:
  """Deterministic label shift :math:`y \\mapsto (C - 1) - y`.

  Ghosh et al. (arXiv:1911.09721, §7) corrupt the Byzantine workers' MNIST
  labels as :math:`y \\mapsto 9 - y`.

  Args:
    num_classes: the number of classes :math:`C`, a Python int >= 2.

  Returns:
    ``attack(key, x, y) -> (x, C - 1 - y)``; the key is unused.

  Raises:
    ValueError: if ``num_classes`` is not an int >= 2.
  """
  _checks.check_int("num_classes", num_classes, low=2)

  def attack(key, x, y):
    del key
    y = jnp.asarray(y)
    return x, (num_classes - 1 - y).astype(y.dtype)

  return attack


def backdoor(target_label: int, *, trigger_mask: jax.Array | None = None,
             trigger_value: float = 1.0) -> DataAttack:
  """Sets every label of the batch to ``target_label`` (optional trigger).

  BGMD's backdoor attack relabels *all* samples of a Byzantine worker to one
  target class (class 8 in their Fashion-MNIST experiments) and leaves the
  features unchanged, i.e. there is no trigger pattern; this is the default
  here (the authors' released code does exactly this). Classic backdoors
  also stamp a trigger on the features: with ``trigger_mask`` (a boolean
  array broadcastable to one sample, e.g. a corner patch of an image), the
  masked entries of every sample are set to ``trigger_value``.

  Args:
    target_label: the target class, a Python int >= 0.
    trigger_mask: optional boolean array broadcastable to ``x.shape[1:]``.
    trigger_value: the value written where ``trigger_mask`` is True.

  Returns:
    ``attack(key, x, y) -> (x', target)``; the key is unused.

  Raises:
    ValueError: if ``target_label`` is not an int >= 0.
  """
  _checks.check_int("target_label", target_label, low=0)

  def attack(key, x, y):
    del key
    y = jnp.asarray(y)
    if trigger_mask is not None:
      x = jnp.where(jnp.asarray(trigger_mask, bool)[None],
                    jnp.asarray(trigger_value, x.dtype), x)
    return x, jnp.full(y.shape, target_label, y.dtype)

  return attack


def feature_noise(variance: float = 100.0, *,
                  clip: tuple[float, float] | None = None) -> DataAttack:
  """Additive Gaussian feature noise :math:`x + \\mathcal{N}(0, \\sigma^2 I)`.

  BGMD's "additive" corruption (variance 100 at the highest severity).
  With ``clip=(low, high)`` the result is clipped to the feature range (as
  for images in ``[0, 1]``).

  Args:
    variance: :math:`\\sigma^2 \\ge 0`.
    clip: optional ``(low, high)`` range.

  Returns:
    ``attack(key, x, y) -> (x', y)`` with ``x'`` in ``x``'s dtype.

  Raises:
    ValueError: if ``variance`` is negative or ``clip`` is not an ordered
      pair.
  """
  _checks.check_positive("variance", variance, allow_zero=True)
  _check_clip(clip)
  std = variance ** 0.5

  def attack(key, x, y):
    x = jnp.asarray(x)
    noisy = x + std * jax.random.normal(key, x.shape, x.dtype)
    if clip is not None:
      noisy = jnp.clip(noisy, clip[0], clip[1])
    return noisy.astype(x.dtype), y

  return attack


def impulse_noise(fraction: float = 0.9, *, low: float = 0.0,
                  high: float = 1.0, salt_fraction: float = 0.5) -> DataAttack:
  """Salt-and-pepper noise on a random fraction of the entries.

  Each entry of ``x`` is independently corrupted with probability
  ``fraction``; a corrupted entry becomes ``high`` ("salt") with
  probability ``salt_fraction`` and ``low`` ("pepper") otherwise. BGMD's
  impulse corruption uses 90% of the pixels (the default), on images scaled
  to ``[0, 1]``.

  Args:
    fraction: probability that an entry is corrupted, in ``[0, 1]``.
    low: the pepper value.
    high: the salt value.
    salt_fraction: probability that a corrupted entry is salt, in ``[0, 1]``.

  Returns:
    ``attack(key, x, y) -> (x', y)`` with ``x'`` in ``x``'s dtype.

  Raises:
    ValueError: if ``fraction`` or ``salt_fraction`` is outside ``[0, 1]``,
      or ``low`` or ``high`` is not a finite number.
  """
  _checks.check_fraction("fraction", fraction, low=0.0, high=1.0,
                         high_inclusive=True)
  _checks.check_fraction("salt_fraction", salt_fraction, low=0.0, high=1.0,
                         high_inclusive=True)
  _checks.check_finite("low", low)
  _checks.check_finite("high", high)

  def attack(key, x, y):
    x = jnp.asarray(x)
    k1, k2 = jax.random.split(key)
    hit = jax.random.uniform(k1, x.shape) < fraction
    salt = jax.random.uniform(k2, x.shape) < salt_fraction
    value = jnp.where(salt, jnp.asarray(high, x.dtype),
                      jnp.asarray(low, x.dtype))
    return jnp.where(hit, value, x), y

  return attack


def _check_clip(clip) -> None:
  if clip is None:
    return
  if (not isinstance(clip, (tuple, list)) or len(clip) != 2
      or not clip[0] <= clip[1]):
    raise ValueError(f"clip must be a pair (low, high) with low <= high, "
                     f"got {clip!r}.")


def apply_to_worker(attack: DataAttack, key: jax.Array, x: jax.Array,
                    y: jax.Array, *,
                    byzantine: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Applies ``attack`` to one worker's batch if ``byzantine`` is True.

  ``byzantine`` may be traced (a per-step draw); both branches are computed
  and selected with ``jnp.where``, so an honest worker's batch is returned
  unchanged, bit for bit.

  Args:
    attack: a data attack ``(key, x, y) -> (x, y)``.
    key: PRNG key for this worker.
    x: the worker's features.
    y: the worker's labels.
    byzantine: boolean scalar.

  Returns:
    ``(x, y)``, attacked or not.
  """
  ax, ay = attack(key, x, y)
  b = jnp.asarray(byzantine, bool)
  return (jnp.where(b, ax, x).astype(jnp.asarray(x).dtype),
          jnp.where(b, ay, y).astype(jnp.asarray(y).dtype))


def apply_to_workers(attack: DataAttack, key: jax.Array, xs: jax.Array,
                     ys: jax.Array, *,
                     byzantine: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Applies ``attack`` to the Byzantine workers' batches (vmapped).

  Worker ``i`` uses ``jax.random.fold_in(key, i)``, so workers draw
  independent noise and the result does not depend on how many workers are
  Byzantine.

  Args:
    attack: a data attack ``(key, x, y) -> (x, y)`` for one worker's batch.
    key: PRNG key for this step.
    xs: features with a leading worker axis ``[R, B, ...]``.
    ys: labels ``[R, B, ...]``.
    byzantine: boolean mask ``[R]``.

  Returns:
    ``(xs, ys)`` with the Byzantine workers' batches attacked.

  Raises:
    ValueError: if ``byzantine`` does not have shape ``[R]``.
  """
  r = jnp.shape(xs)[0]
  _checks.check_worker_vector("byzantine", jnp.asarray(byzantine), r)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(r))
  return jax.vmap(
      lambda k, x, y, b: apply_to_worker(attack, k, x, y, byzantine=b))(
          keys, xs, ys, jnp.asarray(byzantine, bool))
