"""SignGuard (Xu et al. 2022): norm filtering, sign-statistics clustering.

Two filters, intersected: a worker is trusted if its update's norm is within
``[lower, upper]`` times the median norm, and if the sign statistics of a
random subset of its coordinates (the fractions of positive, zero and
negative entries) fall in the largest cluster found by mean shift. The
trusted updates, clipped to the median norm, are averaged.

Cost: one read for the norms, one gather of ``b`` coordinates per worker
(leaf by leaf, as :func:`~byzjax.aggregators.dnc`), ``O(R^2)`` per mean-shift
iteration on ``R`` points in 3 dimensions, and one final weighted mean.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.aggregators.coordinatewise import _weighted_mean
from byzjax.aggregators.dnc import _gather_columns

PyTree = Any


class SignGuardInfo(NamedTuple):
  """Diagnostics of :func:`signguard`."""
  norm_ok: jax.Array     # bool [R]: norm within [lower, upper] x median
  cluster_ok: jax.Array  # bool [R]: in the largest sign-statistics cluster
  selected: jax.Array    # bool [R]: both (the workers averaged)
  features: jax.Array    # float [R, 3]: fractions of +, 0, - signs
  bandwidth: jax.Array   # float (): mean-shift bandwidth used


def _kth_neighbour_bandwidth(points, live, quantile):
  """Mean over live points of the distance to their k-th nearest live
  neighbour, ``k = max(1, floor(quantile * n_live))`` (itself included as
  the 0-th)."""
  r = points.shape[0]
  d = jnp.sqrt(jnp.sum(jnp.square(points[:, None] - points[None]), axis=-1))
  d = jnp.where(live[None, :], d, jnp.inf)
  d = jnp.sort(d, axis=1)
  n_live = jnp.sum(live)
  k = jnp.clip(jnp.floor(quantile * n_live).astype(jnp.int32), 1,
               jnp.maximum(n_live - 1, 1))
  kth = jnp.take_along_axis(d, jnp.broadcast_to(k, (r,))[:, None], axis=1)[:, 0]
  kth = jnp.where(live & jnp.isfinite(kth), kth, 0.0)
  return jnp.sum(kth) / jnp.maximum(n_live, 1)


def _mean_shift_modes(points, live, bandwidth, num_iters):
  """Flat-kernel mean shift of every point over the live points."""
  def step(_, modes):
    d2 = jnp.sum(jnp.square(modes[:, None] - points[None]), axis=-1)
    w = ((d2 <= bandwidth**2) & live[None, :]).astype(points.dtype)
    total = jnp.sum(w, axis=1, keepdims=True)
    new = (w @ points) / jnp.maximum(total, 1.0)
    return jnp.where(total > 0, new, modes)
  return jax.lax.fori_loop(0, num_iters, step, points)


@public
def signguard(
    updates: PyTree,
    *,
    key: jax.Array | None = None,
    lower: float = 0.1,
    upper: float = 3.0,
    coord_fraction: float = 0.1,
    bandwidth: float | None = None,
    quantile: float = 0.3,
    mean_shift_iters: int = 50,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, SignGuardInfo]:
  """SignGuard aggregation.

  With :math:`M` the median of the live workers' norms:

  1. Norm filter: :math:`S_1 = \\{i : \\text{lower} \\le \\|g_i\\| / M \\le
     \\text{upper}\\}`.
  2. Sign filter: sample :math:`b = \\lceil \\text{coord\\_fraction} \\cdot d
     \\rceil` coordinates (``jax.random.choice(key, d, (b,),
     replace=False)``), give every worker the features
     :math:`(s^+_i, s^0_i, s^-_i)`, the fractions of positive, zero and
     negative entries among them, run mean shift (flat kernel) on those
     points and let :math:`S_2` be the largest cluster (points whose modes
     lie within half a bandwidth of the mode shared by most points; ties by
     worker index).
  3. Output :math:`\\frac{1}{|S|} \\sum_{i \\in S} g_i \\min(1, M /
     \\|g_i\\|)`, :math:`S = S_1 \\cap S_2` (zeros if empty).

  Conventions and differences. Xu et al. (2022) give the bounds
  ``lower = 0.1``, ``upper = 3.0`` and sample a fraction of the coordinates
  for the sign statistics; they cluster with mean shift (scikit-learn's,
  whose default bandwidth is estimated from the data). Here the bandwidth is
  ``bandwidth`` if given, otherwise the mean over points of the distance to
  the :math:`\\lfloor \\text{quantile} \\cdot n \\rfloor`-th nearest
  neighbour (the estimate scikit-learn's ``estimate_bandwidth`` makes with
  ``quantile=0.3``), and mean shift runs a fixed ``mean_shift_iters``
  iterations from every point (no seeding by bins). The paper's text is not
  in this repository, so its section and equation numbers, and its default
  ``coord_fraction``, are not verified here. Some implementations add a
  similarity-based feature to the sign statistics (the paper's
  "SignGuard-Sim" variants); this is the plain sign-statistics version.

  Erasures (rows with a NaN or Inf entry) are never selected and do not
  enter the median or the clustering. Norms are overflow-safe
  (:func:`byzjax.tree.exact_row_norms`); rows of 1e30 or 3e38 fail the norm
  filter as soon as the median is honest, and the clipped mean never
  overflows.

  .. warning::
    ``updates`` is stacked: every leaf has a leading worker axis ``R``; the
    result has that axis removed.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    key: PRNG key for the coordinate sample (required). In an optax chain,
      ``byzjax.aggregate(signguard, key=key, key_per_step=True)``.
    lower, upper: norm bounds relative to the median (``0 <= lower <= 1 <=
      upper``).
    coord_fraction: fraction of coordinates sampled, in ``(0, 1]``.
    bandwidth: mean-shift bandwidth in feature units, or ``None`` to
      estimate it.
    quantile: neighbour quantile of the bandwidth estimate, in ``(0, 1]``.
    mean_shift_iters: mean-shift iterations (Python int >= 1).
    return_info: also return a :class:`SignGuardInfo`.

  Returns:
    The aggregate, shaped like one worker's update; with
    ``return_info=True`` a tuple ``(aggregate, info)``.

  References:
    Xu, Huang, Song & Lan, `Byzantine-robust Federated Learning through
    Collaborative Malicious Gradient Filtering
    <https://arxiv.org/abs/2109.05872>`_, ICDCS 2022 (SignGuard).
  """
  r = btree.num_workers(updates)
  if key is None:
    raise ValueError(
        "signguard samples random coordinates: pass key=jax.random.key(...) "
        "(in an optax chain, byzjax.aggregate(signguard, key=..., "
        "key_per_step=True)).")
  lower = _checks.check_positive("lower", lower, allow_zero=True)
  upper = _checks.check_positive("upper", upper)
  if not lower <= 1.0 <= upper:
    raise ValueError(f"lower={lower!r} and upper={upper!r} must satisfy "
                     "lower <= 1 <= upper (bounds relative to the median).")
  frac = _checks.check_fraction("coord_fraction", coord_fraction, low=0.0,
                                high=1.0, high_inclusive=True)
  if frac == 0.0:
    raise ValueError("coord_fraction must be > 0, got 0.")
  if bandwidth is not None:
    _checks.check_positive("bandwidth", bandwidth)
  q = _checks.check_fraction("quantile", quantile, high=1.0,
                             high_inclusive=True)
  if q == 0.0:
    raise ValueError("quantile must be > 0, got 0.")
  iters = _checks.check_int("mean_shift_iters", mean_shift_iters, low=1)

  clean, live = btree.zero_erasures(updates)
  dtype = jnp.result_type(*jax.tree.leaves(clean))
  # 1. Norms, exactly comparable beyond float's range: ||g_i|| = n_i 2^e_i.
  n, e = btree.exact_row_norms(clean)
  key_e, key_m = btree.exact_norm_keys(jnp.where(live, n, jnp.inf), e)
  order = jnp.lexsort((jnp.arange(r), key_m, key_e))
  n_live = jnp.sum(live)
  med = order[jnp.maximum(n_live - 1, 0) // 2]       # lower median row
  # ratio_i = ||g_i|| / M, in a common exponent (finite or +inf).
  ratio = jnp.ldexp(n / jnp.maximum(n[med], jnp.finfo(dtype).tiny),
                    e - e[med])
  med_zero = n[med] == 0
  norm_ok = live & jnp.where(med_zero, n == 0,
                             (ratio >= lower) & (ratio <= upper))
  # 2. Sign statistics of b sampled coordinates.
  d = sum(math.prod(x.shape[1:]) for x in jax.tree.leaves(clean))
  b = min(d, max(1, math.ceil(frac * d)))
  idx = (jnp.arange(d) if b >= d
         else jax.random.choice(key, d, (b,), replace=False))
  sub = _gather_columns(clean, idx)
  feats = jnp.stack([jnp.mean(sub > 0, axis=1), jnp.mean(sub == 0, axis=1),
                     jnp.mean(sub < 0, axis=1)], axis=1).astype(dtype)
  h = (jnp.asarray(bandwidth, dtype) if bandwidth is not None
       else _kth_neighbour_bandwidth(feats, live, q))
  h = jnp.maximum(h, 1e-6)  # identical features: one cluster
  modes = _mean_shift_modes(feats, live, h, iters)
  same = (jnp.sum(jnp.square(modes[:, None] - modes[None]), axis=-1)
          <= (0.5 * h)**2) & live[None, :] & live[:, None]
  sizes = jnp.sum(same, axis=1)
  biggest = jnp.argmax(sizes)                        # ties: lowest index
  cluster_ok = same[biggest] & live
  selected = norm_ok & cluster_ok
  # 3. Clip the selected rows to the median norm and average.
  scale = jnp.where(selected & (ratio > 1.0),
                    1.0 / jnp.where(ratio > 1.0, ratio, 1.0), 1.0)
  scaled = jax.tree.map(
      lambda x: x * btree.per_row(x, scale).astype(x.dtype), clean)
  out, _ = _weighted_mean(scaled, selected.astype(dtype))
  if not return_info:
    return out
  return out, SignGuardInfo(norm_ok=norm_ok, cluster_ok=cluster_ok,
                            selected=selected, features=feats, bandwidth=h)
