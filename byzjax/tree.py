"""Leaf-wise algebra over the worker axis.

Every quantity that belongs to a worker is a pytree whose leaves carry a
leading axis of size ``R`` (the number of workers); such a tree is called
``stacked``. The helpers below compute per-worker summaries (norms, inner
products, distances to a point, the ``R x R`` Gram matrix) and weighted sums
over the worker axis leaf by leaf, without concatenating the leaves into one
giant ``R x d`` vector.

Byzantine inputs are the point of this library, so the helpers that square
numbers come in overflow-safe versions: float32 squares overflow above about
1.8e19 and XLA on CPU flushes denormals to zero, so scaling is done by powers
of two with :func:`jax.numpy.ldexp`, never by dividing by a huge maximum.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any

# Rows are pulled in along the ray from the centre to at most this many
# "typical distances" (see `standardize`). 2**20 keeps squared distances and
# their sums over a few thousand workers far below float32's maximum, while a
# row that far out changes a geometric median's direction by ~2**-20.
TAME_RADIUS = 2.0**20

# The typical distance used when more than half of the rows coincide (see
# `standardize`); far above float32's smallest normal even after taming.
_COINCIDENT_SCALE = 2.0**-100


def num_workers(stacked: PyTree) -> int:
  """Returns the size ``R`` of the leading worker axis shared by all leaves.

  Args:
    stacked: a pytree whose leaves all have the same leading axis size.

  Returns:
    The common leading axis size, a Python ``int``.

  Raises:
    ValueError: if the tree has no leaves, a leaf is a scalar, or the leaves
      disagree on the size of their leading axis.
  """
  leaves = jax.tree.leaves(stacked)
  if not leaves:
    raise ValueError("stacked updates: the pytree has no leaves.")
  sizes = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(stacked)[0]:
    shape = jnp.shape(leaf)
    if len(shape) == 0:
      raise ValueError(
          "stacked updates: leaf "
          f"{jax.tree_util.keystr(path) or '<root>'} is a scalar; every leaf "
          "needs a leading worker axis."
      )
    sizes.append((jax.tree_util.keystr(path) or "<root>", shape[0]))
  distinct = sorted({s for _, s in sizes})
  if len(distinct) > 1:
    detail = ", ".join(f"{p}: {s}" for p, s in sizes)
    raise ValueError(
        "stacked updates: leaves have different leading (worker) axis sizes "
        f"({detail}); all leaves must share the worker axis."
    )
  if distinct[0] == 0:
    raise ValueError("stacked updates: the worker axis has size 0.")
  return int(distinct[0])


def compute_dtype(dtype) -> jnp.dtype:
  """The dtype aggregators compute in for leaves of ``dtype``.

  float16 and bfloat16 become float32: their range and precision are too
  small for squared distances, Gram matrices and rounding-noise floors (a
  row at 1e3 squares to 1e6, beyond float16's maximum of 65504, and
  bfloat16's ``eps`` of 2**-8 swamps the statistics). Integer and boolean
  leaves also become float32 (a mean of integers is not an integer). Other
  floating dtypes (float32, float64) are kept.

  Examples:
    >>> import jax.numpy as jnp
    >>> compute_dtype(jnp.bfloat16), compute_dtype(jnp.int32)
    (dtype('float32'), dtype('float32'))
  """
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return dtype


def result_dtype(dtype) -> jnp.dtype:
  """The dtype of an aggregate of leaves of ``dtype``.

  Floating inputs get their own dtype back (half precision is computed in
  float32, see :func:`compute_dtype`, and cast back); integer and boolean
  inputs give float32.
  """
  dtype = jnp.dtype(dtype)
  return dtype if jnp.issubdtype(dtype, jnp.floating) else compute_dtype(dtype)


def upcast(stacked: PyTree) -> PyTree:
  """Casts every leaf to its :func:`compute_dtype` (no-op for float32)."""
  return jax.tree.map(
      lambda x: jnp.asarray(x).astype(compute_dtype(jnp.result_type(x))),
      stacked)


def worker_weights(weights: jax.Array | None, live: jax.Array,
                   dtype) -> jax.Array:
  """Per-worker weights with erasures, non-finite and non-positive weights 0.

  The contract of every weighted aggregator: a worker whose update is
  erased, or whose weight is NaN, +-Inf, zero or negative, has weight zero
  (an infinite weight is not "this worker is everything": it is a broken
  message, like a NaN). ``weights=None`` gives every live worker weight 1.

  Returns:
    Finite non-negative weights of shape ``[R]`` and dtype ``dtype``.
  """
  if weights is None:
    return live.astype(dtype)
  weights = jnp.asarray(weights)
  ok = live & jnp.isfinite(weights) & (weights > 0)
  return jnp.where(ok, weights, 0).astype(dtype)


def _rows(leaf: jax.Array) -> jax.Array:
  """Views a stacked leaf as ``[R, leaf_size]``."""
  return jnp.reshape(leaf, (leaf.shape[0], -1))


def per_row(leaf: jax.Array, values: jax.Array) -> jax.Array:
  """Reshapes a per-worker vector ``[R]`` to broadcast against a stacked leaf.

  Examples:
    >>> import jax.numpy as jnp
    >>> per_row(jnp.zeros((3, 4, 5)), jnp.arange(3)).shape
    (3, 1, 1)
  """
  return jnp.reshape(values, (-1,) + (1,) * (leaf.ndim - 1))


def _sum_over_leaves(per_leaf: PyTree) -> jax.Array:
  return sum(jax.tree.leaves(per_leaf))


def live_workers(stacked: PyTree) -> jax.Array:
  """Which workers sent an update whose every entry is finite.

  A worker with any NaN or Inf entry is an *erasure* (DESIGN.md, Contracts):
  aggregators give it zero weight or replace it by zeros.

  Returns:
    A boolean array of shape ``[R]``.
  """
  per_leaf = jax.tree.map(lambda x: jnp.all(jnp.isfinite(_rows(x)), axis=1),
                          stacked)
  return jnp.all(jnp.stack(jax.tree.leaves(per_leaf)), axis=0)


def mask_workers(stacked: PyTree, keep: jax.Array, fill: float = 0.0) -> PyTree:
  """Replaces the rows of workers with ``keep[i] == False`` by ``fill``."""
  return jax.tree.map(
      lambda x: jnp.where(per_row(x, keep), x, jnp.asarray(fill, x.dtype)),
      stacked)


def zero_erasures(stacked: PyTree) -> tuple[PyTree, jax.Array]:
  """Zeroes the rows of erased workers (any non-finite entry).

  The copy is skipped with :func:`jax.lax.cond` when every worker is live, so
  the common case costs one read of the updates.

  Returns:
    ``(cleaned, live)``: the stacked tree with erased rows set to zero, and the
    boolean live mask of shape ``[R]``.
  """
  live = live_workers(stacked)
  cleaned = jax.lax.cond(jnp.all(live), lambda s: s,
                         lambda s: mask_workers(s, live), stacked)
  return cleaned, live


def max_abs(stacked: PyTree) -> jax.Array:
  """Per-worker largest absolute entry, shape ``[R]``."""
  # initial=0: zero-size leaves (a (R, 0) parameter) contribute nothing.
  per_leaf = jax.tree.map(
      lambda x: jnp.max(jnp.abs(_rows(x)), axis=1,
                        initial=jnp.zeros([], x.dtype)), stacked)
  return jnp.max(jnp.stack(jax.tree.leaves(per_leaf)), axis=0)


def pow2_exponent(x: jax.Array) -> jax.Array:
  """The integer ``e`` with ``x = m * 2**e``, ``0.5 <= m < 1``.

  So ``2**(e-1) <= x < 2**e`` for finite ``x > 0``; 0 for zero, negative or
  non-finite ``x``. Scaling by ``2**-e`` (with :func:`jax.numpy.ldexp`) is
  exact, unlike dividing by a huge maximum (DESIGN.md, numerical traps).
  """
  _, e = jnp.frexp(x)
  return jnp.where(jnp.isfinite(x) & (x > 0), e, 0).astype(jnp.int32)


def saturate(x: jax.Array) -> jax.Array:
  """Clips overflowed products (``+-inf``) to the largest finite float."""
  big = jnp.finfo(x.dtype).max
  return jnp.clip(x, -big, big)


def _pow2_factors(k: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
  """Two normal floats whose product is ``2**-k`` (``|k| <= 250``).

  ``2**-k`` itself is denormal for ``k > 126``, and XLA on CPU flushes
  denormals to zero; multiplying by the two halves in turn is exact and
  never forms a denormal factor.
  """
  half = k // 2
  one = jnp.ones(k.shape, dtype)
  return jnp.ldexp(one, -half), jnp.ldexp(one, half - k)


# Rows whose largest entry lies in [2**-_SAFE_EXP, 2**_SAFE_EXP] can be
# squared and summed in plain float32 (no overflow for up to 2**26 entries,
# negligible underflow); others take the power-of-two scaled path.
_SAFE_EXP = 48


def _row_norms(stacked: PyTree) -> tuple[jax.Array, jax.Array]:
  """``(n, e)`` with finite ``n`` and ``||x_i|| = n_i * 2**e_i``, ``[R]`` each.

  The common case (every finite row's entries of moderate size) is one fused
  read computing the plain sum of squares, with ``e = 0``. Otherwise
  (:func:`jax.lax.cond`) each row is scaled by a power of two near its largest
  entry before squaring. Rows with a NaN or Inf entry get ``n = inf``.
  """
  m = max_abs(stacked)
  finite = jnp.isfinite(m)
  moderate = (m == 0) | ((m >= 2.0**-_SAFE_EXP) & (m <= 2.0**_SAFE_EXP))
  zero_exp = jnp.zeros(m.shape, jnp.int32)

  def plain(tree):
    return jnp.sqrt(sq_norms(tree)), zero_exp

  def scaled(tree):
    e = jnp.where(finite, pow2_exponent(m), 0)
    f1, f2 = _pow2_factors(e, m.dtype)
    def leaf_sq(x):
      y = x * per_row(x, f1).astype(x.dtype) * per_row(x, f2).astype(x.dtype)
      return jnp.sum(_rows(jnp.square(y)), axis=1)
    return jnp.sqrt(_sum_over_leaves(jax.tree.map(leaf_sq, tree))), e

  n, e = jax.lax.cond(jnp.all(moderate | ~finite), plain, scaled, stacked)
  return jnp.where(finite, n, jnp.inf), e


def worker_norms(stacked: PyTree) -> jax.Array:
  """Overflow-safe Euclidean norm of every worker's update, shape ``[R]``.

  Rows of huge entries (1e30, 3e38) get their true norm, or ``inf`` when it
  exceeds float's maximum, instead of the overflowed ``inf`` of their plain
  sum of squares; rows of tiny entries are not flushed to zero. Rows with a
  NaN or Inf entry get ``inf``. Benign inputs cost one read.
  """
  n, e = _row_norms(stacked)
  return jnp.ldexp(n, e)


def sq_norms(stacked: PyTree) -> jax.Array:
  """Plain per-worker squared norms ``[R]`` (fast; overflows above ~1e19)."""
  return _sum_over_leaves(
      jax.tree.map(lambda x: jnp.sum(jnp.square(_rows(x)), axis=1), stacked))


def sq_dists_to(stacked: PyTree, point: PyTree) -> jax.Array:
  """Plain squared distances ``||x_i - point||^2`` for every worker, ``[R]``.

  One fused read of the stacked updates; no overflow protection (use it on
  standardized data, see :func:`standardize`).
  """
  return _sum_over_leaves(jax.tree.map(
      lambda x, p: jnp.sum(jnp.square(_rows(x - p[None])), axis=1),
      stacked, point))


def vdot_to(stacked: PyTree, point: PyTree) -> jax.Array:
  """Inner products ``<x_i, point>`` for every worker, shape ``[R]``."""
  return _sum_over_leaves(jax.tree.map(
      lambda x, p: _rows(x) @ jnp.reshape(p, (-1,)), stacked, point))


def weighted_sum(weights: jax.Array, stacked: PyTree) -> PyTree:
  """``sum_i weights[i] * x_i`` leaf by leaf (one ``tensordot`` per leaf).

  .. warning::
    ``0 * inf`` is NaN: zero the rows of erased workers first (see
    :func:`zero_erasures`) rather than relying on a zero weight.
  """
  return jax.tree.map(
      lambda x: jnp.tensordot(weights.astype(x.dtype), x, axes=1,
                              precision=jax.lax.Precision.HIGHEST), stacked)


def worker_gram(stacked: PyTree) -> jax.Array:
  """``G[i, j] = <x_i, x_j>``, accumulated leaf by leaf, shape ``[R, R]``."""
  def leaf_gram(x):
    rows = _rows(x)
    return jnp.matmul(rows, rows.T, precision=jax.lax.Precision.HIGHEST)
  return _sum_over_leaves(jax.tree.map(leaf_gram, stacked))


def gram_sq_dists(gram: jax.Array) -> jax.Array:
  """Pairwise squared distances from a Gram matrix, clipped at zero."""
  diag = jnp.diagonal(gram)
  return jnp.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0)


class Standardized(NamedTuple):
  """How :func:`standardize` mapped the rows; ``x ~ center + 2**exponent * u``."""
  center: PyTree        # tree shaped like one worker's update
  exponent: jax.Array   # int32, shape (): the typical distance is ~2**exponent
  dist: jax.Array       # float, shape [R]: ||x_i - center|| / 2**exponent
  tamed: jax.Array      # bool, shape [R]: rows pulled in to the radius
  live: jax.Array       # bool, shape [R]


def robust_center(stacked: PyTree, live: jax.Array,
                  norms: jax.Array | None = None) -> PyTree:
  """A cheap point near the honest majority: the live row of median norm.

  The live row whose norm is the lower median of the live norms (ties broken
  by worker index). When more than half of the rows are honest, its norm is
  at most the largest honest norm, so it is finite and no farther from the
  origin than the honest rows. It is an actual row, so rows identical to it
  are at distance exactly zero (a mean of rows would carry rounding error).
  Used for centring (precision) and as a default starting point; it is not
  itself a robust aggregator.

  Args:
    stacked: stacked updates with erased rows already zeroed.
    live: boolean ``[R]`` live mask.
    norms: optional precomputed :func:`worker_norms`.
  """
  if norms is None:
    norms = worker_norms(stacked)
  order = jnp.argsort(jnp.where(live, norms, jnp.inf), stable=True)
  n_live = jnp.sum(live)
  chosen = order[jnp.maximum(n_live - 1, 0) // 2]
  pick = jnp.where(n_live > 0, 1.0, 0.0)  # no live row: the origin
  return jax.tree.map(lambda x: x[chosen] * pick.astype(x.dtype), stacked)


def standardize(stacked: PyTree, live: jax.Array, center: PyTree | None = None,
                *, radius: float = TAME_RADIUS) -> tuple[PyTree, Standardized]:
  """Centres, rescales and tames the rows so that squaring them is safe.

  ``u_i = (x_i - c) / 2**e`` where ``c`` is ``center`` (default
  :func:`robust_center`) and ``2**e`` is the power of two at or above the
  upper median of the live distances to ``c`` (``2**-100`` when more than
  half of the rows coincide with ``c``); a row farther than ``radius`` (in units of
  ``2**e``) is pulled in along its ray from ``c`` to distance ``radius``.
  Rows within the radius, which are all rows of a benign input, are only
  translated and scaled by an exact power of two. Squares and sums of squares
  of the ``u_i`` can then never overflow, whatever the input (1e30, 3e38).

  Pulling a far row in along its ray from ``c`` changes, e.g., a geometric
  median only through the angle the row subtends at the median, which is
  about ``||median - c|| / radius`` (~1e-6 of the spread).

  Args:
    stacked: stacked updates with erased rows already zeroed.
    live: boolean ``[R]`` live mask; erased rows map to ``u_i = 0``.
    center: optional centre ``c``.
    radius: taming radius in units of the typical distance.

  Returns:
    ``(u, info)``: the standardized tree and a :class:`Standardized` record.
  """
  if center is None:
    center = robust_center(stacked, live)
  diff = jax.tree.map(lambda x, c: x - c[None], stacked, center)  # lazy
  # ||x_i - c|| = n_i * 2**e_i with n_i finite, even when it exceeds float's
  # range (d entries of 3e38); erased rows are excluded through `live`.
  n, row_exp = _row_norms(diff)
  n = jnp.where(live, n, 0.0)
  row_exp = jnp.where(live, row_exp, 0)
  dist = jnp.ldexp(n, row_exp)  # may be inf
  n_live = jnp.sum(live)
  # Upper median: it is zero only when more than half of the live rows
  # coincide with the centre. The centre is then a geometric median (and the
  # answer of any estimator with breakdown point 1/2), and the other rows,
  # a minority that may be Byzantine, define no trustworthy scale: use a tiny
  # one, so that smoothing and stopping rules act at the centre's precision.
  median = jnp.sort(jnp.where(live, dist, jnp.inf))[n_live // 2]
  typical = jnp.where((median > 0) & jnp.isfinite(median), median,
                      _COINCIDENT_SCALE)
  typical = jnp.minimum(typical, jnp.finfo(dist.dtype).max)
  exponent = pow2_exponent(typical)
  # Standardized distance: n_i * 2**(e_i - e). A row beyond the radius is
  # scaled by 2**-e_i * radius / n_i instead of 2**-e (never forming the
  # overflowing 2**(e_i - e) n_i); both factors are split into two normal
  # powers of two so that no denormal factor is flushed to zero.
  rel = jnp.ldexp(n, row_exp - exponent)
  tamed = live & (rel > radius)
  k = jnp.where(tamed, row_exp, exponent)
  f1, f2 = _pow2_factors(k, dist.dtype)
  f2 = jnp.where(tamed, f2 * (radius / jnp.maximum(n, jnp.finfo(n.dtype).tiny)), f2)

  def leaf_u(d):
    u = d * per_row(d, f1).astype(d.dtype) * per_row(d, f2).astype(d.dtype)
    return jnp.where(per_row(d, live) & jnp.isfinite(u), u, 0.0)

  u = jax.tree.map(leaf_u, diff)
  std_dist = jnp.where(tamed, radius, jnp.where(live, rel, 0.0))
  return u, Standardized(center, exponent, std_dist, tamed, live)


def exact_norm_keys(n: jax.Array, e: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Exact sort keys for norms given as ``||x_i|| = n_i * 2**e_i``.

  Returns ``(exponent, mantissa)`` with ``||x_i|| = mantissa_i *
  2**exponent_i`` and ``0.5 <= mantissa_i < 1`` (``mantissa = 0`` and the
  exponent ``-2**30`` for a zero norm), so that comparing
  ``(exponent, mantissa)`` lexicographically compares the norms exactly, even
  when they exceed float's range (where :func:`worker_norms` gives ``inf``)
  or lie far apart (where a common scale would flush the smaller to zero).
  ``n`` must be finite (see ``_row_norms``); rows flagged with ``n = inf``
  get exponent ``2**30``. Both sentinels stay far from real exponents
  (``|e| < 2**11``) and can be negated without int32 overflow.
  """
  finite = jnp.isfinite(n)
  m, k = jnp.frexp(jnp.where(finite, n, 1.0))
  exponent = jnp.where(n > 0, k.astype(jnp.int32) + e, -2**30)
  exponent = jnp.where(finite, exponent, 2**30)
  mantissa = jnp.where(finite & (n > 0), m, 0.0)
  return exponent, mantissa


def exact_row_norms(stacked: PyTree) -> tuple[jax.Array, jax.Array]:
  """``(n, e)`` with ``||x_i|| = n_i * 2**e_i`` and ``n_i`` finite.

  The representation behind :func:`worker_norms`, for callers that must
  compare or divide norms beyond float's range (3e38 rows) without
  overflow: benign inputs cost one read (``e = 0``). Rows with a NaN or Inf
  entry get ``n = inf``.
  """
  return _row_norms(stacked)


def column_chunking() -> bool:
  """Whether the one-read kernels below may walk the columns in blocks.

  Blocked loops (``lax.fori_loop`` over dynamic column slices) keep a block
  in cache on one device, but if the parameter axis is sharded over devices
  they make XLA gather the whole ``R x d`` updates onto every device. Under
  ``jax.set_mesh(mesh)`` with more than one device (how a model too large
  for one device is traced, its parameter axis sharded) the kernels use
  whole-array operations instead, which XLA partitions along the parameter
  axis: a Gram-based aggregator then moves only ``R x R`` and ``[R]``
  all-reduces between devices.
  """
  mesh = jax.sharding.get_abstract_mesh()
  return mesh.empty or mesh.size <= 1


# Columns per block of `chunked_gram`: a 128 x 4096 float32 block is 2 MB,
# so the centred block stays in cache between its subtraction and its
# product (measured fastest of 2**12..2**16 on the 2-core development CPU).
GRAM_CHUNK = 4096


def chunked_gram(stacked: PyTree, scale: jax.Array | float = 1.0,
                 *, chunk: int = GRAM_CHUNK) -> tuple[jax.Array, jax.Array]:
  """Gram matrix of the rows, translated block by block, in one read.

  The columns of every leaf are processed in blocks of ``chunk``; each block
  is translated by its own row of median block norm ``c_b`` and scaled by
  ``scale`` before its ``R x R`` product is accumulated, so the result is
  ``G = U U^T`` with ``u_i = scale * (x_i - c)`` for the concatenation ``c``
  of the block centres. Pairwise distances, and Weiszfeld iterates with
  weights summing to one, do not depend on ``c``; centring every block near
  the majority keeps the cancellation in ``G_ii + G_jj - 2 G_ij`` at the
  level of the spread, not of the norms, without materializing the
  centred ``R x d`` rows (a fresh buffer of that size costs several passes).

  Args:
    stacked: stacked updates (finite rows give a finite result).
    scale: a power of two applied to the centred blocks (overflow safety).
    chunk: columns per block (static).

  Returns:
    ``(gram, max_abs)``: the ``[R, R]`` Gram matrix and every row's largest
    absolute entry ``[R]`` (``nan`` for a row with a NaN), read in the same
    pass so that callers can check the rows were benign.
  """
  leaves = [_rows(x) for x in jax.tree.leaves(stacked)]
  r = leaves[0].shape[0]
  dtype = jnp.result_type(*leaves)
  scale = jnp.asarray(scale, dtype)

  def block(rows, acc):
    gram, mabs = acc
    sq = jnp.sum(jnp.square(rows), axis=1)
    order = jnp.argsort(jnp.where(jnp.isnan(sq), jnp.inf, sq), stable=True)
    u = (rows - rows[order[(r - 1) // 2]][None]) * scale
    gram = gram + jnp.matmul(u, u.T, precision=jax.lax.Precision.HIGHEST)
    return gram, jnp.maximum(mabs, jnp.max(jnp.abs(rows), axis=1))

  acc = (jnp.zeros((r, r), dtype), jnp.zeros((r,), dtype))
  if not column_chunking():
    chunk = max([1] + [x.shape[1] for x in leaves])
  for rows in leaves:
    n = rows.shape[1]
    full = n // chunk
    if full:
      acc = jax.lax.fori_loop(
          0, full,
          lambda i, a, rows=rows: block(
              jax.lax.dynamic_slice_in_dim(rows, i * chunk, chunk, axis=1), a),
          acc)
    if n > full * chunk:
      acc = block(rows[:, full * chunk:], acc)
  return acc


# Columns per block of `weighted_sum_centered` (its product is a
# matrix-vector one: larger blocks amortize the loop's per-block overhead).
WSUM_CHUNK = 16384


def weighted_sum_centered(weights: jax.Array, stacked: PyTree, center: PyTree,
                          *, chunk: int = WSUM_CHUNK) -> PyTree:
  """``sum_i weights[i] * (x_i - center)`` in one read, block by block.

  The translated block ``x_b - c_b`` lives only in cache (a fresh ``R x d``
  buffer of it would cost several passes), and the sum is accumulated at the
  scale of the translated rows, so when the weights sum to one the result
  is the weighted mean minus the centre to the precision of the spread, not
  of the norms (``weights @ X - c`` loses ``eps * ||x||``).
  """
  def leaf(x, c):
    rows = _rows(x)
    c = jnp.reshape(c, (-1,)).astype(x.dtype)
    w = weights.astype(x.dtype)
    n = rows.shape[1]
    full = n // chunk if column_chunking() else 0

    def part(start, size):
      blk = (jax.lax.dynamic_slice_in_dim(rows, start, size, axis=1)
             - jax.lax.dynamic_slice_in_dim(c, start, size)[None])
      return jnp.dot(w, blk, precision=jax.lax.Precision.HIGHEST)

    out = jnp.zeros((n,), x.dtype)
    if full:
      out = jax.lax.fori_loop(
          0, full, lambda i, o: jax.lax.dynamic_update_slice_in_dim(
              o, part(i * chunk, chunk), i * chunk, axis=0), out)
    if n > full * chunk:
      out = out.at[full * chunk:].set(part(full * chunk, n - full * chunk))
    return jnp.reshape(out, x.shape[1:])
  return jax.tree.map(leaf, stacked, center)


def sq_dists_centered(stacked: PyTree, center: PyTree, point: PyTree,
                      scale: jax.Array | float = 1.0, *,
                      chunk: int = WSUM_CHUNK) -> jax.Array:
  """``||((x_i - center) - point) * scale||^2`` for every worker, ``[R]``.

  One read, block by block: each translated, scaled block is squared in
  cache and its row sums taken as a matrix-vector product with ones
  (XLA:CPU's row reductions ran 1.3-1.5x slower than this on the 2-core
  development CPU). ``point`` is relative to ``center``, so distances to
  points near the rows keep the precision of the spread. No overflow
  protection: ``scale`` must bring the rows to moderate values.
  """
  def leaf(x, c, p):
    rows = _rows(x)
    c = jnp.reshape(c, (-1,)).astype(x.dtype)
    p = jnp.reshape(p, (-1,)).astype(x.dtype)
    s = jnp.asarray(scale, x.dtype)
    n = rows.shape[1]
    full = n // chunk if column_chunking() else 0

    def part(start, size):
      u = ((jax.lax.dynamic_slice_in_dim(rows, start, size, axis=1)
            - jax.lax.dynamic_slice_in_dim(c, start, size)[None])
           - jax.lax.dynamic_slice_in_dim(p, start, size)[None]) * s
      return jnp.dot(jnp.square(u), jnp.ones((size,), x.dtype),
                     precision=jax.lax.Precision.HIGHEST)

    total = jnp.zeros((rows.shape[0],), x.dtype)
    if full:
      total = jax.lax.fori_loop(0, full,
                                lambda i, a: a + part(i * chunk, chunk), total)
    if n > full * chunk:
      total = total + part(full * chunk, n - full * chunk)
    return total
  return _sum_over_leaves(jax.tree.map(leaf, stacked, center, point))
