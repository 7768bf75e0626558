"""Tests for Bulyan against a loop-based NumPy oracle."""

import functools

import chex
import jax
import numpy as np
import pytest

from byzjax.aggregators.bulyan import bulyan
from tests import helpers

BAD_VALUES = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38, -3e38]

_jbulyan = jax.jit(bulyan, static_argnames=("num_byzantine", "return_info"))


def jbulyan(tree, num_byzantine):
  """Jitted Bulyan with info (one compilation per shape and f)."""
  return _jbulyan(tree, num_byzantine=num_byzantine, return_info=True)


def _np_bulyan(x, f):
  """Loop oracle in float64 (El Mhamdi et al., Section 4).

  Selection: theta = R - 2f rounds of Krum on the remaining set, neighbour
  count |remaining| - f - 2 (at least 0, at most the other live remaining
  rows); erased rows stay in the remaining count but are never chosen or
  neighbours. Then per coordinate: the beta = theta - 2f selected values
  closest to the median, averaged.
  """
  x = np.asarray(x, np.float64)
  r = x.shape[0]
  live = {i for i in range(r) if np.all(np.isfinite(x[i]))}
  remaining, order = set(range(r)), []
  for _ in range(r - 2 * f):
    active = sorted(remaining & live)
    if not active:
      break
    k = min(max(len(remaining) - f - 2, 0), len(active) - 1)
    best, best_score = None, np.inf
    for i in active:
      dists = sorted(float(np.sum((x[i] - x[j]) ** 2))
                     for j in active if j != i)
      score = sum(dists[:k])
      if best is None or score < best_score:
        best, best_score = i, score
    order.append(best)
    remaining.remove(best)
  chosen = sorted(order)
  beta = max(len(chosen) - 2 * f, 1)
  out = np.zeros(x.shape[1])
  if not chosen:
    return out, order
  for k in range(x.shape[1]):
    col = x[chosen, k]
    closest = np.argsort(np.abs(col - np.median(col)), kind="stable")[:beta]
    out[k] = np.mean(col[closest])
  return out, order


def _x(num_workers, dim, seed=0):
  return np.random.default_rng(seed).normal(
      size=(num_workers, dim)).astype(np.float32)


@pytest.mark.parametrize("num_workers,f,jit", [
    (3, 0, True), (7, 1, True), (11, 2, True), (16, 3, True),
    (7, 1, False)])
def test_matches_oracle(num_workers, f, jit):
  x = _x(num_workers, 12, seed=num_workers)
  fn = functools.partial(_jbulyan if jit else bulyan, return_info=True)
  got, info = fn(helpers.split_leaves(x), num_byzantine=f)
  expect, order = _np_bulyan(x, f)
  np.testing.assert_array_equal(info.order, order)
  np.testing.assert_array_equal(np.flatnonzero(info.selected), sorted(order))
  np.testing.assert_allclose(helpers.join_leaves(got), expect, rtol=1e-5,
                             atol=1e-6)


def test_second_stage_over_several_chunks():
  # R = 11 pads to 16 rows: 2048 coordinates per chunk of the sorting
  # network, so 3000 coordinates take two (overlapping) chunks.
  x = _x(11, 3000, seed=1)
  got, _ = jbulyan({"w": x}, 2)
  np.testing.assert_allclose(got["w"], _np_bulyan(x, 2)[0], rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_byzantine_rows_within_f(value):
  honest = _x(9, 12, seed=2)
  byz = np.full((2, 12), value, np.float32)
  byz[1, ::2] = -value  # mixed signs
  x = np.concatenate([byz[:1], honest, byz[1:]])  # R = 11 = 4f + 3, f = 2
  got, info = jbulyan({"w": x}, 2)
  assert np.all(np.isfinite(got["w"]))
  assert not np.any(np.asarray(info.selected)[[0, 10]])
  lo, hi = honest.min(0), honest.max(0)
  assert np.all(got["w"] >= lo) and np.all(got["w"] <= hi)
  np.testing.assert_allclose(got["w"], _np_bulyan(x, 2)[0], rtol=1e-5,
                             atol=1e-6)


def test_adversarial_rows_inside_the_cloud_stay_within_honest_range():
  # Byzantine rows placed to be selected (at the honest mean, shifted in one
  # coordinate): the coordinate-wise stage keeps every coordinate within the
  # honest range.
  honest = _x(9, 12, seed=3)
  fake = honest.mean(0)
  fake[0] = honest[:, 0].max() + 3.0
  x = np.concatenate([honest, np.tile(fake, (2, 1))]).astype(np.float32)
  got, _ = jbulyan({"w": x}, 2)
  assert np.all(got["w"] >= honest.min(0)) and np.all(
      got["w"] <= honest.max(0))
  np.testing.assert_allclose(got["w"], _np_bulyan(x, 2)[0], rtol=1e-5,
                             atol=1e-6)


def test_more_erasures_than_f_still_finite():
  x = _x(11, 12, seed=4)
  x[[1, 3, 5, 7, 9]] = np.nan  # 5 > f = 2 erasures: 6 live < theta = 7
  got, info = jbulyan({"w": x}, 2)
  expect, order = _np_bulyan(x, 2)
  assert np.all(np.isfinite(got["w"]))
  np.testing.assert_array_equal(info.order, order + [-1])
  np.testing.assert_allclose(got["w"], expect, rtol=1e-5, atol=1e-6)
  x[:] = np.inf
  np.testing.assert_array_equal(jbulyan({"w": x}, 2)[0]["w"], np.zeros(12))


def test_permutation_invariant_and_translation_equivariant():
  x = _x(11, 12, seed=5)
  perm = np.random.default_rng(6).permutation(11)
  base = jbulyan({"w": x}, 2)[0]["w"]
  chex.assert_trees_all_close(jbulyan({"w": x[perm]}, 2)[0]["w"], base,
                              rtol=1e-6)
  shift = 50.0 * np.random.default_rng(7).normal(size=12).astype(np.float32)
  np.testing.assert_allclose(jbulyan({"w": x + shift}, 2)[0]["w"],
                             base + shift, rtol=1e-5, atol=1e-4)


def test_identical_workers_and_pytree_equals_flat():
  row = _x(1, 12, seed=8)
  got = jbulyan({"w": np.tile(row, (11, 1))}, 2)[0]["w"]
  np.testing.assert_allclose(got, row[0], rtol=1e-6)
  x = _x(11, 12, seed=9)
  flat = jbulyan({"w": x}, 2)[0]["w"]
  tree = helpers.join_leaves(jbulyan(helpers.split_leaves(x), 2)[0])
  np.testing.assert_allclose(tree, flat, rtol=1e-6)


@pytest.mark.parametrize("num_workers,f", [(10, 2), (6, 1), (11, -1),
                                           (11, 1.0), (11, None)])
def test_bad_num_byzantine_raises(num_workers, f):
  with pytest.raises(ValueError, match="num_byzantine"):
    bulyan({"w": _x(num_workers, 3)}, num_byzantine=f)


def test_leaves_with_different_leading_sizes_raise():
  with pytest.raises(ValueError, match="leading"):
    bulyan({"a": _x(11, 3), "b": _x(12, 3)}, num_byzantine=1)


def _min_sum_over_subsets(col, mu, beta):
  """min over subsets M of size beta of sum_{i in M} |col_i - mu| (brute)."""
  import itertools
  return min(sum(abs(col[i] - mu) for i in m)
             for m in itertools.combinations(range(len(col)), beta))


def test_tied_radii_average_the_values_closest_to_the_median():
  # Issue 13: windows [0, 0, 1] and [0, 1, 1.5] have the same largest
  # distance (1) to the median 1 but sums 2 and 1.5; the beta = 3 values
  # closest to the median are {0, 1, 1.5}, mean 0.8333.
  x = {"w": np.array([[0.], [0.], [1.], [1.5], [3.], [100.], [200.]],
                     np.float32)}
  got = bulyan(x, num_byzantine=1)["w"]
  expect, order = _np_bulyan(x["w"], 1)
  assert sorted(order) == [0, 1, 2, 3, 4]
  np.testing.assert_allclose(got, expect, rtol=1e-6)
  np.testing.assert_allclose(got, [(0 + 1 + 1.5) / 3], rtol=1e-6)


def test_identical_byzantine_rows_alie_match_oracle():
  # ALIE-like: f identical rows at mu - z sigma per coordinate, which ties
  # many windows' radii; every coordinate must match the paper's rule.
  # Shape (16, 12) as split leaves and f = 3: shares test_matches_oracle's
  # compilation.
  rng = np.random.default_rng(10)
  honest = rng.normal(size=(13, 12)).astype(np.float32)
  f = 3
  byz = honest.mean(0) - 1.0 * honest.std(0)
  x = np.concatenate([honest, np.tile(byz, (f, 1))]).astype(np.float32)
  got, info = _jbulyan(helpers.split_leaves(x), num_byzantine=f,
                       return_info=True)
  expect, order = _np_bulyan(x, f)
  np.testing.assert_array_equal(info.order, order)
  np.testing.assert_allclose(helpers.join_leaves(got), expect, rtol=1e-5,
                             atol=1e-6)
  # Property: the averaged values attain the minimal sum of distances.
  sel = x[sorted(order)].astype(np.float64)
  beta = len(order) - 2 * f
  for k in range(0, 12, 3):
    col, mu = sel[:, k], np.median(sel[:, k])
    best = _min_sum_over_subsets(col, mu, beta)
    kept = np.sort(np.abs(col - mu))[:beta].sum()
    np.testing.assert_allclose(kept, best, rtol=1e-12)
