"""Tests for DnC, divide-and-conquer (Shejwalkar & Houmansadr 2021)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import byzjax
from byzjax.aggregators import dnc
from tests import helpers

R, D, F = 9, 12, 2


def _np_dnc(x, f, idx_list, c=1.0):
  """Algorithm 2 in float64 with an SVD of the centred sub-matrix; erased
  rows score inf. ``idx_list``: the coordinates of each iteration."""
  x = np.asarray(x, np.float64)
  r = len(x)
  live = np.all(np.isfinite(x), axis=1)
  good = live.copy()
  for idx in idx_list:
    sub = np.where(live[:, None], x, 0.0)[:, idx]
    y = sub - sub[live].mean(axis=0)
    _, _, vt = np.linalg.svd(y[live], full_matrices=False)
    s = np.where(live, (y @ vt[0]) ** 2, np.inf)
    keep = np.argsort(s, kind="stable")[:r - int(np.floor(c * f))]
    g = np.zeros(r, bool)
    g[keep] = True
    good &= g
  return x[good].mean(axis=0), good


def _coords(key, iters, d, b):
  """The documented draw: choice(split(key, iters)[t], d, (b,), False)."""
  return [np.asarray(jax.random.choice(k, d, (b,), replace=False))
          for k in jax.random.split(key, iters)]


def _data(seed, r=R, d=D):
  return np.random.default_rng(seed).normal(size=(r, d)).astype(np.float32)


@pytest.mark.slow  # one compilation (default-suite budget)
def test_matches_oracle_with_byzantine_rows():
  # One compilation: 3 iterations of 5 of the 12 coordinates, an erased row,
  # a far row, a shifted row; f = 2, filter_frac = 1.5 (3 removed). The far
  # row is at 1e4, not 1e30: with a row at 1e30 the honest scores differ by
  # O(1) on top of ~1e58 and the float64 oracle cannot rank them (1e30 is
  # in test_byzantine_rows_up_to_breakdown, where the ranking is clear).
  x = _data(0)
  x[3] = np.nan
  x[6] = 1e4
  x[0] += 3.0
  key = jax.random.key(7)
  got, info = dnc(helpers.split_leaves(x), num_byzantine=F, key=key,
                  num_iters=3, sub_dim=5, filter_frac=1.5, return_info=True)
  got = helpers.join_leaves(got)
  want, good = _np_dnc(x, F, _coords(key, 3, D, 5), c=1.5)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(info.selected, good)
  assert not info.selected[3] and not info.selected[6]
  assert info.scores.shape == (3, R) and np.all(np.isinf(info.scores[:, 3]))


@pytest.mark.slow
@pytest.mark.parametrize("sub_dim", [4, 100])
def test_matches_oracle_clean(sub_dim):
  x = _data(1)
  key = jax.random.key(1)
  got, info = jax.jit(lambda t, k: dnc(t, num_byzantine=F, key=k,
                                       num_iters=2, sub_dim=sub_dim,
                                       return_info=True))({"w": x}, key)
  idx = (_coords(key, 2, D, sub_dim) if sub_dim < D
         else [np.arange(D)] * 2)
  want, good = _np_dnc(x, F, idx)
  np.testing.assert_allclose(got["w"], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(info.selected, good)


@pytest.mark.slow
def test_permutation_invariant_and_translation_equivariant():
  x = _data(2)
  key = jax.random.key(2)
  kw = dict(num_byzantine=F, key=key, num_iters=2, sub_dim=6)
  base = dnc({"w": x}, **kw)["w"]
  perm = np.random.default_rng(0).permutation(R)
  np.testing.assert_allclose(dnc({"w": x[perm]}, **kw)["w"], base,
                             rtol=1e-5, atol=1e-6)
  shift = np.linspace(-3.0, 7.0, D).astype(np.float32)
  np.testing.assert_allclose(dnc({"w": x + shift}, **kw)["w"], base + shift,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_far_cluster_is_excluded_and_keys_differ():
  x = _data(3)
  x[:F] = 20.0 + 0.01 * x[:F]
  for seed in range(3):
    out, info = dnc({"w": x}, num_byzantine=F, key=jax.random.key(seed),
                    sub_dim=4, return_info=True)
    np.testing.assert_array_equal(info.selected, np.arange(R) >= F)
    np.testing.assert_allclose(out["w"], x[F:].mean(0), rtol=1e-5,
                               atol=1e-6)
  a = _coords(jax.random.key(0), 1, D, 4)[0]
  b = _coords(jax.random.key(1), 1, D, 4)[0]
  assert set(a.tolist()) != set(b.tolist())


@pytest.mark.slow
@pytest.mark.parametrize("bad", [np.nan, np.inf, -1e30, 3e38, -3e38])
def test_byzantine_rows_up_to_breakdown(bad):
  x = _data(4)
  x[[1, 5]] = bad
  x[5, 1:] = 0.5  # partly bad
  out, info = dnc({"w": x}, num_byzantine=F, key=jax.random.key(0),
                  return_info=True)
  assert np.all(np.isfinite(out["w"]))
  np.testing.assert_array_equal(info.selected, ~np.isin(np.arange(R), [1, 5]))
  np.testing.assert_allclose(out["w"], np.delete(x, [1, 5], 0).mean(0),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_chain_draws_fresh_coordinates_each_step():
  x = _data(5)
  key = jax.random.key(3)
  tx = byzjax.aggregate(dnc, num_byzantine=F, key=key, sub_dim=3,
                        key_per_step=True, num_workers=R)
  params = {"w": jnp.zeros(D)}
  state = tx.init(params)
  outs = []
  step = jax.jit(tx.update)
  for _ in range(2):
    out, state = step({"w": x}, state, params)
    outs.append(out["w"])
  k1 = jax.random.split(key)[0]
  np.testing.assert_allclose(
      outs[0], dnc({"w": x}, num_byzantine=F, key=jax.random.split(key)[1],
                   sub_dim=3)["w"], rtol=1e-6)
  np.testing.assert_allclose(
      outs[1], dnc({"w": x}, num_byzantine=F,
                   key=jax.random.split(k1)[1], sub_dim=3)["w"], rtol=1e-6)
  chained = optax.chain(byzjax.aggregate(dnc, num_byzantine=F, key=key,
                                         sub_dim=3, key_per_step=True),
                        optax.sgd(1.0))
  upd, _ = chained.update({"w": x}, chained.init(params), params)
  np.testing.assert_allclose(upd["w"], -outs[0], rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"num_byzantine": 5, "key": jax.random.key(0)}, "num_byzantine"),
    ({"num_byzantine": 1}, "key"),
    ({"num_byzantine": 1, "key": jax.random.key(0), "num_iters": 0},
     "num_iters"),
    ({"num_byzantine": 1, "key": jax.random.key(0), "sub_dim": 0},
     "sub_dim"),
    ({"num_byzantine": 1, "key": jax.random.key(0), "filter_frac": 0.0},
     "filter_frac"),
    ({"num_byzantine": 4, "key": jax.random.key(0), "filter_frac": 3.0},
     "filter_frac")])
def test_bad_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    dnc({"w": jnp.zeros((R, 2))}, **kwargs)


def test_key_per_step_needs_a_key():
  with pytest.raises(ValueError, match="key_per_step"):
    byzjax.aggregate(dnc, num_byzantine=1, key_per_step=True)
  with pytest.raises(ValueError, match="key_per_step"):
    byzjax.aggregate(byzjax.aggregators.mean, key=jax.random.key(0),
                     key_per_step=True)
