"""Adaptive gradient attacks: mimic, optimised ALIE / IPM, MinMax / MinSum, Fang.

The attacks of :mod:`byzjax.attacks.gradient` use fixed formulas; the ones
here adapt to the honest updates of the step (all are omniscient: they see
every honest row) and, for some, to the aggregator the server runs:

=============================  ================================================
attack                         every Byzantine worker sends
=============================  ================================================
:func:`mimic`                  the update of one honest worker (fixed, or the
                               one farthest along the honest updates' top
                               principal direction; :func:`mimic_attack`
                               tracks that direction over steps)
:func:`optimized_alie`         ALIE's :math:`\\mu - z\\sigma` with the ``z``
                               that moves the given aggregator farthest from
                               the honest mean (a grid search, vmapped)
:func:`optimized_ipm`          IPM's :math:`-\\varepsilon\\mu`, likewise
:func:`min_max`                :math:`\\mu + \\gamma p` with the largest
                               :math:`\\gamma` whose largest distance to an
                               honest update stays within the honest diameter
:func:`min_sum`                the same with the sum of squared distances
:func:`fang_trimmed_mean`      per coordinate, values beyond the honest extreme
                               opposite to the honest direction (against
                               trimmed mean and median)
:func:`fang_krum`              :math:`-\\lambda\\,\\mathrm{sign}(\\mu)` with the
                               largest :math:`\\lambda` (halved from Fang et
                               al.'s bound) that Krum still selects
=============================  ================================================

Each is a pure function ``attack(stacked, byzantine, *, hparams...)`` with
the conventions of :mod:`byzjax.attacks.gradient` (honest rows returned bit
for bit, honest erasures left out of the statistics, explicit ``key`` for
random attacks, ``ValueError`` naming a bad hyperparameter) and an optax
transform ``<attack>_attack(...)``. Distances and Gram matrices are computed
on the honest rows scaled by one power of two, so rows of 1e30 or 3e38 do
not overflow them.

References:
  Karimireddy, He & Jaggi, `Byzantine-Robust Learning on Heterogeneous
  Datasets via Bucketing <https://arxiv.org/abs/2006.09365>`_, ICLR 2022
  (mimic).

  Shejwalkar & Houmansadr, `Manipulating the Byzantine: Optimizing Model
  Poisoning Attacks and Defenses for Federated Learning
  <https://www.ndss-symposium.org/ndss-paper/manipulating-the-byzantine-optimizing-model-poisoning-attacks-and-defenses-for-federated-learning/>`_,
  NDSS 2021 (MinMax, MinSum).

  Fang, Cao, Jia & Gong, `Local Model Poisoning Attacks to Byzantine-Robust
  Federated Learning <https://arxiv.org/abs/1911.11815>`_, USENIX Security
  2020 (full-knowledge attacks on Krum, trimmed mean and median).

  Baruch, Baruch & Goldberg 2019 (ALIE) and Xie, Koyejo & Gupta 2020 (IPM);
  the optimised variants follow ByzFL's "Opt-ALIE" / "Opt-IPM" (the scale
  that maximises the distance between the aggregate and the honest mean).
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public
from byzjax.attacks import gradient as _g

PyTree = Any

_attack = public(upcast=False, stacked_output=True)


# ---------------------------------------------------------------------------
# Private helpers.


def _scale_pow2(x: jax.Array, e: jax.Array) -> jax.Array:
  """``x * 2**-e`` for a scalar int ``e`` in [-250, 250], never denormal.

  ``2**-128`` is denormal in float32 and XLA on CPU flushes it to zero;
  multiplying by two normal halves in turn is exact.
  """
  half = e // 2
  one = jnp.ones([], x.dtype)
  return x * jnp.ldexp(one, -half) * jnp.ldexp(one, half - e)


def _unscale_pow2(x: jax.Array, e: jax.Array) -> jax.Array:
  return btree.saturate(_scale_pow2(x, -e))


class _Honest(NamedTuple):
  """The honest live rows, scaled by ``2**-exponent`` so that max |x| <= 1."""
  rows: PyTree          # stacked, scaled; zero outside ``ref``
  mean: PyTree          # scaled mean of the honest live rows
  ref: jax.Array        # bool [R]: honest and live
  count: jax.Array      # int32 (): number of honest live rows
  exponent: jax.Array   # int32 (): the scale 2**exponent


def _honest(stacked: PyTree, byzantine: jax.Array) -> _Honest:
  clean, ref, count = _g._reference(stacked, byzantine)  # pylint: disable=protected-access
  biggest = jnp.max(jnp.where(ref, btree.max_abs(clean), 0.0))
  e = btree.pow2_exponent(biggest)
  rows = jax.tree.map(lambda x: _scale_pow2(x, e), clean)
  mean = _g._honest_mean(rows, ref, count)  # pylint: disable=protected-access
  return _Honest(rows, mean, ref, count, e)


def _centred(h: _Honest) -> PyTree:
  return jax.tree.map(
      lambda x, m: jnp.where(btree.per_row(x, h.ref), x - m[None], 0.0),
      h.rows, h.mean)


def _tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                            jax.tree.leaves(b)))


def _row(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: x[None], tree)


def _take_row(stacked: PyTree, index: jax.Array) -> PyTree:
  return jax.tree.map(lambda x: jnp.take(x, index, axis=0)[None], stacked)


def _num_coordinates(stacked: PyTree) -> int:
  return sum(math.prod(jnp.shape(x)[1:]) for x in jax.tree.leaves(stacked))


def _honest_std(h: _Honest) -> PyTree:
  """Per-coordinate (population) std of the scaled honest rows."""
  w = h.ref / jnp.maximum(h.count, 1)
  return jax.tree.map(
      lambda d: jnp.sqrt(jnp.tensordot(w.astype(d.dtype), jnp.square(d),
                                       axes=1)), _centred(h))


# ---------------------------------------------------------------------------
# Mimic.


def _top_direction(centred: PyTree, ref: jax.Array) -> PyTree:
  """Top principal direction (unit tree) of the centred honest rows.

  One Gram matrix ``K = D D^T`` of the centred rows ``D`` and its top
  eigenvector ``v`` (``eigh`` of the ``R x R`` matrix); the direction is
  ``D^T v``, normalized.
  """
  gram = btree.worker_gram(centred)
  gram = jnp.where(ref[:, None] & ref[None, :], gram, 0.0)
  _, vecs = jnp.linalg.eigh(gram.astype(jnp.float32))
  v = vecs[:, -1]
  z = btree.weighted_sum(v, centred)
  return _g._tree_unit(z)  # pylint: disable=protected-access


def _mimic_target(centred: PyTree, ref: jax.Array,
                  direction: PyTree) -> jax.Array:
  """The honest live worker farthest along ``direction`` (either sign)."""
  proj = jnp.abs(btree.vdot_to(centred, direction))
  return jnp.argmax(jnp.where(ref, proj, -1.0)).astype(jnp.int32)


@public(upcast=False, stacked_output=True, like_update=("direction",))
def mimic(stacked: PyTree, byzantine: jax.Array, *,
          target: int | None = None,
          direction: PyTree | None = None) -> PyTree:
  """Mimic: every Byzantine worker sends the update of one honest worker.

  Karimireddy, He & Jaggi (ICLR 2022, the "mimic" attack of their study of
  heterogeneous data) have all Byzantine workers copy one honest worker
  :math:`i^\\star`, so that that worker's data is over-represented: on
  heterogeneous data this biases every rule that weights workers equally,
  and no rule can tell the copies from an honest worker. The target is

  * ``target``, a fixed worker index, if given; or
  * their heuristic: the honest worker farthest along the top principal
    direction :math:`z` of the honest updates,
    :math:`i^\\star = \\arg\\max_{i \\in H} |\\langle z, x_i - \\mu\\rangle|`,
    with :math:`z` given as ``direction`` or, by default, computed from this
    step's honest updates (top eigenvector of their covariance, through the
    :math:`R \\times R` Gram matrix of the centred rows).

  The paper takes :math:`\\arg\\max_i \\langle z, x_i\\rangle` for a
  :math:`z` whose sign comes from a random start; the absolute value here
  makes the choice independent of that sign. :func:`mimic_attack` tracks
  :math:`z` over steps and fixes :math:`i^\\star` after a warm-up, as the
  paper does.

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    target: optional fixed worker index in ``[0, R)``; its row is sent as it
      is (also when that worker is Byzantine or erased this step).
    direction: optional tree shaped like one worker's update: the direction
      :math:`z` (its norm does not matter).

  Returns:
    The stacked updates with every Byzantine row equal to the target's row.
    With no honest live worker (and no ``target``), the Byzantine rows copy
    worker 0.

  Raises:
    ValueError: if both ``target`` and ``direction`` are given, or
      ``target`` is not an int in ``[0, R)``.
  """
  byzantine = _g._check_mask(stacked, byzantine)  # pylint: disable=protected-access
  r = btree.num_workers(stacked)
  if target is not None and direction is not None:
    raise ValueError("mimic: give target= (a fixed worker) or direction= "
                     "(the heuristic's z), not both.")
  if target is not None:
    _checks.check_int("target", target, low=0, high=r - 1)
    index = jnp.asarray(target, jnp.int32)
  else:
    h = _honest(stacked, byzantine)
    centred = _centred(h)
    if direction is None:
      direction = _top_direction(centred, h.ref)
    index = _mimic_target(centred, h.ref, direction)
  return _g._replace_rows(stacked, byzantine, _take_row(stacked, index))  # pylint: disable=protected-access


class MimicState(NamedTuple):
  """State of :func:`mimic_attack`."""
  count: jax.Array      # int32 (): steps seen
  mean: PyTree          # running mean of the honest updates (one update)
  direction: PyTree     # unit tree z: the tracked top principal direction
  target: jax.Array     # int32 (): the worker copied at the last step


def mimic_attack(*, warmup: int = 1, target: int | None = None,
                 num_byzantine: int | None = None
                 ) -> optax.GradientTransformationExtraArgs:
  """Transform form of :func:`mimic`, tracking the heuristic over steps.

  With ``target`` the transform sends that worker's row every step. Without
  it, it follows Karimireddy, He & Jaggi's heuristic (ICLR 2022, appendix
  on the mimic attack): during the first ``warmup`` steps it tracks the
  running mean :math:`\\mu_t` and top principal direction :math:`z_t` of
  the honest updates,

  .. math::
    \\mu_{t+1} = \\tfrac{t}{t+1}\\mu_t + \\tfrac{1}{t+1}\\bar{x}_t, \\qquad
    z_{t+1} \\propto \\tfrac{t}{t+1} z_t
      + \\tfrac{1}{t+1}\\frac{C_t z_t}{\\|C_t z_t\\|}, \\quad
    C_t = \\sum_{i \\in H} (x_i - \\mu_{t+1})(x_i - \\mu_{t+1})^\\top,

  (one power-iteration step per round on the running covariance, normalized)
  and copies the honest worker farthest along :math:`z_t`; after the
  warm-up it keeps copying that worker (re-choosing only when it is not an
  honest live worker of the step, e.g. under a redrawn Byzantine set).
  :math:`z_0` is the exact top principal direction of the first step's
  honest updates (the paper starts from a random vector and one power
  step). ``warmup=1`` (the default) chooses the target at the first step
  and keeps it; the warm-up length is a hyperparameter of the attack (we
  did not find the paper's value: set it per experiment).

  ``init(params)`` takes the parameters (one worker's update shape), like
  every optax transform; ``update(stacked, state, params=None, *,
  byzantine=mask)``.

  Args:
    warmup: number of steps during which :math:`z` is updated and the
      target re-chosen (an int >= 1).
    target: optional fixed worker index (no tracking).
    num_byzantine: default Byzantine set (the first ``num_byzantine``
      workers) when ``update`` gets no mask.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`MimicState`.

  Raises:
    ValueError: if ``warmup`` is not an int >= 1, ``target`` not an int >=
      0 or ``num_byzantine`` not an int >= 0.
  """
  _checks.check_int("warmup", warmup, low=1)
  if target is not None:
    _checks.check_int("target", target, low=0)
  if num_byzantine is not None:
    _checks.check_int("num_byzantine", num_byzantine, low=0)

  def init_fn(params):
    zeros = jax.tree.map(
        lambda p: jnp.zeros(jnp.shape(p), btree.compute_dtype(
            jnp.result_type(p))), params)
    return MimicState(count=jnp.zeros([], jnp.int32), mean=zeros,
                      direction=zeros, target=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, byzantine=None, **extra):
    del params, extra
    r = btree.num_workers(updates)
    if byzantine is None:
      if num_byzantine is None:
        raise ValueError(
            "byzantine: pass a boolean mask update(..., byzantine=mask) or "
            "build the attack with num_byzantine=.")
      if num_byzantine > r:
        raise ValueError(
            f"num_byzantine must lie in [0, {r}], got {num_byzantine}.")
      byzantine = jnp.arange(r) < num_byzantine
    if target is not None:
      if target >= r:
        raise ValueError(f"target must lie in [0, {r - 1}], got {target}.")
      out = mimic(updates, byzantine, target=target)
      return out, state._replace(count=state.count + 1,
                                 target=jnp.asarray(target, jnp.int32))
    byzantine = _g._check_mask(updates, byzantine)  # pylint: disable=protected-access
    _check_state_shapes(state.mean, updates)
    h = _honest(updates, byzantine)
    t = state.count
    cur_mean = jax.tree.map(lambda m: _unscale_pow2(m, h.exponent), h.mean)
    tf = t.astype(jnp.float32)
    mean = jax.tree.map(
        lambda m, c: jnp.where(
            t == 0, c, jnp.where(t < warmup, (tf / (tf + 1)).astype(m.dtype) * m
                                 + c / (tf + 1).astype(m.dtype), m)),
        state.mean, cur_mean)
    # Centred on the running mean, scaled like the rows.
    mean_scaled = jax.tree.map(lambda m: _scale_pow2(m, h.exponent), mean)
    centred = jax.tree.map(
        lambda x, m: jnp.where(btree.per_row(x, h.ref), x - m[None], 0.0),
        h.rows, mean_scaled)

    def first(_):
      return _top_direction(_centred(h), h.ref)

    def track(_):
      cz = btree.weighted_sum(
          jnp.where(h.ref, btree.vdot_to(centred, state.direction), 0.0),
          centred)
      z = jax.tree.map(lambda a, b: (tf / (tf + 1)).astype(a.dtype) * a + b
                       / (tf + 1).astype(a.dtype),
                       state.direction, _g._tree_unit(cz))  # pylint: disable=protected-access
      return _g._tree_unit(z)  # pylint: disable=protected-access

    def keep(_):
      return state.direction

    def cast(fn):  # every branch returns the state's dtypes
      return lambda _: jax.tree.map(lambda z, s: z.astype(s.dtype), fn(_),
                                    state.direction)

    branch = jnp.where(t == 0, 0, jnp.where(t < warmup, 1, 2))
    direction = jax.lax.switch(branch, tuple(map(cast, (first, track, keep))),
                               None)
    chosen = _mimic_target(centred, h.ref, direction)
    previous_ok = jnp.take(h.ref, state.target)
    index = jnp.where((t >= warmup) & previous_ok, state.target, chosen)
    out = _g._replace_rows(updates, byzantine, _take_row(updates, index))  # pylint: disable=protected-access
    return out, MimicState(count=t + 1, mean=mean, direction=direction,
                           target=index.astype(jnp.int32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_state_shapes(one: PyTree, stacked: PyTree) -> None:
  want = [tuple(jnp.shape(x)[1:]) for x in jax.tree.leaves(stacked)]
  got = [tuple(jnp.shape(x)) for x in jax.tree.leaves(one)]
  if (jax.tree.structure(one) != jax.tree.structure(stacked)
      or want != got):
    raise ValueError(
        "mimic_attack: init(params) must get the parameters (one worker's "
        f"update, shapes {want}), got shapes {got}; call "
        "tx.init(params), not tx.init(stacked_updates).")


# ---------------------------------------------------------------------------
# Optimised ALIE and IPM.


class OptimizedScaleInfo(NamedTuple):
  """What the scale search of :func:`optimized_alie`/:func:`optimized_ipm` found."""
  scale: jax.Array    # float (): the chosen z (ALIE) or epsilon (IPM)
  damage: jax.Array   # float (): ||aggregate - honest mean|| at that scale
  default_damage: jax.Array  # float (): the same at the attack's default scale


def _check_search(aggregator, scale_range, num_candidates, num_refinements,
                  batch_size) -> tuple[float, float]:
  if not callable(aggregator):
    raise ValueError(
        "aggregator must be a function stacked -> aggregate (e.g. "
        "functools.partial(byzjax.aggregators.trimmed_mean, "
        f"trim_fraction=0.2)), got {aggregator!r}.")
  if (not isinstance(scale_range, (tuple, list)) or len(scale_range) != 2):
    raise ValueError(f"scale_range must be a pair (low, high), got "
                     f"{scale_range!r}.")
  low = _checks.check_finite("scale_range[0]", scale_range[0])
  high = _checks.check_finite("scale_range[1]", scale_range[1])
  if not low < high:
    raise ValueError(f"scale_range must have low < high, got {scale_range!r}.")
  _checks.check_int("num_candidates", num_candidates, low=2)
  _checks.check_int("num_refinements", num_refinements, low=0)
  if batch_size is not None:
    _checks.check_int("batch_size", batch_size, low=1)
  return low, high


def _damage_fn(stacked, byzantine, rows_at, aggregator, honest_mean):
  """``scale -> ||aggregator(attacked(scale)) - honest mean||`` (inf if NaN)."""
  def damage(scale):
    attacked = _g._replace_rows(stacked, byzantine, rows_at(scale))  # pylint: disable=protected-access
    agg = aggregator(attacked)
    diff = jax.tree.map(
        lambda a, m: (jnp.asarray(a, m.dtype) - m)[None], agg, honest_mean)
    return btree.worker_norms(diff)[0]
  return damage


def _search_scale(damage, default, low, high, num_candidates,
                  num_refinements, batch_size):
  """Grid search over ``[low, high]``, refined around the best point.

  Round 0 evaluates ``num_candidates`` equally spaced scales and the
  attack's default scale; each refinement evaluates ``num_candidates``
  scales on ``[best - step, best + step]`` (clipped to the range), where
  ``step`` is the previous grid's spacing. The best scale seen is kept, so
  the result never does less damage than the default scale.
  """
  def evaluate(scales):
    if batch_size is None:
      return jax.vmap(damage)(scales)
    return jax.lax.map(damage, scales, batch_size=batch_size)

  grid = jnp.linspace(low, high, num_candidates, dtype=jnp.float32)
  scales = jnp.concatenate([jnp.asarray(default, jnp.float32)[None], grid])
  dmg = evaluate(scales)
  # The default comes first, so argmax keeps it on ties.
  best = jnp.argmax(dmg)
  state = (scales[best], dmg[best],
           jnp.asarray((high - low) / (num_candidates - 1), jnp.float32))

  def refine(_, carry):
    best_scale, best_damage, step = carry
    lo = jnp.maximum(best_scale - step, low)
    hi = jnp.minimum(best_scale + step, high)
    cand = jnp.linspace(0.0, 1.0, num_candidates, dtype=jnp.float32)
    cand = lo + (hi - lo) * cand
    d = evaluate(cand)
    i = jnp.argmax(d)
    better = d[i] > best_damage
    return (jnp.where(better, cand[i], best_scale),
            jnp.where(better, d[i], best_damage),
            (hi - lo) / (num_candidates - 1))

  best_scale, best_damage, _ = jax.lax.fori_loop(0, num_refinements, refine,
                                                 state)
  return best_scale, best_damage, dmg[0]


@_attack
def optimized_alie(stacked: PyTree, byzantine: jax.Array, *,
                   aggregator: Callable[[PyTree], PyTree],
                   scale_range: tuple[float, float] = (0.0, 10.0),
                   num_candidates: int = 16, num_refinements: int = 2,
                   batch_size: int | None = None,
                   return_info: bool = False):
  """ALIE with the ``z`` that does the most damage to a given aggregator.

  Every Byzantine worker sends :math:`\\mu - z\\sigma` (:func:`byzjax.attacks.alie`,
  Baruch et al. 2019, Algorithm 3) with

  .. math::
    z^\\star = \\arg\\max_{z} \\bigl\\|\\mathrm{AGG}(x_1, \\dots, x_R)(z)
      - \\mu\\bigr\\|,

  the distance between what the server's aggregator computes and the
  honest mean :math:`\\mu`: ByzFL's "optimal ALIE" criterion. The search is
  bounded and jitted: ``num_candidates`` equally spaced values of ``z`` on
  ``scale_range``, plus the paper's :math:`z_{\\max}` (:func:`alie_z_max`),
  evaluated at once with ``vmap`` over the aggregator (or ``lax.map`` in
  batches of ``batch_size``, to bound memory: each candidate holds one copy
  of the stacked updates), then ``num_refinements`` finer grids around the
  best value. It costs ``1 + num_candidates * (1 + num_refinements)``
  aggregations (49 with the defaults). Because :math:`z_{\\max}` is a
  candidate, the attack never does less damage than plain ALIE against the
  same aggregator on the same step.

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    aggregator: the server's rule, ``aggregator(stacked) -> aggregate``
      (e.g. ``functools.partial(trimmed_mean, trim_fraction=0.2)``); it must
      be jittable and vmappable, as byzjax's aggregators are.
    scale_range: ``(low, high)``, the interval searched for ``z``.
    num_candidates: grid points per round (>= 2).
    num_refinements: finer rounds around the best point (>= 0).
    batch_size: ``None`` to evaluate each round's candidates in one ``vmap``;
      an int to evaluate them ``batch_size`` at a time.
    return_info: also return :class:`OptimizedScaleInfo`.

  Returns:
    The stacked updates with the Byzantine rows rewritten (and the info).

  References:
    Baruch, Baruch & Goldberg, `A Little Is Enough
    <https://arxiv.org/abs/1902.06156>`_, 2019; ByzFL,
    ``Optimal_ALittleIsEnough`` (EPFL), for the optimisation criterion.
  """
  byzantine = _g._check_mask(stacked, byzantine)  # pylint: disable=protected-access
  low, high = _check_search(aggregator, scale_range, num_candidates,
                            num_refinements, batch_size)
  h = _honest(stacked, byzantine)
  mu = jax.tree.map(lambda m: _unscale_pow2(m, h.exponent), h.mean)
  sigma = jax.tree.map(lambda s: _unscale_pow2(s, h.exponent), _honest_std(h))

  def rows_at(z):
    return jax.tree.map(
        lambda m, s: btree.saturate(m - z.astype(m.dtype) * s)[None], mu, sigma)

  damage = _damage_fn(stacked, byzantine, rows_at, aggregator, mu)
  default = _g.alie_z_max(btree.num_workers(stacked), jnp.sum(byzantine))
  z, dmg, dmg0 = _search_scale(damage, default, low, high, num_candidates,
                               num_refinements, batch_size)
  out = _g._replace_rows(stacked, byzantine, rows_at(z))  # pylint: disable=protected-access
  if return_info:
    return out, OptimizedScaleInfo(z, dmg, dmg0)
  return out


@_attack
def optimized_ipm(stacked: PyTree, byzantine: jax.Array, *,
                  aggregator: Callable[[PyTree], PyTree],
                  scale_range: tuple[float, float] = (0.0, 10.0),
                  num_candidates: int = 16, num_refinements: int = 2,
                  batch_size: int | None = None,
                  return_info: bool = False):
  """IPM with the ``epsilon`` that does the most damage to a given aggregator.

  Every Byzantine worker sends :math:`-\\varepsilon\\mu`
  (:func:`byzjax.attacks.ipm`, Xie et al. 2020, §4) with :math:`\\varepsilon`
  chosen, as in :func:`optimized_alie`, to maximise
  :math:`\\|\\mathrm{AGG}(\\cdot) - \\mu\\|` (ByzFL's "optimal IPM"
  criterion). The candidates are ``num_candidates`` points of
  ``scale_range`` plus Xie et al.'s :math:`\\varepsilon = 0.1`, so the
  attack never does less damage than plain IPM with
  :math:`\\varepsilon = 0.1`. Same search, cost and arguments as
  :func:`optimized_alie`.

  Returns:
    The stacked updates with the Byzantine rows rewritten (and, with
    ``return_info``, :class:`OptimizedScaleInfo`).

  References:
    Xie, Koyejo & Gupta, `Fall of Empires
    <https://arxiv.org/abs/1903.03936>`_, 2020; ByzFL,
    ``Optimal_InnerProductManipulation`` (EPFL), for the criterion.
  """
  byzantine = _g._check_mask(stacked, byzantine)  # pylint: disable=protected-access
  low, high = _check_search(aggregator, scale_range, num_candidates,
                            num_refinements, batch_size)
  h = _honest(stacked, byzantine)
  mu = jax.tree.map(lambda m: _unscale_pow2(m, h.exponent), h.mean)

  def rows_at(eps):
    return jax.tree.map(
        lambda m: btree.saturate(-eps.astype(m.dtype) * m)[None], mu)

  damage = _damage_fn(stacked, byzantine, rows_at, aggregator, mu)
  eps, dmg, dmg0 = _search_scale(damage, 0.1, low, high, num_candidates,
                                 num_refinements, batch_size)
  out = _g._replace_rows(stacked, byzantine, rows_at(eps))  # pylint: disable=protected-access
  if return_info:
    return out, OptimizedScaleInfo(eps, dmg, dmg0)
  return out


# ---------------------------------------------------------------------------
# MinMax and MinSum.

PERTURBATIONS = ("unit_vec", "std", "sign")


class MinMaxInfo(NamedTuple):
  """What the bisection of :func:`min_max`/:func:`min_sum` found."""
  gamma: jax.Array      # float (): the largest feasible gamma found
  num_iters: jax.Array  # int32 (): bisection steps
  threshold: jax.Array  # float (): the honest bound (scaled units)
  value: jax.Array      # float (): the constrained quantity at gamma (scaled)


def _perturbation(h: _Honest, kind: str) -> tuple[PyTree, bool]:
  """The direction ``p`` (scaled units) and the factor turning gamma physical.

  ``unit_vec``: :math:`-\\mu/\\|\\mu\\|`; ``std``: :math:`-\\sigma`;
  ``sign``: :math:`-\\mathrm{sign}(\\mu)`. For ``std`` the physical gamma is
  the scaled one; for the others it is ``2**exponent`` times it.
  """
  if kind == "unit_vec":
    return jax.tree.map(jnp.negative, _g._tree_unit(h.mean)), True  # pylint: disable=protected-access
  if kind == "std":
    return jax.tree.map(jnp.negative, _honest_std(h)), False
  return jax.tree.map(lambda m: -jnp.sign(m), h.mean), True


def _min_max_sum(stacked, byzantine, *, objective, perturbation, tol,
                 max_iters, return_info):
  byzantine = _g._check_mask(stacked, byzantine)  # pylint: disable=protected-access
  if perturbation not in PERTURBATIONS:
    raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got "
                     f"{perturbation!r}.")
  _checks.check_positive("tol", tol)
  _checks.check_int("max_iters", max_iters, low=1)
  h = _honest(stacked, byzantine)
  centred = _centred(h)
  p, physical_scaled = _perturbation(h, perturbation)
  gram = btree.worker_gram(centred)
  both = h.ref[:, None] & h.ref[None, :]
  a = jnp.where(h.ref, jnp.diagonal(gram), 0.0)       # ||x_i - mu||^2
  b = jnp.where(h.ref, btree.vdot_to(centred, p), 0.0)  # <x_i - mu, p>
  c = _tree_vdot(p, p)                                  # ||p||^2
  pair = jnp.where(both, btree.gram_sq_dists(gram), 0.0)
  if objective == "max":
    threshold = jnp.max(pair)
  else:
    threshold = jnp.max(jnp.sum(pair, axis=1))

  def value(gamma):
    d = jnp.maximum(a - 2.0 * gamma * b + gamma * gamma * c, 0.0)
    d = jnp.where(h.ref, d, 0.0)
    return jnp.max(d) if objective == "max" else jnp.sum(d)

  # Every gamma above `hi` is infeasible: a feasible gamma keeps each
  # distance ||x_i - mu - gamma p|| <= sqrt(threshold), so gamma sqrt(c) <=
  # sqrt(threshold) + ||x_i - mu||. The constraint is convex in gamma and
  # holds at gamma = 0 (mu lies in the honest rows' convex hull), so the
  # feasible gammas form an interval [0, gamma*] and bisection finds gamma*.
  safe_c = jnp.where(c > 0, c, 1.0)
  hi = jnp.where(c > 0, 1.01 * (jnp.sqrt(threshold) + jnp.sqrt(jnp.max(a)))
                 / jnp.sqrt(safe_c), 0.0)

  def cond(carry):
    lo, hi, it = carry
    return (hi - lo > tol * hi) & (it < max_iters)

  def body(carry):
    lo, hi, it = carry
    mid = 0.5 * (lo + hi)
    ok = value(mid) <= threshold
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid), it + 1

  gamma, _, iters = jax.lax.while_loop(
      cond, body, (jnp.zeros([], hi.dtype), hi, jnp.zeros([], jnp.int32)))
  gamma = jnp.where(h.count > 0, gamma, 0.0)
  malicious = jax.tree.map(
      lambda m, q: _unscale_pow2(m + gamma.astype(m.dtype) * q, h.exponent),
      h.mean, p)
  out = _g._replace_rows(stacked, byzantine, _row(malicious))  # pylint: disable=protected-access
  if return_info:
    physical = (_unscale_pow2(gamma, h.exponent) if physical_scaled
                else gamma)
    return out, MinMaxInfo(physical, iters, threshold, value(gamma))
  return out


@_attack
def min_max(stacked: PyTree, byzantine: jax.Array, *,
            perturbation: str = "unit_vec", tol: float = 1e-5,
            max_iters: int = 100, return_info: bool = False):
  """MinMax (Shejwalkar & Houmansadr, NDSS 2021, §IV, AGR-agnostic).

  Every Byzantine worker sends :math:`\\nabla^m = \\mu + \\gamma\\,\\nabla^p`
  (the honest mean plus a scaled perturbation) with the largest
  :math:`\\gamma` such that its largest distance to an honest update is at
  most the largest distance between two honest updates (their "Min-Max"
  attack):

  .. math::
    \\max_{i \\in H} \\|\\nabla^m - \\nabla_i\\|
      \\le \\max_{i, j \\in H} \\|\\nabla_i - \\nabla_j\\| .

  The perturbation :math:`\\nabla^p` is ``"unit_vec"``
  (:math:`-\\mu/\\|\\mu\\|`, the inverse unit vector), ``"std"``
  (:math:`-\\sigma`, the inverse coordinate-wise standard deviation) or
  ``"sign"`` (:math:`-\\mathrm{sign}(\\mu)`), the paper's three choices.
  The paper searches :math:`\\gamma` by halving steps (its Algorithm 1);
  here the constraint is convex in :math:`\\gamma` and true at 0, so
  :math:`\\gamma^\\star` is found by bisection in a ``lax.while_loop`` until
  the bracket is below ``tol`` relative. Each step costs :math:`O(R)`: the
  distances are quadratics in :math:`\\gamma` built from one Gram matrix of
  the centred honest updates and one inner product per worker.

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    perturbation: ``"unit_vec"``, ``"std"`` or ``"sign"``.
    tol: relative width of the final bracket on :math:`\\gamma` (the paper's
      threshold is 1e-5).
    max_iters: bound on the bisection steps.
    return_info: also return :class:`MinMaxInfo`.

  Returns:
    The stacked updates with the Byzantine rows rewritten (and the info).

  References:
    Shejwalkar & Houmansadr, `Manipulating the Byzantine: Optimizing Model
    Poisoning Attacks and Defenses for Federated Learning
    <https://www.ndss-symposium.org/wp-content/uploads/ndss2021_6C-3_24498_paper.pdf>`_,
    NDSS 2021.
  """
  return _min_max_sum(stacked, byzantine, objective="max",
                      perturbation=perturbation, tol=tol,
                      max_iters=max_iters, return_info=return_info)


@_attack
def min_sum(stacked: PyTree, byzantine: jax.Array, *,
            perturbation: str = "unit_vec", tol: float = 1e-5,
            max_iters: int = 100, return_info: bool = False):
  """MinSum (Shejwalkar & Houmansadr, NDSS 2021, §IV, AGR-agnostic).

  As :func:`min_max`, with the constraint on the sum of squared distances
  (their "Min-Sum" attack):

  .. math::
    \\sum_{i \\in H} \\|\\nabla^m - \\nabla_i\\|^2
      \\le \\max_{i \\in H} \\sum_{j \\in H} \\|\\nabla_i - \\nabla_j\\|^2 .

  Args and returns as :func:`min_max`.
  """
  return _min_max_sum(stacked, byzantine, objective="sum",
                      perturbation=perturbation, tol=tol,
                      max_iters=max_iters, return_info=return_info)


# ---------------------------------------------------------------------------
# Fang et al.


@_attack
def fang_trimmed_mean(stacked: PyTree, byzantine: jax.Array, *,
                      key: jax.Array | None = None,
                      factor: float = 2.0) -> PyTree:
  """Fang et al.'s full-knowledge attack on trimmed mean and median.

  Fang et al. (USENIX Security 2020, §3, "Attacking Trimmed mean"; their
  "Attacking Median" uses the same attack) push every coordinate of the
  aggregate against the direction the honest updates move it. With
  :math:`\\mu_j` the honest mean, :math:`w_{\\max,j}` and
  :math:`w_{\\min,j}` the honest extremes of coordinate :math:`j` and
  :math:`b` = ``factor``, each Byzantine worker draws its value uniformly
  from

  * :math:`[w_{\\min,j}/b,\\ w_{\\min,j}]` (if :math:`w_{\\min,j} > 0`) or
    :math:`[b\\,w_{\\min,j},\\ w_{\\min,j}]` (otherwise) when
    :math:`\\mu_j \\ge 0`: values below every honest value;
  * :math:`[w_{\\max,j},\\ b\\,w_{\\max,j}]` (if :math:`w_{\\max,j} > 0`) or
    :math:`[w_{\\max,j},\\ w_{\\max,j}/b]` (otherwise) when
    :math:`\\mu_j < 0`: values above every honest value.

  The paper writes this for local models, with :math:`s_j` the sign of the
  change of parameter :math:`j`; for updates (gradients) the honest change
  of the aggregate is :math:`\\mathrm{sign}(\\mu_j)`, and the attack pushes
  against it. The paper uses :math:`b = 2` (the default).

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    key: PRNG key (required): the uniform draws, independent per worker.
    factor: :math:`b > 1`.

  Returns:
    The stacked updates with the Byzantine rows rewritten (unchanged when
    no honest worker is live).
  """
  byzantine = _g._check_mask(stacked, byzantine)  # pylint: disable=protected-access
  _checks.check_positive("factor", factor)
  if not factor > 1:
    raise ValueError(f"factor must be > 1 (the paper's b = 2), got {factor}.")
  _g._require_key(key, "fang_trimmed_mean")  # pylint: disable=protected-access
  clean, ref, count = _g._reference(stacked, byzantine)  # pylint: disable=protected-access
  mu = _g._honest_mean(clean, ref, count)  # pylint: disable=protected-access

  def leaf(x, m, k):
    rows = btree.per_row(x, ref)
    big = jnp.finfo(x.dtype).max
    w_max = jnp.max(jnp.where(rows, x, -big), axis=0)
    w_min = jnp.min(jnp.where(rows, x, big), axis=0)
    down_lo = jnp.where(w_min > 0, w_min / factor, w_min * factor)
    up_hi = jnp.where(w_max > 0, w_max * factor, w_max / factor)
    lo = jnp.where(m >= 0, down_lo, w_max)
    hi = jnp.where(m >= 0, w_min, up_hi)
    lo, hi = btree.saturate(lo), btree.saturate(hi)
    u = jax.random.uniform(k, x.shape, x.dtype)
    # lo + u * (hi - lo) without overflow for |lo|, |hi| near float's max.
    value = btree.saturate(lo[None] * (1 - u) + hi[None] * u)
    return jnp.where(count > 0, value, x)

  attacked = jax.tree.map(leaf, stacked, mu, _g._leaf_keys(key, stacked))  # pylint: disable=protected-access
  return _g._replace_rows(stacked, byzantine, attacked)  # pylint: disable=protected-access


class FangKrumInfo(NamedTuple):
  """What the search of :func:`fang_krum` found."""
  scale: jax.Array      # float (): lambda (physical units)
  selected: jax.Array   # bool (): Krum selects a Byzantine row at lambda
  num_iters: jax.Array  # int32 (): halvings
  upper_bound: jax.Array  # float (): the paper's bound on lambda


def _krum_selects_byzantine(sq: jax.Array, alive: jax.Array,
                            byzantine: jax.Array, num_byzantine: jax.Array
                            ) -> jax.Array:
  """Whether Krum (R - f - 2 neighbours) selects a Byzantine row."""
  r = sq.shape[0]
  n = jnp.sum(alive)
  k = jnp.clip(n - num_byzantine - 2, 1, jnp.maximum(n - 1, 1))
  off = alive[:, None] & alive[None, :] & ~jnp.eye(r, dtype=bool)
  ordered = jnp.sort(jnp.where(off, sq, jnp.inf), axis=1)
  take = jnp.arange(r)[None, :] < k
  score = jnp.sum(jnp.where(take, ordered, 0.0), axis=1)
  score = jnp.where(alive, score, jnp.inf)
  return jnp.take(byzantine, jnp.argmin(score))


@_attack
def fang_krum(stacked: PyTree, byzantine: jax.Array, *,
              threshold: float = 1e-5, max_iters: int = 200,
              return_info: bool = False):
  """Fang et al.'s full-knowledge attack on Krum (the :math:`\\lambda` search).

  Every Byzantine worker sends :math:`-\\lambda\\,s` with
  :math:`s = \\mathrm{sign}(\\mu)` the direction in which the honest
  updates move the aggregate (Fang et al., USENIX Security 2020, §3,
  "Attacking Krum", full knowledge: the crafted local model :math:`w_{Re} - \\lambda s`, here in update space
  where :math:`w_{Re}` is the zero update), with the largest
  :math:`\\lambda` for which Krum still selects a Byzantine row. The search
  starts at their upper bound

  .. math::
    \\lambda \\le \\frac{1}{(m - 2c - 1)\\sqrt{d}}
      \\min_{i \\in H} \\sum_{l \\in \\tilde\\Gamma_i^{m-c-2}}
      \\|x_l - x_i\\|
      + \\frac{1}{\\sqrt{d}} \\max_{i \\in H} \\|x_i\\| ,

  (:math:`m` workers, :math:`c` Byzantine, :math:`d` coordinates,
  :math:`\\tilde\\Gamma_i^{m-c-2}` the :math:`m - c - 2` honest updates
  closest to :math:`x_i`) and halves :math:`\\lambda` until Krum (with
  :math:`f = c`, neighbour count :math:`m - c - 2`) selects the crafted
  update, or :math:`\\lambda` falls below ``threshold`` (the paper's
  :math:`10^{-5}`); the last :math:`\\lambda` is sent either way. Each
  check costs :math:`O(R^2 \\log R)`: the distances are built from one
  Gram matrix of the honest updates and one inner product per worker. All
  Byzantine workers send the same update, as in the paper. The attack
  also transfers to Bulyan, as the paper notes.

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    threshold: the smallest :math:`\\lambda` tried (> 0).
    max_iters: bound on the halvings.
    return_info: also return :class:`FangKrumInfo`.

  Returns:
    The stacked updates with the Byzantine rows rewritten (and the info).

  References:
    Fang, Cao, Jia & Gong, `Local Model Poisoning Attacks to
    Byzantine-Robust Federated Learning <https://arxiv.org/abs/1911.11815>`_,
    USENIX Security 2020.
  """
  byzantine = _g._check_mask(stacked, byzantine)  # pylint: disable=protected-access
  _checks.check_positive("threshold", threshold)
  _checks.check_int("max_iters", max_iters, low=1)
  d = _num_coordinates(stacked)
  h = _honest(stacked, byzantine)
  sign = jax.tree.map(jnp.sign, h.mean)
  nnz = _tree_vdot(sign, sign)
  gram = btree.worker_gram(h.rows)
  sq_norm = jnp.where(h.ref, jnp.diagonal(gram), 0.0)
  s_dot = jnp.where(h.ref, btree.vdot_to(h.rows, sign), 0.0)
  both = h.ref[:, None] & h.ref[None, :]
  sq_hh = jnp.where(both, btree.gram_sq_dists(gram), 0.0)
  c = jnp.sum(byzantine)
  m = h.count + c
  alive = h.ref | byzantine

  # The paper's upper bound (scaled units).
  k_up = jnp.maximum(m - c - 2, 1)
  off = both & ~jnp.eye(sq_hh.shape[0], dtype=bool)
  dist_sorted = jnp.sort(jnp.where(off, jnp.sqrt(sq_hh), jnp.inf), axis=1)
  near = jnp.sum(jnp.where(jnp.arange(sq_hh.shape[0])[None, :] < k_up,
                           jnp.where(jnp.isfinite(dist_sorted), dist_sorted,
                                     0.0), 0.0), axis=1)
  first = jnp.min(jnp.where(h.ref, near, jnp.inf))
  first = jnp.where(jnp.isfinite(first), first, 0.0)
  sqrt_d = math.sqrt(max(d, 1))
  upper = (first / (jnp.maximum(m - 2 * c - 1, 1) * sqrt_d)
           + jnp.sqrt(jnp.max(sq_norm)) / sqrt_d)

  def selected(lam):
    # ||-lam s - x_i||^2 = lam^2 nnz + 2 lam <s, x_i> + ||x_i||^2.
    to_honest = jnp.maximum(lam * lam * nnz + 2 * lam * s_dot + sq_norm, 0.0)
    bh = byzantine[:, None] & h.ref[None, :]
    hb = h.ref[:, None] & byzantine[None, :]
    sq = jnp.where(both, sq_hh, 0.0)
    sq = jnp.where(bh, to_honest[None, :], sq)
    sq = jnp.where(hb, to_honest[:, None], sq)
    return _krum_selects_byzantine(sq, alive, byzantine, c)

  thr = _scale_pow2(jnp.asarray(threshold, jnp.float32), h.exponent)

  def cond(carry):
    lam, hit, it = carry
    return ~hit & (lam >= thr) & (it < max_iters)

  def body(carry):
    lam, _, it = carry
    lam = 0.5 * lam
    return lam, selected(lam), it + 1

  lam, hit, iters = jax.lax.while_loop(
      cond, body, (upper, selected(upper), jnp.zeros([], jnp.int32)))
  malicious = jax.tree.map(
      lambda q: _unscale_pow2(-lam.astype(q.dtype) * q, h.exponent), sign)
  out = _g._replace_rows(stacked, byzantine, _row(malicious))  # pylint: disable=protected-access
  if return_info:
    return out, FangKrumInfo(_unscale_pow2(lam, h.exponent), hit, iters,
                             _unscale_pow2(upper, h.exponent))
  return out


# ---------------------------------------------------------------------------
# Transforms.

def _factory(attack, *, keyed: str, search: bool = False):
  """``gradient_attack`` factory; refuses ``return_info`` (a transform's
  output is the updates only) and checks the search arguments early."""
  inner = _g._factory(attack, keyed=keyed)  # pylint: disable=protected-access

  def factory(**kwargs):
    if kwargs.get("return_info"):
      raise ValueError(
          f"return_info is not available in {attack.__name__}_attack (the "
          f"transform returns the updates); call {attack.__name__}(..., "
          "return_info=True) directly for the diagnostics.")
    if isinstance(kwargs.get("scale_range"), list):  # e.g. from a TOML file
      kwargs["scale_range"] = tuple(kwargs["scale_range"])
    if search:
      if "aggregator" not in kwargs:
        raise ValueError(
            f"aggregator is required: {attack.__name__} searches the scale "
            "that does the most damage to it (e.g. aggregator="
            "functools.partial(byzjax.aggregators.trimmed_mean, "
            "trim_fraction=0.2)).")
      _check_search(kwargs["aggregator"], kwargs.get("scale_range", (0.0, 1.0)),
                    kwargs.get("num_candidates", 2),
                    kwargs.get("num_refinements", 0),
                    kwargs.get("batch_size"))
    return inner(**kwargs)

  factory.__name__ = inner.__name__
  factory.__qualname__ = inner.__qualname__
  factory.__doc__ = inner.__doc__
  return factory


optimized_alie_attack = _factory(optimized_alie, keyed="no", search=True)
optimized_ipm_attack = _factory(optimized_ipm, keyed="no", search=True)
min_max_attack = _factory(min_max, keyed="no")
min_sum_attack = _factory(min_sum, keyed="no")
fang_trimmed_mean_attack = _factory(fang_trimmed_mean, keyed="required")
fang_krum_attack = _factory(fang_krum, keyed="no")
