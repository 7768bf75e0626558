"""Tests for byzjax.aggregate, the optax wrapper around aggregators."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import byzjax
from byzjax.aggregators.geometric_median import geometric_median


def _params():
  return {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}


def _stacked(key, r=6):
  return jax.tree.map(lambda p: jax.random.normal(key, (r,) + p.shape),
                      _params())


def test_chain_applies_aggregate_then_sgd():
  tx = optax.chain(byzjax.aggregate(geometric_median, tol=1e-8),
                   optax.sgd(0.5))
  state = tx.init(_params())
  g = _stacked(jax.random.key(0))
  updates, _ = jax.jit(tx.update)(g, state, _params())
  expected = jax.tree.map(lambda a: -0.5 * a, geometric_median(g, tol=1e-8))
  chex.assert_trees_all_close(updates, expected, atol=1e-6)
  chex.assert_trees_all_equal_shapes(updates, _params())


def test_hparams_are_forwarded():
  g = _stacked(jax.random.key(1))
  tx = byzjax.aggregate(geometric_median, max_iters=1, method="direct")
  out, _ = tx.update(g, tx.init(_params()))
  chex.assert_trees_all_close(
      out, geometric_median(g, max_iters=1, method="direct"))


def test_info_kept_in_state_when_num_workers_given():
  tx = byzjax.aggregate(geometric_median, num_workers=6)
  state = jax.jit(tx.init)(_params())
  assert state.info.weights.shape == (6,)
  _, state = jax.jit(tx.update)(_stacked(jax.random.key(2)), state)
  assert int(state.info.num_iters) >= 1
  np.testing.assert_allclose(float(jnp.sum(state.info.weights)), 1.0,
                             rtol=1e-5)
  for leaf in jax.tree.leaves(state):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))


def test_warm_start_keeps_last_aggregate_and_saves_iterations():
  tx = byzjax.aggregate(geometric_median, num_workers=16, warm_start=True,
                        tol=1e-7, method="direct", max_iters=200)
  rng = np.random.default_rng(0)
  center = rng.normal(size=(10,)).astype(np.float32) * 10
  params = {"w": jnp.zeros(10)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  iters = []
  base = center + rng.normal(size=(16, 10)).astype(np.float32)
  for _ in range(3):
    # Consecutive steps see nearly the same updates, as in slow training.
    g = {"w": base + rng.normal(size=(16, 10)).astype(np.float32) * 1e-4}
    out, state = update(g, state)
    chex.assert_trees_all_close(state.last, out)
    iters.append(int(state.info.num_iters))
  assert iters[1] < iters[0] and iters[2] < iters[0]


def test_extra_args_are_forwarded_or_ignored():
  g = _stacked(jax.random.key(3))
  tx = byzjax.aggregate(geometric_median, tol=1e-8, criterion="step")
  weights = jnp.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
  out, _ = tx.update(g, tx.init(_params()), weights=weights, unrelated=1)
  only_first = jax.tree.map(lambda x: x[:3], g)
  chex.assert_trees_all_close(
      out, geometric_median(only_first, tol=1e-8, criterion="step"), atol=1e-5)


def test_warm_start_needs_init_argument():
  def plain_mean(updates):
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), updates)
  with pytest.raises(ValueError, match="warm_start"):
    byzjax.aggregate(plain_mean, warm_start=True)
  with pytest.raises(ValueError, match="num_workers"):
    byzjax.aggregate(plain_mean, num_workers=4)
  with pytest.raises(ValueError, match="num_workers"):
    byzjax.aggregate(geometric_median, num_workers=0)


def test_trains_least_squares_under_attack():
  """Aggregated SGD on a quadratic reaches the optimum despite 1e30 rows."""
  target = jnp.arange(5.0)
  tx = optax.chain(byzjax.aggregate(geometric_median), optax.sgd(0.3))
  params = {"w": jnp.zeros(5)}
  state = tx.init(params)

  @jax.jit
  def step(params, state, key):
    noise = 0.1 * jax.random.normal(key, (9, 5))
    honest = (params["w"] - target)[None] + noise
    grads = {"w": honest.at[:4].set(1e30)}
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for key in jax.random.split(jax.random.key(0), 60):
    params, state = step(params, state, key)
  np.testing.assert_allclose(params["w"], target, atol=0.2)


@pytest.mark.parametrize("aggregator,hparams,match", [
    (geometric_median, {"tol": float("nan")}, "tol"),
    (geometric_median, {"method": "newton"}, "method"),
    (geometric_median, {"tolerance": 1e-3}, "tolerance"),
    (byzjax.aggregators.krum, {"num_byzantine": -1}, "num_byzantine"),
    (byzjax.aggregators.trimmed_mean, {"trim_fraction": 0.7},
     "trim_fraction"),
    (byzjax.aggregators.spectral_filter, {"sigma": float("nan")}, "sigma"),
    (byzjax.aggregators.block_geometric_median,
     {"num_coords": 2, "max_iter": 5}, "max_iter"),
    (byzjax.aggregators.block_geometric_median,
     {"num_coords": 2, "sampling": "uniform"}, "sampling"),
])
def test_bad_hyperparameters_raise_when_built(aggregator, hparams, match):
  with pytest.raises(ValueError, match=match):
    byzjax.aggregate(aggregator, **hparams)


def test_worker_count_dependent_hyperparameters_checked_with_num_workers():
  # Krum needs 2f + 2 < R: checkable at build time only once R is known.
  byzjax.aggregate(byzjax.aggregators.krum, num_byzantine=4)  # R unknown
  with pytest.raises(ValueError, match="num_byzantine"):
    byzjax.aggregate(byzjax.aggregators.krum, num_byzantine=4, num_workers=9)


def test_keyed_aggregator_validates_without_a_key_at_build_time():
  # The key is a per-step extra argument: building must not require it, and
  # the other hyperparameters are still checked.
  tx = byzjax.aggregate(byzjax.aggregators.block_geometric_median,
                        num_coords=2, sampling="norm_proportional")
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  with pytest.raises(ValueError, match="max_iters"):
    byzjax.aggregate(byzjax.aggregators.block_geometric_median,
                     num_coords=2, sampling="norm_proportional", max_iters=0)


def test_array_hyperparameters_are_not_checked_against_the_probe():
  # Closed-over per-worker weights have the real R, not the probe's: the
  # build succeeds and the shape is checked when the updates arrive.
  tx = byzjax.aggregate(geometric_median, weights=jnp.ones(6))
  state = tx.init(_params())
  shapes = jax.eval_shape(tx.update, _stacked(jax.random.key(5)), state)
  chex.assert_trees_all_equal_shapes(shapes[0], _params())
  with pytest.raises(ValueError, match="weights"):
    jax.eval_shape(tx.update, _stacked(jax.random.key(5), r=5), state)


def test_unstacked_gradient_is_refused_naming_the_shapes():
  # Issue 12: a plain gradient (no worker axis) used to be aggregated along
  # its first axis and broadcast over the parameters by apply_updates.
  tx = optax.chain(byzjax.aggregate(geometric_median), optax.sgd(0.1))
  params = {"w": jnp.zeros(5)}
  state = tx.init(params)
  plain = {"w": jnp.ones(5)}
  with pytest.raises(ValueError, match=r"stacked per worker.*\(R,\) \+ "
                     r"param\.shape.*\{'w': \(5,\)\}.*leading axis R"):
    jax.eval_shape(tx.update, plain, state, params)
  # One R for all leaves, checked with params ...
  mixed = {"w": jnp.ones((6, 3, 4)), "b": jnp.ones((5, 4))}
  with pytest.raises(ValueError, match="stacked per worker"):
    jax.eval_shape(tx.update, mixed, tx.init(_params()), _params())
  # ... and without them: leading axes differ, or disagree with num_workers
  # or with the params seen at init (kept by warm_start).
  plain2 = jax.tree.map(jnp.ones_like, _params())  # leading sizes 3 and 4
  bare = byzjax.aggregate(geometric_median)
  with pytest.raises(ValueError, match=r"one leading size R.*\[3, 4\]"):
    jax.eval_shape(bare.update, plain2, bare.init(_params()))
  counted = byzjax.aggregate(geometric_median, num_workers=6)
  with pytest.raises(ValueError, match="num_workers = 6.*R = 5"):
    jax.eval_shape(counted.update, {"w": jnp.ones(5)}, counted.init(params))
  warm = byzjax.aggregate(geometric_median, warm_start=True)
  with pytest.raises(ValueError, match=r"\(R,\) \+ param\.shape"):
    jax.eval_shape(warm.update, plain, warm.init(params))
  # Correctly stacked updates pass, with or without params.
  out = jax.eval_shape(tx.update, {"w": jnp.ones((4, 5))}, state, params)[0]
  chex.assert_trees_all_equal_shapes(out, params)
