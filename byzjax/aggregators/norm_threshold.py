"""Norm thresholding: drop the updates with the largest norms, average the rest.

Ghosh et al. (arXiv:1911.09721, 2019) make distributed SGD robust to
Byzantine workers, and compatible with gradient compression, by a simple
server rule: sort the workers by the norm of what they sent, discard the
:math:`\\beta` fraction with the largest norms and average the others. In
the compressed setting the workers send a compressed vector together with a
norm of the uncompressed (or error-compensated) one, and the threshold is
taken on the norms that were sent; :func:`norm_threshold` takes those
through its ``norms`` argument.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.aggregators.coordinatewise import _ceil_count
from byzjax.aggregators.coordinatewise import _weighted_mean

PyTree = Any


class NormThresholdInfo(NamedTuple):
  """Diagnostics of :func:`norm_threshold`."""
  kept: jax.Array   # bool, shape [R]: workers that were averaged
  norms: jax.Array  # float, shape [R]: norms used for ranking (inf = erased)


@public
def norm_threshold(
    updates: PyTree,
    *,
    trim_fraction: float,
    norms: jax.Array | None = None,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, NormThresholdInfo]:
  """Averages the updates left after dropping those with the largest norms.

  With :math:`q = \\lceil \\beta R \\rceil` and :math:`U` the set of the
  :math:`R - q` workers with the smallest norms :math:`\\|x_i\\|` (ties broken
  by worker index),

  .. math::
    \\operatorname{NT}_\\beta(x_1, \\dots, x_R) =
    \\frac{1}{|U|} \\sum_{i \\in U} x_i

  (Ghosh et al., arXiv version, the "norm based thresholding" step of the
  server in Algorithms 1 and 2: Algorithm 1 ranks by a norm of the
  uncompressed gradient that each worker sends alongside its compressed one,
  pass it as ``norms``; Algorithm 2 ranks by the norms of the compressed
  messages themselves, ``norms=None`` on the messages. The paper's
  experiments, §7, rank by the sent scaling factor :math:`\\|g\\|_1/d` of
  the :math:`\\ell_1`-QSGD message, see
  :func:`byzjax.transforms.compress.with_norm`). The norms are computed
  overflow-safely (:func:`byzjax.tree.worker_norms`), so rows of 3e38 are
  ranked by their true, huge norms.

  Erasures (rows with any NaN/Inf) count as having the largest norms and are
  dropped first. If there are more than ``q`` erasures, all of them are still
  excluded (weight zero) and the mean is over the remaining live workers, so
  fewer than ``R - q`` workers may be averaged.

  A Byzantine update can only be kept if its norm is at most that of some
  honest update, which bounds its influence; the thresholding is not
  equivariant to translations (it ranks distances to the origin).

  .. warning::
    ``updates`` is stacked: every leaf has a leading worker axis ``R``; the
    result has that axis removed.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    trim_fraction: :math:`\\beta \\in [0, 1/2)`, the fraction of workers
      dropped (a Python float); ``ceil(beta * R)`` workers are dropped and at
      least one must remain.
    norms: optional norm side information, shape ``[R]``: the norms the
      workers reported (e.g. of their uncompressed updates, any norm or the
      scaling factor :math:`\\|g\\|_1/d`), used for the
      ranking instead of the norms of ``updates``. Non-finite entries rank as
      the largest; erased rows are dropped whatever their reported norm.
    return_info: also return a :class:`NormThresholdInfo`.

  Returns:
    The average of the kept updates, shaped like one worker's update (zeros
    if none is live); with ``return_info=True`` a tuple ``(mean, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.aggregators.norm_threshold import norm_threshold
    >>> x = {'w': jnp.array([[1., 0.], [0., 1.], [1., 1.], [-1e30, 1e30]])}
    >>> norm_threshold(x, trim_fraction=0.25)['w']
    Array([0.6666667, 0.6666667], dtype=float32)

  References:
    Ghosh, Maity, Kadhe, Mazumdar & Ramchandran, `Communication-Efficient and
    Byzantine-Robust Distributed Learning
    <https://arxiv.org/abs/1911.09721>`_, arXiv:1911.09721, 2019
    (Algorithms 1 and 2; §7).
  """
  r = btree.num_workers(updates)
  beta = _checks.check_fraction("trim_fraction", trim_fraction)
  num_dropped = _ceil_count(beta, r)
  if num_dropped >= r:
    raise ValueError(
        f"trim_fraction={trim_fraction!r} drops ceil(trim_fraction * R) = "
        f"{num_dropped} of R = {r} workers; at least one must remain.")
  if norms is not None:
    norms = jnp.asarray(norms)
  _checks.check_worker_vector("norms", norms, r)

  clean, live = btree.zero_erasures(updates)
  if norms is None:
    norms = btree.worker_norms(clean)
  dtype = jnp.result_type(*jax.tree.leaves(clean))
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32
  norms = jnp.asarray(norms, dtype)
  key = jnp.where(live & jnp.isfinite(norms), norms, jnp.inf)
  rank = jnp.argsort(jnp.argsort(key, stable=True), stable=True)
  kept = live & (rank < r - num_dropped)
  out, _ = _weighted_mean(clean, kept.astype(dtype))
  if not return_info:
    return out
  return out, NormThresholdInfo(kept=kept, norms=key)
