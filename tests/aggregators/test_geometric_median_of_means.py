"""Tests for byzjax.aggregators.geometric_median_of_means."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byzjax.aggregators.geometric_median import geometric_median
from byzjax.aggregators.geometric_median_of_means import (
    geometric_median_of_means)
from tests import helpers

TOL = 1e-7
MAX_ITERS = 1000


def _np_weiszfeld(points):
  """Plain Weiszfeld in float64 (the GM is not at a data point in the tests)."""
  z = points.mean(axis=0)
  for _ in range(100_000):
    dist = np.maximum(np.linalg.norm(points - z, axis=1), 1e-12)
    w = 1.0 / dist
    z_new = w @ points / w.sum()
    if np.linalg.norm(z_new - z) < 1e-13 * (1.0 + np.linalg.norm(z)):
      return z_new
    z = z_new
  return z


def _np_group_means(x, num_groups, perm=None):
  """Means of the live members of np.array_split's contiguous groups."""
  x = np.asarray(x, np.float64)
  live = np.all(np.isfinite(x), axis=1)
  slots = np.array_split(np.arange(x.shape[0]), num_groups)
  means, counts = [], []
  for slot in slots:
    workers = slot if perm is None else np.asarray(perm)[slot]
    members = [i for i in workers if live[i]]
    counts.append(len(members))
    if members:
      means.append(x[members].mean(axis=0))
  return np.array(means), np.array(counts)


def _np_gmom(x, num_groups, trim_threshold=None, perm=None):
  means, _ = _np_group_means(x, num_groups, perm)
  if trim_threshold is not None:
    short = np.linalg.norm(means, axis=1) <= trim_threshold
    if short.any():
      means = means[short]
  return _np_weiszfeld(means)


_jitted = jax.jit(geometric_median_of_means, static_argnames=(
    "num_groups", "trim_threshold", "max_iters", "tol", "return_info"))


def _gmom(x, num_groups, trim_threshold=None, key=None, jit=True):
  fn = _jitted if jit else geometric_median_of_means
  tree = x if isinstance(x, dict) else {"w": jnp.asarray(x)}
  return fn(tree, num_groups=num_groups, trim_threshold=trim_threshold,
            key=key, max_iters=MAX_ITERS, tol=TOL, return_info=True)


def _data(seed, num=10, dim=5):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(num, dim)) + rng.normal(size=dim)).astype(
      np.float32)


@pytest.mark.parametrize("num_groups,counts", [
    (1, [7]),
    (3, [3, 2, 2]),          # 10 = 4 + 3 + 3: unequal groups, first larger
    (4, [2, 3, 0, 2]),       # 10 = 3 + 3 + 2 + 2; group 2 fully erased
    (10, [1, 1, 0, 1, 1, 1, 0, 0, 1, 1]),
])
def test_matches_numpy_oracle(num_groups, counts):
  x = _data(0)
  x[2] = np.nan  # an erased worker: its group averages the others
  x[6, 1], x[7, 0] = np.inf, np.nan  # group 2 of k=4 has no live member
  want = _np_gmom(x, num_groups)
  out, info = _gmom(x, num_groups)
  np.testing.assert_allclose(out["w"], want, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(info.group_counts), counts)
  np.testing.assert_array_equal(np.asarray(info.group_kept),
                                np.asarray(counts) > 0)
  if num_groups == 4:  # eager once
    out_eager, _ = _gmom(x, num_groups, jit=False)
    np.testing.assert_allclose(out_eager["w"], want, atol=1e-4)


def test_one_group_is_the_mean_and_r_groups_the_geometric_median():
  x = _data(1)
  x[4] = np.nan
  out1, _ = _gmom(x, 1)
  np.testing.assert_allclose(out1["w"], np.delete(x, 4, axis=0).mean(axis=0),
                             atol=1e-6)
  out_r, _ = _gmom(x, 10)
  # GMoM runs Weiszfeld with the step rule.
  gm = geometric_median({"w": jnp.asarray(x)}, max_iters=MAX_ITERS, tol=TOL,
                        criterion="step")
  np.testing.assert_allclose(out_r["w"], gm["w"], atol=1e-6)


def test_invariant_within_groups_and_over_whole_groups_only():
  x = _data(2, num=12)
  out, _ = _gmom(x, 4)  # groups of 3: [0,1,2], [3,4,5], [6,7,8], [9,10,11]
  within = np.array([2, 0, 1, 5, 3, 4, 6, 8, 7, 11, 10, 9])
  whole = np.array([9, 10, 11, 0, 1, 2, 6, 7, 8, 3, 4, 5])
  for perm in (within, whole):
    out_p, _ = _gmom(x[perm], 4)
    np.testing.assert_allclose(out_p["w"], out["w"], atol=1e-5)
  # A swap across groups changes the group means, hence the result.
  across = np.arange(12)
  across[[0, 3]] = [3, 0]
  x[0] += 3.0  # make the swap matter
  out_a, _ = _gmom(x, 4)
  out_b, _ = _gmom(x[across], 4)
  assert np.max(np.abs(np.asarray(out_a["w"]) - out_b["w"])) > 1e-2
  np.testing.assert_allclose(out_b["w"], _np_gmom(x[across], 4), atol=1e-4)


def test_key_permutes_workers_into_groups():
  x = _data(3)
  key = jax.random.key(7)
  perm = np.asarray(jax.random.permutation(key, 10))
  out, info = _gmom(x, 3, key=key)
  # Slot j holds worker perm[j]: the same as grouping x[perm] contiguously.
  np.testing.assert_allclose(out["w"], _np_gmom(x, 3, perm=perm), atol=1e-4)
  out_perm, _ = _gmom(x[perm], 3)
  np.testing.assert_allclose(out["w"], out_perm["w"], atol=1e-5)
  slots = np.repeat(np.arange(3), [4, 3, 3])
  np.testing.assert_array_equal(np.asarray(info.group)[perm], slots)
  _, info2 = _gmom(x, 3, key=jax.random.key(8))
  assert not np.array_equal(np.asarray(info2.group), np.asarray(info.group))


def test_translation_equivariant():
  x = _data(4)
  shift = np.linspace(-50.0, 80.0, 5).astype(np.float32)
  out, _ = _gmom(x, 4)
  out_t, _ = _gmom(x + shift, 4)
  np.testing.assert_allclose(out_t["w"], np.asarray(out["w"]) + shift,
                             atol=2e-4)


@pytest.mark.slow  # several compilations; keeps the default suite under 5 min
def test_pytree_equals_flat():
  x = _data(5, num=10, dim=9)
  flat, _ = _gmom(x, 4)
  tree, _ = _gmom(helpers.split_leaves(x), 4)
  np.testing.assert_allclose(helpers.join_leaves(tree), flat["w"], atol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e30, -1e30, 3e38, -3e38])
def test_byzantine_rows_in_fewer_than_half_of_the_groups(bad):
  x = _data(6, num=12)
  honest_means, _ = _np_group_means(x, 6)
  center = honest_means.mean(axis=0)
  radius = np.max(np.linalg.norm(honest_means - center, axis=1))
  x[0] = bad           # group 0
  x[5, ::2] = bad      # group 2, mixed with ordinary entries
  if np.isfinite(bad):
    x[5, 1] = -bad
  out, info = _gmom(x, 6)
  assert np.all(np.isfinite(out["w"]))
  if np.isfinite(bad):
    # Two of six group means are corrupt: the GM stays within a constant
    # times the honest group means' radius of their centre.
    assert np.linalg.norm(np.asarray(out["w"]) - center) <= 2.0 * radius
    assert bool(np.all(info.group_kept))
  else:
    # Erasures do not corrupt a group: it averages its live member.
    np.testing.assert_allclose(out["w"], _np_gmom(x, 6), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(info.group_counts),
                                  [1, 2, 1, 2, 2, 2])


def test_trimming_removes_long_group_means():
  x = _data(7, num=12)
  x[2:4] += 40.0    # group 1 (workers 2, 3) gets a long mean
  x[10] = 1e30      # group 5 gets a huge one
  out, info = _gmom(x, 6, trim_threshold=10.0)
  np.testing.assert_array_equal(np.asarray(info.group_kept),
                                [True, False, True, True, True, False])
  assert not bool(info.trim_fallback)
  np.testing.assert_allclose(out["w"], _np_gmom(x, 6, trim_threshold=10.0),
                             atol=1e-4)
  means, _ = _np_group_means(x, 6)
  np.testing.assert_allclose(np.asarray(info.group_norms)[:5],
                             np.linalg.norm(means, axis=1)[:5], rtol=1e-5)
  # Untrimmed, the long mean moves the GM: trimming made a difference.
  untrimmed, _ = _gmom(x, 6)
  assert np.linalg.norm(np.asarray(untrimmed["w"]) - out["w"]) > 1e-2


def test_trimming_everything_falls_back_to_no_trimming():
  x = _data(8, num=12)
  out, info = _gmom(x, 6, trim_threshold=1e-3)
  assert bool(info.trim_fallback) and bool(np.all(info.group_kept))
  untrimmed, _ = _gmom(x, 6)
  np.testing.assert_allclose(out["w"], untrimmed["w"], atol=1e-7)


def test_all_erased_gives_zeros():
  x = np.full((10, 5), np.nan, np.float32)
  out, info = _gmom(x, 4)
  np.testing.assert_array_equal(out["w"], np.zeros(5))
  assert not np.asarray(info.group_kept).any()


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_groups=0), "num_groups"),
    (dict(num_groups=5), "num_groups"),       # more groups than workers
    (dict(num_groups=2.0), "num_groups"),
    (dict(num_groups=True), "num_groups"),
    (dict(num_groups=2, trim_threshold=0.0), "trim_threshold"),
    (dict(num_groups=2, trim_threshold=-1.0), "trim_threshold"),
    (dict(num_groups=2, max_iters=0), "max_iters"),
    (dict(num_groups=2, tol=-1.0), "tol"),
])
def test_bad_hyperparameters_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    geometric_median_of_means({"w": jnp.zeros((4, 3))}, **kwargs)


def test_num_groups_is_required():
  with pytest.raises(ValueError, match="num_groups"):
    geometric_median_of_means(  # pylint: disable=missing-kwoa
        {"w": jnp.zeros((4, 3))})


def test_info_weights_split_each_groups_weight_over_its_members():
  x = np.random.default_rng(4).normal(size=(9, 5)).astype(np.float32)
  x[0] = 1e3  # group 0's mean is far: little weight for its members
  _, info = _jitted({"w": x}, num_groups=3, return_info=True)
  group = np.asarray(info.group)
  gm_w = np.asarray(info.median_info.weights)
  counts = np.asarray(info.group_counts)
  np.testing.assert_allclose(info.weights, gm_w[group] / counts[group],
                             rtol=1e-6)
  np.testing.assert_allclose(np.sum(info.weights), 1.0, rtol=1e-5)
  assert float(np.max(info.weights[group == group[0]])) < 0.05
