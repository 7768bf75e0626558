"""Mean around the median, "Meamed" (Xie, Koyejo & Gupta, 2018).

A coordinate-wise aggregator: for every coordinate, the mean of the
``R - f`` values closest to that coordinate's median. It uses the sorted
worker axis of :mod:`byzjax.aggregators.coordinatewise` (the bitonic
network on CPU): in sorted order the values closest to the median form a
contiguous window, found by growing it outwards from the median one value at
a time (``R - f`` steps of elementwise work per coordinate, far cheaper than
the sort).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.aggregators.coordinatewise import _median_of_sorted
from byzjax.aggregators.coordinatewise import _sorted_map
from byzjax.aggregators.coordinatewise import _window_mean_of_sorted

PyTree = Any


class MeamedInfo(NamedTuple):
  """Diagnostics of :func:`meamed`."""
  live: jax.Array          # bool, shape [R]
  num_live: jax.Array      # int32, shape (): n, the number of live workers
  num_averaged: jax.Array  # int32, shape (): min(R - f, n) values per coordinate


def _closest_window_start(s: jax.Array, n: jax.Array, count: jax.Array,
                          max_count: int) -> jax.Array:
  """Start of the ``count`` values of each column closest to its median.

  ``s`` ``[P, c]`` holds, per column, ``n`` values ascending then ``+inf``.
  The window grows from the median position one value at a time, taking
  the closer of the next value below and the next value above; on a tie the
  lower value is taken. (This is "the ``count`` smallest values of
  :math:`(|x - m|, x)`", a contiguous window.) Distances are compared as
  ``m/2 - x/2`` so that values of +-3e38 cannot overflow them.

  Returns:
    The window start per column, int32 ``[c]``; the window is
    ``[start, start + count)``.
  """
  half = jnp.asarray(0.5, s.dtype)
  med = _median_of_sorted(s, n)
  p = s.shape[0]
  lo0 = jnp.full(s.shape[1:], n // 2, jnp.int32)

  def body(step, carry):
    lo, hi = carry  # current window [lo, hi)
    below = jnp.take_along_axis(s, jnp.maximum(lo - 1, 0)[None], axis=0)[0]
    above = jnp.take_along_axis(s, jnp.minimum(hi, p - 1)[None], axis=0)[0]
    d_below = half * med - half * below
    d_above = half * above - half * med
    take_below = (lo > 0) & ((hi >= n) | (d_below <= d_above))
    grow = step < count
    lo = jnp.where(grow & take_below, lo - 1, lo)
    hi = jnp.where(grow & ~take_below, hi + 1, hi)
    return lo, hi

  lo, _ = jax.lax.fori_loop(0, max_count, body, (lo0, lo0))
  return lo


@public
def meamed(
    updates: PyTree,
    *,
    num_byzantine: int,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, MeamedInfo]:
  """Mean around the median (Xie, Koyejo & Gupta, 2018, Section 3).

  For every coordinate ``k``, with :math:`m_k` the median of the live
  workers' values,

  .. math::
    \\operatorname{meamed}(x_1, \\dots, x_R)_k = \\frac{1}{R - f}
    \\sum_{i \\in S_k} x_{ik} ,

  where :math:`S_k` are the :math:`R - f` workers whose values
  :math:`x_{ik}` are closest to :math:`m_k` (ties in distance: the lower
  value first). The median is the middle value, or the mean of the two
  middle values for an even count (as in
  :func:`~byzjax.aggregators.coordinate_median`). Each coordinate stays
  within the range of the honest values while fewer than ``R / 2`` workers
  are Byzantine.

  Erasures (rows with any NaN/Inf) are excluded and count among the ``f``
  Byzantine workers: the median and the ``R - f`` closest values are taken
  over the ``n`` live workers (``min(R - f, n)`` values when more than ``f``
  rows are erased). The average is overflow-safe.

  .. warning::
    ``updates`` is stacked: every leaf has a leading worker axis ``R``; the
    result has that axis removed.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    num_byzantine: :math:`f`, the number of Byzantine workers tolerated
      (Python int, :math:`2f < R`).
    return_info: also return a :class:`MeamedInfo`.

  Returns:
    The aggregate, shaped like one worker's update (zeros if no worker is
    live); with ``return_info=True`` a tuple ``(aggregate, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.aggregators.meamed import meamed
    >>> x = {'w': jnp.array([[1., 0.], [2., 0.], [4., 3.], [9., 3.],
    ...                      [1e30, -3e38]])}
    >>> [round(float(v), 4) for v in meamed(x, num_byzantine=2)['w']]
    [2.3333, 1.0]

  References:
    Xie, Koyejo & Gupta, `Generalized Byzantine-tolerant SGD
    <https://arxiv.org/abs/1802.10116>`_, 2018 (Section 3, the definition
    of the mean around median, "Meamed"; the definitions are numbered
    differently across the paper's versions).
  """
  r = btree.num_workers(updates)
  f = _checks.check_int("num_byzantine", num_byzantine, low=0)
  if 2 * f >= r:
    raise ValueError(
        f"num_byzantine={num_byzantine!r} is too large for R = {r} workers: "
        "Meamed needs 2 * num_byzantine < R (a Byzantine minority).")
  live = btree.live_workers(updates)
  n = jnp.sum(live, dtype=jnp.int32)
  count = jnp.minimum(r - f, n)

  def reduce(s):
    start = _closest_window_start(s, n, count, r - f)
    return _window_mean_of_sorted(s, start, count)

  out = _sorted_map(updates, live, reduce)
  if not return_info:
    return out
  return out, MeamedInfo(live=live, num_live=n, num_averaged=count)
