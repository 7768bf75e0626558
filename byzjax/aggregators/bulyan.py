"""Bulyan (El Mhamdi, Guerraoui & Rouault, 2018).

Bulyan hardens Krum against attacks that hide in a few coordinates: it first
selects :math:`\\theta = R - 2f` updates by iterating Krum, then, coordinate
by coordinate, averages the :math:`\\beta = \\theta - 2f` selected values
closest to their median.

The selection uses the pairwise distances of one Gram matrix of standardized
rows (see :mod:`byzjax.aggregators.krum` for the precision argument); each
Krum round only masks out the rows already chosen and recomputes the scores
on the ``R x R`` matrix, so the whole selection costs one Gram product plus
:math:`O(\\theta R^2 \\log R)`. The coordinate-wise stage sorts the selected
values of each coordinate with the same kernel as
:func:`~byzjax.aggregators.coordinatewise.coordinate_median`.
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
from byzjax.aggregators.krum import _krum_scores
from byzjax.aggregators.krum import _pairwise_sq_dists

PyTree = Any


class BulyanInfo(NamedTuple):
  """Diagnostics of :func:`bulyan`."""
  selected: jax.Array  # bool, shape [R]: the theta workers chosen by Krum
  order: jax.Array     # int32, [theta]: worker chosen per round (-1: none left)
  scores: jax.Array    # float, [R]: first-round Krum scores (inf: erased)


def _closest_to_median_mean(s: jax.Array, num_selected: jax.Array,
                            num_byzantine: int) -> jax.Array:
  """Mean of the ``beta`` values of each column closest to its median.

  ``s`` ``[P, c]`` holds the ``num_selected`` selected values of each column
  in ascending order (then ``+inf``). With ``mu`` the median, the distances
  ``|s_j - mu|`` decrease and then increase along the sorted column, so the
  value farthest from ``mu`` is always at one end of the window
  ``s[lo:hi + 1]``. Dropping that end ``n - beta`` times (at most ``2f``
  steps of ``O(c)`` work) leaves a window of the ``beta`` values closest to
  ``mu``: a minimiser of :math:`\\sum_{i \\in M} |s_i - \\mu|` over sets
  ``M`` of size ``beta``. On an exact tie of the two ends (``mu - s_lo ==
  s_hi - mu``) the larger value is dropped; every such choice attains the
  same minimal sum. (Comparing windows by their largest distance instead
  is not the same rule: it ties windows with different sums.)

  Distances are compared in halves (``|s/2 - mu/2|``) so that ``3e38`` and
  ``-3e38`` cannot overflow to equal infinities.
  """
  f = num_byzantine
  n = num_selected
  beta = jnp.maximum(n - 2 * f, 1)
  num_drops = n - beta  # <= 2f
  mu = _median_of_sorted(s, n)
  half = jnp.asarray(0.5, s.dtype)

  def dist_at(idx):
    v = jnp.take_along_axis(s, idx[None, :], axis=0)[0]
    return jnp.abs(v * half - mu * half)

  def drop_one(t, bounds):
    lo, hi = bounds
    active = t < num_drops
    drop_lo = dist_at(lo) > dist_at(hi)
    lo = jnp.where(active & drop_lo, lo + 1, lo)
    hi = jnp.where(active & ~drop_lo, hi - 1, hi)
    return lo, hi

  c = s.shape[1:]
  lo0 = jnp.zeros(c, jnp.int32)
  hi0 = jnp.broadcast_to(jnp.maximum(n - 1, 0), c).astype(jnp.int32)
  start, _ = jax.lax.fori_loop(0, 2 * f, drop_one, (lo0, hi0))
  return _window_mean_of_sorted(s, start, jnp.where(n > 0, beta, 0))


@public
def bulyan(
    updates: PyTree,
    *,
    num_byzantine: int,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, BulyanInfo]:
  """Bulyan aggregation (El Mhamdi et al., 2018, Section 4).

  With :math:`f` Byzantine workers among :math:`R \\ge 4f + 3`:

  1. Selection. Starting from all workers, run Krum
     (:func:`~byzjax.aggregators.krum.krum`) on the remaining set
     :math:`\\mathcal{R}` (neighbour count :math:`|\\mathcal{R}| - f - 2`,
     at least 0), move the chosen worker to the selection set
     :math:`\\mathcal{S}`, and repeat until
     :math:`|\\mathcal{S}| = \\theta = R - 2f`.
  2. Aggregation. For every coordinate :math:`k`, with :math:`\\mu_k` the
     median of :math:`\\{x_{ik} : i \\in \\mathcal{S}\\}`, average the
     :math:`\\beta = \\theta - 2f` selected values closest to :math:`\\mu_k`:

  .. math::
    \\operatorname{Bulyan}(x)_k = \\frac{1}{\\beta}
    \\sum_{i \\in M_k} x_{ik}, \\qquad
    M_k = \\arg\\min_{|M| = \\beta,\\, M \\subseteq \\mathcal{S}}
    \\sum_{i \\in M} |x_{ik} - \\mu_k| .

  Erasures (rows with any NaN/Inf) are never selected and are never
  neighbours; they stay in the remaining set's count (they are among the
  ``f`` Byzantine workers). With more than ``f`` erasures fewer than
  :math:`\\theta` live workers may be left; the selection then stops early
  and the second stage averages :math:`\\max(|\\mathcal{S}| - 2f, 1)` values
  (the median when that is 1). On an exact tie of distances to the median
  (values ``mu - t`` and ``mu + t`` competing for the last place) the
  smaller value is kept.

  Each output coordinate lies within the range of the honest values of that
  coordinate while at most ``f`` workers are Byzantine, whatever they send
  (1e30, 3e38), and the mean is computed overflow-safely.

  .. warning::
    ``updates`` is stacked: every leaf has a leading worker axis ``R``; the
    result has that axis removed.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    num_byzantine: :math:`f`, the number of Byzantine workers tolerated
      (Python int, :math:`R \\ge 4f + 3`).
    return_info: also return a :class:`BulyanInfo` (scores in the squared
      units of the updates, as for Krum).

  Returns:
    The Bulyan aggregate, shaped like one worker's update (zeros if no worker
    is live); with ``return_info=True`` a tuple ``(aggregate, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.aggregators.bulyan import bulyan
    >>> x = {'w': jnp.array([[0.], [1.], [2.], [3.], [4.], [5.], [1e30]])}
    >>> bulyan(x, num_byzantine=1)['w']
    Array([2.], dtype=float32)

  References:
    El Mhamdi, Guerraoui & Rouault, `The Hidden Vulnerability of Distributed
    Learning in Byzantium <https://arxiv.org/abs/1802.07927>`_, ICML 2018
    (Section 4, Bulyan).

    Blanchard et al., `Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent
    <https://papers.nips.cc/paper/6617-machine-learning-with-adversaries-byzantine-tolerant-gradient-descent>`_,
    NeurIPS 2017 (Krum).
  """
  r = btree.num_workers(updates)
  f = _checks.check_int("num_byzantine", num_byzantine, low=0)
  if 4 * f + 3 > r:
    raise ValueError(
        f"num_byzantine={num_byzantine!r} is too large for R = {r} workers: "
        "Bulyan needs R >= 4 * num_byzantine + 3.")
  theta = r - 2 * f

  pair = _pairwise_sq_dists(updates)
  first_scores = _krum_scores(pair.sq_dists, pair.live, r - f - 2)

  def select_one(t, carry):
    remaining, selected, order = carry
    active = remaining & pair.live
    scores = _krum_scores(pair.sq_dists, active, r - t - f - 2)
    best = jnp.argmin(scores)
    found = jnp.any(active)
    selected = selected.at[best].set(selected[best] | found)
    remaining = remaining.at[best].set(remaining[best] & ~found)
    order = order.at[t].set(jnp.where(found, best, -1).astype(jnp.int32))
    return remaining, selected, order

  init = (jnp.ones([r], bool), jnp.zeros([r], bool),
          jnp.full([theta], -1, jnp.int32))
  _, selected, order = jax.lax.fori_loop(0, theta, select_one, init)

  num_selected = jnp.sum(selected, dtype=jnp.int32)
  out = _sorted_map(
      pair.clean, selected,
      lambda s: _closest_to_median_mean(s, num_selected, f))
  if not return_info:
    return out
  scores = jnp.where(pair.live, jnp.ldexp(first_scores, 2 * pair.exponent),
                     jnp.inf)
  return out, BulyanInfo(selected=selected, order=order, scores=scores)
