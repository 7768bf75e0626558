"""Tests for the Weiszfeld geometric median against a NumPy oracle."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byzjax import tree as btree
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.aggregators.geometric_median import gram_switch_iters
from tests import helpers

METHODS = ["direct", "gram", "auto"]


# One jitted entry point: calls with the same shapes and static arguments
# reuse the compiled program, which keeps this file fast.
_jitted = jax.jit(geometric_median, static_argnames=(
    "max_iters", "tol", "nu", "method", "criterion", "return_info"))


def _gm(x, jit=True, **kw):
  # These tests ask for the point to tight tolerances, which is what the
  # step rule controls; the default objective rule (the peers' rule, which
  # pins the point only to about sqrt(tol) of the spread) is tested below.
  kw.setdefault("criterion", "step")
  return (_jitted if jit else geometric_median)(x, **kw)


@pytest.mark.parametrize("method,jit", [(m, True) for m in METHODS]
                         + [("auto", False)])
@pytest.mark.parametrize("num_workers", [3, 8, 33])
def test_matches_numpy_oracle(method, jit, num_workers):
  x = np.random.default_rng(num_workers).normal(
      size=(num_workers, 12)).astype(np.float32)
  x += 5.0  # away from the origin, so relative errors mean something
  got = _gm(helpers.split_leaves(x), jit, method=method, tol=1e-8,
            max_iters=2000)
  np.testing.assert_allclose(helpers.join_leaves(got),
                             helpers.np_geometric_median(x), rtol=0, atol=2e-5)


@pytest.mark.parametrize("method", METHODS)
def test_optimality_condition(method):
  """At the median, the unit vectors to the points sum to (almost) zero."""
  x = np.random.default_rng(1).standard_t(df=2, size=(40, 7)).astype(np.float32)
  z = np.asarray(_gm({"w": x}, method=method, tol=1e-9, max_iters=5000)["w"],
                 np.float64)
  diff = x - z
  units = diff / np.linalg.norm(diff, axis=1, keepdims=True)
  assert np.linalg.norm(units.sum(axis=0)) < 1e-2 * len(x) ** 0.5


@pytest.mark.slow  # several compilations; the default suite keeps a sibling
@pytest.mark.parametrize("method", METHODS)
def test_same_answer_from_any_start(method):
  x = np.random.default_rng(2).normal(size=(15, 6)).astype(np.float32)
  ref = _gm({"w": x}, method=method, tol=1e-9, max_iters=3000)["w"]
  for start in [np.full(6, 1e4, np.float32), x[0], np.full(6, 1e30, np.float32),
                np.full(6, np.nan, np.float32)]:
    got = _gm({"w": x}, init={"w": start}, method=method, tol=1e-9,
              max_iters=3000)["w"]
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_permutation_invariant():
  x = jax.random.normal(jax.random.key(1), (9, 5))
  chex.assert_trees_all_close(_gm({"w": x}, tol=1e-9),
                              _gm({"w": x[::-1]}, tol=1e-9), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_translation_scale_rotation_equivariant(method):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(11, 6)).astype(np.float32)
  shift = rng.normal(size=6).astype(np.float32) * 10
  rot, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  rot = rot.astype(np.float32)
  gm = functools.partial(_gm, method=method, tol=1e-9, max_iters=3000)
  base = np.asarray(gm({"w": x})["w"])
  np.testing.assert_allclose(gm({"w": x + shift})["w"], base + shift, atol=1e-4)
  np.testing.assert_allclose(gm({"w": 8.0 * x})["w"], 8.0 * base, atol=1e-4)
  np.testing.assert_allclose(gm({"w": x @ rot.T})["w"], base @ rot.T, atol=1e-4)


def test_identical_workers_give_that_worker():
  row = np.arange(6, dtype=np.float32) - 2.5
  x = np.tile(row, (5, 1))
  for method in METHODS:
    np.testing.assert_allclose(_gm({"w": x}, method=method)["w"], row, atol=1e-6)


def test_weights_equal_duplicated_rows():
  x = np.random.default_rng(4).normal(size=(6, 4)).astype(np.float32)
  weights = np.array([1, 3, 1, 2, 1, 1], np.float32)
  dup = np.repeat(x, weights.astype(int), axis=0)
  got = _gm({"w": x}, weights=jnp.asarray(weights), tol=1e-9, max_iters=3000)
  np.testing.assert_allclose(got["w"], helpers.np_geometric_median(dup), atol=2e-5)
  np.testing.assert_allclose(got["w"], helpers.np_geometric_median(x, weights),
                             atol=2e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38,
                                 -3e38])
def test_byzantine_rows_stay_finite_and_close(method, bad):
  """Rows of NaN/Inf (erasures) and huge finite rows, just under half."""
  rng = np.random.default_rng(5)
  honest = rng.normal(size=(11, 8)).astype(np.float32) + 2.0
  byz = np.full((10, 8), bad, np.float32)
  byz[::2] *= -1  # mixed signs, as an adversary would
  x = np.concatenate([byz, honest])
  got, info = _gm(helpers.split_leaves(x), method=method, tol=1e-8,
                  max_iters=1000, return_info=True)
  got = helpers.join_leaves(got)
  assert np.all(np.isfinite(got))
  assert np.isfinite(info.objective)
  honest_gm = helpers.np_geometric_median(honest)
  if not np.isfinite(bad):
    # Erasures carry no weight at all: the median of the honest rows.
    np.testing.assert_allclose(got, honest_gm, atol=3e-5)
  else:
    # Exact answer with the huge rows, in float64: they pull the median
    # only by a bounded amount, which the float32 version must reproduce.
    np.testing.assert_allclose(got, helpers.np_geometric_median(x), atol=1e-4)
    spread = np.max(np.linalg.norm(honest - honest_gm, axis=1))
    assert np.linalg.norm(got - honest_gm) < 4 * spread


def test_adversarial_cluster_below_half_is_bounded():
  """A tight cluster of f < n/2 rows placed far along one direction."""
  rng = np.random.default_rng(6)
  honest = rng.normal(size=(13, 10)).astype(np.float32)
  for scale in [1e2, 1e6, 1e15]:
    byz = np.full((12, 10), scale, np.float32)
    got = _gm({"w": np.concatenate([honest, byz])}, tol=1e-8, max_iters=2000)
    err = np.linalg.norm(np.asarray(got["w"]) - helpers.np_geometric_median(honest))
    # GM's breakdown bound: err <= C * max honest distance with
    # C = 2(1-a)/(1-2a) for an a = 12/25 fraction; C = 26 here.
    spread = np.max(np.linalg.norm(honest - helpers.np_geometric_median(honest), axis=1))
    assert err < 26 * spread


def test_info_fields():
  x = np.random.default_rng(7).normal(size=(64, 30)).astype(np.float32)
  _, info = _gm({"w": x}, max_iters=50, tol=1e-6, return_info=True)
  assert bool(info.converged)
  assert 1 <= int(info.num_iters) <= 50
  np.testing.assert_allclose(float(jnp.sum(info.weights)), 1.0, rtol=1e-5)
  _, info = _gm({"w": x}, max_iters=2, tol=0.0, return_info=True)
  assert not bool(info.converged)


@pytest.mark.slow  # several compilations; keeps the default suite under 5 min
def test_auto_switches_to_gram_on_slow_inputs():
  """Many iterations needed: auto runs the Gram phase and stops the direct
  loop after the predicted break-even number of direct iterations."""
  rng = np.random.default_rng(8)
  centers = rng.normal(size=(3, 20)).astype(np.float32)
  x = centers[rng.integers(0, 3, size=64)] + 1e-3 * rng.normal(size=(64, 20))
  x = x.astype(np.float32)
  _, info = _gm({"w": x}, tol=1e-7, max_iters=500, return_info=True)
  assert int(info.gram_iters) > 0
  assert int(info.num_iters) - int(info.gram_iters) <= gram_switch_iters(64) + 3
  ref = helpers.np_geometric_median(x)
  got = _gm({"w": x}, tol=1e-8, max_iters=2000)["w"]
  np.testing.assert_allclose(got, ref, atol=1e-4)


def test_objective_criterion():
  x = np.random.default_rng(9).normal(size=(20, 5)).astype(np.float32)
  _, info = _gm({"w": x}, criterion="objective", tol=1e-6,
                return_info=True)
  assert float(info.error) <= 1e-6


def test_zero_erasure_weight_and_all_weights_path():
  x = np.random.default_rng(10).normal(size=(7, 3)).astype(np.float32)
  w = jnp.array([1, 1, 1, 0, 0, 1, 1], jnp.float32)
  got = _gm({"w": x}, weights=w, tol=1e-9, max_iters=3000)
  np.testing.assert_allclose(got["w"], helpers.np_geometric_median(x[[0, 1, 2, 5, 6]]),
                             atol=2e-5)


@pytest.mark.parametrize("kwargs,name", [
    ({"max_iters": 0}, "max_iters"),
    ({"max_iters": 2.5}, "max_iters"),
    ({"tol": -1.0}, "tol"),
    ({"nu": -1.0}, "nu"),
    ({"method": "svd"}, "method"),
    ({"criterion": "loss"}, "criterion"),
    ({"weights": jnp.ones(3)}, "weights"),
])
def test_bad_hyperparameters(kwargs, name):
  with pytest.raises(ValueError, match=name):
    geometric_median({"w": jnp.ones((4, 2))}, **kwargs)


def test_mismatched_leading_axes():
  with pytest.raises(ValueError, match="leading"):
    geometric_median({"a": jnp.ones((4, 2)), "b": jnp.ones((5, 2))})


def test_worker_norms_overflow_safe():
  x = np.array([[3e38, 3e38], [1e30, -1e30], [3.0, 4.0], [np.nan, 0.0]],
               np.float32)
  norms = np.asarray(btree.worker_norms({"w": x}))
  assert norms[0] == np.inf  # true norm 4.2e38 exceeds float32
  np.testing.assert_allclose(norms[1], np.sqrt(2) * 1e30, rtol=1e-6)
  np.testing.assert_allclose(norms[2], 5.0, rtol=1e-6)
  assert norms[3] == np.inf


@pytest.mark.parametrize("rows,want", [
    # More than half coincide, the rest huge: the coincident point.
    ([[1., 2.], [1., 2.], [1., 2.], [1e30, 1e30], [-1e30, 5.]], [1., 2.]),
    ([[0., 0.], [0., 0.], [0., 0.], [1e30, 1e30], [3e38, -3e38]], [0., 0.]),
    ([[1., 2.], [1., 2.], [1., 2.], [1.5, 2.5], [-1e30, 5.]], [1., 2.]),
])
def test_coincident_majority_gives_that_point(rows, want):
  got = _gm({"w": np.asarray(rows, np.float32)})["w"]
  np.testing.assert_allclose(got, want, atol=1e-6)


# ---------------------------------------------------------------------------
# The default (objective) stopping rule and the in-place path for benign rows.

_default = jax.jit(geometric_median, static_argnames=("tol", "return_info"))


def _np_weiszfeld_objective(x, z, tol, eps=1e-12, max_iters=1000):
  """Float64 smoothed Weiszfeld from z, stopping when |df| <= tol f."""
  x = np.asarray(x, np.float64)
  d = np.linalg.norm(x - z, axis=1)
  f = d.sum()
  for it in range(1, max_iters + 1):
    w = 1.0 / np.maximum(d, eps)
    z = (w / w.sum()) @ x
    d = np.linalg.norm(x - z, axis=1)
    f, prev = d.sum(), f
    if abs(prev - f) <= tol * f:
      return z, it, f
  return z, max_iters, f


def test_default_rule_is_the_objective_rule_of_the_peers():
  """Same start, same rule: the same iteration count and objective as a
  float64 Weiszfeld that stops at |f_t - f_t+1| <= 1e-6 f_t+1."""
  rng = np.random.default_rng(11)
  centers = 3.0 * rng.normal(size=(3, 40))
  x = (centers[rng.integers(0, 3, 30)] + 0.3 * rng.normal(size=(30, 40))
       + 5.0).astype(np.float32)
  start = x.mean(axis=0)
  got, info = _default({"w": x}, init={"w": start}, return_info=True)
  z, iters, f = _np_weiszfeld_objective(x, start.astype(np.float64), 1e-6)
  assert abs(int(info.num_iters) - iters) <= 1, (int(info.num_iters), iters)
  f_got = np.linalg.norm(x.astype(np.float64) - np.asarray(got["w"]),
                         axis=1).sum()
  assert abs(f_got - f) <= 1e-6 * f
  assert float(info.error) <= 1e-6


def test_default_rule_with_far_rows_still_converges():
  """Rows at 1e6 and 1e30 would dominate the objective; they are left out of
  the stopping rule, so the default still gets close to the exact median
  (the objective rule pins the point to about sqrt(tol) of the spread)."""
  rng = np.random.default_rng(12)
  honest = rng.normal(size=(11, 8)).astype(np.float32) + 2.0
  spread = np.max(np.linalg.norm(honest - honest.mean(0), axis=1))
  for bad in [1e6, 1e30]:
    byz = np.full((10, 8), bad, np.float32)
    byz[::2] *= -1
    x = np.concatenate([byz, honest])
    got, info = _default({"w": x}, return_info=True)
    assert bool(info.converged)
    err = np.linalg.norm(np.asarray(got["w"]) - helpers.np_geometric_median(x))
    assert err <= 1e-2 * spread, (bad, err / spread)


@pytest.mark.slow  # end-to-end or many compilations; run with -m slow
def test_in_place_and_standardized_paths_agree():
  """Benign rows use the in-place path; one erased row sends the same rows
  through the standardized path, which must give the same median."""
  x = np.random.default_rng(13).normal(size=(12, 9)).astype(np.float32) + 7.0
  erased = np.concatenate([x, np.full((1, 9), np.nan, np.float32)])
  for method in METHODS:
    a = _gm({"w": x}, method=method, tol=1e-8, max_iters=2000)["w"]
    b = _gm({"w": erased}, method=method, tol=1e-8, max_iters=2000)["w"]
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_blockwise_gram_and_weighted_sum_match_numpy():
  rng = np.random.default_rng(14)
  tree = {"a": rng.normal(size=(5, 3, 7)).astype(np.float32) + 4.0,
          "b": rng.normal(size=(5, 10)).astype(np.float32)}
  flat = np.concatenate([tree["a"].reshape(5, -1), tree["b"]], axis=1)
  flat = flat.astype(np.float64)
  # chunk=4: leaf "a" has 5 full blocks and a remainder, "b" 2 and one.
  gram, mabs = btree.chunked_gram(tree, 0.5, chunk=4)
  sq = np.diag(flat @ flat.T)[:, None] + np.diag(flat @ flat.T)[None] - 2 * flat @ flat.T
  np.testing.assert_allclose(btree.gram_sq_dists(gram), 0.25 * sq, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(mabs, np.abs(flat).max(axis=1), rtol=1e-6)
  w = rng.uniform(size=5).astype(np.float32)
  center = {"a": tree["a"][2], "b": tree["b"][4]}
  got = btree.weighted_sum_centered(jnp.asarray(w), tree, center, chunk=4)
  c = np.concatenate([center["a"].ravel(), center["b"]])
  want = w @ (flat - c)
  np.testing.assert_allclose(
      np.concatenate([np.asarray(got["a"]).ravel(), got["b"]]), want,
      rtol=1e-5, atol=1e-5)
  point = {"a": tree["a"][0] - center["a"], "b": tree["b"][1] - center["b"]}
  p = np.concatenate([point["a"].ravel(), point["b"]])
  np.testing.assert_allclose(
      btree.sq_dists_centered(tree, center, point, 0.5, chunk=4),
      0.25 * np.sum((flat - c - p) ** 2, axis=1), rtol=1e-5, atol=1e-5)
