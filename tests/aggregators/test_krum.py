"""Tests for Krum / Multi-Krum against a loop-based NumPy oracle."""

import functools

import chex
import jax
import numpy as np
import pytest

from byzjax.aggregators.krum import krum
from tests import helpers

BAD_VALUES = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38, -3e38]

_jkrum = jax.jit(krum, static_argnames=("num_byzantine", "num_selected",
                                        "return_info"))


def jkrum(tree, num_byzantine, num_selected=1):
  """Jitted Krum with info; most tests share shape (9, 12) and f = 2, so
  they share a few compilations."""
  return _jkrum(tree, num_byzantine=num_byzantine, num_selected=num_selected,
                return_info=True)


def _np_krum(x, f, m=1, drop=2):
  """Loop oracle in float64: Blanchard et al.'s scores, erasures excluded.

  Erased rows never score and are not neighbours; the neighbour count is
  R - f - drop (the paper's drop = 2), clamped to the number of other live
  rows.
  """
  x = np.asarray(x, np.float64)
  r = x.shape[0]
  live = [i for i in range(r) if np.all(np.isfinite(x[i]))]
  k = min(r - f - drop, len(live) - 1)
  scores = np.full(r, np.inf)
  for i in live:
    dists = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in live if j != i)
    scores[i] = sum(dists[:k])
  order = sorted(live, key=lambda i: (scores[i], i))
  chosen = sorted(order[:m])
  out = np.mean(x[chosen], axis=0) if chosen else np.zeros(x.shape[1])
  return out, scores, chosen


def _x(num_workers, dim, seed=0):
  return np.random.default_rng(seed).normal(
      size=(num_workers, dim)).astype(np.float32)


@pytest.mark.parametrize("num_workers,f,m,jit", [
    (3, 0, 1, True), (10, 3, 1, True), (12, 2, 4, True), (12, 2, 12, True),
    (9, 2, 3, True), (9, 2, 3, False)])
def test_matches_oracle(num_workers, f, m, jit):
  x = _x(num_workers, 12, seed=num_workers + m)
  fn = functools.partial(_jkrum if jit else krum, return_info=True)
  got, info = fn(helpers.split_leaves(x), num_byzantine=f, num_selected=m)
  expect, scores, chosen = _np_krum(x, f, m)
  np.testing.assert_array_equal(np.flatnonzero(info.selected), chosen)
  np.testing.assert_allclose(helpers.join_leaves(got), expect, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(info.scores, scores, rtol=1e-4)


def test_krum_returns_an_original_row_exactly():
  x = _x(9, 12, seed=1) + 5.0
  got, info = jkrum({"w": x}, num_byzantine=2)
  (i,) = np.flatnonzero(info.selected)
  np.testing.assert_array_equal(got["w"], x[i])


def test_precise_with_a_large_common_component():
  # The rows share a component 1e4 times larger than their spread. Gram
  # distances of raw rows would lose everything to cancellation in float32;
  # centring first keeps the scores (hence the choice) right.
  rng = np.random.default_rng(2)
  base = 1e4 * rng.normal(size=12)
  x = (base + rng.normal(size=(9, 12))).astype(np.float32)
  got, info = jkrum({"w": x}, num_byzantine=2, num_selected=3)
  expect, scores, chosen = _np_krum(x, 2, 3)
  np.testing.assert_array_equal(np.flatnonzero(info.selected), chosen)
  np.testing.assert_allclose(got["w"], expect, rtol=1e-6)
  np.testing.assert_allclose(info.scores, scores, rtol=1e-2)


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("m", [1, 3])
def test_byzantine_rows_are_never_selected(value, m):
  honest = _x(7, 12, seed=3)
  byz = np.full((2, 12), value, np.float32)
  byz[1, ::2] = -value  # mixed signs
  x = np.concatenate([honest[:2], byz[:1], honest[2:], byz[1:]])
  got, info = jkrum({"w": x}, num_byzantine=2, num_selected=m)
  assert np.all(np.isfinite(got["w"]))
  assert not np.any(np.asarray(info.selected)[[2, 8]])
  expect, _, chosen = _np_krum(x, 2, m)  # float64 squares do not overflow
  np.testing.assert_array_equal(np.flatnonzero(info.selected), chosen)
  np.testing.assert_allclose(got["w"], expect, rtol=1e-5, atol=1e-6)


def test_erasures_are_not_neighbours():
  # With the erased rows removed the honest scores are unchanged.
  x = _x(9, 12, seed=4)
  x[[0, 5], 1] = np.nan
  got, info = jkrum({"w": x}, num_byzantine=2, num_selected=3)
  expect, scores, chosen = _np_krum(x, 2, 3)
  assert np.all(np.isinf(np.asarray(info.scores)[[0, 5]]))
  np.testing.assert_allclose(info.scores, scores, rtol=1e-4)
  np.testing.assert_array_equal(np.flatnonzero(info.selected), chosen)
  np.testing.assert_allclose(got["w"], expect, rtol=1e-5)


def test_fewer_live_workers_than_selected():
  x = _x(9, 12, seed=5)
  x[[0, 2, 3, 5, 6, 7, 8]] = np.inf
  got, info = jkrum({"w": x}, num_byzantine=2, num_selected=3)
  np.testing.assert_array_equal(np.flatnonzero(info.selected), [1, 4])
  np.testing.assert_allclose(got["w"], x[[1, 4]].mean(0), rtol=1e-6)
  x[:] = np.nan
  np.testing.assert_array_equal(jkrum({"w": x}, num_byzantine=2)[0]["w"],
                                np.zeros(12))


def test_adversarial_cluster_stays_within_the_krum_bound():
  # f identical Byzantine rows near the honest cloud (their mutual distances
  # are 0, the classic way to win Krum). A selected row's score is at most an
  # honest score, so its distance to the nearest honest row is at most
  # sqrt(R - f - 2) times the honest diameter.
  honest = _x(7, 12, seed=6)
  mu = honest.mean(0)
  radius = np.max(np.linalg.norm(honest - mu, axis=1))
  fake = mu + 1.5 * radius * np.ones(12, np.float32) / np.sqrt(12)
  x = np.concatenate([honest, np.tile(fake, (2, 1))]).astype(np.float32)
  got = jkrum({"w": x}, num_byzantine=2)[0]["w"]
  bound = radius + np.sqrt(9 - 2 - 2) * 2 * radius
  assert np.linalg.norm(got - mu) <= bound
  np.testing.assert_allclose(got, _np_krum(x, 2)[0], rtol=1e-5)


def test_permutation_invariant_and_translation_equivariant():
  x = _x(9, 12, seed=7)
  perm = np.random.default_rng(8).permutation(9)
  fn = functools.partial(jkrum, num_byzantine=2, num_selected=3)
  base = fn({"w": x})[0]["w"]
  chex.assert_trees_all_close(fn({"w": x[perm]})[0]["w"], base, rtol=1e-6)
  shift = 50.0 * np.random.default_rng(9).normal(size=12).astype(np.float32)
  np.testing.assert_allclose(fn({"w": x + shift})[0]["w"], base + shift,
                             rtol=1e-5, atol=1e-4)


def test_identical_workers_and_pytree_equals_flat():
  row = _x(1, 12, seed=10)
  got = jkrum({"w": np.tile(row, (9, 1))}, num_byzantine=2, num_selected=3)
  np.testing.assert_allclose(got[0]["w"], row[0], rtol=1e-6)
  x = _x(9, 12, seed=11)
  flat = jkrum({"w": x}, num_byzantine=2, num_selected=3)[0]["w"]
  tree = helpers.join_leaves(
      jkrum(helpers.split_leaves(x), num_byzantine=2, num_selected=3)[0])
  np.testing.assert_allclose(tree, flat, rtol=1e-6)


@pytest.mark.parametrize("f", [-1, 4, 5, 2.0, None])
def test_bad_num_byzantine_raises(f):
  with pytest.raises(ValueError, match="num_byzantine"):
    krum({"w": _x(10, 3)}, num_byzantine=f)  # 2f + 2 < 10 needs f <= 3


@pytest.mark.parametrize("m", [0, 11, -1, 1.5])
def test_bad_num_selected_raises(m):
  with pytest.raises(ValueError, match="num_selected"):
    krum({"w": _x(10, 3)}, num_byzantine=1, num_selected=m)


def test_leaves_with_different_leading_sizes_raise():
  with pytest.raises(ValueError, match="leading"):
    krum({"a": _x(9, 3), "b": _x(8, 3)}, num_byzantine=1)


@pytest.mark.parametrize("neighbours,drop", [("blanchard", 2), ("byzfl", 1)])
def test_neighbour_count_conventions_match_oracle(neighbours, drop):
  # R = 7, f = 2: scores over 3 (paper) or 4 (ByzFL) nearest neighbours.
  x = _x(7, 5, seed=11)
  got, info = krum({"w": x}, num_byzantine=2, neighbours=neighbours,
                   return_info=True)
  expect, scores, chosen = _np_krum(x, 2, drop=drop)
  np.testing.assert_array_equal(np.flatnonzero(info.selected), chosen)
  np.testing.assert_allclose(info.scores, scores, rtol=1e-4)
  np.testing.assert_allclose(got["w"], expect, rtol=1e-6)


def test_unknown_neighbour_convention_raises():
  with pytest.raises(ValueError, match="neighbours"):
    krum({"w": _x(7, 5)}, num_byzantine=1, neighbours="n-f-1")
