"""Geometric median of means over groups of workers (Chen, Su & Xu, 2017).

The ``R`` workers are split into ``k`` groups, each group is averaged, and the
aggregate is the geometric median of the ``k`` group means. Averaging first
shrinks the honest spread by the group size, the geometric median then
tolerates fewer than half of the groups containing a Byzantine worker, i.e.
up to ``q <= (k - 1) / 2`` Byzantine workers wherever they sit.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.aggregators.geometric_median import WeiszfeldInfo

PyTree = Any


class GeometricMedianOfMeansInfo(NamedTuple):
  """Diagnostics of :func:`geometric_median_of_means`."""
  group: jax.Array          # int32, shape [R]: the group of each worker
  group_counts: jax.Array   # int32, shape [k]: live workers in each group
  group_norms: jax.Array    # float, shape [k]: norm of each group mean (0
                            # for a group with no live worker)
  group_kept: jax.Array     # bool, shape [k]: groups given GM weight
  trim_fallback: jax.Array  # bool, shape (): trimming would have removed
                            # every group, so none was trimmed
  median_info: WeiszfeldInfo  # of the geometric median of the group means
  weights: jax.Array | None = None  # float, shape [R]: each worker's share,
                            # its group's Weiszfeld weight / group size


def group_slots(num_workers: int, num_groups: int) -> np.ndarray:
  """Group of each of ``num_workers`` consecutive slots, shape ``[R]``.

  Contiguous groups as :func:`numpy.array_split` makes them: with
  ``R = k q + s`` (``0 <= s < k``), the first ``s`` groups hold ``q + 1``
  consecutive slots and the other ``k - s`` hold ``q``. Computed at trace
  time from Python ints.
  """
  q, s = divmod(num_workers, num_groups)
  sizes = [q + 1] * s + [q] * (num_groups - s)
  return np.repeat(np.arange(num_groups), sizes).astype(np.int32)


@public
def geometric_median_of_means(
    updates: PyTree,
    *,
    num_groups: int,
    trim_threshold: float | None = None,
    key: jax.Array | None = None,
    max_iters: int = 100,
    tol: float = 1e-6,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, GeometricMedianOfMeansInfo]:
  """Geometric median of the means of ``k`` groups of workers.

  The server's aggregation step of Chen, Su & Xu's Byzantine gradient
  descent: with groups :math:`B_1, \\dots, B_k` partitioning the workers,

  .. math::
    \\bar g_j = \\frac{1}{|B_j|} \\sum_{i \\in B_j} g_i, \\qquad
    \\operatorname{agg} = \\operatorname{GM}(\\bar g_1, \\dots, \\bar g_k)
    = \\arg\\min_z \\sum_{j} \\|\\bar g_j - z\\|_2 .

  The geometric median is computed by
  :func:`byzjax.aggregators.geometric_median.geometric_median` (Weiszfeld),
  each group mean with weight one. ``num_groups = 1`` is the mean of the live
  workers, ``num_groups = R`` the geometric median of the workers.

  Groups. Worker slots are cut into ``k`` contiguous groups; when ``k`` does
  not divide ``R`` the groups differ in size by one (the first ``R mod k``
  groups are one larger, see :func:`group_slots`) and still get equal GM
  weight. The paper assumes ``k | R``. Without ``key`` slot ``i`` is worker
  ``i``; with ``key``, ``perm = jax.random.permutation(key, R)`` and slot
  ``j`` holds worker ``perm[j]``, so an adversary who knows the worker
  indices cannot place its workers to contaminate as many groups as
  possible.

  Erasures. A worker with a NaN/Inf entry is missing: its group's mean is
  over the group's live members. A group with no live member is itself an
  erasure and gets no GM weight. If every worker is erased the result is
  zeros.

  Trimming (optional; after the paper's Remark 2 on discarding over-long
  group means before an approximate geometric median, with this rule): group
  means whose norm exceeds ``trim_threshold`` get zero GM weight (they are
  passed to the geometric median as erasures, so they do not influence its
  centring either). If that would discard every live group, nothing is
  trimmed and ``info.trim_fallback`` is set.

  .. warning::
    ``updates`` is stacked: every leaf has a leading worker axis ``R``; the
    result has that axis removed. The aggregate is invariant to permutations
    of the workers within a group and to permutations of whole groups of
    equal size, but not to permutations across groups.

  Group means are weighted sums of the rows with weights summing to one, so
  rows of 1e30 or 3e38 cannot overflow them beyond the largest entry; their
  norms are computed overflow-safely and the geometric median standardizes
  its inputs.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    num_groups: number of groups ``k`` (Python int in ``[1, R]``).
    trim_threshold: optional positive norm threshold for group means.
    key: optional PRNG key; randomly permutes workers into groups first.
    max_iters: maximum Weiszfeld iterations of the geometric median.
    tol: stopping tolerance of the geometric median.
    return_info: also return a :class:`GeometricMedianOfMeansInfo`.

  Returns:
    The geometric median of the group means, shaped like one worker's
    update; with ``return_info=True`` a tuple ``(aggregate, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.aggregators.geometric_median_of_means import (
    ...     geometric_median_of_means)
    >>> x = jnp.array([[1., 0.], [1., 2.], [1.4, 1.], [1., 1.], [1., 1.4],
    ...                [1., 1.], [1e30, 1e30], [1., 1.]])
    >>> out = geometric_median_of_means({'w': x}, num_groups=4)
    >>> [round(float(v), 2) for v in out['w']]
    [1.1, 1.1]

  References:
    Chen, Su & Xu, `Distributed Statistical Machine Learning in Adversarial
    Settings: Byzantine Gradient Descent <https://arxiv.org/abs/1705.05491>`_,
    POMACS 2017.
  """
  r = btree.num_workers(updates)
  k = _checks.check_int("num_groups", num_groups, low=1, high=r)
  if trim_threshold is not None:
    _checks.check_positive("trim_threshold", trim_threshold,
                           allow_inf=True)
  _checks.check_int("max_iters", max_iters, low=1)
  _checks.check_positive("tol", tol, allow_zero=True)

  clean, live = btree.zero_erasures(updates)
  dtype = jnp.result_type(*jax.tree.leaves(clean))
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32

  slots = jnp.asarray(group_slots(r, k))
  if key is None:
    group = slots
  else:
    perm = jax.random.permutation(key, r)
    # Slot j holds worker perm[j], so worker i sits in slot argsort(perm)[i].
    group = slots[jnp.argsort(perm)]
  member = (group[None, :] == jnp.arange(k)[:, None]) & live[None, :]  # [k,R]
  counts = jnp.sum(member, axis=1)
  # Row-normalized membership: every group mean is a convex combination.
  avg = member.astype(dtype) / jnp.maximum(counts, 1)[:, None].astype(dtype)
  means = jax.tree.map(
      lambda x: jnp.tensordot(avg.astype(x.dtype), x, axes=1,
                              precision=jax.lax.Precision.HIGHEST), clean)

  group_live = counts > 0
  norms = jnp.where(group_live, btree.worker_norms(means), 0.0)
  if trim_threshold is None:
    kept = group_live
    fallback = jnp.zeros([], bool)
  else:
    short = group_live & (norms <= trim_threshold)
    fallback = ~jnp.any(short)
    kept = jnp.where(fallback, group_live, short)
  # Dropped groups are passed as erasures (NaN rows): the geometric median
  # then ignores them entirely, also when it centres and scales its inputs.
  gm_input = btree.mask_workers(means, kept, fill=jnp.nan)
  # The step rule, as Chen, Su & Xu's analysis and this module's tests
  # assume (geometric_median's default is the objective rule).
  median, gm_info = geometric_median(gm_input, max_iters=max_iters, tol=tol,
                                     criterion="step", return_info=True)
  # Every worker erased: zeros (a missing update), not the GM of nothing.
  any_live = jnp.any(group_live)
  median = jax.tree.map(lambda m: jnp.where(any_live, m, jnp.zeros_like(m)),
                        median)
  if not return_info:
    return median
  info = GeometricMedianOfMeansInfo(
      group=group, group_counts=counts.astype(jnp.int32), group_norms=norms,
      group_kept=kept, trim_fallback=fallback, median_info=gm_info,
      weights=jnp.dot(gm_info.weights.astype(dtype), avg))
  return median, info
