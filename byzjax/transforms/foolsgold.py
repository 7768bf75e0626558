"""FoolsGold (Fung, Yoon & Beschastnikh, RAID 2020): down-weight sybils.

Sybils that pursue a common poisoning goal send updates that point the same
way, step after step, more than honest workers with diverse data do.
FoolsGold keeps each worker's aggregate history :math:`H_i = \\sum_t
\\Delta_{i,t}` (state with a leading worker axis ``R``), scores every worker
by its largest cosine similarity to another worker's history, and gives
similar workers small learning-rate weights :math:`\\alpha_i`.

It is stateful (the history), so it is a transform, not a pure aggregator:
``optax.chain(byzjax.transforms.foolsgold(num_workers=R), optax.sgd(lr))``.
Worker ``i`` must be the same client at every step (true in the simulator).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from byzjax import _checks
from byzjax import tree as btree
from byzjax.aggregators.coordinatewise import _weighted_mean

PyTree = Any

# The paper replaces alpha = 1 by 0.99 before the logit (Algorithm 1).
ALPHA_CAP = 0.99


class FoolsGoldState(NamedTuple):
  """State of :func:`foolsgold`."""
  history: optax.Updates  # stacked [R, ...]: sum of every worker's updates
  weights: jax.Array      # float [R]: alpha_i used at the last step


def _unit_rows(stacked: PyTree) -> PyTree:
  """Rows scaled to unit norm, overflow-safe (zero rows stay zero)."""
  e = btree.pow2_exponent(btree.max_abs(stacked))
  scaled = jax.tree.map(lambda x: jnp.ldexp(x, -btree.per_row(x, e)), stacked)
  norm = jnp.sqrt(btree.sq_norms(scaled))
  inv = jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)
  return jax.tree.map(lambda x: x * btree.per_row(x, inv).astype(x.dtype),
                      scaled)


def foolsgold_weights(history: PyTree, *, kappa: float = 1.0) -> jax.Array:
  """FoolsGold's per-worker weights :math:`\\alpha_i` from the histories.

  Fung et al., Algorithm 1 (lines 4-18), with :math:`cs_{ij}` the cosine
  similarity of :math:`H_i` and :math:`H_j` (a zero history has similarity
  0 with every other):

  .. math::
    v_i = \\max_{j \\ne i} cs_{ij}, \\quad
    cs_{ij} \\leftarrow cs_{ij} \\frac{v_i}{v_j} \\text{ if } v_j > v_i
    \\ (\\text{pardoning}), \\quad
    \\alpha_i = 1 - \\max_{j \\ne i} cs_{ij},

  then :math:`\\alpha` is clipped to [0, 1], divided by its maximum, values
  of 1 become 0.99, and :math:`\\alpha_i \\leftarrow \\kappa (\\ln
  \\frac{\\alpha_i}{1 - \\alpha_i} + 0.5)` is clipped to [0, 1] again
  (:math:`\\alpha_i = 0` stays 0). The paper's optional weighting of the
  output layer's features by importance is not applied (the updates are an
  arbitrary pytree; all coordinates count equally).

  Returns:
    ``alpha``, shape ``[R]``, in [0, 1] (all zeros if every worker's
    history is identical to another's).
  """
  r = btree.num_workers(history)
  unit = _unit_rows(history)
  cs = btree.worker_gram(unit)
  cs = jnp.where(jnp.eye(r, dtype=bool), -jnp.inf, cs)
  v = jnp.max(cs, axis=1)
  v = jnp.where(jnp.isfinite(v), v, 0.0)  # R = 1: no other worker
  ratio = v[:, None] / jnp.where(v[None, :] != 0, v[None, :], 1.0)
  cs = jnp.where(v[None, :] > v[:, None], cs * ratio, cs)
  alpha = 1.0 - jnp.max(cs, axis=1)
  alpha = jnp.clip(jnp.where(jnp.isfinite(alpha), alpha, 1.0), 0.0, 1.0)
  top = jnp.max(alpha)
  alpha = jnp.where(top > 0, alpha / jnp.where(top > 0, top, 1.0), 0.0)
  alpha = jnp.where(alpha >= 1.0, ALPHA_CAP, alpha)
  safe = jnp.clip(alpha, jnp.finfo(alpha.dtype).tiny, ALPHA_CAP)
  logit = kappa * (jnp.log(safe / (1.0 - safe)) + 0.5)
  return jnp.where(alpha > 0, jnp.clip(logit, 0.0, 1.0), 0.0)


def foolsgold(num_workers: int, *, kappa: float = 1.0
              ) -> optax.GradientTransformationExtraArgs:
  """FoolsGold as an optax transform over stacked updates.

  Every update adds the workers' (finite) rows to their histories, computes
  :math:`\\alpha` with :func:`foolsgold_weights` and returns the weighted
  mean :math:`\\sum_i \\alpha_i \\Delta_i / \\sum_i \\alpha_i` (zeros if all
  weights are zero).

  Conventions. Fung et al. (Algorithm 1) apply
  :math:`w_{t+1} = w_t + \\sum_i \\alpha_i \\Delta_{i,t}`, a weighted *sum*
  whose scale grows with the number of honest workers; here the weights are
  normalised, so the step size stays the learning rate of the optimizer
  that follows (as for every other aggregator) and a chain ``foolsgold →
  sgd(lr)`` with all :math:`\\alpha_i = 1` is plain FedSGD.

  Erasures (rows with a NaN or Inf entry) add nothing to the history and
  get weight zero at that step. Histories are saturated at float's maximum
  (a row of 3e38 repeated cannot make a history infinite), and the cosine
  similarities are computed on rows scaled by powers of two, so rows of
  1e30 or 3e38 do not overflow; the weighted mean is overflow-safe.

  .. warning::
    Takes updates stacked on a leading worker axis ``R`` and returns one
    params-shaped update; place it before the optimizer.

  Args:
    num_workers: ``R`` (Python int >= 2); the state has this leading axis.
    kappa: :math:`\\kappa > 0`, the confidence parameter of the logit
      (the paper's default is 1).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is a
    :class:`FoolsGoldState` (the weights of the last step are the
    diagnostics).

  References:
    Fung, Yoon & Beschastnikh, `The Limitations of Federated Learning in
    Sybil Settings <https://www.usenix.org/conference/raid2020/presentation/fung>`_,
    RAID 2020 (Section 5, Algorithm 1).
  """
  r = _checks.check_int("num_workers", num_workers, low=2)
  kappa = _checks.check_positive("kappa", kappa)

  def init_fn(params):
    history = jax.tree.map(
        lambda p: jnp.zeros((r,) + jnp.shape(p),
                            btree.compute_dtype(jnp.result_type(p))), params)
    return FoolsGoldState(history=history,
                          weights=jnp.ones((r,), jnp.float32))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    if btree.num_workers(updates) != r:
      raise ValueError(
          f"foolsgold(num_workers={r}) got updates with "
          f"{btree.num_workers(updates)} workers on the leading axis.")
    updates = btree.upcast(updates)
    clean, live = btree.zero_erasures(updates)
    history = jax.tree.map(
        lambda h, x: btree.saturate(h + x.astype(h.dtype)),
        state.history, clean)
    alpha = foolsgold_weights(history, kappa=kappa)
    alpha = jnp.where(live, alpha, 0.0)
    out, _ = _weighted_mean(clean, alpha.astype(
        jnp.result_type(*jax.tree.leaves(clean))))
    return out, FoolsGoldState(history=history,
                               weights=alpha.astype(jnp.float32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
