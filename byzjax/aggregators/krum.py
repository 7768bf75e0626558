"""Krum and Multi-Krum (Blanchard et al., 2017).

Krum scores every worker by how tightly it sits among its nearest
neighbours and returns the worker with the best score; Multi-Krum averages
the ``m`` best. Scores depend on the data only through pairwise distances, so
they are computed from one ``R x R`` Gram matrix (one matrix product over the
updates, accumulated block by block, :func:`byzjax.tree.chunked_gram`)
followed by ``O(R^2 log R)`` work on the small matrix; only the final
average reads the updates again.

Precision. Pairwise squared distances from a Gram matrix,
:math:`\\|u_i - u_j\\|^2 = K_{ii} + K_{jj} - 2 K_{ij}`, lose about
:math:`\\epsilon (\\|u_i\\|^2 + \\|u_j\\|^2)` to cancellation
(:math:`\\epsilon \\approx 6 \\cdot 10^{-8}` in float32). Gradients from
workers typically share a large common component (their mean) that dwarfs
their differences, so on raw updates the error could exceed the distances
themselves. The rows are therefore first standardized
(:func:`byzjax.tree.standardize`): centred at a point near the honest
majority and scaled by a power of two so that the typical distance to the
centre is about 1. Honest rows then have norms ``O(1)``, the cancellation
error is about :math:`\\epsilon` times the typical squared distance, and
squares of rows of 1e30 or 3e38 cannot overflow. Rows farther than
:data:`byzjax.tree.TAME_RADIUS` (``2**20``) typical distances from the centre
are pulled in along their ray to that radius; their scores stay at least
about :math:`2^{40}` typical squared distances, far above every honest
score, so this never changes which honest rows are selected. The selected
*original* rows are averaged.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.aggregators.coordinatewise import _weighted_mean

PyTree = Any

# Neighbour-count conventions: the paper's R - f - 2, or R - f - 1.
NEIGHBOURS = {"blanchard": 2, "byzfl": 1}


class KrumInfo(NamedTuple):
  """Diagnostics of :func:`krum`."""
  scores: jax.Array    # float, shape [R]: Krum scores (inf = erased)
  selected: jax.Array  # bool, shape [R]: the workers that were averaged


class _PairwiseDistances(NamedTuple):
  clean: PyTree        # the updates with erased rows zeroed
  live: jax.Array      # bool, shape [R]
  sq_dists: jax.Array  # float, shape [R, R]: standardized squared distances
  exponent: jax.Array  # int32, shape (): distances are in units of 2**exponent


def _pairwise_sq_dists(updates: PyTree) -> _PairwiseDistances:
  """Standardized pairwise squared distances from one Gram matrix."""
  clean, live = btree.zero_erasures(updates)
  u, std = btree.standardize(clean, live)
  sq_dists = btree.gram_sq_dists(btree.worker_gram(u))
  return _PairwiseDistances(clean, live, sq_dists, std.exponent)


class _KrumDistances(NamedTuple):
  benign: jax.Array    # bool, shape (): rows used in place (all finite)
  live: jax.Array      # bool, shape [R]
  sq_dists: jax.Array  # float, shape [R, R]: squared distances / 4**exponent
  exponent: jax.Array  # int32, shape ()


# Rows whose entries are all below 2**_BENIGN_EXP in magnitude (and finite)
# give a Gram matrix that cannot overflow without scaling.
_BENIGN_EXP = 40


def _krum_sq_dists(updates: PyTree) -> _KrumDistances:
  """Pairwise squared distances for Krum from one read of the updates.

  Benign rows (finite, entries below ``2**40``, typical squared distance to
  the block centres above ``2**-80`` so nothing underflows) take the Gram
  matrix of :func:`byzjax.tree.chunked_gram` directly: one read, no
  standardized copy. Otherwise (:func:`jax.lax.cond`) the rows are
  standardized first, as in :func:`_pairwise_sq_dists`.
  """
  r = btree.num_workers(updates)
  gram, mabs = btree.chunked_gram(updates)
  typical = jnp.sort(jnp.diagonal(gram))[r // 2]
  benign = (jnp.all(mabs <= 2.0**_BENIGN_EXP)  # False for NaN too
            & (typical >= 2.0**-80) & jnp.all(jnp.isfinite(gram)))

  def slow(x):
    pair = _pairwise_sq_dists(x)
    return pair.live, pair.sq_dists, pair.exponent

  live, sq_dists, exponent = jax.lax.cond(
      benign,
      lambda x: (jnp.ones((r,), bool), btree.gram_sq_dists(gram),
                 jnp.zeros([], jnp.int32)),
      slow, updates)
  return _KrumDistances(benign, live, sq_dists, exponent)


def _krum_scores(sq_dists: jax.Array, active: jax.Array,
                 num_neighbours: jax.Array | int) -> jax.Array:
  """Krum scores of the active rows among the active rows.

  ``score_i = sum of the num_neighbours smallest ||x_i - x_j||^2`` over
  active ``j != i``; the count is clamped to ``[0, n_active - 1]`` so that
  inactive rows never count as neighbours. Inactive rows score ``inf``.

  Args:
    sq_dists: pairwise squared distances ``[R, R]`` (finite).
    active: boolean ``[R]``: the candidate set.
    num_neighbours: the neighbour count (``n - f - 2`` in the paper).

  Returns:
    Scores, shape ``[R]``.
  """
  r = active.shape[0]
  n_active = jnp.sum(active, dtype=jnp.int32)
  k = jnp.clip(num_neighbours, 0, jnp.maximum(n_active - 1, 0))
  neighbour = active[None, :] & ~jnp.eye(r, dtype=bool)
  d = jnp.where(neighbour, sq_dists, jnp.inf)
  d = jnp.sort(d, axis=1)
  score = jnp.sum(jnp.where(jnp.arange(r)[None, :] < k, d, 0), axis=1)
  return jnp.where(active, score, jnp.inf)


@public
def krum(
    updates: PyTree,
    *,
    num_byzantine: int,
    num_selected: int = 1,
    neighbours: str = "blanchard",
    return_info: bool = False,
) -> PyTree | tuple[PyTree, KrumInfo]:
  """Krum / Multi-Krum aggregation (Blanchard et al., 2017).

  With :math:`f` Byzantine workers among :math:`R`, worker :math:`i`'s score
  is the sum of squared distances to its :math:`R - f - 2` nearest
  neighbours,

  .. math::
    s(i) = \\sum_{j \\in N_i} \\|x_i - x_j\\|^2 ,

  where :math:`N_i` are the :math:`R - f - 2` workers :math:`j \\ne i`
  closest to :math:`x_i` (the paper's Section 4). Krum returns the update
  with the smallest score; Multi-Krum (``num_selected = m``) averages the
  ``m`` updates with the smallest scores (ties broken by worker index).
  Krum needs :math:`2f + 2 < R`.

  Neighbour count. Blanchard et al. (Section 4) define :math:`N_i` as the
  :math:`R - f - 2` closest other workers (``neighbours="blanchard"``, the
  default, used by their analysis). Some libraries (ByzFL, for one) sum
  over :math:`R - f - 1` neighbours instead;
  ``neighbours="byzfl"`` gives that convention, for comparisons with
  results obtained with it. On the same inputs the two can select different
  workers.

  Erasures (rows with any NaN/Inf) are never selected and are not
  neighbours; they count among the ``f`` Byzantine workers, so the neighbour
  count stays :math:`R - f - 2` (clamped to the number of other live
  workers). With fewer than ``m`` live workers, all live ones are averaged.
  See the module docstring for how distances are computed (one Gram matrix
  of standardized rows) and why that is precise and overflow-safe.

  .. warning::
    ``updates`` is stacked: every leaf has a leading worker axis ``R``; the
    result has that axis removed.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    num_byzantine: :math:`f`, the number of Byzantine workers tolerated
      (Python int, :math:`2f + 2 < R`).
    num_selected: :math:`m \\in [1, R]`, the number of best-scored updates
      averaged (1 is Krum, more is Multi-Krum).
    neighbours: ``"blanchard"`` (:math:`R - f - 2` neighbours, the paper's)
      or ``"byzfl"`` (:math:`R - f - 1`, ByzFL's convention).
    return_info: also return a :class:`KrumInfo`; its scores are in the
      squared units of the updates (they overflow to ``inf`` only if the
      honest spread itself is beyond ~1e19; rows beyond the taming radius get
      the scores of their tamed positions).

  Returns:
    The selected update (or the mean of the selected updates), shaped like
    one worker's update (zeros if no worker is live); with
    ``return_info=True`` a tuple ``(aggregate, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.aggregators.krum import krum
    >>> x = {'w': jnp.array([[0., 0.], [1., 0.], [0., 2.], [1.1, 0.2],
    ...                      [1e30, -1e30]])}
    >>> krum(x, num_byzantine=1)['w']
    Array([1., 0.], dtype=float32)
    >>> krum(x, num_byzantine=1, num_selected=2)['w']
    Array([1.05, 0.1 ], dtype=float32)

  References:
    Blanchard, El Mhamdi, Guerraoui & Stainer, `Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent
    <https://papers.nips.cc/paper/6617-machine-learning-with-adversaries-byzantine-tolerant-gradient-descent>`_,
    NeurIPS 2017 (Krum: Section 4; Multi-Krum: Section 5).
  """
  r = btree.num_workers(updates)
  f = _checks.check_int("num_byzantine", num_byzantine, low=0)
  if 2 * f + 2 >= r:
    raise ValueError(
        f"num_byzantine={num_byzantine!r} is too large for R = {r} workers: "
        "Krum needs 2 * num_byzantine + 2 < R.")
  m = _checks.check_int("num_selected", num_selected, low=1, high=r)
  if neighbours not in NEIGHBOURS:
    raise ValueError(f"neighbours must be one of {tuple(NEIGHBOURS)}, got "
                     f"{neighbours!r}.")

  pair = _krum_sq_dists(updates)
  scores = _krum_scores(pair.sq_dists, pair.live,
                        r - f - NEIGHBOURS[neighbours])
  rank = jnp.argsort(jnp.argsort(scores, stable=True), stable=True)
  selected = pair.live & (rank < m)
  dtype = pair.sq_dists.dtype
  # Benign rows are all finite: average them in place; otherwise zero the
  # erased rows first (0 * inf is NaN even at weight zero).
  out, _ = jax.lax.cond(
      pair.benign,
      lambda x: _weighted_mean(x, selected.astype(dtype)),
      lambda x: _weighted_mean(btree.zero_erasures(x)[0],
                               selected.astype(dtype)), updates)
  if not return_info:
    return out
  scores = jnp.where(pair.live, jnp.ldexp(scores, 2 * pair.exponent), jnp.inf)
  return out, KrumInfo(scores=scores, selected=selected)
