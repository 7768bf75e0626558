"""Block-coordinate geometric median (the aggregation step of BGMD).

Acharya et al. (BGMD) view the stacked updates as an ``R x d`` matrix
:math:`G` (row :math:`i` is worker :math:`i`'s update, column :math:`j` one
coordinate of the model) and robustly aggregate only a block of :math:`k`
columns:

.. math::
  \\omega = \\operatorname{top}_k \\big( \\|G_{:, j}\\|_2^2 \\big)_{j=1}^d,
  \\qquad
  \\tilde g_\\omega = \\operatorname{GM}\\big(G_{1, \\omega}, \\dots,
  G_{R, \\omega}\\big), \\qquad \\tilde g_{[d] \\setminus \\omega} = 0 ,

(their Algorithm 2, "active norm sampling": the block is the set of columns
with the largest squared norms :math:`\\sum_i G_{ij}^2`; the randomized
variant samples :math:`k` columns without replacement with probability
proportional to :math:`\\|G_{:, j}\\|^2`). The geometric median then costs
:math:`O(R k)` per Weiszfeld iteration instead of :math:`O(R d)`; the memory
that makes this a convergent method (BGMD's Algorithm 1) is the stateful
transform :func:`byzjax.transforms.block_memory.block_geometric_median_descent`.

The column selection is coordinate-global: the score of every coordinate of
every leaf competes in one top-``k`` selection (``lax.top_k``, or on CPU an
exact radix select of the same set, which is faster there). The code
therefore concatenates the ``d``-length vector of per-coordinate scores once
(never the ``R x d`` matrix), and gathers the ``k`` selected columns into a
compact ``[R, k]`` array (a fixed shape) before calling
:func:`~byzjax.aggregators.geometric_median` on it.

Erasures and overflow: a worker with any non-finite entry (anywhere, not only
in the block) is ignored by the column scores and given weight zero in the
geometric median. Column norms are computed with a power-of-two scale per
column, so rows of 1e30 or 3e38 neither overflow the scores nor flush the
honest columns to zero.
"""

import functools
import inspect
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.aggregators.geometric_median import WeiszfeldInfo

PyTree = Any

SAMPLINGS = ("top", "norm_proportional")

# Arguments of `geometric_median` that the block aggregator sets itself.
_RESERVED_GM_KWARGS = ("init", "return_info")


class BlockGeometricMedianInfo(NamedTuple):
  """Diagnostics of :func:`block_geometric_median`."""
  indices: jax.Array   # int32 [k]: selected flat coordinates, ascending
  mass: jax.Array      # float (): share of sum_ij G_ij^2 (live rows) in block
  gm: WeiszfeldInfo  # info of the geometric median on the block


class _Layout(NamedTuple):
  """Static description of how the leaves tile the flat coordinates."""
  treedef: Any
  shapes: tuple          # per-leaf shape of one worker's update
  sizes: tuple           # per-leaf number of coordinates
  offsets: tuple         # per-leaf first flat coordinate
  dim: int               # d, the total number of coordinates


def _layout(stacked: PyTree) -> _Layout:
  leaves, treedef = jax.tree.flatten(stacked)
  shapes = tuple(tuple(jnp.shape(x)[1:]) for x in leaves)
  sizes = tuple(int(np.prod(s, dtype=np.int64)) for s in shapes)
  offsets = tuple(int(o) for o in np.cumsum((0,) + sizes[:-1]))
  return _Layout(treedef, shapes, sizes, offsets, int(sum(sizes)))


def _resolve_num_coords(dim: int, num_coords: int | None,
                       block_fraction: float | None) -> int:
  """The block size ``k`` from ``num_coords`` or ``block_fraction``.

  ``block_fraction`` gives ``k = max(1, ceil(block_fraction * d))`` (with a
  tiny slack so that, e.g., ``0.29 * 100`` gives 29).

  Raises:
    ValueError: naming ``num_coords`` / ``block_fraction`` if both or neither
      are given, or the value is out of range (``k`` must lie in ``[1, d]``).
  """
  if (num_coords is None) == (block_fraction is None):
    raise ValueError(
        "Give exactly one of num_coords and block_fraction, got "
        f"num_coords={num_coords!r}, block_fraction={block_fraction!r}.")
  if num_coords is not None:
    return _checks.check_int("num_coords", num_coords, low=1, high=dim)
  frac = _checks.check_fraction("block_fraction", block_fraction, low=0.0,
                                high=1.0, high_inclusive=True)
  if frac == 0.0:
    raise ValueError("block_fraction must be positive, got 0.0.")
  return min(dim, max(1, math.ceil(frac * dim - 1e-9)))


def _check_sampling(sampling: str, key) -> None:
  if sampling not in SAMPLINGS:
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}.")
  if sampling == "norm_proportional" and key is None:
    raise ValueError(
        "sampling='norm_proportional' draws random coordinates: pass an "
        "explicit PRNG key (key=jax.random.key(...)).")


def _pow2(e: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
  """Two normal floats whose product is ``2**e`` (``2**-128`` is denormal)."""
  half = e // 2
  one = jnp.ones(e.shape, dtype)
  return jnp.ldexp(one, half), jnp.ldexp(one, e - half)


# Column reductions over the worker axis. XLA:CPU reduces the leading axis of
# a row-major [R, n] array ~50x slower than it streams rows, so on CPU the
# rows are accumulated in a `fori_loop` over the worker axis (one row, i.e.
# one contiguous [n] vector, per step); other backends reduce directly.
def _stream_rows() -> bool:
  return jax.default_backend() == "cpu"


def _col_sum(fn, x: jax.Array, live: jax.Array) -> jax.Array:
  """``sum_i [live_i] fn(x_i)`` over the rows of ``x`` ``[R, n]``."""
  zero = jnp.zeros(x.shape[1:], x.dtype)
  if _stream_rows():
    return jax.lax.fori_loop(
        0, x.shape[0],
        lambda i, acc: acc + jnp.where(live[i], fn(x[i]), zero), zero)
  return jnp.sum(jnp.where(live[:, None], fn(x), 0.0), axis=0)


def _column_stats(x: jax.Array, live: jax.Array | None = None):
  """One pass over the rows of ``x`` ``[R, n]``.

  Returns:
    ``(sum_i x_i**2, max_i |x_i|, finite)``: the column sums of squares and
    maxima (over the rows with ``live``, or all rows), and whether each row
    is finite (``[R]``, computed in the same pass).
  """
  r, n = x.shape
  if _stream_rows():
    def body(i, carry):
      sq, mx, fin = carry
      row = x[i]
      if live is not None:
        row = jnp.where(live[i], row, jnp.zeros_like(row))
      return (sq + row * row, jnp.maximum(mx, jnp.abs(row)),
              fin.at[i].set(jnp.all(jnp.isfinite(row))))
    zero = jnp.zeros((n,), x.dtype)
    return jax.lax.fori_loop(0, r, body, (zero, zero, jnp.ones((r,), bool)))
  if live is not None:
    x = jnp.where(live[:, None], x, 0.0)
  return (jnp.sum(x * x, axis=0), jnp.max(jnp.abs(x), axis=0),
          jnp.all(jnp.isfinite(x), axis=1))


# Plain float32 sums of squares are exact enough (and one pass) when every
# live entry is below 2**FAST_MAX and every non-zero column reaches 2**-FAST_MIN
# (no overflow, no flushed squares of the column's leading entries).
_FAST_MAX = 60
_FAST_MIN = 50


def _column_scores(rows: list) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-coordinate column norms over the live rows, overflow-safe.

  Fast path: one pass computes the rows' finiteness together with the plain
  column sums of squares ``s_j = sum_i G_ij**2`` and column maxima; a second
  pass masks the erased rows only if there are any. When an entry is huge
  (1e30, 3e38: the squares overflow) or a column is tiny, another pass scales
  each column by ``2**-e_j``, the power of two of its largest live entry,
  before squaring, so ``m_j = sum_i (G_ij 2**-e_j)**2`` lies in ``[1/4, R]``
  (or is 0).

  Returns:
    ``(norm, log_sq, live)``: ``norm`` and ``log_sq`` are ``[d]``
    (concatenated over the leaves; the selection is coordinate-global):
    ``norm_j = ||G_:j|| * 2**-s`` with a fixed ``s`` (0 on the fast path)
    that keeps every value finite, a monotone stand-in for the squared column
    norm, and ``log_sq_j = log ||G_:j||**2`` (``-inf`` for a zero column);
    ``live`` is the ``[R]`` mask of rows without a non-finite entry.
  """
  r = rows[0].shape[0]
  shift = (r - 1).bit_length() // 2 + 1  # 2**shift > sqrt(R)
  stats = [_column_stats(x) for x in rows]
  live = functools.reduce(jnp.logical_and, [fin for _, _, fin in stats])
  sumsq, colmax = jax.lax.cond(
      jnp.all(live),
      lambda: ([sq for sq, _, _ in stats], [mx for _, mx, _ in stats]),
      lambda: tuple(map(list, zip(*[_column_stats(x, live)[:2]
                                    for x in rows]))))
  sumsq_all, colmax_all = jnp.concatenate(sumsq), jnp.concatenate(colmax)
  fast = (jnp.all(jnp.isfinite(sumsq_all))
          & (jnp.max(colmax_all) < 2.0**_FAST_MAX)
          & jnp.all((colmax_all == 0) | (colmax_all >= 2.0**-_FAST_MIN)))

  def fast_fn(operands):
    sumsq_all, _ = operands
    return jnp.sqrt(sumsq_all), jnp.log(sumsq_all)

  def scaled_fn(operands):
    _, colmax_all = operands
    e_all = btree.pow2_exponent(colmax_all)
    norms, log_sqs = [], []
    start = 0
    for x in rows:
      e = e_all[start:start + x.shape[1]]
      start += x.shape[1]
      s1, s2 = _pow2(-e, x.dtype)
      m = _col_sum(lambda row, s1=s1, s2=s2: jnp.square(row * s1 * s2), x,
                   live)
      norms.append(jnp.ldexp(jnp.sqrt(m), e - shift))
      log_sqs.append(jnp.log(m) + (2.0 * math.log(2.0)) * e.astype(m.dtype))
    return jnp.concatenate(norms), jnp.concatenate(log_sqs)

  norm, log_sq = jax.lax.cond(fast, fast_fn, scaled_fn,
                              (sumsq_all, colmax_all))
  return norm, log_sq, live


def _sortable(keys: jax.Array) -> jax.Array:
  """Maps floats to uint32 with the same order (``-inf`` lowest)."""
  u = jax.lax.bitcast_convert_type(keys.astype(jnp.float32), jnp.uint32)
  sign = jnp.uint32(0x80000000)
  return jnp.where(u >= sign, ~u, u | sign)


def _top_k_indices(keys: jax.Array, k: int, method: str | None = None
                   ) -> jax.Array:
  """Ascending flat indices of the ``k`` largest ``keys`` (fixed shape).

  Selects the same set as ``jax.lax.top_k(keys, k)`` (ties go to the lower
  index). ``method="radix"`` (the CPU default) finds the ``k``-th largest key
  bit by bit on its order-preserving ``uint32`` image (32 counting passes
  over the ``d`` scores) and takes the indices with ``jnp.nonzero``; XLA:CPU's
  ``top_k`` sorts and is ~7x slower at ``d = 1e6, k = 1e5``.
  ``method="top_k"`` (default elsewhere) calls ``lax.top_k``.
  """
  if method is None:
    method = "radix" if jax.default_backend() == "cpu" else "top_k"
  if method == "top_k":
    _, idx = jax.lax.top_k(keys, k)
    return jnp.sort(idx).astype(jnp.int32)
  u = _sortable(keys)

  def body(b, t):
    cand = t | jnp.left_shift(jnp.uint32(1), (31 - b).astype(jnp.uint32))
    return jnp.where(jnp.sum(u >= cand) >= k, cand, t)

  t = jax.lax.fori_loop(0, 32, body, jnp.uint32(0))  # the k-th largest key
  at_least = u >= t

  def break_ties(_):
    # More than k keys >= t: keep the ties at t with the lowest indices.
    above = u > t
    tie = u == t
    need = k - jnp.sum(above)
    return above | (tie & (jnp.cumsum(tie) <= need))

  chosen = jax.lax.cond(jnp.sum(at_least) == k, lambda _: at_least,
                        break_ties, None)
  return jnp.nonzero(chosen, size=k)[0].astype(jnp.int32)


def _select_indices(rows: list, k: int, sampling: str, key
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Flat indices ``[k]`` (ascending) of the selected columns, block mass,
  and the ``[R]`` live mask."""
  norm, log_sq, live = _column_scores(rows)
  if sampling == "top":
    idx = _top_k_indices(norm, k)
  else:
    # Gumbel-top-k: the k largest log p_j + Gumbel_j are a sample of k
    # coordinates without replacement with probabilities p_j ∝ ||G_:j||^2
    # (successive sampling). Zero columns (log p = -inf) come last.
    gumbel = jax.random.gumbel(key, log_sq.shape, log_sq.dtype)
    idx = _top_k_indices(log_sq + gumbel, k)
  # Share of the squared Frobenius norm captured by the block (diagnostic),
  # normalized by a power of two so the squares cannot overflow.
  t = jnp.ldexp(norm, -btree.pow2_exponent(jnp.max(norm)))
  sq = jnp.square(t)
  mass = jnp.sum(sq[idx]) / jnp.maximum(jnp.sum(sq), jnp.finfo(sq.dtype).tiny)
  return idx, mass, live


def _local(idx: jax.Array, offset: int, size: int) -> jax.Array:
  """Leaf-local positions of flat indices; ``size`` (out of range) if absent."""
  local = idx - offset
  return jnp.where((local >= 0) & (local < size), local, size)


def _take_columns(x: jax.Array, local: jax.Array) -> jax.Array:
  """``x[:, local]`` for ``x`` ``[R, n]``; zeros where ``local == n``.

  Gathers with flat indices ``i * n + local_j`` into the row-major ``[R, k]``
  result. (``jnp.take(x, local, axis=1)`` gathers a ``[k, R]`` array and
  transposes it; XLA:CPU then reads the block column-wise in every
  Weiszfeld pass, which made the geometric median ~6x slower.)
  """
  r, n = x.shape
  if r * n >= 2**31 - 1:  # flat int32 indices would overflow
    return jnp.take(x, local, axis=1, mode="fill", fill_value=0)
  flat = jnp.arange(r, dtype=local.dtype)[:, None] * n + local[None, :]
  flat = jnp.where(local[None, :] < n, flat, r * n)
  return jnp.take(jnp.reshape(x, (-1,)), flat, mode="fill", fill_value=0)


def _gather_columns(rows: list, layout: _Layout, idx: jax.Array) -> jax.Array:
  """The selected columns as a compact ``[R, k]`` array (fixed shape)."""
  if len(rows) == 1:
    return _take_columns(rows[0], idx)
  k = idx.shape[0]
  if len(rows) * k > layout.dim:
    # Gathering from every leaf would touch more than R*d entries: one
    # concatenation of the rows is cheaper (the selection is coordinate-global).
    return _take_columns(jnp.concatenate(rows, axis=1), idx)
  out = None
  for x, off, n in zip(rows, layout.offsets, layout.sizes):
    if n == 0:  # a zero-size leaf holds no selected column
      continue
    part = _take_columns(x, _local(idx, off, n))
    out = part if out is None else out + part  # one leaf holds each index
  return out


def _scatter(values: jax.Array, layout: _Layout, idx: jax.Array,
             dtypes: list) -> PyTree:
  """A tree shaped like one update: ``values`` at ``idx``, zeros elsewhere."""
  leaves = []
  for shape, off, n, dt in zip(layout.shapes, layout.offsets, layout.sizes,
                               dtypes):
    if n == 0:
      leaves.append(jnp.zeros(shape, dt))
      continue
    flat = jnp.zeros((n,), dt).at[_local(idx, off, n)].set(
        values.astype(dt), mode="drop")
    leaves.append(flat.reshape(shape))
  return jax.tree.unflatten(layout.treedef, leaves)


def _index_mask(layout: _Layout, idx: jax.Array) -> PyTree:
  leaves = []
  for shape, off, n in zip(layout.shapes, layout.offsets, layout.sizes):
    if n == 0:
      leaves.append(jnp.zeros(shape, bool))
      continue
    flat = jnp.zeros((n,), bool).at[_local(idx, off, n)].set(True, mode="drop")
    leaves.append(flat.reshape(shape))
  return jax.tree.unflatten(layout.treedef, leaves)


def _rows_of(stacked: PyTree) -> list:
  return [jnp.reshape(jnp.asarray(x), (x.shape[0], -1))
          for x in jax.tree.leaves(stacked)]


@public
def select_blocks(
    updates: PyTree,
    *,
    num_coords: int,
    sampling: str = "top",
    key: jax.Array | None = None,
) -> PyTree:
  """Boolean mask of the ``k`` coordinates (columns) BGMD aggregates.

  With ``sampling="top"`` the mask marks the ``k`` columns of the ``R x d``
  worker matrix with the largest squared norms
  :math:`\\sum_i G_{ij}^2` (BGMD, Algorithm 2); with
  ``sampling="norm_proportional"``, ``k`` columns drawn without replacement
  with probability :math:`\\propto \\sum_i G_{ij}^2` (Gumbel-top-k, using
  ``key``). The selection is global across the leaves of the tree.

  Rows with any non-finite entry (erasures) are ignored; the column norms are
  overflow-safe (see the module docstring). Ties are broken towards the lower
  flat index (leaves in ``jax.tree.leaves`` order, row-major within a leaf).

  .. warning::
    ``updates`` is stacked (leading worker axis ``R``); the mask is shaped
    like one worker's update.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    num_coords: the block size ``k``, a Python int in ``[1, d]``.
    sampling: ``"top"`` or ``"norm_proportional"``.
    key: PRNG key, required for ``"norm_proportional"``.

  Returns:
    A boolean pytree shaped like one worker's update with exactly ``k``
    ``True`` entries.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.aggregators.block_coordinate import select_blocks
    >>> g = {'w': jnp.array([[1., 0., 3.], [1., 0., -3.]])}
    >>> select_blocks(g, num_coords=1)['w'].tolist()
    [False, False, True]

  References:
    Acharya et al., `Robust Training in High Dimensions via Block Coordinate
    Geometric Median Descent <https://arxiv.org/abs/2106.08882>`_, AISTATS
    2022, Algorithm 2.
  """
  btree.num_workers(updates)
  layout = _layout(updates)
  k = _checks.check_int("num_coords", num_coords, low=1, high=layout.dim)
  _check_sampling(sampling, key)
  return _select_mask(updates, key, k=k, sampling=sampling)


# Jitted cores: eager callers compile once per shape and hyperparameters
# instead of dispatching (and compiling) every primitive, cond and loop.
@functools.partial(jax.jit, static_argnames=("k", "sampling"))
def _select_mask(updates: PyTree, key, *, k: int, sampling: str) -> PyTree:
  idx, _, _ = _select_indices(_rows_of(updates), k, sampling, key)
  return _index_mask(_layout(updates), idx)


def _validate_gm_kwargs(gm_kwargs: dict, reserved=_RESERVED_GM_KWARGS) -> None:
  """Rejects unknown geometric-median arguments and those the block step
  sets itself."""
  for name in reserved:
    if name in gm_kwargs:
      raise ValueError(
          f"{name} is set by the block aggregator and cannot be passed to "
          "the geometric median here.")
  known = [n for n in inspect.signature(geometric_median).parameters
           if n not in ("updates",) + tuple(reserved)]
  unknown = sorted(set(gm_kwargs) - set(known))
  if unknown:
    raise ValueError(
        f"unknown keyword argument(s) {unknown}: the block geometric median "
        f"forwards only the geometric median's arguments {known}.")


class _BlockStep(NamedTuple):
  aggregate: PyTree   # block GM scattered into zeros, shaped like one update
  mask: PyTree        # boolean block mask, shaped like one update
  live: jax.Array     # bool [R]: workers without a non-finite entry
  info: BlockGeometricMedianInfo


def _block_step(updates: PyTree, *, num_coords: int, sampling: str,
                key: jax.Array | None, gm_kwargs: dict,
                with_mask: bool = True) -> _BlockStep:
  """Selection, gather, GM and scatter: shared with the BGMD transform.

  ``with_mask=False`` skips building the boolean block mask (``mask`` is then
  ``None``).
  """
  # Array-valued GM arguments (weights) are traced; the others are static.
  dynamic = {n: v for n, v in gm_kwargs.items() if _is_array(v)}
  static = tuple(sorted((n, v) for n, v in gm_kwargs.items()
                        if not _is_array(v)))
  return _block_step_jit(updates, key, dynamic, k=num_coords,
                         sampling=sampling, static_gm=static,
                         with_mask=with_mask)


def _is_array(v) -> bool:
  return isinstance(v, (jax.Array, np.ndarray))


@functools.partial(jax.jit, static_argnames=("k", "sampling", "static_gm",
                                             "with_mask"))
def _block_step_jit(updates, key, dynamic_gm, *, k, sampling, static_gm,
                    with_mask):
  layout = _layout(updates)
  rows = _rows_of(updates)
  idx, mass, live = _select_indices(rows, k, sampling, key)
  compact = _gather_columns(rows, layout, idx)  # [R, k]
  # A worker erased anywhere is erased in the block too (its block entries
  # may be finite): it gets weight zero in the geometric median. (Weights,
  # not a NaN-masked copy of the block: masking the [R, k] block with `live`
  # made XLA:CPU split the fused gathers and cost more than the median.)
  gm_kwargs = dict(static_gm)
  gm_kwargs.update(dynamic_gm)
  weights = gm_kwargs.pop("weights", None)
  weights = btree.worker_weights(weights, live, compact.dtype)
  med, gm_info = geometric_median(compact, return_info=True,
                                  weights=weights,
                                  **gm_kwargs)
  dtypes = [x.dtype for x in jax.tree.leaves(updates)]
  agg = _scatter(med, layout, idx, dtypes)
  mask = _index_mask(layout, idx) if with_mask else None
  return _BlockStep(agg, mask, live,
                    BlockGeometricMedianInfo(idx, mass, gm_info))


@public
def block_geometric_median(
    updates: PyTree,
    *,
    num_coords: int | None = None,
    block_fraction: float | None = None,
    sampling: str = "top",
    key: jax.Array | None = None,
    return_info: bool = False,
    **gm_kwargs: Any,
) -> PyTree | tuple[PyTree, BlockGeometricMedianInfo]:
  """Geometric median of the workers on a block of ``k`` coordinates.

  The stateless aggregation step of BGMD (Algorithm 1 without the memory):

  .. math::
    \\tilde g_\\omega = \\operatorname{GM}(G_{1,\\omega}, \\dots,
    G_{R,\\omega}), \\qquad \\tilde g_{[d] \\setminus \\omega} = 0 ,

  where :math:`\\omega` is chosen by :func:`select_blocks`. The ``k``
  selected columns are gathered into a compact ``[R, k]`` array and passed to
  :func:`~byzjax.aggregators.geometric_median` (erased workers get weight
  zero), so each Weiszfeld iteration costs :math:`O(Rk)`. With ``k = d`` the
  result is the full geometric median. On its own it drops the unselected
  coordinates; BGMD adds them back through a memory, see
  :func:`byzjax.transforms.block_memory.block_geometric_median_descent`.

  .. warning::
    ``updates`` is stacked (leading worker axis ``R``); the result is shaped
    like one worker's update.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    num_coords: the block size ``k`` (Python int in ``[1, d]``).
    block_fraction: alternatively, ``k = ceil(block_fraction * d)``; give
      exactly one of the two.
    sampling: ``"top"`` (largest column norms) or ``"norm_proportional"``.
    key: PRNG key, required for ``"norm_proportional"``.
    return_info: also return a :class:`BlockGeometricMedianInfo`.
    **gm_kwargs: forwarded to
      :func:`~byzjax.aggregators.geometric_median` (``max_iters``, ``tol``,
      ``nu``, ``method``, ``criterion``, ``weights``).

  Returns:
    The aggregate, shaped like one worker's update, zero outside the block;
    with ``return_info=True`` a tuple ``(aggregate, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.aggregators.block_coordinate import block_geometric_median
    >>> g = {'w': jnp.array([[1.1, 0.1, 2.0], [0.9, 0.1, 2.0], [1.0, 0.2, 2.1],
    ...                      [1.0, 0.1, 1.9], [9e30, 0.1, 9e30]])}
    >>> out = block_geometric_median(g, num_coords=2)  # columns 0 and 2
    >>> [round(float(v), 1) for v in out['w']]
    [1.0, 0.0, 2.0]

  References:
    Acharya et al., `Robust Training in High Dimensions via Block Coordinate
    Geometric Median Descent <https://arxiv.org/abs/2106.08882>`_, AISTATS
    2022, Algorithms 1 and 2.
  """
  btree.num_workers(updates)
  layout = _layout(updates)
  k = _resolve_num_coords(layout.dim, num_coords, block_fraction)
  _check_sampling(sampling, key)
  _validate_gm_kwargs(gm_kwargs)
  step = _block_step(updates, num_coords=k, sampling=sampling, key=key,
                     gm_kwargs=gm_kwargs, with_mask=False)
  if return_info:
    return step.aggregate, step.info
  return step.aggregate
