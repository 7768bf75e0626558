"""Geometric median by Weiszfeld's algorithm, jitted and overflow-safe.

The geometric median of worker updates :math:`x_1, \\dots, x_n` with weights
:math:`\\alpha_i` minimises :math:`f(z) = \\sum_i \\alpha_i \\|x_i - z\\|`.
Weiszfeld's fixed-point iteration (smoothed as in Pillutla et al., RFA, their
Algorithm 3 with :math:`\\nu`) is

.. math::
  z^{t+1} = \\frac{\\sum_i \\beta_i x_i}{\\sum_i \\beta_i}, \\qquad
  \\beta_i = \\frac{\\alpha_i}{\\max(\\nu, \\|x_i - z^t\\|)} .

Two strategies compute it:

* ``"direct"``: every iteration reads the stacked updates twice (distances,
  then the weighted sum); cheap when few iterations are needed.
* ``"gram"``: the distances depend on the data only through inner products,
  so after one Gram matrix :math:`K = U U^\\top` of the centred rows every
  iteration costs :math:`O(R^2)` (DESIGN.md, "Where the cost is"). The Gram
  phase is followed by exact direct iterations that refine the float32 Gram
  answer to the requested tolerance.
* ``"auto"`` (default) starts direct and switches to the Gram phase, centred
  at the current iterate, once the direct iterations have cost as much as one
  Gram matrix would (estimated from ``R`` and the backend), so easy inputs
  stay cheap and hard ones stop growing in cost with the iteration count.

Benign rows (all finite, no row beyond the taming radius, a moderate
typical distance: two reads decide it) are used in place: the translation to
a centre and the power-of-two scaling are folded into the distance
reduction, weighted sums are matrix-vector products ``beta @ X``, and the
Gram matrix is accumulated block by block (:func:`byzjax.tree.chunked_gram`),
so nothing of size ``R x d`` is ever written. Other inputs first standardize
the rows (:func:`byzjax.tree.standardize`): erased rows (any NaN/Inf) get
weight zero, rows are centred and scaled by a power of two, and rows more
than :data:`byzjax.tree.TAME_RADIUS` typical distances away are pulled in
along their ray, so rows of 1e30 or 3e38 cannot overflow the squared
distances.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public

PyTree = Any

METHODS = ("auto", "direct", "gram")
CRITERIA = ("objective", "step")

# Rows farther than this many typical distances from the centre are left out
# of the objective that the "objective" criterion watches (see its docs).
_OBJECTIVE_RADIUS = 2.0**10


class WeiszfeldInfo(NamedTuple):
  """Diagnostics of a geometric-median computation."""
  num_iters: jax.Array   # int32, shape (): Weiszfeld iterations run in total
  objective: jax.Array   # float, shape (): sum_i alpha_i ||x_i - z|| (std. units)
  error: jax.Array       # float, shape (): stopping quantity of the last step
  converged: jax.Array   # bool, shape (): error <= tol
  weights: jax.Array     # float, shape [R]: normalized final Weiszfeld weights
  gram_iters: jax.Array  # int32, shape (): iterations done in the Gram phase


class _Carry(NamedTuple):
  z: PyTree              # current iterate or Gram-space weights
  dist: jax.Array        # [R] distances from the rows to z (std. units)
  objective: jax.Array
  error: jax.Array       # the stopping quantity of the last step
  num_iters: jax.Array


class _Ops(NamedTuple):
  """The two reads of the rows a direct iteration makes, and the step norm.

  ``dists(z)``: distances ``[R]`` in standardized units; ``wsum(beta)``: the
  point ``sum_i beta_i x_i`` for weights summing to one (or all zero: the
  centre); ``step(z1, z0)``: ``||z1 - z0||`` in standardized units;
  ``gram()``: the Gram matrix of the standardized rows (any translation).
  """
  dists: Any
  wsum: Any
  step: Any
  gram: Any


def _objective(alpha_obj, dist):
  return jnp.sum(alpha_obj * dist)


def _beta(alpha, dist, nu):
  beta = alpha / jnp.maximum(dist, nu)
  # All weights zero (every worker erased): beta = 0 and the median is the
  # centre, which is then the origin. (A `where`, not a division guarded by
  # `maximum(total, tiny)`: XLA may rewrite the latter into 0/0 under jit.)
  total = jnp.sum(beta)
  return jnp.where(total > 0, beta / jnp.where(total > 0, total, 1.0), 0.0)


def _error(criterion, step_norm, prev_obj, obj):
  """The stopping quantity: relative step, or relative objective change."""
  if criterion == "step":
    # Standardized units: the step relative to the typical row distance.
    return step_norm
  # |f_t - f_{t+1}| / f_{t+1}, the rule of Weiszfeld implementations such as
  # geom_median's (Pillutla et al.'s RFA code); both are finite and >= 0.
  return jnp.abs(prev_obj - obj) / jnp.maximum(obj, jnp.finfo(obj.dtype).tiny)


def _direct_loop(ops, alpha, alpha_obj, nu, z0, num_iters0, *, max_iters, tol,
                 criterion, stop_iters=None):
  """Weiszfeld from ``z0``; every iteration reads the rows twice."""
  dist0 = ops.dists(z0)
  init = _Carry(z0, dist0, _objective(alpha_obj, dist0),
                jnp.asarray(jnp.inf, dist0.dtype), num_iters0)
  limit = max_iters if stop_iters is None else stop_iters

  def cond_fn(c):
    return (c.error > tol) & (c.num_iters < limit)

  def body_fn(c):
    z = ops.wsum(_beta(alpha, c.dist, nu))
    dist = ops.dists(z)
    obj = _objective(alpha_obj, dist)
    step = ops.step(z, c.z) if criterion == "step" else obj
    return _Carry(z, dist, obj, _error(criterion, step, c.objective, obj),
                  c.num_iters + 1)

  return jax.lax.while_loop(cond_fn, body_fn, init)


def _tree_norm(t):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(t)))


def _gram_dists(gram, a):
  """Distances ``||u_i - sum_j a_j u_j||`` from the Gram matrix, ``[R]``."""
  ga = gram @ a
  sq = jnp.diagonal(gram) - 2.0 * ga + jnp.dot(a, ga)
  return jnp.sqrt(jnp.maximum(sq, 0.0))


def _gram_loop(gram, alpha, alpha_obj, nu, a0, num_iters0, *, max_iters, tol,
               criterion):
  """Weiszfeld in the span of the rows: the iterate is ``sum_j a_j u_j``."""
  dist0 = _gram_dists(gram, a0)
  init = _Carry(a0, dist0, _objective(alpha_obj, dist0),
                jnp.asarray(jnp.inf, dist0.dtype), num_iters0)

  def cond_fn(c):
    return (c.error > tol) & (c.num_iters < max_iters)

  def body_fn(c):
    a = _beta(alpha, c.dist, nu)
    dist = _gram_dists(gram, a)
    obj = _objective(alpha_obj, dist)
    da = a - c.z
    step = jnp.sqrt(jnp.maximum(jnp.dot(da, gram @ da), 0.0))
    return _Carry(a, dist, obj, _error(criterion, step, c.objective, obj),
                  c.num_iters + 1)

  return jax.lax.while_loop(cond_fn, body_fn, init)


def gram_switch_iters(num_workers: int, backend: str | None = None) -> int:
  """Direct iterations that cost about as much as one Gram matrix.

  A direct iteration reads the ``R x d`` updates twice; the Gram matrix
  (:func:`byzjax.tree.chunked_gram`) reads them once and costs ``2 R^2 d``
  flops. On the 2-core development CPU at ``R = 128`` it cost as much as
  3-4 direct iterations (``experiments/benchmarks/vs_peers.py``), i.e. about
  ``R / 32``; on accelerators with matrix units it is below one pass.
  """
  backend = backend or jax.default_backend()
  if backend == "cpu":
    return max(2, num_workers // 32)
  return 2


def _solve(ops, alpha, alpha_obj, nu, z0, *, method, max_iters, tol,
           criterion):
  """Runs the chosen strategy; returns the final carry and Gram iterations."""
  zero = jnp.zeros([], jnp.int32)
  r = alpha.shape[0]
  if method == "direct":
    carry = _direct_loop(ops, alpha, alpha_obj, nu, z0, zero,
                         max_iters=max_iters, tol=tol, criterion=criterion)
    return carry, zero
  switch = 0 if method == "gram" else gram_switch_iters(r)
  carry = _direct_loop(ops, alpha, alpha_obj, nu, z0, zero,
                       max_iters=max_iters, tol=tol, criterion=criterion,
                       stop_iters=min(switch, max_iters))
  need_gram = (carry.error > tol) & (carry.num_iters < max_iters)
  return jax.lax.cond(
      need_gram,
      lambda c: _gram_then_refine(ops, alpha, alpha_obj, nu, c,
                                  max_iters=max_iters, tol=tol,
                                  criterion=criterion),
      lambda c: (c, zero), carry)


def _gram_then_refine(ops, alpha, alpha_obj, nu, carry, *, max_iters, tol,
                      criterion):
  """Gram phase from one Weiszfeld step past the current iterate, then exact
  refinement.

  The Gram matrix is of rows translated near the honest majority
  (:func:`byzjax.tree.chunked_gram` or :func:`byzjax.tree.standardize`),
  which keeps the cancellation in ``K_ii - 2 (K a)_i + a'Ka`` at the level of
  the spread, not of the norms.
  """
  gram = ops.gram()
  # One Weiszfeld step from the current iterate lands in the span of the
  # rows: z = sum_j a0_j u_j with a0 = beta(current distances).
  a0 = _beta(alpha, carry.dist, nu)
  zero = jnp.zeros([], jnp.int32)
  g = _gram_loop(gram, alpha, alpha_obj, nu, a0, zero, max_iters=max_iters,
                 tol=tol, criterion=criterion)
  z = ops.wsum(g.z)
  # Exact refinement: direct iterations from the Gram answer, at least one
  # so that the stopping rule is checked on exact distances. The Gram
  # distances lose precision at scales far below the spread (cancellation),
  # so the refinement keeps its own budget: max_iters bounds the exact and
  # the Gram iterations separately.
  refined = _direct_loop(ops, alpha, alpha_obj, nu, z, carry.num_iters,
                         max_iters=max_iters + 1, tol=tol, criterion=criterion)
  return refined._replace(num_iters=refined.num_iters + g.num_iters), g.num_iters


def _rows(x):
  return jnp.reshape(x, (x.shape[0], -1))


def _benign_screen(updates):
  """Two reads deciding whether the rows can be used as they are.

  Returns ``(benign, center, dist, exponent)``: ``center`` is the row of
  (lower) median norm, ``dist`` the plain distances of the rows to it,
  ``2**exponent`` the power of two at or above their upper median (as in
  :func:`byzjax.tree.standardize`). ``benign`` holds when every row is
  finite, no plain square overflowed, the typical distance is a moderate
  number and no row is beyond the taming radius: then standardizing would
  only translate and scale, so the iteration can read the rows in place,
  with the translation and scale folded into its arithmetic.
  """
  r = btree.num_workers(updates)
  sqn = btree.sq_norms(updates)
  order = jnp.argsort(jnp.where(jnp.isnan(sqn), jnp.inf, sqn), stable=True)
  center = jax.tree.map(lambda x: x[order[(r - 1) // 2]], updates)
  dist = jnp.sqrt(btree.sq_dists_to(updates, center))
  typical = jnp.sort(dist)[r // 2]
  exponent = btree.pow2_exponent(typical)
  rel = jnp.ldexp(dist, -exponent)
  benign = (jnp.all(jnp.isfinite(sqn)) & jnp.all(jnp.isfinite(dist))
            & (typical >= 2.0**-60) & (typical <= 2.0**60)
            & jnp.all(rel <= btree.TAME_RADIUS))
  return benign, center, dist, exponent


@public(like_update=("init",))
def geometric_median(
    updates: PyTree,
    *,
    weights: jax.Array | None = None,
    init: PyTree | None = None,
    max_iters: int = 100,
    tol: float = 1e-6,
    nu: float | None = None,
    method: str = "auto",
    criterion: str = "objective",
    return_info: bool = False,
) -> PyTree | tuple[PyTree, WeiszfeldInfo]:
  """Geometric median of the workers' updates (Weiszfeld's algorithm).

  .. math::
    \\operatorname{GM}(x_1, \\dots, x_n) =
    \\arg\\min_z \\sum_i \\alpha_i \\|x_i - z\\|_2

  iterated as described in the module docstring until the stopping quantity
  (see ``criterion``) is at most ``tol`` or ``max_iters`` iterations have run.
  The breakdown point is 1/2: with fewer than half of the (weighted) workers
  Byzantine, the output stays within a constant factor of the honest spread
  of the honest geometric median.

  .. warning::
    ``updates`` is stacked: every leaf has a leading worker axis ``R``; the
    result has that axis removed.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    weights: optional non-negative per-worker weights ``alpha``, shape
      ``[R]`` (default: all ones). Erased workers, and weights that are
      NaN, infinite, zero or negative, get weight zero.
    init: optional starting point shaped like one worker's update (e.g. last
      step's aggregate, for warm starts). Default: the mean of the half of
      the live rows nearest to the live row of median norm.
    max_iters: maximum number of Weiszfeld iterations (Python int >= 1) of
      each kind: exact ones (reading the updates) and, with the Gram
      strategy, Gram-space ones, so ``info.num_iters`` can reach twice it.
    tol: stopping tolerance for ``criterion``.
    nu: smoothing: weights are ``alpha_i / max(nu, dist_i)``. ``None`` means
      ``1e-7`` times the typical (median) distance of the rows to the centre,
      which keeps the answer scale-equivariant.
    method: ``"auto"``, ``"direct"`` or ``"gram"`` (see the module docstring).
    criterion: ``"objective"`` (default) stops when the relative objective
      change ``|f_t - f_{t+1}| / f_{t+1}`` is at most ``tol``, the rule of
      the public implementations (``geom_median``'s ``ftol``, Pillutla et
      al.'s RFA), so that the default stops where they stop. Rows farther
      than ``2**10`` typical distances from the centre are left out of
      ``f`` for this rule (on inputs without such rows it is exactly the
      textbook rule): their distances would dominate ``f``, so the rule
      would stop while the median still moves by a good fraction of the
      honest spread, and in float32 their rounding alone exceeds ``tol f``.
      The objective rule bounds the objective, i.e. the point only to about
      ``sqrt(tol)`` of the spread; ``"step"`` asks for a tighter point: it
      stops when the step ``||z_{t+1} - z_t||`` is at most ``tol`` times the
      typical (median) distance of the rows to the centre.
    return_info: also return a :class:`WeiszfeldInfo`.

  Returns:
    The geometric median, a pytree shaped like one worker's update; with
    ``return_info=True`` a tuple ``(median, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.aggregators import geometric_median
    >>> x = {'w': jnp.array([[0., 0.], [1., 0.], [0., 1.], [1e30, 1e30]])}
    >>> gm = geometric_median(x)
    >>> bool(jnp.all(jnp.abs(gm['w']) < 1.0))
    True

  References:
    Weiszfeld, `Sur le point pour lequel la somme des distances de n points
    donnés est minimum`, 1937.

    Pillutla, Kakade & Harchaoui, `Robust Aggregation for Federated Learning
    <https://arxiv.org/abs/1912.13445>`_, 2022 (smoothed Weiszfeld).

    Acharya et al., `Robust Training in High Dimensions via Block Coordinate
    Geometric Median Descent <https://arxiv.org/abs/2106.08882>`_, 2022.
  """
  r = btree.num_workers(updates)
  _checks.check_int("max_iters", max_iters, low=1)
  _checks.check_positive("tol", tol, allow_zero=True)
  if nu is not None:
    _checks.check_positive("nu", nu, allow_zero=True)
  if criterion not in CRITERIA:
    raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  _checks.check_worker_vector("weights", weights, r)
  kw = dict(weights=weights, init=init, nu=nu, method=method,
            max_iters=max_iters, tol=tol, criterion=criterion)
  benign, center, dist_c, exponent = _benign_screen(updates)
  median, info = jax.lax.cond(
      benign,
      lambda x: _in_place(x, center, dist_c, exponent, **kw),
      lambda x: _standardized(x, **kw), updates)
  return (median, info) if return_info else median


def _alpha(weights, live, dtype):
  # Non-finite, zero or negative weights are erasures (tree.worker_weights).
  return btree.worker_weights(weights, live, dtype)


def _nu_std(nu, exponent, dtype):
  if nu is None:
    return jnp.asarray(1e-7, dtype)
  return jnp.ldexp(jnp.asarray(nu, dtype), -exponent)


def _info(carry, gram_iters, alpha, nu, tol):
  return WeiszfeldInfo(
      num_iters=carry.num_iters, objective=carry.objective,
      error=carry.error, converged=carry.error <= tol,
      weights=_beta(alpha, carry.dist, nu), gram_iters=gram_iters)


def _in_place(x, center, dist_c, exponent, *, weights, init, nu, method,
              max_iters, tol, criterion):
  """Benign rows: Weiszfeld on the rows as they are (no standardized copy).

  Distances are taken of ``((x_i - c) - v) * 2**-e`` block by block
  (:func:`btree.sq_dists_centered`), weighted sums are matrix-vector products ``beta @ (X - c)``
  block by block (XLA:CPU reduces the leading axis far faster as a product
  than as a ``sum``; :func:`btree.weighted_sum_centered`), and the Gram phase
  reads the rows once, block by block (:func:`btree.chunked_gram`).
  """
  dtype = dist_c.dtype
  live = jnp.ones(dist_c.shape, bool)
  alpha = _alpha(weights, live, dtype)
  scale = jnp.ldexp(jnp.ones([], dtype), -exponent)
  dist_std = dist_c * scale
  alpha_obj = jnp.where(dist_std <= _OBJECTIVE_RADIUS, alpha, 0.0)
  nu_std = _nu_std(nu, exponent, dtype)

  # The iterate is kept relative to the centre, z = c + v, so that it and
  # the distances carry the precision of the spread, not of the norms.
  def dists(v):
    return jnp.sqrt(btree.sq_dists_centered(x, center, v, scale))

  def wsum(beta):
    # All-zero weights give v = 0: the centre.
    return btree.weighted_sum_centered(beta, x, center)

  def step(v1, v0):
    return _tree_norm(jax.tree.map(lambda a, b: (a - b) * scale, v1, v0))

  ops = _Ops(dists, wsum, step, lambda: btree.chunked_gram(x, scale)[0])
  if init is None:
    n = dist_c.shape[0]
    rank = jnp.argsort(jnp.argsort(dist_c, stable=True), stable=True)
    keep = (rank < (n + 1) // 2).astype(dtype)
    v0 = wsum(keep / jnp.sum(keep))
  else:
    v0 = jax.tree.map(lambda z, c: (jnp.asarray(z, c.dtype) - c) * scale,
                      init, center)
    v0 = jax.tree.map(lambda z: jnp.ldexp(z, exponent), _tame_point(v0))
  carry, gram_iters = _solve(ops, alpha, alpha_obj, nu_std, v0, method=method,
                             max_iters=max_iters, tol=tol, criterion=criterion)
  median = jax.tree.map(lambda v, c: (c + v).astype(c.dtype), carry.z, center)
  return median, _info(carry, gram_iters, alpha, nu_std, tol)


def _standardized(updates, *, weights, init, nu, method, max_iters, tol,
                  criterion):
  """Any rows (erasures, 1e30, 3e38): Weiszfeld on standardized rows."""
  clean, live = btree.zero_erasures(updates)
  dtype = jnp.result_type(*jax.tree.leaves(clean))
  alpha = _alpha(weights, live, dtype)
  u, std = btree.standardize(clean, live)
  alpha_obj = jnp.where(std.dist <= _OBJECTIVE_RADIUS, alpha, 0.0)
  nu_std = _nu_std(nu, std.exponent, dtype)

  def wsum(beta):
    # An all-zero beta gives the origin, which is the centre.
    return btree.weighted_sum(beta, u)

  ops = _Ops(lambda z: jnp.sqrt(btree.sq_dists_to(u, z)), wsum,
             lambda z1, z0: _tree_norm(jax.tree.map(jnp.subtract, z1, z0)),
             lambda: btree.worker_gram(u))
  if init is None:
    z0 = _start_point(u, std)
  else:
    z0 = jax.tree.map(
        lambda z, c: jnp.ldexp(jnp.asarray(z, c.dtype) - c, -std.exponent),
        init, std.center)
    z0 = _tame_point(z0)
  carry, gram_iters = _solve(ops, alpha, alpha_obj, nu_std, z0, method=method,
                             max_iters=max_iters, tol=tol, criterion=criterion)
  median = jax.tree.map(
      lambda z, c: (jnp.ldexp(z, std.exponent) + c).astype(c.dtype),
      carry.z, std.center)
  return median, _info(carry, gram_iters, alpha, nu_std, tol)


def _start_point(u, std):
  """Mean of the half of the live rows nearest to the centre (std. units).

  The centre itself is a data row, and Weiszfeld started exactly at a data
  point stays there (its weight is 1/nu), so the default start is this mean
  instead: a robust point that is generically not a data point. When at least
  half of the rows coincide with the centre it is the centre, which is then
  the geometric median.
  """
  n_live = jnp.sum(std.live)
  rank = jnp.argsort(jnp.argsort(jnp.where(std.live, std.dist, jnp.inf),
                                 stable=True), stable=True)
  keep = std.live & (rank < (n_live + 1) // 2)
  return btree.weighted_sum(keep / jnp.maximum(jnp.sum(keep), 1), u)


def _tame_point(z):
  """Pulls a starting point in to the taming radius (a warm start can be bad)."""
  norm = btree.worker_norms(jax.tree.map(lambda x: x[None], z))[0]
  factor = jnp.where(norm > btree.TAME_RADIUS, btree.TAME_RADIUS / norm, 1.0)
  factor = jnp.where(jnp.isfinite(norm), factor, 0.0)
  return jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0) * factor, z)
