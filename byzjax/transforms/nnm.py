"""Nearest-neighbour mixing (Allouah et al., AISTATS 2023, Algorithm 1).

A pre-aggregation rule: before a robust aggregator ``F``, every worker's
update is replaced by the average of its ``R - f`` nearest updates (itself
included),

.. math::
  y_i = \\frac{1}{R - f} \\sum_{j \\in N_i} x_j , \\qquad
  N_i = \\text{the } R - f \\text{ rows closest to } x_i
  \\text{ (Euclidean distance, } i \\in N_i) ,

and ``F`` is applied to :math:`y_1, \\dots, y_R`. Mixing shrinks the spread
of the honest inputs (their heterogeneity) while keeping every mixed vector
close to some honest one, so that ``F`` o NNM keeps the guarantee of ``F``
under heterogeneous (non-i.i.d.) data (Allouah et al., Theorem 1 / Lemma 1:
for ``F`` in CWTM, CWMed, GM, Krum, the composition is
:math:`(f, \\kappa)`-robust with :math:`\\kappa = O(f / R)`).

Cost: the pairwise distances come from one ``R x R`` Gram matrix of
standardized rows (as in :mod:`byzjax.aggregators.krum`, which explains why
that is precise and overflow-safe), the neighbour sets from ``O(R^2 log R)``
work on the small matrix, and the mixed rows from one ``R x R`` by ``R x d``
product (each output row is a mean of ``R - f`` input rows, so this is the
size of the output's definition). Rows farther than
:data:`byzjax.tree.TAME_RADIUS` (``2**20``) typical distances from the
centre are ranked by their tamed positions (as in Krum): this never changes
an honest row's neighbourhood unless honest rows themselves lie that far
apart, but the neighbourhoods of such far (Byzantine) rows among themselves
may differ from exact arithmetic. Their mixed values are finite means of
actual rows either way.

Erasures (rows with any NaN/Inf entry) are never neighbours and stay erased:
an erased row comes out all-NaN, so the aggregator that follows excludes it
as it excludes any erasure. Erasures count among the ``f`` Byzantine workers
(the neighbour count stays ``R - f``, clamped to the number of live rows when
more than ``f`` rows are erased). Giving an erased row a mixed value instead
(say, the mixture around some live row) would invent an honest-looking input
that no worker sent and hand it double weight; leaving it erased keeps the
downstream rule's count of bad inputs at most ``f``, which is what its
guarantee needs.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.transforms._stateless import stateless_map
from byzjax.aggregators.krum import _pairwise_sq_dists

PyTree = Any


class NNMInfo(NamedTuple):
  """Diagnostics of :func:`nearest_neighbor_mixing`."""
  neighbours: jax.Array  # bool, shape [R, R]: neighbours[i, j] iff j in N_i
  live: jax.Array        # bool, shape [R]: rows without a non-finite entry


def _check_num_byzantine(num_byzantine, r: int) -> int:
  f = _checks.check_int("num_byzantine", num_byzantine, low=0)
  if 2 * f >= r:
    raise ValueError(
        f"num_byzantine={num_byzantine!r} is too large for R = {r} workers: "
        "nearest-neighbour mixing needs 2 * num_byzantine < R (a Byzantine "
        "minority).")
  return f


def _neighbour_sets(sq_dists: jax.Array, live: jax.Array,
                    count: jax.Array) -> jax.Array:
  """``sel[i, j]``: ``j`` is among the ``count`` live rows nearest to ``i``.

  Row ``i`` itself always comes first (even when other rows coincide with
  it); ties are broken by worker index. Erased columns are never selected;
  erased rows select nothing.
  """
  r = live.shape[0]
  eye = jnp.eye(r, dtype=bool)
  d = jnp.where(live[None, :], sq_dists, jnp.inf)
  d = jnp.where(eye, -1.0, d)
  order = jnp.argsort(d, axis=1, stable=True)
  rank = jnp.argsort(order, axis=1, stable=True)
  return (rank < count) & live[None, :] & live[:, None]


@public(stacked_output=True)
def nearest_neighbor_mixing(
    updates: PyTree,
    *,
    num_byzantine: int,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, NNMInfo]:
  """Nearest-neighbour mixing: each row becomes the mean of its neighbours.

  Row :math:`i` becomes the mean of the :math:`R - f` rows nearest to it,
  itself included (Allouah et al., Algorithm 1; see the module docstring
  for the rule, its cost and how erasures are handled). Ties in distance are
  broken by worker index; a row's own update is always among its
  neighbours. The means are overflow-safe (rows of 3e38 give finite means).

  .. warning::
    Input and output are both stacked (the same leading worker axis ``R``);
    an aggregator must follow.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    num_byzantine: :math:`f`, the number of Byzantine workers tolerated
      (Python int, :math:`2f < R`). ``f = 0`` replaces every row by the mean.
    return_info: also return an :class:`NNMInfo`.

  Returns:
    The mixed rows, stacked like ``updates`` (erased rows all-NaN); with
    ``return_info=True`` a tuple ``(mixed, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.transforms.nnm import nearest_neighbor_mixing
    >>> x = {'w': jnp.array([[0.], [1.], [2.], [10.], [1e30]])}
    >>> y = nearest_neighbor_mixing(x, num_byzantine=2)['w'][:, 0]
    >>> [round(float(v), 3) for v in y[:4]]
    [1.0, 1.0, 1.0, 4.333]

  References:
    Allouah, Farhadkhani, Guerraoui, Gupta, Pinot & Stephan, `Fixing by
    Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity
    <https://arxiv.org/abs/2302.01772>`_, AISTATS 2023 (Algorithm 1; Theorem 1
    for the guarantee of the composition).
  """
  r = btree.num_workers(updates)
  f = _check_num_byzantine(num_byzantine, r)
  pair = _pairwise_sq_dists(updates)
  live = pair.live
  count = jnp.minimum(r - f, jnp.sum(live, dtype=jnp.int32))
  sel = _neighbour_sets(pair.sq_dists, live, count)
  dtype = pair.sq_dists.dtype
  # Mean of `count` rows, overflow-safe: weights 2**-e with count < 2**e,
  # then the exact factor 2**e / count in (1, 2] (each accumulated sum is at
  # most max|x|).
  e = btree.pow2_exponent(count.astype(dtype))
  coef = jnp.ldexp(sel.astype(dtype), -e)
  factor = jnp.ldexp(jnp.ones([], dtype), e) / jnp.maximum(count, 1).astype(
      dtype)

  def mix(x):
    y = jnp.tensordot(coef.astype(x.dtype), x, axes=1,
                      precision=jax.lax.Precision.HIGHEST)
    y = y * factor.astype(x.dtype)
    return jnp.where(btree.per_row(y, live), y, jnp.nan).astype(x.dtype)

  out = jax.tree.map(mix, pair.clean)
  if not return_info:
    return out
  return out, NNMInfo(neighbours=sel, live=live)


def nnm(num_byzantine: int) -> optax.GradientTransformationExtraArgs:
  """Nearest-neighbour mixing as a transform before any aggregator.

  Maps stacked updates ``(R, ...)`` to stacked mixed updates ``(R, ...)``
  (see :func:`nearest_neighbor_mixing`), for the aggregator that follows:

  >>> import optax, byzjax
  >>> from byzjax.aggregators import trimmed_mean
  >>> tx = optax.chain(byzjax.nnm(2),
  ...                  byzjax.aggregate(trimmed_mean, trim_fraction=0.2),
  ...                  optax.sgd(0.1))

  .. warning::
    Input and output are both stacked (a leading worker axis ``R``); an
    aggregator must follow.

  Args:
    num_byzantine: :math:`f`, a Python int >= 0; :math:`2f < R` is checked
      at the first update (when ``R`` is known).

  Returns:
    A stateless :class:`optax.GradientTransformationExtraArgs`.

  References:
    Allouah et al., `Fixing by Mixing <https://arxiv.org/abs/2302.01772>`_,
    AISTATS 2023, Algorithm 1.
  """
  _checks.check_int("num_byzantine", num_byzantine, low=0)

  return stateless_map(nearest_neighbor_mixing, num_byzantine=num_byzantine)
