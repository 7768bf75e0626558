"""signSGD with majority vote (Bernstein et al. 2019).

Every worker sends the signs of its gradient; the server returns the sign of
their sum, coordinate by coordinate:

.. math::
  \\operatorname{vote}(x_1, \\dots, x_n)_j =
  \\operatorname{sign}\\Bigl(\\sum_{i \\text{ live}}
  \\operatorname{sign}(x_{ij})\\Bigr).

A tie (including a coordinate where every live worker sends 0) gives 0.
Workers whose message has any NaN or Inf entry are erasures and do not vote.
Because only signs are read, huge finite rows (1e30, 3e38) count exactly like
any other vote. Bernstein et al. show the vote tolerates fewer than half
Byzantine workers when the honest gradients' noise is unimodal and symmetric.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from byzjax import tree as btree
from byzjax._public import public

PyTree = Any


class SignVoteInfo(NamedTuple):
  """Diagnostics of :func:`sign_majority_vote`."""
  live: jax.Array       # bool, shape [R]: workers that voted (not erasures)
  agreement: jax.Array  # float32, shape [R]: fraction of coordinates where
  #                       the worker's sign equals the vote (0 if erased)


@public
def sign_majority_vote(
    updates: PyTree,
    *,
    return_info: bool = False,
) -> PyTree | tuple[PyTree, SignVoteInfo]:
  """Coordinate-wise majority vote of the workers' signs.

  .. math::
    v_j = \\operatorname{sign}\\Bigl(\\sum_{i=1}^{n} \\ell_i \\,
    \\operatorname{sign}(x_{ij})\\Bigr), \\qquad
    \\ell_i = \\mathbb{1}[x_i \\text{ is finite}]

  The inputs need not be signs already: any update is reduced to its signs
  first (so compressed or uncompressed messages give the same vote).

  .. warning::
    ``updates`` is stacked: every leaf has a leading worker axis ``R``; the
    result has that axis removed and entries in ``{-1, 0, 1}`` (dtype of
    each leaf; float32 for integer leaves, as for every aggregator).

  Args:
    updates: pytree whose leaves share a leading worker axis ``R``.
    return_info: also return a :class:`SignVoteInfo`.

  Returns:
    The vote, a pytree shaped like one worker's update; with
    ``return_info=True`` a tuple ``(vote, info)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.aggregators.sign_vote import sign_majority_vote
    >>> x = {'w': jnp.array([[1., -2., 3.], [2., 5., -1.], [-1., -1., 0.],
    ...                      [jnp.nan, 1., 1.]])}
    >>> sign_majority_vote(x)['w']
    Array([ 1., -1.,  0.], dtype=float32)

  References:
    Bernstein, Zhao, Azizzadenesheli & Anandkumar, `signSGD with Majority
    Vote is Communication Efficient and Fault Tolerant
    <https://arxiv.org/abs/1810.05291>`_, 2019 (Algorithm 1).
  """
  r = btree.num_workers(updates)
  live = btree.live_workers(updates)

  def vote_leaf(x):
    keep = jnp.reshape(live, (-1,) + (1,) * (x.ndim - 1))
    votes = jnp.where(keep, jnp.sign(x), 0)
    # Exact integer count (float32 sums of +-1 are exact too, but int32 makes
    # the intent plain and does not depend on the leaf dtype).
    total = jnp.sum(votes.astype(jnp.int32), axis=0)
    return jnp.sign(total).astype(x.dtype)

  vote = jax.tree.map(vote_leaf, updates)
  if not return_info:
    return vote
  d = sum(int(jnp.size(v)) for v in jax.tree.leaves(vote))
  agree = sum(
      jnp.sum(jnp.reshape(jnp.sign(x) == v[None], (r, -1)), axis=1)
      for x, v in zip(jax.tree.leaves(updates), jax.tree.leaves(vote)))
  agreement = jnp.where(live, agree / d, 0.0).astype(jnp.float32)
  return vote, SignVoteInfo(live=live, agreement=agreement)
