"""Smallest maximum eigenvalue averaging (SMEA), exact by enumeration.

SMEA averages the ``R - f`` workers whose empirical covariance has the
smallest largest eigenvalue. Like :func:`~byzjax.aggregators.mda` it
enumerates all :math:`\\binom{R}{f}` removed sets (bounded, see
:mod:`byzjax.aggregators._subsets`).

Cost. The top eigenvalue of a subset's covariance equals the top eigenvalue
of its ``(R - f) x (R - f)`` centred Gram matrix divided by ``R - f``, and the
centred Gram matrix depends only on pairwise distances (classical scaling):
with :math:`D_S` the squared distances within ``S`` and
:math:`H = I - \\frac{1}{m}\\mathbf{1}\\mathbf{1}^\\top`, ``m = R - f``,

.. math::
  K_S = -\\tfrac12 H D_S H, \\qquad
  \\lambda_{\\max}\\Big(\\frac1m \\sum_{i \\in S} (x_i - \\bar x_S)
  (x_i - \\bar x_S)^\\top\\Big) = \\frac{\\lambda_{\\max}(K_S)}{m}.

So one ``R x R`` Gram matrix of the (standardized) updates serves every
subset; each subset then costs one symmetric eigenvalue problem of size
``m`` (:func:`jax.numpy.linalg.eigvalsh`, exact, batched over a chunk of
subsets), :math:`O(\\binom{R}{f} m^3)` in all. Only the final mean reads the
updates again.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.aggregators import _subsets
from byzjax.aggregators.coordinatewise import _weighted_mean
from byzjax.aggregators.krum import _krum_sq_dists

PyTree = Any

# Default bound on C(R, f) for SMEA (each subset costs an eigenproblem).
MAX_SUBSETS = 2**14


class SMEAInfo(NamedTuple):
  """Diagnostics of :func:`smea`."""
  selected: jax.Array      # bool, shape [R]: the workers that were averaged
  max_eigval: jax.Array    # float, shape (): top covariance eigenvalue of the
                           # selected set (inf: more than f rows erased)


def _top_eigvals(sq_dists: jax.Array, bad: jax.Array, r: int, f: int,
                 chunk: int) -> jax.Array:
  """Top eigenvalue of every kept set's centred Gram matrix ``K_S``."""
  m = r - f
  table = jnp.asarray(_subsets.kept_table(r, f, chunk))    # [n, chunk, m]
  h = jnp.eye(m, dtype=sq_dists.dtype) - 1.0 / m

  def one_chunk(kept):
    d = sq_dists[kept[:, :, None], kept[:, None, :]]       # [chunk, m, m]
    k = -0.5 * jnp.matmul(jnp.matmul(h, d, precision="highest"), h,
                          precision="highest")
    k = 0.5 * (k + jnp.swapaxes(k, 1, 2))
    lam = jnp.linalg.eigvalsh(k)[:, -1]
    return jnp.where(jnp.any(bad[kept], axis=1), jnp.inf, lam)

  return jax.lax.map(one_chunk, table).reshape(-1)


@public
def smea(
    updates: PyTree,
    *,
    num_byzantine: int,
    max_subsets: int = MAX_SUBSETS,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, SMEAInfo]:
  """Smallest maximum eigenvalue averaging (SMEA).

  .. math::
    S^\\star \\in \\operatorname*{arg\\,min}_{S \\subseteq [R],\\ |S| = R - f}
    \\lambda_{\\max}\\Big(\\frac{1}{|S|} \\sum_{i \\in S} (x_i - \\bar x_S)
    (x_i - \\bar x_S)^\\top\\Big), \\qquad
    \\operatorname{SMEA}(x_1, \\dots, x_R) = \\bar x_{S^\\star}
    = \\frac{1}{R - f} \\sum_{i \\in S^\\star} x_i

  (Allouah et al., ICML 2023; the paper's text is not in this repository,
  so no section or equation number is quoted).
  The covariance is normalised by :math:`|S|`; normalising by
  :math:`|S| - 1` instead (as some implementations do) scales every
  subset's score by the same factor and selects the same set. Ties between
  subsets are broken by the lexicographic order of the removed sets.

  Exact enumeration: :math:`\\binom{R}{f} \\le` ``max_subsets`` (default
  :data:`MAX_SUBSETS` = 16384: e.g. ``R = 17, f = 4`` is 2380 subsets),
  checked at trace time; beyond it a ``ValueError``
  (:class:`~byzjax.aggregators._subsets.TooManySubsetsError`) names the
  alternatives (raise the bound, or use
  :func:`~byzjax.aggregators.caf`, the polynomial-time filter of the same
  family, or :func:`~byzjax.aggregators.spectral_filter`).

  Erasures (rows with a NaN or Inf entry) are never selected and count among
  the ``f``; with more than ``f`` erased rows the mean of the live rows is
  returned (``info.max_eigval`` is ``inf``). Distances come from one Gram
  matrix of standardized rows (as in :func:`~byzjax.aggregators.krum`), so
  rows of 1e30 or 3e38 cannot overflow; the selected original rows are
  averaged (overflow-safe).

  .. warning::
    ``updates`` is stacked: every leaf has a leading worker axis ``R``; the
    result has that axis removed.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    num_byzantine: :math:`f` (Python int, :math:`2f < R`).
    max_subsets: the enumeration bound on :math:`\\binom{R}{f}`.
    return_info: also return an :class:`SMEAInfo` (the eigenvalue is in the
      squared units of the updates).

  Returns:
    The mean of the selected workers, shaped like one worker's update; with
    ``return_info=True`` a tuple ``(aggregate, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.aggregators.smea import smea
    >>> x = {'w': jnp.array([[0., 0.], [1., 0.], [0., 1.], [9., 9.],
    ...                      [1e30, -1e30]])}
    >>> smea(x, num_byzantine=2)['w'].tolist()
    [0.3333333432674408, 0.3333333432674408]

  References:
    Allouah, Guerraoui, Gupta, Pinot & Stephan, On the Privacy-Robustness-
    Utility Trilemma in Distributed Learning, ICML 2023 (SMEA; section and
    equation not verified here).
  """
  r = btree.num_workers(updates)
  f = _checks.check_int("num_byzantine", num_byzantine, low=0)
  if 2 * f >= r:
    raise ValueError(
        f"num_byzantine={num_byzantine!r} is too large for R = {r} workers: "
        "SMEA needs 2 * num_byzantine < R (a Byzantine minority).")
  count = _subsets.check_enumeration(
      "smea", r, f, max_subsets, "caf or spectral_filter")
  m = r - f

  pair = _krum_sq_dists(updates)
  live = pair.live
  dtype = pair.sq_dists.dtype
  chunk = _subsets.chunk_size(count, m * m * 8, budget=2**20)
  lam = _top_eigvals(pair.sq_dists, ~live, r, f, chunk)
  best = jnp.argmin(lam)
  table = _subsets.kept_table(r, f, chunk)
  table = table.reshape(table.shape[0] * table.shape[1], m)
  chosen = jnp.zeros((r,), bool).at[jnp.asarray(table)[best]].set(True)
  enough = jnp.isfinite(lam[best])
  selected = jnp.where(enough, chosen & live, live)
  clean, _ = btree.zero_erasures(updates)
  out, _ = _weighted_mean(clean, selected.astype(dtype))
  if not return_info:
    return out
  eig = jnp.maximum(lam[best], 0.0) / m
  eig = jnp.where(enough, jnp.ldexp(eig, 2 * pair.exponent), jnp.inf)
  return out, SMEAInfo(selected=selected, max_eigval=eig.astype(dtype))
