"""Minimum-diameter averaging (MDA), exact by enumeration.

MDA averages the ``R - f`` workers whose set has the smallest diameter (the
largest pairwise distance within the set). Finding that set is a
combinatorial problem; here it is solved exactly by enumerating all
:math:`\\binom{R}{f}` removed sets, which is practical for small
:math:`\\binom{R}{f}` only (see :mod:`byzjax.aggregators._subsets` for the
bound and the error raised beyond it).

Cost. One ``R x R`` Gram matrix of the updates gives all pairwise squared
distances (shared with Krum: :func:`byzjax.aggregators.krum._krum_sq_dists`,
standardized when rows are huge or erased, so 1e30 and 3e38 rows cannot
overflow); the diameter of every subset is then a masked maximum over the
``R (R - 1) / 2`` pairs, :math:`O(\\binom{R}{f} R^2)` comparisons on the small
matrix, computed chunk by chunk. Only the final mean reads the updates again.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.aggregators import _subsets
from byzjax.aggregators.coordinatewise import _weighted_mean
from byzjax.aggregators.krum import _krum_sq_dists

PyTree = Any


class MDAInfo(NamedTuple):
  """Diagnostics of :func:`mda`."""
  selected: jax.Array  # bool, shape [R]: the workers that were averaged
  diameter: jax.Array  # float, shape (): diameter of the selected set (inf:
                       # more than f rows erased, all live rows averaged)


def _diameters(sq_dists: jax.Array, bad: jax.Array, r: int, f: int,
               chunk: int) -> jax.Array:
  """Squared diameter of every kept set, ``[num_chunks * chunk]``.

  ``bad`` marks erased rows: a kept set containing one has diameter inf.
  """
  iu, ju = np.triu_indices(r, k=1)
  pair_d = sq_dists[iu, ju]                                   # [P]
  pair_bad = bad[iu] | bad[ju]
  pair_d = jnp.where(pair_bad, jnp.inf, pair_d)
  table = jnp.asarray(_subsets.removed_table(r, f, chunk))    # [n, chunk, f]

  def one_chunk(removed):
    out = jnp.zeros((removed.shape[0], r), bool)
    out = out.at[jnp.arange(removed.shape[0])[:, None], removed].set(True)
    hit = out[:, iu] | out[:, ju]                             # [chunk, P]
    return jnp.max(jnp.where(hit, -jnp.inf, pair_d[None, :]), axis=1,
                   initial=0.0)

  return jax.lax.map(one_chunk, table).reshape(-1)


@public
def mda(
    updates: PyTree,
    *,
    num_byzantine: int,
    max_subsets: int = _subsets.MAX_SUBSETS,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, MDAInfo]:
  """Minimum-diameter averaging: the mean of the tightest ``R - f`` workers.

  .. math::
    S^\\star \\in \\operatorname*{arg\\,min}_{S \\subseteq [R],\\ |S| = R - f}
    \\ \\max_{i, j \\in S} \\|x_i - x_j\\|, \\qquad
    \\operatorname{MDA}(x_1, \\dots, x_R) = \\frac{1}{R - f}
    \\sum_{i \\in S^\\star} x_i .

  This is the rule of El Mhamdi, Guerraoui & Rouault (the minimum-diameter
  subset of Rousseeuw's minimum volume ellipsoid idea, used by them as a
  robust averaging rule with :math:`R \\ge 2f + 1`); the paper's text is not
  in this repository, so the section and equation number are not quoted
  here. Ties between subsets of
  equal diameter are broken by the lexicographic order of the *removed*
  sets (the first set of removed indices wins), so the result is
  permutation invariant except on exact ties.

  Exact enumeration. All :math:`\\binom{R}{f}` subsets are scored, so the
  cost is :math:`\\binom{R}{f} \\cdot R^2/2` comparisons on the ``R x R``
  distance matrix (plus one Gram matrix and one mean over the updates).
  ``max_subsets`` bounds :math:`\\binom{R}{f}` (default
  :data:`~byzjax.aggregators._subsets.MAX_SUBSETS` = 65536, e.g. ``R = 20,
  f = 5`` is 15504 subsets, ``R = 128, f = 2`` is 8128); beyond it a
  ``ValueError`` (:class:`~byzjax.aggregators._subsets.TooManySubsetsError`)
  is raised at trace time, naming the alternatives: raise the bound, or use
  :func:`~byzjax.aggregators.krum` (Multi-Krum) or the NNM + trimmed-mean
  composition, which cost polynomial time.

  Erasures (rows with a NaN or Inf entry) are never selected and count among
  the ``f``: sets containing one have infinite diameter. If more than ``f``
  rows are erased, no set of ``R - f`` live rows exists and the mean of the
  live rows is returned (``info.diameter`` is ``inf``). Distances come from
  one Gram matrix of standardized rows (as in
  :func:`~byzjax.aggregators.krum`), so rows of 1e30 or 3e38 neither
  overflow nor win; the selected *original* rows are averaged
  (overflow-safe).

  .. warning::
    ``updates`` is stacked: every leaf has a leading worker axis ``R``; the
    result has that axis removed.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    num_byzantine: :math:`f`, the number of Byzantine workers tolerated
      (Python int, :math:`2f < R`).
    max_subsets: the enumeration bound on :math:`\\binom{R}{f}` (Python int).
    return_info: also return an :class:`MDAInfo` (the selected workers and
      the set's diameter, in the units of the updates).

  Returns:
    The mean of the selected workers, shaped like one worker's update; with
    ``return_info=True`` a tuple ``(aggregate, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.aggregators.mda import mda
    >>> x = {'w': jnp.array([[0., 0.], [1., 0.], [0., 1.], [9., 9.],
    ...                      [1e30, -1e30]])}
    >>> mda(x, num_byzantine=2)['w'].tolist()
    [0.3333333432674408, 0.3333333432674408]

  References:
    El Mhamdi, Guerraoui & Rouault, `The Hidden Vulnerability of
    Distributed Learning in Byzantium <https://arxiv.org/abs/1802.07927>`_,
    ICML 2018 (section not verified here); MDA is also used in El Mhamdi,
    Guerraoui & Rouault, Distributed Momentum for Byzantine-resilient
    Stochastic Gradient Descent, ICLR 2021.

    Rousseeuw, Multivariate estimation with high breakdown point,
    Mathematical Statistics and Applications, 1985.
  """
  r = btree.num_workers(updates)
  f = _checks.check_int("num_byzantine", num_byzantine, low=0)
  if 2 * f >= r:
    raise ValueError(
        f"num_byzantine={num_byzantine!r} is too large for R = {r} workers: "
        "MDA needs 2 * num_byzantine < R (a Byzantine minority).")
  count = _subsets.check_enumeration(
      "mda", r, f, max_subsets,
      "krum (Multi-Krum, num_selected = R - f) or nnm + trimmed_mean")

  pair = _krum_sq_dists(updates)
  live = pair.live
  dtype = pair.sq_dists.dtype
  chunk = _subsets.chunk_size(count, r * (r - 1) // 2 + r)
  diam = _diameters(pair.sq_dists, ~live, r, f, chunk)
  best = jnp.argmin(diam)
  table = _subsets.removed_table(r, f, chunk)
  table = table.reshape(table.shape[0] * table.shape[1], f)
  removed = jnp.asarray(table)[best]
  chosen = jnp.ones((r,), bool).at[removed].set(False)
  enough = jnp.isfinite(diam[best])
  selected = jnp.where(enough, chosen & live, live)
  clean, _ = btree.zero_erasures(updates)
  out, _ = _weighted_mean(clean, selected.astype(dtype))
  if not return_info:
    return out
  diameter = jnp.where(
      enough, jnp.ldexp(jnp.sqrt(diam[best]), pair.exponent), jnp.inf)
  return out, MDAInfo(selected=selected, diameter=diameter.astype(dtype))
