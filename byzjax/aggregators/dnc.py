"""DnC, divide-and-conquer filtering (Shejwalkar & Houmansadr, NDSS 2021).

Each iteration samples a random set of ``b`` coordinates, centres the
workers' sub-vectors at their mean, scores every worker by its squared
projection on the top singular direction of the centred ``R x b`` matrix and
keeps the ``R - c f`` lowest scores; the aggregate is the mean of the workers
kept in every iteration.

Cost. The sub-vectors are gathered leaf by leaf (no concatenation of the
update tree; coordinates are indexed globally across the leaves in tree
order), so one iteration reads ``R x b`` entries; the top singular direction
comes from the ``R x R`` Gram matrix of the sub-vectors (its top eigenvector
``u`` gives the scores :math:`s_i = \\sigma^2 u_i^2`), :math:`O(R^2 b + R^3)`.
Only the final mean reads the whole updates.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.aggregators.coordinatewise import _weighted_mean

PyTree = Any


class DnCInfo(NamedTuple):
  """Diagnostics of :func:`dnc`."""
  selected: jax.Array  # bool, shape [R]: kept in every iteration (averaged)
  scores: jax.Array    # float, shape [num_iters, R]: outlier scores per
                       # iteration (squared units; inf for erased rows)


def _gather_columns(stacked: PyTree, idx: jax.Array) -> jax.Array:
  """Columns ``idx`` (global indices in tree order) of the rows, ``[R, b]``."""
  out = None
  offset = 0
  for leaf in jax.tree.leaves(stacked):
    rows = jnp.reshape(leaf, (leaf.shape[0], -1))
    size = rows.shape[1]
    local = idx - offset
    inside = (local >= 0) & (local < size)
    vals = jnp.where(inside[None, :],
                     rows[:, jnp.clip(local, 0, max(size - 1, 0))], 0.0)
    out = vals if out is None else out + vals
    offset += size
  return out


def _scores(sub: jax.Array, live: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Squared projections on the top singular direction of the centred rows.

  Returns ``(scores, exponent)``: scores in units of ``4**exponent``.
  """
  u, std = btree.standardize({"w": sub}, live)
  u = u["w"]
  dtype = u.dtype
  gram = jnp.matmul(u, u.T, precision=jax.lax.Precision.HIGHEST)
  n_live = jnp.maximum(jnp.sum(live), 1).astype(dtype)
  w = live.astype(dtype) / n_live
  kw = gram @ w
  kc = gram - kw[None, :] - kw[:, None] + jnp.dot(w, kw)
  mask = live[:, None] & live[None, :]
  kc = jnp.where(mask, kc, 0.0)
  kc = 0.5 * (kc + kc.T)
  eigvals, eigvecs = jnp.linalg.eigh(kc)
  # Centred rows Y (live only): Y Y' = K_c; top left singular vector u and
  # singular value sigma give the projection on the top right singular
  # vector v = Y'u / sigma: (Y v)_i = sigma u_i, so s_i = sigma^2 u_i^2.
  lam = jnp.maximum(eigvals[-1], 0.0)
  scores = lam * jnp.square(eigvecs[:, -1])
  return jnp.where(live, scores, jnp.inf), std.exponent


@public
def dnc(
    updates: PyTree,
    *,
    num_byzantine: int,
    key: jax.Array | None = None,
    num_iters: int = 1,
    sub_dim: int = 10000,
    filter_frac: float = 1.0,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, DnCInfo]:
  """Divide-and-conquer (DnC) aggregation.

  For each of ``num_iters`` iterations (Shejwalkar & Houmansadr, their DnC
  algorithm; the paper's text is not in this repository, so the section and
  algorithm number are not quoted): sample ``b`` = ``sub_dim`` coordinates :math:`r` uniformly
  without replacement (all coordinates if ``b >= d``), form the sub-vectors
  :math:`x_{i,r}`, their mean :math:`\\mu_r`, the top right singular vector
  :math:`v` of the centred matrix :math:`[x_{i,r} - \\mu_r]_i`, the scores

  .. math::
    s_i = \\langle x_{i,r} - \\mu_r, v \\rangle^2 ,

  and the good set :math:`I` of the :math:`R - \\lfloor c f \\rfloor` workers
  with the lowest scores. The aggregate is the mean of the workers in the
  intersection of the good sets of all iterations (:math:`c` =
  ``filter_frac``).

  Defaults. ``sub_dim = 10000``, ``num_iters = 1`` and ``filter_frac = 1``
  are the values this module's author recalls from the paper and the peer
  libraries; the paper's own text is not in this repository, so they are not
  checked against it here. With ``c f``
  fractional, :math:`\\lfloor c f \\rfloor` workers are removed per
  iteration. The intersection can become empty when ``num_iters * c f >= R``;
  the aggregate is then zeros (no step) and ``info.selected`` is all False.

  Randomness only from ``key``: iteration ``t`` samples
  ``jax.random.choice(jax.random.split(key, num_iters)[t], d, (b,),
  replace=False)`` (global coordinate indices, leaves in tree order), so the
  same key gives the same coordinates. In
  an optax chain pass a fresh key per step with
  ``byzjax.aggregate(dnc, key=key, key_per_step=True, ...)`` (the key lives
  in the transform's state and is split on every update).

  Erasures (rows with a NaN or Inf entry) score ``inf``: they are removed
  first and count among the ``c f`` removed; if more are erased, all live
  rows stay in the good set. The sub-vectors are standardized
  (:func:`byzjax.tree.standardize`: centred, scaled by a power of two, rows
  beyond :data:`byzjax.tree.TAME_RADIUS` typical distances pulled in), so
  rows of 1e30 or 3e38 cannot overflow the scores; they score highest and
  are removed. The kept original rows are averaged (overflow-safe).

  .. warning::
    ``updates`` is stacked: every leaf has a leading worker axis ``R``; the
    result has that axis removed.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    num_byzantine: :math:`f` (Python int, :math:`2f < R`).
    key: a PRNG key (``jax.random.key(...)``) for the coordinate samples;
      required.
    num_iters: iterations (Python int >= 1); their good sets are
      intersected.
    sub_dim: coordinates sampled per iteration (Python int >= 1).
    filter_frac: :math:`c > 0`, removal per iteration in units of ``f``;
      :math:`\\lfloor c f \\rfloor < R` is required.
    return_info: also return a :class:`DnCInfo`.

  Returns:
    The mean of the kept workers, shaped like one worker's update; with
    ``return_info=True`` a tuple ``(aggregate, info)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from byzjax.aggregators.dnc import dnc
    >>> x = {'w': jnp.array([[0., 0.], [1., 0.], [0., 1.], [1., 1.],
    ...                      [1e30, -1e30]])}
    >>> dnc(x, num_byzantine=1, key=jax.random.key(0))['w'].tolist()
    [0.5, 0.5]

  References:
    Shejwalkar & Houmansadr, `Manipulating the Byzantine: Optimizing Model
    Poisoning Attacks and Defenses for Federated Learning
    <https://www.ndss-symposium.org/ndss-paper/manipulating-the-byzantine-optimizing-model-poisoning-attacks-and-defenses-for-federated-learning/>`_,
    NDSS 2021.
  """
  r = btree.num_workers(updates)
  f = _checks.check_int("num_byzantine", num_byzantine, low=0)
  if 2 * f >= r:
    raise ValueError(
        f"num_byzantine={num_byzantine!r} is too large for R = {r} workers: "
        "DnC needs 2 * num_byzantine < R (a Byzantine minority).")
  if key is None:
    raise ValueError(
        "dnc samples random coordinates: pass key=jax.random.key(...) (in "
        "an optax chain, byzjax.aggregate(dnc, key=..., key_per_step=True)).")
  iters = _checks.check_int("num_iters", num_iters, low=1)
  b = _checks.check_int("sub_dim", sub_dim, low=1)
  c = _checks.check_positive("filter_frac", filter_frac)
  removed = int(math.floor(c * f))
  if removed >= r:
    raise ValueError(
        f"filter_frac={filter_frac!r} removes floor(filter_frac * "
        f"num_byzantine) = {removed} >= R = {r} workers per iteration; "
        "lower filter_frac.")

  clean, live = btree.zero_erasures(updates)
  dtype = jnp.result_type(*jax.tree.leaves(clean))
  d = sum(math.prod(x.shape[1:]) for x in jax.tree.leaves(clean))
  keep_count = r - removed

  def one_iter(k):
    if b >= d:
      idx = jnp.arange(d)
    else:
      idx = jax.random.choice(k, d, (b,), replace=False)
    scores, exponent = _scores(_gather_columns(clean, idx), live)
    rank = jnp.argsort(jnp.argsort(scores, stable=True), stable=True)
    good = live & (rank < keep_count)
    return good, jnp.ldexp(scores, 2 * exponent)

  good, scores = jax.vmap(one_iter)(jax.random.split(key, iters))
  selected = jnp.all(good, axis=0)
  out, _ = _weighted_mean(clean, selected.astype(dtype))
  if not return_info:
    return out
  return out, DnCInfo(selected=selected, scores=scores.astype(dtype))
