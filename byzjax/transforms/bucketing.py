"""Bucketing (Karimireddy, He & Jaggi, ICLR 2022, Algorithm 1).

Before a robust aggregator, the ``R`` workers are shuffled by a fresh random
permutation :math:`\\pi` and averaged in consecutive buckets of ``s``:

.. math::
  y_b = \\frac{1}{|B_b|} \\sum_{i \\in B_b} x_{\\pi(i)}, \\qquad
  B_b = \\{(b - 1) s + 1, \\dots, \\min(bs, R)\\}, \\quad
  b = 1, \\dots, \\lceil R / s \\rceil ,

and the aggregator is applied to :math:`y_1, \\dots, y_{\\lceil R/s \\rceil}`.
Averaging reduces the heterogeneity (variance) of the honest inputs by
``s``, which lets aggregators designed for i.i.d. data (Krum, coordinate-wise
median, geometric median, ...) cope with non-i.i.d. workers, at the cost of
multiplying the fraction of Byzantine inputs by at most ``s``.

The number of buckets :math:`\\lceil R/s \\rceil` is a fixed shape; when
``s`` does not divide ``R`` the last bucket is smaller and averages over its
actual members. Erasures (rows with any non-finite entry) are left out of
their bucket's mean (a mean over the bucket's live members); a bucket with no
live member is all-NaN, so the aggregator that follows treats it as an
erasure in turn.
"""

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public

PyTree = Any


class BucketingState(NamedTuple):
  """State of :func:`bucketing`."""
  key: jax.Array  # PRNG key; split on every update (fresh permutation)
  # The key of the last step's permutation and the bucket size, so that
  # diagnostics can map buckets back to workers (:func:`bucket_of_workers`).
  last_key: jax.Array | None = None
  bucket_size: jax.Array | None = None  # int32 ()


def bucket_of_workers(state: BucketingState, num_workers: int) -> jax.Array:
  """The bucket of every worker in the last step of :func:`bucketing`.

  Args:
    state: the transform's state after an update.
    num_workers: ``R``, a Python int.

  Returns:
    int32 ``[R]``: worker ``i`` was averaged into bucket ``out[i]`` (the
    row of the bucket means that the aggregator after bucketing saw).
  """
  perm = jax.random.permutation(state.last_key, num_workers)
  slot = jnp.zeros([num_workers], jnp.int32).at[perm].set(
      jnp.arange(num_workers, dtype=jnp.int32))
  return slot // state.bucket_size


@public(stacked_output=True)
def bucket_means(
    updates: PyTree,
    *,
    bucket_size: int,
    key: jax.Array,
) -> PyTree:
  """Randomly permuted bucket means of the stacked updates.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    bucket_size: the bucket size ``s``, a Python int in ``[1, R]``.
    key: PRNG key drawing the permutation.

  Returns:
    A stacked pytree with leading axis ``ceil(R / s)``: the bucket means (see
    the module docstring; all-NaN for a bucket whose members are all erased).
    Integer leaves give float32 means; half-precision leaves are averaged in
    float32 and returned in their own dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from byzjax.transforms.bucketing import bucket_means
    >>> x = {'w': jnp.arange(4.0)[:, None]}
    >>> y = bucket_means(x, bucket_size=4, key=jax.random.key(0))
    >>> y['w'].tolist()
    [[1.5]]

  References:
    Karimireddy, He & Jaggi, `Byzantine-Robust Learning on Heterogeneous
    Datasets via Bucketing <https://arxiv.org/abs/2006.09365>`_, ICLR 2022,
    Algorithm 1.
  """
  r = btree.num_workers(updates)
  s = _checks.check_int("bucket_size", bucket_size, low=1, high=r)
  return _bucket_means(updates, key, bucket_size=s)


# Jitted core (bucket size static): eager callers compile once.
@functools.partial(jax.jit, static_argnames=("bucket_size",))
def _bucket_means(updates, key, *, bucket_size):
  s = bucket_size
  r = btree.num_workers(updates)
  num_buckets = math.ceil(r / s)
  pad = num_buckets * s - r
  clean, live = btree.zero_erasures(updates)
  perm = jax.random.permutation(key, r)
  # Padding slots point past the end (index r): gathered as zeros and not
  # counted, so a short last bucket averages over its actual members.
  order = jnp.concatenate([perm, jnp.full([pad], r, perm.dtype)])
  member = jnp.take(live, order, mode="fill", fill_value=False)
  counts = jnp.sum(member.reshape(num_buckets, s), axis=1)
  inv = jnp.where(counts > 0, 1.0 / jnp.maximum(counts, 1), jnp.nan)

  def leaf_means(x):
    rows = jnp.take(x, order, axis=0, mode="fill", fill_value=0)
    rows = rows.reshape((num_buckets, s) + x.shape[1:])
    # Scale before summing: each term is at most max|x| / count, so sums of
    # rows of 3e38 stay finite.
    scale = jnp.reshape(inv, (num_buckets, 1) + (1,) * (x.ndim - 1))
    total = jnp.sum(rows * scale.astype(x.dtype), axis=1)
    return jnp.where(jnp.isnan(scale[:, 0]), jnp.nan, total).astype(x.dtype)

  return jax.tree.map(leaf_means, clean)


def bucketing(
    bucket_size: int,
    *,
    key: jax.Array,
) -> optax.GradientTransformationExtraArgs:
  """Bucketing as a transform before any aggregator.

  Maps stacked updates ``(R, ...)`` to stacked bucket means
  ``(ceil(R / s), ...)`` (see :func:`bucket_means`) with a fresh random
  permutation at every step, for the aggregator that follows:

  >>> import jax, optax, byzjax
  >>> from byzjax.transforms.bucketing import bucketing
  >>> tx = optax.chain(
  ...     bucketing(2, key=jax.random.key(0)),
  ...     byzjax.aggregate(byzjax.aggregators.geometric_median),
  ...     optax.sgd(0.1))

  .. warning::
    Input and output are both stacked (a leading worker axis), with
    different sizes ``R`` and ``ceil(R / s)``; an aggregator must follow.

  Args:
    bucket_size: the bucket size ``s``, a Python int >= 1; it must also be
      at most ``R``, which is checked at the first update (when ``R`` is
      known).
    key: the PRNG key for the permutations. It is a factory argument because
      ``init`` only sees the parameters; it lives in the state and is split on
      every update (STYLE.md, "A key that persists lives in state").

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`BucketingState`.

  References:
    Karimireddy, He & Jaggi, `Byzantine-Robust Learning on Heterogeneous
    Datasets via Bucketing <https://arxiv.org/abs/2006.09365>`_, ICLR 2022,
    Algorithm 1.
  """
  _checks.check_int("bucket_size", bucket_size, low=1)
  if key is None:
    raise ValueError("key must be a PRNG key (jax.random.key(...)), got None.")

  def init_fn(params):
    del params
    return BucketingState(key=key, last_key=key,
                          bucket_size=jnp.asarray(bucket_size, jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    new_key, step_key = jax.random.split(state.key)
    out = bucket_means(updates, bucket_size=bucket_size, key=step_key)
    return out, BucketingState(key=new_key, last_key=step_key,
                               bucket_size=state.bucket_size)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
