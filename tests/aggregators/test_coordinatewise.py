"""Tests for the coordinate-wise aggregators against NumPy oracles."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byzjax.aggregators import coordinatewise
from byzjax.aggregators.coordinatewise import coordinate_median
from byzjax.aggregators.coordinatewise import mean
from byzjax.aggregators.coordinatewise import trimmed_mean
from tests import helpers

BAD_VALUES = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38, -3e38]

# Jitted once at module level, so tests with equal shapes share compilations
# (eager calls dispatch the sorting network op by op, which is slow to warm).
jmean = jax.jit(mean, static_argnames="return_info")
jmedian = jax.jit(coordinate_median, static_argnames="return_info")
jtrimmed = jax.jit(trimmed_mean, static_argnames=("trim_fraction",
                                                   "return_info"))


# --------------------------------------------------------------------------
# NumPy oracles (slow, obvious; float64; loops allowed).


def _live_rows(x):
  x = np.asarray(x, np.float64)
  return x[np.all(np.isfinite(x), axis=1)]


def _np_mean(x, weights=None):
  x = np.asarray(x, np.float64)
  total, acc = 0.0, np.zeros(x.shape[1])
  for i, row in enumerate(x):
    w = 1.0 if weights is None else float(weights[i])
    if np.all(np.isfinite(row)) and np.isfinite(w) and w > 0:
      total += w
      acc += w * row
  return acc / total if total > 0 else acc


def _np_median(x):
  live = _live_rows(x)
  out = np.zeros(live.shape[1])
  for k in range(live.shape[1]):
    out[k] = np.median(live[:, k])
  return out


def _np_trimmed_mean(x, beta):
  live = _live_rows(x)
  n = live.shape[0]
  b = math.floor(round(beta * n, 9))
  out = np.zeros(live.shape[1])
  for k in range(live.shape[1]):
    col = sorted(live[:, k])
    out[k] = np.mean(col[b:n - b])
  return out


def _x(num_workers, dim, seed=0):
  return np.random.default_rng(seed).normal(
      size=(num_workers, dim)).astype(np.float32)


# --------------------------------------------------------------------------
# Oracles, eager and jitted, on pytrees of several leaves.


@pytest.mark.parametrize("num_workers,jit", [(1, True), (2, True), (5, True),
                                             (8, True), (13, True), (5, False)])
def test_median_matches_oracle(num_workers, jit):
  x = _x(num_workers, 9, seed=num_workers)
  fn = jmedian if jit else coordinate_median
  got = helpers.join_leaves(fn(helpers.split_leaves(x)))
  np.testing.assert_allclose(got, _np_median(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("num_workers,beta,jit", [
    (1, 0.3, True), (5, 0.0, True), (5, 0.2, True), (10, 0.25, True),
    (13, 0.49, True), (5, 0.2, False)])
def test_trimmed_mean_matches_oracle(num_workers, beta, jit):
  x = _x(num_workers, 9, seed=num_workers)
  fn = jtrimmed if jit else trimmed_mean
  fn = functools.partial(fn, trim_fraction=beta)
  got = helpers.join_leaves(fn(helpers.split_leaves(x)))
  np.testing.assert_allclose(got, _np_trimmed_mean(x, beta), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_mean_matches_oracle(jit):
  x = _x(6, 9)
  w = np.array([1.0, 2.0, 0.0, 0.5, 3.0, 1.0], np.float32)
  fn = jmean if jit else mean
  got = helpers.join_leaves(fn(helpers.split_leaves(x)))
  np.testing.assert_allclose(got, _np_mean(x), rtol=1e-5, atol=1e-6)
  got, info = fn(helpers.split_leaves(x), weights=w, return_info=True)
  np.testing.assert_allclose(helpers.join_leaves(got), _np_mean(x, w),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(info.weights, w / w.sum(), rtol=1e-6)


def test_trim_count_is_floor_of_beta_times_live_count():
  # 0.29 * 100 is 28.999999999999996 in floating point; b must be 29.
  x = _x(100, 3)
  _, info = jtrimmed({"w": x}, trim_fraction=0.29, return_info=True)
  assert int(info.num_trimmed) == 29 and int(info.num_live) == 100
  x[[3, 50, 70]] = np.nan  # n = 97 live: b = floor(0.29 * 97) = 28
  got, info = jtrimmed({"w": x}, trim_fraction=0.29, return_info=True)
  assert int(info.num_trimmed) == 28 and int(info.num_live) == 97
  np.testing.assert_allclose(got["w"], _np_trimmed_mean(x, 0.29), rtol=1e-5)


@pytest.mark.parametrize("num_workers,dim", [(8, 10000), (5, 9001)])
def test_chunked_network_path_matches_oracle(num_workers, dim):
  # dim exceeds one chunk of the sorting network, so the chunk loop runs,
  # including the last, shifted, overlapping chunk; leaves are grouped.
  x = _x(num_workers, dim, seed=dim)
  x[1, 17] = np.nan  # one erasure
  tree = helpers.split_leaves(x)
  assert dim > coordinatewise._CHUNK_BYTES // (8 * 4)
  med, tm = jax.jit(lambda t: (coordinate_median(t),
                               trimmed_mean(t, trim_fraction=0.25)))(tree)
  np.testing.assert_allclose(helpers.join_leaves(med), _np_median(x),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(helpers.join_leaves(tm),
                             _np_trimmed_mean(x, 0.25), rtol=1e-5, atol=1e-6)
  med1 = jax.jit(coordinate_median)({"w": x})["w"]  # one large leaf
  np.testing.assert_allclose(med1, _np_median(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("num_workers", [3, 8, 16])
def test_sort_and_network_methods_agree(num_workers):
  x = _x(num_workers, 300)
  x[0, 5] = np.inf
  keep = jnp.asarray(np.all(np.isfinite(x), axis=1))
  n = jnp.sum(keep)

  @functools.partial(jax.jit, static_argnames="method")
  def run(method):
    return coordinatewise._sorted_map(
        {"w": x}, keep, lambda s: coordinatewise._median_of_sorted(s, n),
        method=method)["w"]

  np.testing.assert_array_equal(run("network"), run("sort"))
  np.testing.assert_allclose(run("network"), _np_median(x), rtol=1e-6)


def test_bitonic_sort_sorts_with_ties_and_infinities():
  rng = np.random.default_rng(4)
  x = rng.integers(-3, 4, size=(32, 50)).astype(np.float32)
  x[rng.random(x.shape) < 0.1] = np.inf
  got = jax.jit(coordinatewise._bitonic_sort)(x)
  np.testing.assert_array_equal(got, np.sort(x, axis=0))


# --------------------------------------------------------------------------
# Properties.


def _all_fns():
  return [jmean, jmedian, functools.partial(jtrimmed, trim_fraction=0.2)]


@pytest.mark.parametrize("fn", _all_fns())
def test_permutation_invariant(fn):
  x = _x(9, 7, seed=1)
  perm = np.random.default_rng(2).permutation(9)
  chex.assert_trees_all_close(fn({"w": x}), fn({"w": x[perm]}), rtol=1e-6,
                              atol=1e-7)


@pytest.mark.parametrize("fn", _all_fns()[1:])
def test_translation_and_scale_equivariant(fn):
  x = _x(9, 7, seed=3)
  shift = np.random.default_rng(5).normal(size=7).astype(np.float32) * 10
  base = fn({"w": x})["w"]
  np.testing.assert_allclose(fn({"w": x + shift})["w"], base + shift,
                             rtol=1e-5, atol=1e-5)
  for scale in (4.0, -0.5):
    np.testing.assert_allclose(fn({"w": scale * x})["w"], scale * base,
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn", _all_fns())
def test_identical_workers_give_that_worker(fn):
  row = _x(1, 7, seed=6)
  got = fn({"w": np.tile(row, (9, 1))})["w"]
  np.testing.assert_allclose(got, row[0], rtol=1e-6)


@pytest.mark.parametrize("fn", _all_fns())
def test_pytree_equals_flat(fn):
  x = _x(7, 12, seed=8)
  x[2, 3] = np.nan
  flat = fn({"w": x})["w"]
  tree = helpers.join_leaves(fn(helpers.split_leaves(x)))
  np.testing.assert_allclose(tree, flat, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn", _all_fns())
def test_all_erased_gives_zeros(fn):
  x = np.full((9, 7), np.nan, np.float32)
  np.testing.assert_array_equal(fn({"w": x})["w"], np.zeros(7))


def test_info():
  x = _x(9, 7)
  x[4, 0] = np.inf
  live = np.arange(9) != 4
  _, info = jmedian({"w": x}, return_info=True)
  np.testing.assert_array_equal(info.live, live)
  assert int(info.num_live) == 8
  _, info = jmean({"w": x}, return_info=True)
  np.testing.assert_allclose(info.weights, live / 8, rtol=1e-6)


# --------------------------------------------------------------------------
# Byzantine rows within the breakdown point.


def _honest_and_byzantine(num_honest, num_byz, value, dim=6, seed=0):
  honest = _x(num_honest, dim, seed=seed)
  byz = np.full((num_byz, dim), value, np.float32)
  if num_byz > 1:
    byz[1::2] = -value if np.isfinite(value) else value  # both signs
  return honest, np.concatenate([byz[:1], honest, byz[1:]])


@pytest.mark.parametrize("value", BAD_VALUES)
def test_median_with_byzantine_minority(value):
  honest, x = _honest_and_byzantine(7, 6, value)  # 6 < 13 / 2
  got = jmedian({"w": x})["w"]
  assert np.all(np.isfinite(got))
  assert np.all(got >= honest.min(0)) and np.all(got <= honest.max(0))
  np.testing.assert_allclose(got, _np_median(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_trimmed_mean_with_byzantine_rows_within_trim_count(value):
  # R = 13, beta = 0.4: b = floor(5.2) = 5 per side; 5 Byzantine rows.
  honest, x = _honest_and_byzantine(8, 5, value)
  got = jtrimmed({"w": x}, trim_fraction=0.4)["w"]
  assert np.all(np.isfinite(got))
  assert np.all(got >= honest.min(0)) and np.all(got <= honest.max(0))
  np.testing.assert_allclose(got, _np_trimmed_mean(x, 0.4), rtol=1e-5,
                             atol=1e-6)


def test_byzantine_rows_all_on_one_side():
  # Adversarial placement: every Byzantine value at +3e38, the worst side.
  honest = _x(7, 6)
  x = np.concatenate([honest, np.full((3, 6), 3e38, np.float32)])
  med = jmedian({"w": x})["w"]
  tm = jtrimmed({"w": x}, trim_fraction=0.3)["w"]  # b = 3
  for got in (med, tm):
    assert np.all(np.isfinite(got))
    assert np.all(got <= honest.max(0))
  np.testing.assert_allclose(tm, np.sort(honest, 0)[3:7].mean(0), rtol=1e-5)


def test_mean_of_huge_rows_is_finite():
  x = _x(4, 5)
  x[2] = 1e30
  got = jmean({"w": x})["w"]
  np.testing.assert_allclose(got, 0.25e30, rtol=1e-6)  # the baseline moves
  huge = np.full((5, 3), 3e38, np.float32)
  huge[1] = -3e38
  np.testing.assert_allclose(jmean({"w": huge})["w"], 1.8e38, rtol=1e-6)
  np.testing.assert_allclose(
      jmean({"w": np.full((7, 2), 3.4e38, np.float32)})["w"], 3.4e38,
      rtol=1e-6)


def test_mean_gives_erasures_zero_weight():
  x = _x(5, 4)
  x[1, 2], x[3, 0] = np.nan, -np.inf
  got = jmean({"w": x})["w"]
  np.testing.assert_allclose(got, x[[0, 2, 4]].mean(0), rtol=1e-6)


def test_mean_weights_huge_negative_and_nonfinite():
  x = _x(4, 3)
  w = np.array([1e30, 3e38, -1.0, np.nan], np.float32)
  got, info = mean({"w": x}, weights=w, return_info=True)
  expect = (1e30 * x[0].astype(np.float64) + 3e38 * x[1]) / (1e30 + 3e38)
  np.testing.assert_allclose(got["w"], expect, rtol=1e-5)
  assert np.all(np.isfinite(info.weights))
  np.testing.assert_allclose(info.weights[2:], 0.0)


# --------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, "0.1", True])
def test_bad_trim_fraction_raises(beta):
  with pytest.raises(ValueError, match="trim_fraction"):
    trimmed_mean({"w": _x(4, 3)}, trim_fraction=beta)


def test_bad_weights_raise():
  with pytest.raises(ValueError, match="weights"):
    mean({"w": _x(4, 3)}, weights=np.ones(3))


@pytest.mark.parametrize("fn", _all_fns())
def test_leaves_with_different_leading_sizes_raise(fn):
  with pytest.raises(ValueError, match="leading"):
    fn({"a": _x(4, 3), "b": _x(5, 3)})


# --------------------------------------------------------------------------
# Per-worker shares in the diagnostics (issue 12: coordinate-wise rules
# report which workers' values they used).


def _np_window_shares(x, lo_rank, hi_rank):
  """Oracle: per coordinate, the live workers whose value lies between the
  ``lo_rank``-th and ``hi_rank``-th smallest live values (0-based, ties at
  the edges kept) share that coordinate equally."""
  x = np.asarray(x, np.float64)
  live = np.all(np.isfinite(x), axis=1)
  r, d = x.shape
  weights, kept = np.zeros(r), np.zeros(r)
  for k in range(d):
    col = np.sort(x[live, k])
    lo, hi = col[lo_rank(len(col))], col[hi_rank(len(col))]
    members = [i for i in range(r) if live[i] and lo <= x[i, k] <= hi]
    for i in members:
      weights[i] += 1 / len(members) / d
      kept[i] += 1 / d
  return weights, kept


@pytest.mark.parametrize("dim", [9, 5000])  # one block; the chunked loop
def test_info_shares_match_oracle(dim):
  x = _x(9, dim, seed=dim)
  x[2] = 1e30    # live, always outside the window
  x[5, 0] = np.nan  # an erasure
  tree = {"w": x} if dim > 9 else helpers.split_leaves(x)
  _, info = jmedian(tree, return_info=True)
  want_w, want_k = _np_window_shares(x, lambda n: (n - 1) // 2,
                                     lambda n: n // 2)
  np.testing.assert_allclose(info.weights, want_w, atol=1e-6)
  np.testing.assert_allclose(info.kept_fraction, want_k, atol=1e-6)
  _, info = jtrimmed(tree, trim_fraction=0.25, return_info=True)
  want_w, want_k = _np_window_shares(x, lambda n: n // 4,
                                     lambda n: n - n // 4 - 1)
  np.testing.assert_allclose(info.weights, want_w, atol=1e-6)
  np.testing.assert_allclose(info.kept_fraction, want_k, atol=1e-6)
  assert info.weights[2] == 0 and info.weights[5] == 0
  np.testing.assert_allclose(np.sum(info.weights), 1.0, rtol=1e-5)


def test_info_does_not_change_the_aggregate():
  x = _x(8, 9, seed=3)
  for fn, kw in [(jmedian, {}), (jtrimmed, {"trim_fraction": 0.2})]:
    plain = fn(helpers.split_leaves(x), **kw)
    with_info, _ = fn(helpers.split_leaves(x), return_info=True, **kw)
    chex.assert_trees_all_equal(plain, with_info)
