"""Static clipping and adaptive robust clipping (ARC) of the workers' updates.

Pre-aggregation rules that rescale rows, ``(R, ...) -> (R, ...)``:

* :func:`clip` (static clipping, Allouah et al., ICLR 2025, Section 2):
  :math:`\\mathrm{clip}_C(x) = \\min(1, C / \\|x\\|)\\, x`, each row scaled to
  norm at most a fixed ``C``.
* :func:`adaptive_robust_clip` (ARC, Allouah et al., ICLR 2025,
  Algorithm 1): with :math:`k = \\lfloor 2 (f / R) (R - f) \\rfloor`, the ``k``
  rows of largest norm are clipped to the norm of the largest remaining one,

  .. math::
    C = \\|x_{\\pi(k + 1)}\\|, \\qquad
    \\|x_{\\pi(1)}\\| \\ge \\dots \\ge \\|x_{\\pi(R)}\\| , \\qquad
    y_i = \\mathrm{clip}_C(x_i) .

  Because :math:`k \\ge f` whenever :math:`2f < R`, ``C`` is at most the
  largest honest norm: Byzantine rows can never be larger than every honest
  one, and the clipping threshold adapts to the honest scale.

Both are also optax transforms (:func:`clipping`, :func:`arc`) to chain in
front of an aggregator. Neither mixes rows, so both are equivariant under a
permutation of the workers.

Overflow. Norms are kept as ``n_i 2^{e_i}`` (:func:`byzjax.tree.
exact_row_norms`): rows of 3e38 whose norm exceeds float's range are still
ranked and clipped exactly (a clipped row is ``2^{e_C} ((x_i 2^{-e_i})
n_C / n_i)``, each factor in range). Erasures (rows with any NaN/Inf) stay
erased: they come out all-NaN. In ARC they rank above every live row (an
erased row is a Byzantine row of unbounded norm), so they use up clipping
slots as the paper's Byzantine rows would.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.transforms._stateless import stateless_map

PyTree = Any


class ClipInfo(NamedTuple):
  """Diagnostics of :func:`clip` and :func:`adaptive_robust_clip`."""
  threshold: jax.Array  # float, shape (): the clipping norm C (may be inf)
  norms: jax.Array      # float, shape [R]: input norms (inf beyond range/erased)
  clipped: jax.Array    # bool, shape [R]: live rows that were rescaled
  live: jax.Array       # bool, shape [R]: rows without a non-finite entry


def num_clipped(num_byzantine: int, num_workers: int) -> int:
  """ARC's number of clipped rows, :math:`\\lfloor 2 (f/R)(R - f) \\rfloor`.

  Exact integer arithmetic (no float rounding).

  Examples:
    >>> num_clipped(3, 10)
    4
  """
  return (2 * num_byzantine * (num_workers - num_byzantine)) // num_workers


def _rescale(clean: PyTree, live: jax.Array, clipped: jax.Array,
             n: jax.Array, e: jax.Array, target_n: jax.Array,
             target_e: jax.Array) -> PyTree:
  """Rows with ``clipped`` rescaled to norm ``target_n 2**target_e``.

  ``||x_i|| = n_i 2**e_i``. The clipped row is computed as
  ``ldexp((ldexp(x_i, -e_i) * (target_n / n_i)), target_e)``: the first
  factor has entries of magnitude <= ~1 (or is ``x_i`` itself for benign
  inputs, ``e = 0``), the ratio is moderate, and the final power of two
  lands on a result no larger than ``x_i`` (clipping only shrinks), so
  nothing overflows or flushes to zero on the way. Erased rows become NaN.
  """
  dtype = n.dtype
  safe_n = jnp.where(clipped & (n > 0), n, 1.0)
  ratio = jnp.where(clipped, target_n / safe_n, 1.0).astype(dtype)
  ratio = btree.saturate(ratio)
  down = jnp.where(clipped, e, 0)
  up = jnp.where(clipped, target_e, 0)

  def leaf(x):
    y = jnp.ldexp(x, -btree.per_row(x, down))
    y = y * btree.per_row(x, ratio).astype(x.dtype)
    y = jnp.ldexp(y, btree.per_row(x, up))
    y = jnp.where(btree.per_row(x, clipped), y, x)
    return jnp.where(btree.per_row(x, live), y, jnp.nan).astype(x.dtype)

  return jax.tree.map(lambda x: leaf(x), clean)


def _exceeds(key_e, key_m, ref_e, ref_m):
  """``(key_e, key_m) > (ref_e, ref_m)`` lexicographically."""
  return (key_e > ref_e) | ((key_e == ref_e) & (key_m > ref_m))


@public(stacked_output=True)
def clip(
    updates: PyTree,
    *,
    max_norm: float,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, ClipInfo]:
  """Static clipping: every row scaled to norm at most ``max_norm``.

  .. math::
    y_i = \\min\\left(1, \\frac{C}{\\|x_i\\|}\\right) x_i

  (the clipping operator of Allouah et al., ICLR 2025, Section 2). Rows of
  norm at most ``C`` are returned unchanged (bit for bit); erased rows come
  out all-NaN (still erasures). Overflow-safe: a row of 3e38 entries is
  clipped to norm ``C`` exactly.

  .. warning::
    Input and output are both stacked (the same leading worker axis ``R``);
    an aggregator must follow.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    max_norm: the clipping norm :math:`C > 0` (a Python float;
      ``float('inf')`` means no clipping).
    return_info: also return a :class:`ClipInfo`.

  Returns:
    The clipped rows, stacked like ``updates``; with ``return_info=True`` a
    tuple ``(clipped, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.transforms.clipping import clip
    >>> x = {'w': jnp.array([[3., 4.], [0.3, 0.4], [3e38, 0.]])}
    >>> clip(x, max_norm=1.0)['w'].tolist()
    [[0.6000000238418579, 0.800000011920929], [0.30000001192092896, 0.4000000059604645], [1.0, 0.0]]

  References:
    Allouah, Guerraoui, Gupta, Jellouli, Rizk & Stephan, `The Vital Role of
    Gradient Clipping in Byzantine-Resilient Distributed Learning
    <https://arxiv.org/abs/2405.14432>`_, ICLR 2025 (Section 2, static
    clipping).
  """
  btree.num_workers(updates)
  c = _checks.check_positive("max_norm", max_norm, allow_inf=True)
  clean, live = btree.zero_erasures(updates)
  n, e = btree.exact_row_norms(clean)
  dtype = n.dtype
  key_e, key_m = btree.exact_norm_keys(n, e)
  c_np = np.asarray(c, dtype)  # the bound as the compute dtype sees it
  c_arr = jnp.asarray(c_np)
  if not np.isfinite(c_np):
    clipped = jnp.zeros(live.shape, bool)  # no bound (or beyond float's range)
    c_m, c_e = jnp.ones([], dtype), jnp.zeros([], jnp.int32)
  else:
    c_m, c_e = jnp.frexp(c_arr)
    c_e = c_e.astype(jnp.int32)
    clipped = live & _exceeds(key_e, key_m, c_e, c_m)
  out = _rescale(clean, live, clipped, n, e, c_m, c_e)
  if not return_info:
    return out
  norms = jnp.where(live, jnp.ldexp(n, e), jnp.inf)
  return out, ClipInfo(threshold=c_arr, norms=norms, clipped=clipped,
                       live=live)


@public(stacked_output=True)
def adaptive_robust_clip(
    updates: PyTree,
    *,
    num_byzantine: int,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, ClipInfo]:
  """Adaptive robust clipping (ARC; Allouah et al., ICLR 2025, Algorithm 1).

  With :math:`k = \\lfloor 2 (f/R)(R - f) \\rfloor`, the ``k`` rows of
  largest norm are clipped to :math:`C = \\|x_{\\pi(k+1)}\\|`, the norm of the
  largest row that is not clipped (see the module docstring). Ties in norm
  are broken by worker index (lower index ranks higher); rows not clipped
  are returned unchanged, bit for bit. Erased rows rank above all live rows
  (they count among the ``k``) and come out all-NaN. ``f = 0`` gives
  ``k = 0``: no clipping.

  .. warning::
    Input and output are both stacked (the same leading worker axis ``R``);
    an aggregator must follow.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    num_byzantine: :math:`f`, the number of Byzantine workers tolerated
      (Python int, :math:`2f < R`).
    return_info: also return a :class:`ClipInfo` (``threshold`` is ``C``).

  Returns:
    The clipped rows, stacked like ``updates``; with ``return_info=True`` a
    tuple ``(clipped, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.transforms.clipping import adaptive_robust_clip
    >>> x = {'w': jnp.array([[1., 0.], [0., 2.], [3., 0.], [0., 4.],
    ...                      [1e30, 0.]])}
    >>> adaptive_robust_clip(x, num_byzantine=1)['w'][:, 0].tolist()
    [1.0, 0.0, 3.0, 0.0, 4.0]

  References:
    Allouah, Guerraoui, Gupta, Jellouli, Rizk & Stephan, `The Vital Role of
    Gradient Clipping in Byzantine-Resilient Distributed Learning
    <https://arxiv.org/abs/2405.14432>`_, ICLR 2025 (Algorithm 1, ARC).
  """
  r = btree.num_workers(updates)
  f = _checks.check_int("num_byzantine", num_byzantine, low=0)
  if 2 * f >= r:
    raise ValueError(
        f"num_byzantine={num_byzantine!r} is too large for R = {r} workers: "
        "ARC needs 2 * num_byzantine < R (a Byzantine minority).")
  k = num_clipped(f, r)
  clean, live = btree.zero_erasures(updates)
  n, e = btree.exact_row_norms(clean)
  n = jnp.where(live, n, jnp.inf)
  key_e, key_m = btree.exact_norm_keys(n, e)
  idx = jnp.arange(r)
  # Descending norm, ties by index: lexsort's last key is the primary one.
  order = jnp.lexsort((idx, -key_m, -key_e))
  rank = jnp.argsort(order, stable=True)
  ref = order[k]  # k < R because 2f < R
  clipped = live & (rank < k) & _exceeds(key_e, key_m, key_e[ref],
                                         key_m[ref])
  ref_live = live[ref]
  # If the (k+1)-th largest row is itself erased, every live row is below it
  # and nothing live is clipped (more than k erasures: beyond ARC's budget).
  clipped = clipped & ref_live
  out = _rescale(clean, live, clipped, n, e, jnp.where(ref_live, n[ref], 1.0),
                 jnp.where(ref_live, e[ref], 0))
  if not return_info:
    return out
  norms = jnp.where(live, jnp.ldexp(n, e), jnp.inf)
  threshold = jnp.where(ref_live, norms[ref], jnp.inf)
  return out, ClipInfo(threshold=threshold, norms=norms, clipped=clipped,
                       live=live)


def clipping(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """Static clipping (:func:`clip`) as a transform before an aggregator.

  >>> import optax, byzjax
  >>> from byzjax.aggregators import mean
  >>> tx = optax.chain(byzjax.clipping(1.0), byzjax.aggregate(mean),
  ...                  optax.sgd(0.1))

  .. warning::
    Input and output are both stacked (a leading worker axis ``R``).

  Args:
    max_norm: the clipping norm :math:`C > 0` (``float('inf')``: none).

  Returns:
    A stateless :class:`optax.GradientTransformationExtraArgs`.

  References:
    Allouah et al., `The Vital Role of Gradient Clipping in
    Byzantine-Resilient Distributed Learning
    <https://arxiv.org/abs/2405.14432>`_, ICLR 2025, Section 2.
  """
  _checks.check_positive("max_norm", max_norm, allow_inf=True)

  return stateless_map(clip, max_norm=max_norm)


def arc(num_byzantine: int) -> optax.GradientTransformationExtraArgs:
  """ARC (:func:`adaptive_robust_clip`) as a transform before an aggregator.

  >>> import optax, byzjax
  >>> from byzjax.aggregators import coordinate_median
  >>> tx = optax.chain(byzjax.arc(2), byzjax.nnm(2),
  ...                  byzjax.aggregate(coordinate_median), optax.sgd(0.1))

  .. warning::
    Input and output are both stacked (a leading worker axis ``R``).

  Args:
    num_byzantine: :math:`f`, a Python int >= 0; :math:`2f < R` is checked
      at the first update (when ``R`` is known).

  Returns:
    A stateless :class:`optax.GradientTransformationExtraArgs`.

  References:
    Allouah et al., `The Vital Role of Gradient Clipping in
    Byzantine-Resilient Distributed Learning
    <https://arxiv.org/abs/2405.14432>`_, ICLR 2025, Algorithm 1.
  """
  _checks.check_int("num_byzantine", num_byzantine, low=0)

  return stateless_map(adaptive_robust_clip, num_byzantine=num_byzantine)
