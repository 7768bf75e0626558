"""Tests for CAF, the covariance-bound agnostic filter (Allouah et al. 2025)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import byzjax
from byzjax.aggregators import caf
from tests import helpers

R, D, F = 10, 6, 3


def _np_caf(x, f):
  """The statement, in float64 with a full d x d eigendecomposition.

  Returns ``(mean, weights)`` of the round with the smallest top eigenvalue,
  and the smallest gap between the top two eigenvalues seen (to rule out
  near-degenerate directions, where a power iteration may legitimately
  differ).
  """
  x = np.asarray(x, np.float64)
  r = len(x)
  live = np.all(np.isfinite(x), axis=1)
  x = np.where(live[:, None], x, 0.0)
  c = live.astype(np.float64)
  best = (np.inf, x[live].mean(axis=0), c.copy())
  gap = np.inf
  while c.sum() > r - 2 * f:
    mu = (c[:, None] * x).sum(0) / c.sum()
    y = x - mu
    cov = (c[:, None] * y).T @ y / c.sum()
    w, v = np.linalg.eigh(cov)
    gap = min(gap, (w[-1] - w[-2]) / w[-1])
    if w[-1] < best[0]:
      best = (w[-1], mu, c.copy())
    tau = (y @ v[:, -1]) ** 2
    tau_max = tau[c > 0].max()
    c = np.where(tau >= tau_max * (1 - 1e-12), 0.0, c * (1 - tau / tau_max))
  return best[1], best[2] / best[2].sum(), best[0], gap


def _data(seed, r=R, d=D):
  return np.random.default_rng(seed).normal(size=(r, d)).astype(np.float32)


@pytest.mark.slow  # one compilation (default-suite budget)
def test_matches_oracle_with_byzantine_rows():
  # One compilation: an erased row, a row at -3e38, an inlier-ish attacker
  # and seven honest rows; f = 3.
  x = _data(0)
  x[1] = np.inf
  x[4] = -3e38
  x[7] += 4.0
  got, info = caf(helpers.split_leaves(x), num_byzantine=F, return_info=True)
  got = helpers.join_leaves(got)
  want, weights, lam, gap = _np_caf(x, F)
  assert gap > 1e-2
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(info.weights, weights, atol=1e-5)
  np.testing.assert_allclose(info.max_eigval, lam, rtol=1e-4)
  assert info.weights[1] == 0 and info.weights[4] == 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("jit", [False, True])
def test_matches_oracle_clean(seed, jit):
  x = _data(seed)
  x[:2] += 3.0
  fn = lambda t: caf(t, num_byzantine=F, return_info=True)
  got, info = (jax.jit(fn) if jit else fn)({"w": x})
  want, weights, lam, gap = _np_caf(x, F)
  assert gap > 1e-2
  np.testing.assert_allclose(got["w"], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(info.weights, weights, atol=1e-5)


@pytest.mark.slow
def test_permutation_invariant_and_translation_equivariant():
  x = _data(4)
  base = caf({"w": x}, num_byzantine=F)["w"]
  perm = np.random.default_rng(0).permutation(R)
  np.testing.assert_allclose(caf({"w": x[perm]}, num_byzantine=F)["w"], base,
                             rtol=1e-4, atol=1e-5)
  shift = np.linspace(-3.0, 7.0, D).astype(np.float32)
  np.testing.assert_allclose(caf({"w": x + shift}, num_byzantine=F)["w"],
                             base + shift, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_far_cluster_gets_zero_weight():
  x = _data(5)
  x[:F] = 25.0 + 0.01 * x[:F]
  out, info = caf({"w": x}, num_byzantine=F, return_info=True)
  np.testing.assert_array_equal(info.weights[:F], 0.0)
  honest = x[F:].mean(axis=0)
  # The soft weights keep the result within the honest spread of their mean.
  assert np.linalg.norm(out["w"] - honest) < 0.5
  assert np.linalg.norm(x[:F].mean(0) - honest) > 50


@pytest.mark.slow
@pytest.mark.parametrize("bad", [np.nan, -np.inf, 1e30, -1e30, 3e38])
def test_byzantine_rows_up_to_breakdown(bad):
  x = _data(6)
  x[[0, 3, 8]] = bad
  x[3, 1:] = 0.5  # partly bad
  out, info = caf({"w": x}, num_byzantine=F, return_info=True)
  assert np.all(np.isfinite(out["w"]))
  np.testing.assert_array_equal(np.asarray(info.weights)[[0, 3, 8]], 0.0)
  honest = np.delete(x, [0, 3, 8], 0)
  assert np.all(out["w"] <= honest.max(0) + 1e-5)
  assert np.all(out["w"] >= honest.min(0) - 1e-5)


@pytest.mark.slow
def test_identical_workers_and_f_zero():
  x = np.tile(np.float32([[1.5, -2.0, 3.25]]), (5, 1))
  out, info = caf({"w": x}, num_byzantine=2, return_info=True)
  np.testing.assert_array_equal(out["w"], x[0])
  y = _data(7)
  np.testing.assert_allclose(caf({"w": y}, num_byzantine=0)["w"], y.mean(0),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_vmap_and_chain():
  xs = np.stack([_data(8), _data(9)])
  fn = lambda t: caf(t, num_byzantine=2)
  batched = jax.vmap(fn)({"w": xs})["w"]
  for b in range(2):
    np.testing.assert_allclose(batched[b], fn({"w": xs[b]})["w"], rtol=1e-5,
                               atol=1e-6)
  tx = optax.chain(byzjax.aggregate(caf, num_byzantine=2, num_workers=R),
                   optax.sgd(1.0))
  params = {"w": jnp.zeros(D)}
  upd, state = tx.update({"w": xs[0]}, tx.init(params), params)
  np.testing.assert_allclose(upd["w"], -fn({"w": xs[0]})["w"], rtol=1e-5)
  assert state[0].info.weights.shape == (R,)


@pytest.mark.parametrize("kwargs,match", [
    ({"num_byzantine": 5}, "num_byzantine"),
    ({"num_byzantine": 1.5}, "num_byzantine"),
    ({"num_byzantine": 1, "power_iters": 0}, "power_iters"),
    ({"num_byzantine": 1, "power_tol": -1.0}, "power_tol")])
def test_bad_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    caf({"w": jnp.zeros((R, 2))}, **kwargs)
