"""MoNNA, the mean of a trusted worker's nearest neighbours (Farhadkhani et
al., ICML 2023).

The server (or an honest node) trusts one worker ``t`` — its own update,
say — and averages the ``R - f`` updates nearest to it, ``x_t`` included.
Only the ``R`` distances to ``x_t`` are needed (one read of the updates, no
Gram matrix); they are kept as ``n_i 2^{e_i}`` (:func:`byzjax.tree.
exact_row_norms` of ``x_i - x_t``), so they are ranked exactly even for rows
of 3e38 whose distance exceeds float's range.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.aggregators.coordinatewise import _weighted_mean

PyTree = Any


class MoNNAInfo(NamedTuple):
  """Diagnostics of :func:`monna`."""
  dists: jax.Array         # float, shape [R]: ||x_i - x_t|| (inf: erased/beyond range)
  selected: jax.Array      # bool, shape [R]: the workers that were averaged
  trusted_live: jax.Array  # bool, shape (): the trusted worker's row is finite


@public
def monna(
    updates: PyTree,
    *,
    num_byzantine: int,
    trusted_index: int = 0,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, MoNNAInfo]:
  """Mean of the nearest neighbours of a trusted worker (MoNNA).

  With :math:`t` the trusted worker,

  .. math::
    \\operatorname{MoNNA}(x_1, \\dots, x_R) = \\frac{1}{R - f}
    \\sum_{i \\in N_t} x_i ,

  where :math:`N_t` are the :math:`R - f` workers nearest to :math:`x_t`
  in Euclidean distance, :math:`t` itself included (Farhadkhani et al.,
  Section 3, where every honest node applies it around its own (momentum)
  vector; here the server applies it around the worker it trusts). Ties in
  distance are broken by worker index; :math:`x_t` always comes first.

  Erasures (rows with any NaN/Inf) are never neighbours and count among the
  ``f`` Byzantine workers (``min(R - f, n)`` rows are averaged when more
  than ``f`` of the ``R`` rows are erased). If the trusted worker's own row
  is erased there is no reference point: the aggregate is zeros (no step),
  as when no worker is live, and ``info.trusted_live`` is ``False``. The
  average is overflow-safe.

  .. warning::
    ``updates`` is stacked: every leaf has a leading worker axis ``R``; the
    result has that axis removed.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    num_byzantine: :math:`f`, the number of Byzantine workers tolerated
      (Python int, :math:`2f < R`).
    trusted_index: :math:`t`, the trusted worker's index (Python int in
      ``[0, R - 1]``).
    return_info: also return a :class:`MoNNAInfo`.

  Returns:
    The aggregate, shaped like one worker's update; with
    ``return_info=True`` a tuple ``(aggregate, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.aggregators.monna import monna
    >>> x = {'w': jnp.array([[0., 0.], [1., 0.], [5., 0.], [0., 1.],
    ...                      [1e30, 0.]])}
    >>> monna(x, num_byzantine=2)['w'].tolist()
    [0.3333333432674408, 0.3333333432674408]

  References:
    Farhadkhani, Guerraoui, Gupta, Hoang, Pinot & Stephan, `Robust
    Collaborative Learning with Linear Gradient Overhead
    <https://arxiv.org/abs/2209.10931>`_, ICML 2023 (Section 3, MoNNA).
  """
  r = btree.num_workers(updates)
  f = _checks.check_int("num_byzantine", num_byzantine, low=0)
  if 2 * f >= r:
    raise ValueError(
        f"num_byzantine={num_byzantine!r} is too large for R = {r} workers: "
        "MoNNA needs 2 * num_byzantine < R (a Byzantine minority).")
  t = _checks.check_int("trusted_index", trusted_index, low=0, high=r - 1)
  clean, live = btree.zero_erasures(updates)
  diff = jax.tree.map(lambda x: x - x[t][None], clean)
  n, e = btree.exact_row_norms(diff)
  n = jnp.where(live, n, jnp.inf)
  key_e, key_m = btree.exact_norm_keys(n, e)
  idx = jnp.arange(r)
  # The trusted row first, then ascending distance, ties by index.
  not_trusted = (idx != t).astype(jnp.int32)
  order = jnp.lexsort((idx, key_m, key_e, not_trusted))
  rank = jnp.argsort(order, stable=True)
  count = jnp.minimum(r - f, jnp.sum(live, dtype=jnp.int32))
  selected = live & (rank < count) & live[t]
  dtype = n.dtype
  out, _ = _weighted_mean(clean, selected.astype(dtype))
  if not return_info:
    return out
  dists = jnp.where(live, jnp.ldexp(n, e), jnp.inf)
  return out, MoNNAInfo(dists=dists, selected=selected, trusted_live=live[t])
