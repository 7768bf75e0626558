"""Centered clipping (Karimireddy, He & Jaggi, ICML 2021).

Starting from a centre :math:`v` (the previous step's aggregate), every
worker's difference to the centre is clipped to radius :math:`\\tau` and the
clipped differences are averaged, ``num_iters`` times:

.. math::
  v \\leftarrow v + \\frac{1}{n} \\sum_{i=1}^n (x_i - v)
  \\min\\Big(1, \\frac{\\tau}{\\|x_i - v\\|}\\Big) .
  \\qquad \\text{(CC)}

A worker far from the centre moves it by at most :math:`\\tau / n`, so with
a good centre (last step's aggregate, with worker momentum as the paper
prescribes) a minority of Byzantine workers has bounded influence.

Erasures: a worker with any non-finite entry contributes zero and is not
counted, i.e. :math:`n` is the number of live workers (CC over the workers
that sent a message). Overflow: the differences are formed row by row after
scaling by a power of two (:math:`x_i - v` itself can exceed float's range
when both are ~3e38 with opposite signs), and the norm comparison is done in
the log domain, so rows of 1e30 or 3e38 are clipped to exactly
:math:`\\tau` instead of overflowing.

Choosing the radius. Karimireddy et al.'s analysis of (CC) takes
:math:`\\tau` of the order of the honest workers' spread around the centre,
:math:`\\sqrt{\\mathbb{E}\\|x_i - v\\|^2}` for honest :math:`i`, growing as the
Byzantine fraction shrinks (see their robustness theorem for the constants,
which involve the unknown honest variance :math:`\\rho^2`). Without a
known :math:`\\rho`, ``radius=None`` (the default) estimates that scale at
every iteration as the median over live workers of :math:`\\|x_i - v\\|`:
with fewer than half the workers Byzantine the median is bounded by honest
distances, whatever the Byzantine workers send, and it adapts as the
gradients shrink over training. A fixed ``radius`` reproduces a paper's
setting; pick it from the honest gradient differences' norms (e.g. the
median of ``||x_i - v||`` over a few steps without attack), not from the
gradients' own norms, since :math:`v` tracks the aggregate.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public

PyTree = Any


class CenteredClipInfo(NamedTuple):
  """Diagnostics of :func:`centered_clip` (from the last iteration)."""
  dist: jax.Array     # float [R]: ||x_i - v|| (inf if beyond float's range)
  clipped: jax.Array  # bool [R]: live workers whose difference was clipped
  live: jax.Array     # bool [R]: workers without a non-finite entry
  weights: jax.Array  # float [R]: min(1, tau/||x_i - v||) / n, 0 if erased
  radius: jax.Array   # float (): the radius tau used


class CenteredClippingState(NamedTuple):
  """State of :func:`centered_clipping`."""
  center: optax.Updates   # params-shaped: last aggregate v (zeros at step 0)
  num_clipped: jax.Array  # int32 (): workers clipped in the last iteration
  info: CenteredClipInfo | None = None  # last step's, with num_workers


def _median_live(values: jax.Array, live: jax.Array) -> jax.Array:
  """The lower median of ``values[live]`` (``-inf`` if none is live)."""
  n = jnp.sum(live)
  ordered = jnp.sort(jnp.where(live, values, jnp.inf))
  return jnp.where(n > 0, ordered[jnp.maximum((n - 1) // 2, 0)], -jnp.inf)


def _cc_step(clean: PyTree, live: jax.Array, n_live: jax.Array,
             center: PyTree, radius: float | None):
  """One (CC) iteration on rows with erasures already zeroed.

  ``radius=None``: the median live distance to the centre (module docstring).
  """
  # Row exponent covering both the row and the centre: y_i = (x_i - v) 2^-e_i
  # has entries of magnitude < 2, so nothing below overflows.
  center_max = btree.max_abs(jax.tree.map(lambda c: c[None], center))[0]
  e = btree.pow2_exponent(jnp.maximum(btree.max_abs(clean), center_max))
  y = jax.tree.map(
      lambda x, c: jnp.ldexp(x, -btree.per_row(x, e))
      - jnp.ldexp(c[None], -btree.per_row(x, e)), clean, center)
  y_norm = jnp.sqrt(btree.sq_norms(y))  # <= 2 sqrt(d): finite
  dtype = y_norm.dtype
  log_dist = jnp.log2(y_norm) + e.astype(dtype)  # log2 ||x_i - v||
  if radius is None:
    log_tau = _median_live(log_dist, live)
    radius = jnp.minimum(jnp.exp2(log_tau), jnp.finfo(dtype).max)
  else:
    log_tau = jnp.log2(jnp.asarray(radius, dtype))
  clipped = live & (log_dist > log_tau)
  # contribution_i = (x_i - v) min(1, tau/||x_i - v||) / n
  #               = 2^{e_i} y_i / n              (not clipped)
  #               = tau y_i / (||y_i|| n)         (clipped; no exponent)
  inv_n = 1.0 / n_live.astype(dtype)
  safe_norm = jnp.where(y_norm > 0, y_norm, 1.0)
  factor = jnp.where(clipped, radius * inv_n / safe_norm, inv_n)
  factor = jnp.where(live, factor, 0.0)
  # Per-worker weight on y_i. It exceeds float's range only for an unclipped
  # row beyond ~1e38 (a radius that large is the plain mean, which then
  # overflows in truth); clamp it so the output stays finite.
  weight = jnp.ldexp(factor, jnp.where(clipped, 0, e))
  weight = jnp.minimum(weight, jnp.finfo(dtype).max)
  step = jax.tree.map(
      lambda t: jnp.tensordot(weight.astype(t.dtype), t, axes=1,
                              precision=jax.lax.Precision.HIGHEST), y)
  new_center = jax.tree.map(lambda c, s: (c + s).astype(c.dtype), center, step)
  dist = jnp.where(live, jnp.exp2(log_dist), 0.0)
  share = jnp.where(clipped, jnp.exp2(log_tau - log_dist), 1.0)
  weights = jnp.where(live, share * inv_n, 0.0)
  return new_center, CenteredClipInfo(dist, clipped, live, weights,
                                      jnp.asarray(radius, dtype))


@public(like_update=("center",))
def centered_clip(
    updates: PyTree,
    *,
    center: PyTree | None = None,
    radius: float | None = None,
    num_iters: int = 1,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, CenteredClipInfo]:
  """Centered clipping of the workers' updates around ``center``.

  Iterates (CC) ``num_iters`` times from ``center`` (see the module
  docstring). With ``radius = inf`` one iteration gives the mean of the live
  workers, whatever the centre.

  .. warning::
    ``updates`` is stacked (leading worker axis ``R``); ``center`` and the
    result are shaped like one worker's update.

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    center: the starting point :math:`v` (the previous aggregate), shaped
      like one worker's update (a ``ValueError`` names a mismatch); ``None``
      means zeros.
    radius: the clipping radius :math:`\\tau > 0` (``float('inf')``
      allowed); ``None`` (default): at every iteration, the median over live
      workers of :math:`\\|x_i - v\\|` (see the module docstring for how
      to choose it).
    num_iters: number of (CC) iterations, a Python int >= 1.
    return_info: also return a :class:`CenteredClipInfo`.

  Returns:
    The new centre, shaped like one worker's update; with
    ``return_info=True`` a tuple ``(center, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.transforms.centered_clipping import centered_clip
    >>> x = {'w': jnp.array([[1., 0.], [0., 1.], [1e30, 0.]])}
    >>> out = centered_clip(x, center={'w': jnp.zeros(2)}, radius=2.0)
    >>> [round(float(v), 4) for v in out['w']]
    [1.0, 0.3333]

  References:
    Karimireddy, He & Jaggi, `Learning from History for Byzantine Robust
    Optimization <https://arxiv.org/abs/2012.10333>`_, ICML 2021, eq. (CC).
  """
  btree.num_workers(updates)
  if radius is not None:
    _checks.check_positive("radius", radius, allow_inf=True)
    radius = float(radius)
  _checks.check_int("num_iters", num_iters, low=1)
  v, info = _centered_clip(updates, center, radius=radius,
                           num_iters=num_iters)
  if return_info:
    return v, info
  return v


# Jitted core (hyperparameters static): eager callers compile once.
@functools.partial(jax.jit, static_argnames=("radius", "num_iters"))
def _centered_clip(updates, center, *, radius, num_iters):
  clean, live = btree.zero_erasures(updates)
  if center is None:
    center = jax.tree.map(lambda x: jnp.zeros(x.shape[1:], x.dtype), clean)
  else:
    center = jax.tree.map(lambda c, x: jnp.asarray(c, x.dtype), center, clean)
  n_live = jnp.maximum(jnp.sum(live), 1)

  def body(_, carry):
    v, _ = carry
    return _cc_step(clean, live, n_live, v, radius)

  r = live.shape[0]
  dtype = jnp.result_type(*jax.tree.leaves(clean))
  info0 = CenteredClipInfo(jnp.zeros([r], dtype), jnp.zeros([r], bool), live,
                           jnp.zeros([r], dtype), jnp.zeros([], dtype))
  return jax.lax.fori_loop(0, num_iters, body, (center, info0))


def centered_clipping(
    *,
    radius: float | None = None,
    num_iters: int = 1,
    num_workers: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Centered clipping as an aggregating optax transform.

  Keeps the last aggregate :math:`v` in its state (zeros before the first
  step) and returns :func:`centered_clip` of the stacked updates around it,
  which becomes the next centre. Karimireddy et al. pair it with worker
  momentum: feed it the workers' momenta (e.g. via a per-worker
  ``optax.trace``) rather than raw gradients.

  .. warning::
    ``update`` takes stacked updates (leading worker axis ``R``) and returns
    one update shaped like the parameters: put it before any
    parameter-shaped transform in a chain, e.g.
    ``optax.chain(centered_clipping(radius=1.0), optax.sgd(0.1))``.

  Args:
    radius: the clipping radius :math:`\\tau > 0`; ``None`` (default): the
      median distance of the live workers to the centre, re-estimated at
      every iteration (see :func:`centered_clip`).
    num_iters: (CC) iterations per step, a Python int >= 1.
    num_workers: the number of workers ``R``. When given, the state keeps
      the last step's :class:`CenteredClipInfo` (its shapes depend on ``R``)
      for diagnostics (the simulator reports the Byzantine workers' weight
      share from it).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`CenteredClippingState`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> tx = optax.chain(centered_clipping(radius=10.0), optax.sgd(1.0))
    >>> state = tx.init({'w': jnp.zeros(2)})
    >>> out, state = tx.update({'w': jnp.array([[1., 2.], [3., 4.]])}, state)
    >>> out['w'].tolist()
    [-2.0, -3.0]

  References:
    Karimireddy, He & Jaggi, `Learning from History for Byzantine Robust
    Optimization <https://arxiv.org/abs/2012.10333>`_, ICML 2021.
  """
  if radius is not None:
    _checks.check_positive("radius", radius, allow_inf=True)
  _checks.check_int("num_iters", num_iters, low=1)
  if num_workers is not None:
    _checks.check_int("num_workers", num_workers, low=1)

  def init_fn(params):
    info = None
    if num_workers is not None:
      dtype = jnp.result_type(*jax.tree.leaves(params)) if jax.tree.leaves(
          params) else jnp.float32
      r = num_workers
      info = CenteredClipInfo(jnp.zeros([r], dtype), jnp.zeros([r], bool),
                              jnp.zeros([r], bool), jnp.zeros([r], dtype),
                              jnp.zeros([], dtype))
    return CenteredClippingState(center=optax.tree.zeros_like(params),
                                 num_clipped=jnp.zeros([], jnp.int32),
                                 info=info)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    v, info = centered_clip(updates, center=state.center, radius=radius,
                            num_iters=num_iters, return_info=True)
    if state.info is not None:
      info = jax.tree.map(lambda new, old: new.astype(old.dtype), info,
                          state.info)
    return v, CenteredClippingState(
        center=v, num_clipped=jnp.sum(info.clipped).astype(jnp.int32),
        info=info if state.info is not None else None)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
