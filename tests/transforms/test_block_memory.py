"""Tests for the BGMD transform against a NumPy transcription of Algorithm 1."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byzjax.aggregators.geometric_median import geometric_median
from byzjax.transforms.block_memory import block_geometric_median_descent
from tests import helpers

R, D, K = 9, 30, 7
# The NumPy oracle runs Weiszfeld to a tiny step: pin the step rule (the
# library default stops on the relative objective change, like the peers).
GM_KW = dict(tol=1e-8, max_iters=2000, method="direct", criterion="step")


def _np_bgmd(grads, k, step_size, x0, per_worker=False):
  """Algorithm 1 of Acharya et al., line by line, in float64.

  Args:
    grads: list of [R, d] worker updates g_i^(t), one per step.
    k: block size.
    step_size: function t -> gamma_t.
    x0: initial parameters [d].
    per_worker: one memory row per worker, m_{t+1}^i = G_t[i] - Delta_t[i]
      (the authors' experiment code) instead of the mean over i (all rows
      live).

  Returns:
    Per step: (selected indices, g~_t, memory m_{t+1}, parameters x_{t+1},
    relative residual r_t = ||G_t - Delta_t||_F^2 / ||G_t||_F^2 of
    Figure 1(a)).
  """
  m = np.zeros((len(grads[0]),) + x0.shape) if per_worker else np.zeros(
      x0.shape)
  x = np.asarray(x0, np.float64)
  out = []
  for t, g in enumerate(grads):
    g = np.asarray(g, np.float64)
    live = np.all(np.isfinite(g), axis=1)
    big_g = step_size(t) * g[live] + m        # G_t[i,:] = gamma g_i + m_t
    score = (big_g ** 2).sum(axis=0)           # Algorithm 2: column norms
    idx = np.sort(np.argsort(-score, kind="stable")[:k])
    delta = np.zeros_like(big_g)
    delta[:, idx] = big_g[:, idx]              # Delta_t: the block
    m = big_g - delta                          # per worker: G - Delta
    r_t = (m ** 2).sum() / (big_g ** 2).sum()  # Figure 1(a)
    if not per_worker:
      m = m.mean(axis=0)                       # m_{t+1} = mean_i(G - Delta)
    g_tilde = np.zeros(x.shape)
    g_tilde[idx] = helpers.np_geometric_median(big_g[:, idx])  # Gm(Delta_t)
    x = x - g_tilde                            # x_{t+1} = x_t - g~_t
    out.append((idx, g_tilde, m, x, r_t))
  return out


def _grads(seed, steps=6):
  rng = np.random.default_rng(seed)
  scales = rng.uniform(0.2, 3.0, size=D)
  return [(rng.normal(size=(R, D)) * scales + 0.5).astype(np.float32)
          for _ in range(steps)]


# Parameters shaped like one worker's update in helpers.split_leaves' tree.
PARAMS = jax.tree.map(lambda l: jnp.asarray(l[0]),
                      helpers.split_leaves(np.zeros((1, D), np.float32)))


def _run(tx, grads, params=PARAMS):
  """Steps of a chain; returns per step (state, params).

  ``update`` is called eagerly: the BGMD step is jitted inside the library
  with its settings static, so equal settings share one compilation.
  """
  state = tx.init(params)
  update = tx.update
  history = []
  for g in grads:
    updates, state = update(helpers.split_leaves(g), state, params)
    params = optax.apply_updates(params, updates)
    history.append((state, params))
  return history


SCHEDULE = optax.exponential_decay(0.5, transition_steps=1, decay_rate=0.7)


@pytest.mark.parametrize("learning_rate,oracle_step", [
    (None, lambda t: 0.1),   # gradient units + sgd(0.1) == Algorithm 1, γ=0.1
    (0.1, lambda t: 0.1),
    (SCHEDULE, lambda t: 0.5 * 0.7 ** t),
])
def test_matches_algorithm_1(learning_rate, oracle_step):
  grads = _grads(0)
  sgd_lr = 0.1 if learning_rate is None else learning_rate
  tx = optax.chain(
      block_geometric_median_descent(K, learning_rate=learning_rate, **GM_KW),
      optax.sgd(sgd_lr))
  history = _run(tx, grads)
  oracle = _np_bgmd(grads, K, oracle_step, np.zeros(D))
  memory_units = 0.1 if learning_rate is None else 1.0  # m / γ when None
  for (state, params), (idx, _, m, x, r_t) in zip(history, oracle):
    bgmd_state = state[0]
    np.testing.assert_array_equal(np.asarray(bgmd_state.indices), idx)
    np.testing.assert_allclose(helpers.join_leaves(params), x, atol=5e-5)
    # The paper's relative residual r_t is 1 - mass (Figure 1(a)).
    np.testing.assert_allclose(1.0 - float(bgmd_state.mass), r_t, rtol=1e-4)
    np.testing.assert_allclose(
        helpers.join_leaves(bgmd_state.memory) * memory_units, m,
        rtol=1e-5, atol=1e-6)
  assert int(history[-1][0][0].count) == len(grads)


@pytest.mark.parametrize("learning_rate,oracle_step", [
    (0.1, lambda t: 0.1),
    (SCHEDULE, lambda t: 0.5 * 0.7 ** t),
])
def test_per_worker_memory_matches_oracle(learning_rate, oracle_step):
  grads = _grads(1)
  tx = optax.chain(
      block_geometric_median_descent(K, learning_rate=learning_rate,
                                     memory="per_worker", num_workers=R,
                                     **GM_KW),
      optax.sgd(learning_rate))
  history = _run(tx, grads)
  oracle = _np_bgmd(grads, K, oracle_step, np.zeros(D), per_worker=True)
  for (state, params), (idx, _, m, x, r_t) in zip(history, oracle):
    bgmd_state = state[0]
    np.testing.assert_array_equal(np.asarray(bgmd_state.indices), idx)
    np.testing.assert_allclose(helpers.join_leaves(params), x, atol=5e-5)
    np.testing.assert_allclose(1.0 - float(bgmd_state.mass), r_t, rtol=1e-4)
    memory = np.stack([helpers.join_leaves(jax.tree.map(lambda l: l[i],
                                                        bgmd_state.memory))
                       for i in range(R)])
    np.testing.assert_allclose(memory, m, rtol=1e-5, atol=1e-6)


def _quadratic_run(memory, steps=60, **kw):
  """BGMD on f(x) = |x - 1|^2 / 2 with 2 of 9 workers sending -100 g."""
  rng = np.random.default_rng(3)
  tx = optax.chain(block_geometric_median_descent(
      K, learning_rate=0.1, memory=memory, **kw, **GM_KW), optax.sgd(0.1))
  params = PARAMS
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(steps):
    x = helpers.join_leaves(jax.tree.map(lambda p: p[None], params))[0]
    g = (x - 1.0) + 0.1 * rng.normal(size=(R, D))
    g[:2] *= -100.0  # scaled bit flip
    upd, state = update(helpers.split_leaves(g.astype(np.float32)), state,
                        params)
    params = optax.apply_updates(params, upd)
  return helpers.join_leaves(jax.tree.map(lambda p: p[None], params))[0]


def test_per_worker_memory_survives_a_bit_flip_the_shared_one_does_not():
  robust = _quadratic_run("per_worker", num_workers=R)
  shared = _quadratic_run("shared")
  assert np.max(np.abs(robust - 1.0)) < 0.1
  # The shared mean carries (7 - 200) / 9 ~ -21 honest residuals into every
  # row: the iterate walks away from the optimum.
  assert np.max(np.abs(shared - 1.0)) > 10.0


def test_per_worker_memory_checks_the_worker_count():
  tx = block_geometric_median_descent(K, memory="per_worker", num_workers=R)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match="num_workers"):
    tx.update(helpers.split_leaves(_grads(0, 1)[0][:R - 1]), state)


def test_outputs_are_the_block_median_in_gradient_units():
  grads = _grads(1, steps=5)
  tx = block_geometric_median_descent(K, **GM_KW)
  state = tx.init(PARAMS)
  oracle = _np_bgmd(grads, K, lambda t: 1.0, np.zeros(D))
  update = tx.update
  for g, (idx, g_tilde, m, _, _) in zip(grads, oracle):
    out, state = update(helpers.split_leaves(g), state)
    np.testing.assert_allclose(helpers.join_leaves(out), g_tilde, atol=3e-5)
    np.testing.assert_allclose(helpers.join_leaves(state.memory), m,
                               rtol=1e-5, atol=1e-6)
    assert 0.0 < float(state.mass) < 1.0


def test_eager_equals_jit():
  grads = _grads(2, steps=2)
  tx = block_geometric_median_descent(K, **GM_KW)
  s_eager, s_jit = tx.init(PARAMS), jax.jit(tx.init)(PARAMS)
  for g in grads:
    o_eager, s_eager = tx.update(helpers.split_leaves(g), s_eager)
    o_jit, s_jit = jax.jit(tx.update)(helpers.split_leaves(g), s_jit)
    chex.assert_trees_all_close(o_eager, o_jit, atol=1e-6)
    chex.assert_trees_all_close(s_eager, s_jit, atol=1e-6)


def test_memory_telescopes():
  """Sum of block means sent + final memory = sum of the workers' means."""
  grads = _grads(3)
  tx = block_geometric_median_descent(K, **GM_KW)
  state = tx.init(PARAMS)
  update = tx.update
  sent = np.zeros(D)
  for g in grads:
    memory = helpers.join_leaves(state.memory).astype(np.float64)
    _, state = update(helpers.split_leaves(g), state)
    idx = np.asarray(state.indices)
    corrected_mean = g.astype(np.float64).mean(axis=0) + memory
    new_memory = helpers.join_leaves(state.memory)
    # One step: memory = mean of the corrected rows off the block, 0 on it.
    np.testing.assert_array_equal(new_memory[idx], 0.0)
    block = np.zeros(D)
    block[idx] = corrected_mean[idx]
    np.testing.assert_allclose(block + new_memory, corrected_mean, atol=1e-5)
    sent += block
  total = sum(g.astype(np.float64).mean(axis=0) for g in grads)
  np.testing.assert_allclose(sent + helpers.join_leaves(state.memory), total,
                             atol=1e-4)


@pytest.mark.slow  # several compilations; the default suite keeps a sibling
def test_full_block_is_the_full_median_with_no_memory():
  grads = _grads(4, steps=3)
  tx = block_geometric_median_descent(D, **GM_KW)
  state = tx.init(PARAMS)
  full = jax.jit(functools.partial(geometric_median, **GM_KW))
  for g in grads:
    out, state = tx.update(helpers.split_leaves(g), state)
    chex.assert_trees_all_close(out, full(helpers.split_leaves(g)), atol=2e-5)
    assert np.all(helpers.join_leaves(state.memory) == 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_erasures_do_not_poison_the_memory(bad):
  grads = _grads(5)
  grads[0][2, 4] = bad
  grads[2][[0, 5]] = bad
  grads[4][8, :] = bad
  history = _run(block_geometric_median_descent(K, **GM_KW), grads)
  oracle = _np_bgmd(grads, K, lambda t: 1.0, np.zeros(D))
  for (state, _), (idx, _, m, _, _) in zip(history, oracle):
    np.testing.assert_array_equal(np.asarray(state.indices), idx)
    np.testing.assert_allclose(helpers.join_leaves(state.memory), m,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("big", [1e30, -1e30, 3e38, -3e38])
def test_huge_rows_keep_everything_finite(big):
  grads = _grads(6)
  for g in grads:
    g[[1, 6]] = big       # 2 of 9 workers, every step
  grads[3][4, ::2] = -big
  tx = optax.chain(block_geometric_median_descent(K, **GM_KW), optax.sgd(0.1))
  for state, params in _run(tx, grads):
    chex.assert_tree_all_finite((state, params))


@pytest.mark.slow  # several compilations; the default suite keeps a sibling
def test_memory_clip_bounds_a_byzantine_residual():
  grads = _grads(7)
  for g in grads:
    g[3] = 1e30
  plain = _run(block_geometric_median_descent(K, **GM_KW), grads)
  clipped = _run(block_geometric_median_descent(K, memory_clip=2.0, **GM_KW),
                 grads)
  assert np.max(np.abs(helpers.join_leaves(plain[0][0].memory))) > 1e28
  for state, _ in clipped:
    assert np.max(np.abs(helpers.join_leaves(state.memory))) < 50.0
  # A loose clip changes nothing on benign data.
  benign = _grads(8, steps=3)
  a = _run(block_geometric_median_descent(K, **GM_KW), benign)
  b = _run(block_geometric_median_descent(K, memory_clip=1e3, **GM_KW), benign)
  for (sa, pa), (sb, pb) in zip(a, b):
    chex.assert_trees_all_close(sa.memory, sb.memory, atol=1e-6)
    chex.assert_trees_all_close(pa, pb, atol=1e-6)


def test_norm_proportional_key_lives_in_state():
  g = _grads(9, steps=1)[0]
  tx = block_geometric_median_descent(
      K, sampling="norm_proportional", key=jax.random.key(0), **GM_KW)
  state0 = jax.jit(tx.init)(PARAMS)
  update = tx.update
  _, state1 = update(helpers.split_leaves(g), state0)
  _, again = update(helpers.split_leaves(g), state0)
  np.testing.assert_array_equal(state1.indices, again.indices)  # keyed
  assert not np.array_equal(jax.random.key_data(state1.key),
                            jax.random.key_data(state0.key))
  picks = {tuple(np.asarray(state1.indices))}
  state = state1
  for _ in range(4):  # same input, fresh key each step: different blocks
    _, state = update(helpers.split_leaves(g), state)
    picks.add(tuple(np.asarray(state.indices)))
    assert np.unique(np.asarray(state.indices)).size == K
  assert len(picks) > 1


def test_block_fraction_and_hygiene():
  tx = optax.chain(block_geometric_median_descent(block_fraction=0.2, **GM_KW),
                   optax.sgd(0.1))
  state = jax.jit(tx.init)(PARAMS)
  assert state[0].indices.shape == (6,)
  chex.assert_tree_all_finite(state)
  out, new_state = jax.jit(tx.update)(helpers.split_leaves(_grads(10, 1)[0]),
                                      state, PARAMS)
  chex.assert_trees_all_equal_shapes_and_dtypes(out, PARAMS)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  chex.assert_tree_all_finite((out, new_state))
  assert int(new_state[0].num_iters) > 0


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_coords=0), "num_coords"),
    (dict(num_coords=2.0), "num_coords"),
    (dict(), "num_coords"),
    (dict(num_coords=2, block_fraction=0.5), "block_fraction"),
    (dict(block_fraction=0.0), "block_fraction"),
    (dict(block_fraction=1.5), "block_fraction"),
    (dict(num_coords=2, sampling="random"), "sampling"),
    (dict(num_coords=2, sampling="norm_proportional"), "key"),
    (dict(num_coords=2, learning_rate=-0.1), "learning_rate"),
    (dict(num_coords=2, learning_rate=0.0), "learning_rate"),
    (dict(num_coords=2, memory_clip=0.0), "memory_clip"),
    (dict(num_coords=2, max_iters=0), "max_iters"),
    (dict(num_coords=2, tol=-1.0), "tol"),
    (dict(num_coords=2, weights=jnp.ones(3)), "weights"),
    (dict(num_coords=2, init=jnp.ones(3)), "init"),
    (dict(num_coords=2, memory="mean"), "memory"),
    (dict(num_coords=2, memory="per_worker"), "num_workers"),
    (dict(num_coords=2, memory="per_worker", num_workers=0), "num_workers"),
    (dict(num_coords=2, memory="per_worker", num_workers=3,
          memory_clip=1.0), "memory_clip"),
])
def test_bad_hyperparameters(kwargs, name):
  with pytest.raises(ValueError, match=name):
    block_geometric_median_descent(**kwargs)


def test_num_coords_above_dimension_fails_at_init():
  tx = block_geometric_median_descent(D + 1)
  with pytest.raises(ValueError, match="num_coords"):
    tx.init(PARAMS)


def test_zero_size_leaf_contributes_nothing():
  # Issue 13: a (R, 0) leaf (Flax models have them) crashed the gather.
  a = np.random.default_rng(30).normal(size=(R, 5)).astype(np.float32)
  tx = block_geometric_median_descent(num_coords=2, **GM_KW)
  state = tx.init({"a": jnp.zeros(5), "e": jnp.zeros((0,))})
  out, state = tx.update({"a": a, "e": jnp.zeros((R, 0))}, state)
  assert out["e"].shape == (0,) and state.memory["e"].shape == (0,)
  # First step, zero memory: the geometric median of the two columns with
  # the largest norms, zeros elsewhere.
  idx = np.sort(np.argsort(-np.sum(a.astype(np.float64) ** 2, 0))[:2])
  np.testing.assert_array_equal(np.sort(state.indices), idx)
  expect = np.zeros(5)
  expect[idx] = helpers.np_geometric_median(a[:, idx])
  np.testing.assert_allclose(out["a"], expect, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      state.memory["a"],
      np.where(np.isin(np.arange(5), state.indices), 0.0, a.mean(0)),
      rtol=1e-5, atol=1e-6)
