"""Block coordinate geometric median descent (BGMD) with its residual memory.

Acharya et al.'s Algorithm 1 aggregates, at every step, only a block of
``k`` coordinates with the geometric median, and keeps what it did not send
in a server-side memory that is added back to every worker's update at the
next step. Writing :math:`g_i^{(t)}` for worker :math:`i`'s update,
:math:`\\gamma_t` for the step size, :math:`b` for the number of workers and
:math:`\\hat m_t` for the memory (:math:`\\hat m_0 = 0`), one step is

.. math::
  G_t[i, :] &= \\gamma_t\\, g_i^{(t)} + \\hat m_t
    \\quad \\forall i \\qquad &\\text{(memory augmentation)} \\\\
  \\omega_t &= \\text{the } k \\text{ columns of } G_t
    \\text{ with the largest } \\|G_t[:, j]\\|^2 \\qquad
    &\\text{(block selection, Algorithm 2)} \\\\
  \\Delta_t &= G_t \\text{ on the columns } \\omega_t,
    \\text{ zero elsewhere} \\\\
  \\hat m_{t+1} &= \\tfrac{1}{b} \\textstyle\\sum_i
    \\big(G_t[i, :] - \\Delta_t[i, :]\\big) \\qquad
    &\\text{(memory update)} \\\\
  \\tilde g_t &= \\operatorname{GM}(\\Delta_t[1, :], \\dots, \\Delta_t[b, :])
    \\qquad &\\text{(robust aggregation)} \\\\
  x_{t+1} &= x_t - \\tilde g_t . \\qquad &\\text{(descent step)}

The memory is the average over the workers of the residual of the
*unselected* coordinates of the memory-augmented matrix (the selected ones
were sent), in step-size units (:math:`\\gamma_t` multiplies the fresh
update, not the memory). This transcription follows Algorithm 1 of the paper
as summarized above and the authors' reference implementation
(``anishacharya/BGMD-AISTATS-2022``, ``JacobianCompression.memory_feedback``
/ ``memory_update``: ``lr * G + residual``, then the mean over rows of
``G - G_sparse``, which is divided by ``lr`` before the aggregation).

As an optax transform, ``update`` returns :math:`\\tilde g_t / \\gamma_t`, a
gradient-scale update to be followed by ``optax.sgd(learning_rate)`` with the
*same* step size, so that the chain applies exactly
:math:`x_{t+1} = x_t - \\tilde g_t`:

>>> import optax
>>> from byzjax.transforms.block_memory import block_geometric_median_descent
>>> lr = 0.1
>>> tx = optax.chain(
...     block_geometric_median_descent(block_fraction=0.1, learning_rate=lr),
...     optax.sgd(lr))

With ``learning_rate=None`` the memory is kept in gradient units
(:math:`\\gamma \\equiv 1`); because the geometric median is scale-equivariant
this is the same algorithm for any *constant* step size, and lets the
optimizer that follows be anything (momentum, Adam, a schedule).

Byzantine rows and erasures: a worker with any non-finite entry (after the
memory is added) is an erasure: it is ignored by the block selection, gets
weight zero in the geometric median, and is left out of the memory average
(the mean is over the live workers). The memory is kept finite (clamped to
float's range). The paper's memory is a plain mean, so a Byzantine worker
moves it by up to :math:`1/b` of its own residual; ``memory_clip`` bounds
that (see below) at the price of no longer being the paper's algorithm when
it is active.

Per-worker memory (``memory="per_worker"``): the authors' experiment code
(the ``Optimization-Mavericks`` repository whose result files hold the
paper's Fashion-MNIST numbers) keeps one residual row per worker instead,
:math:`m_{t+1}^{(i)} = G_t[i, :] - \\Delta_t[i, :]` and :math:`G_t[i, :] =
\\gamma_t g_i^{(t)} + m_t^{(i)}`, never averaged. A Byzantine worker's
residual then stays in its own row, where the next block's geometric median
can reject it, whereas the shared mean carries :math:`1/b` of it into every
row: with 20% of the workers sending :math:`-100\\,g_i`, the shared memory
becomes about :math:`-18` times the honest residual and training diverges
(``experiments/acharya.py``). Erased rows restart from a zero memory.
This protection holds only while the Byzantine workers are the same rows at
every step. Where the corruption is redrawn at every step (the paper's
§4.1), a worker that was Byzantine at step :math:`t` carries its
:math:`-100\\,\\gamma_t g` residual into its honest steps; in
``experiments/acharya.py`` (20% of 32 workers redrawn every step, MLP) the
per-worker memory diverges as well. The paper's analysis (eq. (11),
Lemmas 3-4) bounds the memory of the good rows as if it held only good
residuals, which is the fixed-set case.

Diagnostics: ``state.mass`` is the share of :math:`\\|G_t\\|_F^2` (live rows,
after memory augmentation) in the selected block, so ``1 - state.mass`` is
the relative residual :math:`r_t = \\|G_t - \\mathcal C_k(G_t)\\|_F^2 /
\\|G_t\\|_F^2` of the paper's Figure 1(a); ``state.memory`` is the memory
itself (in step-size units when ``learning_rate`` is given).
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from byzjax import _checks
from byzjax import tree as btree
from byzjax.aggregators import block_coordinate as _blk
from byzjax.aggregators.geometric_median import geometric_median

PyTree = Any

# Geometric-median arguments the transform sets itself (per-step weights
# would have a worker-count shape unknown at construction).
_RESERVED = ("init", "return_info", "weights")


class BlockMemoryState(NamedTuple):
  """State of :func:`block_geometric_median_descent`."""
  count: jax.Array       # int32 (): number of updates so far (schedules)
  memory: optax.Updates  # the memory m_t (step-size units): params-shaped,
                         # or stacked [R, ...] for memory="per_worker"
  key: jax.Array | None  # PRNG key for "norm_proportional" (else None);
                         # split on every update
  indices: jax.Array     # int32 [k]: flat coordinates selected last step
  mass: jax.Array        # float (): share of ||G_t||_F^2 in the block (live
                         # rows); 1 - mass is Figure 1(a)'s relative residual
                         # r_t = ||G_t - C_k(G_t)||_F^2 / ||G_t||_F^2
  num_iters: jax.Array   # int32 (): Weiszfeld iterations of the last step


def _dim(params: PyTree) -> int:
  return int(sum(int(jnp.size(p)) for p in jax.tree.leaves(params)))


def _check_learning_rate(learning_rate) -> None:
  if learning_rate is None or callable(learning_rate):
    return
  _checks.check_positive("learning_rate", learning_rate)


def _residual_rows(stacked: PyTree, live: jax.Array, mask: PyTree) -> PyTree:
  """Each live row of ``stacked`` off the block ``mask``; erased rows zero."""
  return jax.tree.map(
      lambda x, m: jnp.where(
          m[None] | ~btree.per_row(x, live), 0.0,
          jnp.clip(x, -jnp.finfo(x.dtype).max,
                   jnp.finfo(x.dtype).max)).astype(x.dtype), stacked, mask)


def _residual_mean(stacked: PyTree, live: jax.Array, mask: PyTree,
                   memory_clip: float | None) -> PyTree:
  """Mean over the live rows of ``stacked``, zero on the block ``mask``."""
  clean = jax.lax.cond(jnp.all(live), lambda t: t,
                       lambda t: btree.mask_workers(t, live), stacked)
  n_live = jnp.maximum(jnp.sum(live), 1)
  dtype = jnp.result_type(*jax.tree.leaves(clean))
  w = live.astype(dtype) / n_live.astype(dtype)
  if memory_clip is not None:
    resid = jax.tree.map(
        lambda x, m: jnp.where(m[None], 0.0, x).astype(x.dtype), clean, mask)
    norms = btree.worker_norms(resid)  # overflow-safe; erased rows are 0
    median = jnp.sort(jnp.where(live, norms, jnp.inf))[(n_live - 1) // 2]
    bound = memory_clip * median
    scale = jnp.where(norms > bound, bound / norms, 1.0)  # inf norm -> 0
    w = w * scale.astype(dtype)
  # Each term w_i x_i is at most max|x| / n_live, so the sum stays finite for
  # finite rows; the clamp only guards the last rounding at float's maximum.
  mean = jax.tree.map(
      lambda x: jnp.tensordot(w.astype(x.dtype), x, axes=1,
                              precision=jax.lax.Precision.HIGHEST), clean)
  return jax.tree.map(
      lambda v, m: jnp.where(m, 0.0, jnp.clip(
          v, -jnp.finfo(v.dtype).max, jnp.finfo(v.dtype).max)).astype(v.dtype),
      mean, mask)


# The update is jitted with its configuration static, so eager calls (and
# several transforms with equal settings) share one compiled program.
@functools.partial(jax.jit, static_argnames=(
    "sampling", "learning_rate", "memory_clip", "gm_static", "per_worker"))
def _bgmd_update(updates, state, gm_dynamic, *, sampling, learning_rate,
                 memory_clip, gm_static, per_worker):
  """One step of Algorithm 1 (see the module docstring)."""
  k = state.indices.shape[0]
  # The shared memory broadcasts over the worker axis; per-worker rows add.
  memory = (state.memory if per_worker
            else jax.tree.map(lambda m: m[None], state.memory))
  if learning_rate is None:
    gamma = None
    corrected = jax.tree.map(lambda g, m: g + m, updates, memory)
  else:
    gamma = (learning_rate(state.count) if callable(learning_rate)
             else learning_rate)
    gamma = jnp.asarray(gamma)
    corrected = jax.tree.map(
        lambda g, m: (gamma.astype(g.dtype) * g + m).astype(g.dtype),
        updates, memory)
  if sampling == "norm_proportional":
    new_key, step_key = jax.random.split(state.key)
  else:
    new_key, step_key = None, None
  step = _blk._block_step(corrected, num_coords=k, sampling=sampling,
                          key=step_key,
                          gm_kwargs={**dict(gm_static), **gm_dynamic})
  if per_worker:
    memory = _residual_rows(corrected, step.live, step.mask)
  else:
    memory = _residual_mean(corrected, step.live, step.mask, memory_clip)
  out = step.aggregate
  if gamma is not None:
    # Back to gradient units for the optimizer that follows (as the
    # reference code's `G_sparse /= lr`); a zero step size sends nothing.
    out = jax.tree.map(
        lambda a: jnp.where(gamma > 0, a / jnp.where(gamma > 0, gamma, 1.0),
                            0.0).astype(a.dtype), out)
  new_state = BlockMemoryState(
      count=optax.safe_increment(state.count),
      memory=memory,
      key=new_key,
      indices=step.info.indices,
      mass=step.info.mass.astype(state.mass.dtype),
      num_iters=step.info.gm.num_iters)
  return out, new_state


def block_geometric_median_descent(
    num_coords: int | None = None,
    *,
    block_fraction: float | None = None,
    sampling: str = "top",
    key: jax.Array | None = None,
    learning_rate: float | Callable[[jax.Array], jax.Array] | None = None,
    memory_clip: float | None = None,
    memory: str = "shared",
    num_workers: int | None = None,
    **gm_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
  """BGMD: block-coordinate geometric median with residual memory.

  Implements Algorithm 1 of Acharya et al. step for step (see the module
  docstring for the update rule): memory augmentation of every worker's
  update, selection of the ``k`` columns with the largest squared norms
  (:func:`~byzjax.aggregators.block_coordinate.select_blocks`), geometric
  median of the compact ``[R, k]`` block
  (:func:`~byzjax.aggregators.block_coordinate.block_geometric_median`),
  and the memory update with the live-worker mean of the unselected
  residual.

  .. warning::
    ``update`` takes stacked updates (leading worker axis ``R``) and returns
    one update shaped like the parameters, like
    :func:`optax.contrib.differentially_private_aggregate`: it must come
    before any parameter-shaped transform in a chain.

  Args:
    num_coords: the block size ``k``, a Python int in ``[1, d]`` (``d``, the
      number of parameters, is checked at ``init``).
    block_fraction: alternatively ``k = ceil(block_fraction * d)``; give
      exactly one of the two.
    sampling: ``"top"`` (the paper's deterministic rule) or
      ``"norm_proportional"`` (``k`` columns drawn without replacement with
      probability proportional to the squared column norm).
    key: PRNG key for ``"norm_proportional"`` (required then). It lives in
      the state and is split on every update; the fresh half draws the
      step's coordinates.
    learning_rate: the step size :math:`\\gamma_t` of Algorithm 1, a float
      or an optax schedule of the update count. When given, the memory is in
      step-size units and ``update`` returns :math:`\\tilde g_t/\\gamma_t`;
      chain ``optax.sgd`` with the same ``learning_rate`` after it. ``None``
      (default) means :math:`\\gamma \\equiv 1`: memory in gradient units,
      any optimizer after it (identical to Algorithm 1 for a constant step
      size).
    memory_clip: optional robustness extension (not in the paper): before
      averaging, each worker's residual is scaled down to at most
      ``memory_clip`` times the median live residual norm, so one worker can
      move the memory by at most ``memory_clip * median / n_live``. ``None``
      (default) is the paper's plain mean. Only for ``memory="shared"``.
    memory: ``"shared"`` (default): one memory, the mean residual, as
      Algorithm 1 is printed; ``"per_worker"``: one residual per worker (the
      authors' experiment code; see the module docstring), which keeps a
      Byzantine worker's residual out of the honest rows.
    num_workers: ``R``, required for ``memory="per_worker"`` (the memory is
      stacked ``[R, ...]`` at ``init``).
    **gm_kwargs: forwarded to
      :func:`~byzjax.aggregators.geometric_median` (``max_iters``, ``tol``,
      ``nu``, ``method``, ``criterion``).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`BlockMemoryState`.

  Raises:
    ValueError: naming the hyperparameter, for a bad ``num_coords``,
      ``block_fraction``, ``sampling``, ``key``, ``learning_rate``,
      ``memory_clip``, ``memory``, ``num_workers`` or geometric-median
      argument, and at trace time if the updates' worker axis is not
      ``num_workers``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> tx = block_geometric_median_descent(num_coords=2)
    >>> params = {'w': jnp.zeros(4)}
    >>> state = tx.init(params)
    >>> g = {'w': jnp.array([[1., 2., 0., 0.1], [1., 2., 0., 0.1],
    ...                      [1., 2., 0., 0.1]])}
    >>> agg, state = tx.update(g, state)
    >>> agg['w'].tolist(), state.memory['w'].tolist()
    ([1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.10000000149011612])

  References:
    Acharya et al., `Robust Training in High Dimensions via Block Coordinate
    Geometric Median Descent <https://arxiv.org/abs/2106.08882>`_, AISTATS
    2022, Algorithms 1 and 2.
  """
  if num_coords is not None:
    _checks.check_int("num_coords", num_coords, low=1)
  if (num_coords is None) == (block_fraction is None):
    raise ValueError(
        "Give exactly one of num_coords and block_fraction, got "
        f"num_coords={num_coords!r}, block_fraction={block_fraction!r}.")
  if block_fraction is not None:
    _blk._resolve_num_coords(1, None, block_fraction)  # range check only
  _blk._check_sampling(sampling, key)
  _check_learning_rate(learning_rate)
  if memory_clip is not None:
    _checks.check_positive("memory_clip", memory_clip, allow_inf=True)
  if memory not in ("shared", "per_worker"):
    raise ValueError(
        f"memory must be 'shared' or 'per_worker', got {memory!r}.")
  per_worker = memory == "per_worker"
  if per_worker:
    if num_workers is None:
      raise ValueError("memory='per_worker' needs num_workers (the memory "
                       "has one row per worker).")
    _checks.check_int("num_workers", num_workers, low=1)
    if memory_clip is not None:
      raise ValueError("memory_clip bounds each worker's share of the shared "
                       "memory's mean; it has no meaning with "
                       "memory='per_worker'.")
  elif num_workers is not None:
    _checks.check_int("num_workers", num_workers, low=1)
  _blk._validate_gm_kwargs(gm_kwargs, reserved=_RESERVED)
  # Fail now, not at the first update, on a bad geometric-median argument.
  jax.eval_shape(lambda x: geometric_median(x, **gm_kwargs),
                 jax.ShapeDtypeStruct((2, 1), jnp.float32))
  use_key = sampling == "norm_proportional"

  def init_fn(params):
    k = _blk._resolve_num_coords(_dim(params), num_coords, block_fraction)
    dtype = jnp.result_type(*jax.tree.leaves(params)) if jax.tree.leaves(
        params) else jnp.float32
    return BlockMemoryState(
        count=jnp.zeros([], jnp.int32),
        memory=(jax.tree.map(lambda p: jnp.zeros(
            (num_workers,) + jnp.shape(p), jnp.result_type(p)), params)
                if per_worker else optax.tree.zeros_like(params)),
        key=key if use_key else None,
        indices=jnp.zeros([k], jnp.int32),
        mass=jnp.zeros([], dtype),
        num_iters=jnp.zeros([], jnp.int32))

  gm_dynamic = {n: v for n, v in gm_kwargs.items() if _blk._is_array(v)}
  gm_static = tuple(sorted((n, v) for n, v in gm_kwargs.items()
                           if not _blk._is_array(v)))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    r = btree.num_workers(updates)
    if num_workers is not None and r != num_workers:
      raise ValueError(
          f"block_geometric_median_descent was built with num_workers="
          f"{num_workers} but the updates have {r} workers on axis 0.")
    return _bgmd_update(updates, state, gm_dynamic, sampling=sampling,
                        learning_rate=learning_rate, memory_clip=memory_clip,
                        gm_static=gm_static, per_worker=per_worker)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
