"""Tests for bucketing (Karimireddy, He & Jaggi 2022, Algorithm 1)."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import byzjax
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.transforms.bucketing import bucket_means
from byzjax.transforms.bucketing import bucketing
from tests import helpers

R, D = 7, 9


def _np_bucket_means(x, perm, s):
  """Algorithm 1 with the permutation given: means over live members."""
  x = np.asarray(x, np.float64)
  out = []
  for b in range(math.ceil(len(x) / s)):
    members = [x[i] for i in perm[b * s:(b + 1) * s]
               if np.all(np.isfinite(x[i]))]
    out.append(np.mean(members, axis=0) if members
               else np.full(x.shape[1], np.nan))
  return np.stack(out)


def _data(seed, r=R, d=D):
  return np.random.default_rng(seed).normal(size=(r, d)).astype(np.float32)


def _join_stacked(tree):
  """helpers.join_leaves for stacked trees: [B, d]."""
  b = np.asarray(tree["a"]).shape[0]
  return np.concatenate([np.asarray(tree["a"]).reshape(b, -1),
                         np.asarray(tree["b"]["c"]).reshape(b, -1),
                         np.asarray(tree["d"]).reshape(b, -1)], axis=1)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("s", [1, 2, 3, 7])  # 2, 3 do not divide 7
def test_matches_numpy_oracle(jit, s):
  x = _data(0)
  key = jax.random.key(s)
  fn = functools.partial(bucket_means, bucket_size=s)
  got = (jax.jit(fn) if jit else fn)(helpers.split_leaves(x), key=key)
  perm = np.asarray(jax.random.permutation(key, R))
  expected = _np_bucket_means(x, perm, s)
  assert _join_stacked(got).shape == (math.ceil(R / s), D)
  np.testing.assert_allclose(_join_stacked(got), expected, rtol=1e-6,
                             atol=1e-6)


def test_size_one_is_a_permutation_of_the_rows():
  x = _data(1)
  got = np.asarray(bucket_means({"w": x}, bucket_size=1,
                                key=jax.random.key(0))["w"])
  assert not np.array_equal(got, x)  # shuffled
  np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(x, axis=0))
  rows = {tuple(r) for r in got}
  assert rows == {tuple(r) for r in x}


def test_size_r_is_the_mean():
  x = _data(2)
  got = bucket_means(helpers.split_leaves(x), bucket_size=R,
                     key=jax.random.key(0))
  np.testing.assert_allclose(_join_stacked(got)[0], x.mean(axis=0),
                             rtol=1e-6, atol=1e-6)


def test_short_last_bucket_averages_its_members():
  x = np.arange(R, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
  key = jax.random.key(3)
  got = np.asarray(bucket_means({"w": x}, bucket_size=3, key=key)["w"])
  perm = np.asarray(jax.random.permutation(key, R))
  assert got.shape == (3, 2)
  np.testing.assert_allclose(got[2], x[perm[6]])  # the single last member


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_erasures_are_left_out_and_empty_buckets_are_nan(bad):
  x = _data(4, r=8)
  x[[0, 1, 2, 3, 4]] = bad  # 5 of 8 erased: some bucket of 2 is empty
  x[5, 0] = bad
  key = jax.random.key(5)
  got = np.asarray(bucket_means({"w": x}, bucket_size=2, key=key)["w"])
  perm = np.asarray(jax.random.permutation(key, 8))
  expected = _np_bucket_means(x, perm, 2)
  np.testing.assert_allclose(got, expected, rtol=1e-6)  # NaN where NaN
  empty = np.isnan(expected).all(axis=1)
  assert empty.any()
  assert np.all(np.isnan(got[empty])) and np.all(np.isfinite(got[~empty]))


@pytest.mark.parametrize("big", [1e30, -1e30, 3e38, -3e38])
def test_huge_rows_do_not_overflow(big):
  x = _data(6)
  x[[1, 4, 5]] = big  # buckets of several huge rows: mean, not inf
  got = np.asarray(bucket_means({"w": x}, bucket_size=3,
                                key=jax.random.key(1))["w"])
  assert np.all(np.isfinite(got))
  perm = np.asarray(jax.random.permutation(jax.random.key(1), R))
  np.testing.assert_allclose(got, _np_bucket_means(x, perm, 3), rtol=1e-6)


def test_transform_draws_a_fresh_permutation_each_step():
  x = _data(7)
  tx = bucketing(1, key=jax.random.key(0))
  state = jax.jit(tx.init)({"w": jnp.zeros(D)})
  update = jax.jit(tx.update)
  seen = set()
  key = jax.random.key(0)
  for _ in range(4):
    out, state = update({"w": x}, state)
    key, step_key = jax.random.split(key)  # documented: split on every update
    perm = np.asarray(jax.random.permutation(step_key, R))
    np.testing.assert_array_equal(out["w"], x[perm])
    seen.add(tuple(perm))
  assert len(seen) > 1
  # Same key, same permutations.
  again, _ = tx.update({"w": x}, tx.init({"w": jnp.zeros(D)}))
  first_perm = np.asarray(jax.random.permutation(
      jax.random.split(jax.random.key(0))[1], R))
  np.testing.assert_array_equal(again["w"], x[first_perm])


def test_transform_in_a_chain_before_an_aggregator():
  params = jax.tree.map(lambda l: jnp.asarray(l[0]),
                        helpers.split_leaves(np.zeros((1, D), np.float32)))
  tx = optax.chain(bucketing(2, key=jax.random.key(1)),
                   byzjax.aggregate(geometric_median, method="direct"),
                   optax.sgd(0.1))
  state = jax.jit(tx.init)(params)
  x = _data(8)
  x[3] = 1e30
  updates, new_state = jax.jit(tx.update)(helpers.split_leaves(x), state,
                                          params)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  chex.assert_tree_all_finite(updates)
  assert np.max(np.abs(helpers.join_leaves(updates))) < 1.0  # bounded


@pytest.mark.parametrize("s", [0, -1, 1.5, True])
def test_bad_bucket_size(s):
  with pytest.raises(ValueError, match="bucket_size"):
    bucketing(s, key=jax.random.key(0))
  with pytest.raises(ValueError, match="bucket_size"):
    bucket_means({"w": jnp.ones((3, 2))}, bucket_size=s, key=jax.random.key(0))


def test_bucket_size_above_workers_fails_at_first_update():
  tx = bucketing(4, key=jax.random.key(0))
  state = tx.init({"w": jnp.zeros(2)})
  with pytest.raises(ValueError, match="bucket_size"):
    tx.update({"w": jnp.ones((3, 2))}, state)


def test_missing_key():
  with pytest.raises(ValueError, match="key"):
    bucketing(2, key=None)


def test_bucket_of_workers_names_each_workers_bucket():
  from byzjax.transforms.bucketing import bucket_of_workers
  x = _data(3)
  tx = bucketing(3, key=jax.random.key(4))
  state = tx.init({"w": jnp.zeros(D)})
  for _ in range(2):  # a fresh permutation each step
    out, state = tx.update({"w": jnp.asarray(x)}, state)
    which = np.asarray(bucket_of_workers(state, R))
    assert sorted(np.bincount(which).tolist()) == [1, 3, 3]
    for b in range(3):
      np.testing.assert_allclose(out["w"][b], x[which == b].mean(axis=0),
                                 rtol=1e-5, atol=1e-6)
