"""Power iteration on small worker-space matrices, shared by the filters.

The spectral filter, CAF and SMEA need the top eigenpair of an ``R x R``
matrix built from one Gram matrix of the updates (DESIGN.md, "Where the cost
is"); this module holds the one bounded power iteration they share and its
deterministic start vector.
"""

import jax
import jax.numpy as jnp


def matvec(m, v):
  return jnp.matmul(m, v, precision=jax.lax.Precision.HIGHEST)


def normalize(v):
  tiny = jnp.finfo(v.dtype).tiny
  return v / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(v))), tiny)


def top_eigenvector(matrix: jax.Array, v0: jax.Array, *, num_iters: int,
                    tol: float) -> tuple[jax.Array, jax.Array]:
  """Bounded power iteration for a symmetric PSD matrix.

  Stops when the residual :math:`\\|Mu - (u^\\top M u) u\\|` is at most
  ``tol`` times the Rayleigh quotient, or after ``num_iters`` products. Unlike
  :func:`optax.power_iteration` it is safe on the zero matrix (returns a zero
  vector instead of NaN), which is what identical workers produce.

  Args:
    matrix: symmetric PSD ``[n, n]`` matrix.
    v0: starting vector ``[n]`` (need not be normalized).
    num_iters: maximum number of matrix-vector products.
    tol: relative residual tolerance.

  Returns:
    ``(u, num_iters_used)``: a unit vector (or zeros when ``matrix @ v0`` is
    zero) and the number of products done after the first.
  """
  # Scale by the largest entry first so that squaring cannot underflow.
  v0 = v0 / jnp.maximum(jnp.max(jnp.abs(v0)), jnp.finfo(v0.dtype).tiny)
  v = normalize(v0)
  mv = matvec(matrix, v)

  def residual(v, mv):
    lam = jnp.dot(v, mv)
    res = jnp.sqrt(jnp.sum(jnp.square(mv - lam * v)))
    return res, lam

  def cond_fn(carry):
    v, mv, it = carry
    res, lam = residual(v, mv)
    return (res > tol * lam) & (it < num_iters)

  def body_fn(carry):
    _, mv, it = carry
    v = normalize(mv)
    return v, matvec(matrix, v), it + 1

  v, _, it = jax.lax.while_loop(cond_fn, body_fn,
                                (v, mv, jnp.zeros([], jnp.int32)))
  return v, it


# Golden angle: cos(GOLDEN_ANGLE * (i + 1)) is a fixed sequence with no
# structure in common with any configuration of workers.
GOLDEN_ANGLE = 2.399963229728653
# Weight of that fixed sequence in the start vector of the power iteration.
TIE_BREAK = 0.1


def start_vector(m):
  """Deterministic start ``v0`` for the power iteration on ``M``.

  ``diag(M)_i = c_i ||g_i - mu||^2`` is permutation-equivariant and largest on
  the far workers that the top direction is made of. It cannot be the whole
  start: any permutation-equivariant start is orthogonal to a top eigenvector
  that is odd under a symmetry of the configuration (two equal clusters placed
  symmetrically about the mean have a constant diagonal, and the constant
  vector ``sqrt(c)`` is exactly the null vector of ``M``). A fixed sequence
  ``cos(GOLDEN_ANGLE * (i + 1))`` of relative weight ``TIE_BREAK`` breaks
  such ties; once the iteration has converged the result no longer depends
  on the start, so permutation invariance holds up to ``power_tol``.
  """
  diag = normalize(jnp.diagonal(m) / jnp.maximum(
      jnp.max(jnp.diagonal(m)), jnp.finfo(m.dtype).tiny))
  index = jnp.arange(1, m.shape[0] + 1, dtype=m.dtype)
  fixed = normalize(jnp.cos(GOLDEN_ANGLE * index))
  return diag + TIE_BREAK * fixed


def weighted_top_direction(gram: jax.Array, c: jax.Array, floor: jax.Array,
                           *, power_iters: int, power_tol: float
                           ) -> tuple[jax.Array, jax.Array]:
  """Top direction of the ``c``-weighted scatter of the rows, in worker space.

  With :math:`\\mu = \\sum_j c_j x_j / \\sum_j c_j`, the scatter
  :math:`S = \\sum_i c_i (x_i - \\mu)(x_i - \\mu)^\\top` and its top unit
  eigenvector ``v``, returns ``(v' S v, p)`` where
  :math:`p_i = \\langle x_i - \\mu, v\\rangle` for every row (also those
  with :math:`c_i = 0`), computed from the Gram matrix ``gram`` of the rows
  alone: :math:`K_c = (I - \\mathbf{1} w^\\top) K (I - w \\mathbf{1}^\\top)`,
  :math:`M = C^{1/2} K_c C^{1/2}` shares its non-zero eigenvalues with
  :math:`S`, and for its top eigenvector ``u`` (bounded power iteration),
  :math:`p = K_c C^{1/2} u / \\sqrt{u^\\top M u}`. Below ``floor`` (the
  rounding noise of :math:`K_c`) there is no direction: ``p = 0``.
  """
  tiny = jnp.finfo(gram.dtype).tiny
  w = c / jnp.maximum(jnp.sum(c), tiny)
  kw = matvec(gram, w)
  kc = gram - kw[None, :] - kw[:, None] + jnp.dot(w, kw)
  sqrt_c = jnp.sqrt(jnp.maximum(c, 0.0))
  m = sqrt_c[:, None] * kc * sqrt_c[None, :]
  u, _ = top_eigenvector(m, start_vector(m), num_iters=power_iters,
                         tol=power_tol)
  # With Y = C^{1/2} G_c (rows sqrt(c_i) (x_i - mu)), M = Y Y' and the unit
  # direction in update space is v = Y'u / ||Y'u||, ||Y'u||^2 = u'Mu. Row
  # i's projection is p_i = <x_i - mu, v> = (G_c Y' u)_i / ||Y'u||
  # = (K_c C^{1/2} u)_i / sqrt(u'Mu). For an exact eigenpair (lam, u),
  # K_c C^{1/2} u = C^{-1/2} M u = lam C^{-1/2} u, so p_i^2 =
  # lam u_i^2 / c_i; the K_c form also covers c_i = 0 and an inexact u.
  rayleigh = jnp.dot(u, matvec(m, u))  # ||Y' u||^2 = v' S v
  p = matvec(kc, sqrt_c * u) / jnp.sqrt(jnp.maximum(rayleigh, tiny))
  ok = rayleigh > floor
  return jnp.where(ok, rayleigh, 0.0), jnp.where(ok, p, 0.0)
