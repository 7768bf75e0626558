"""Tests for SignGuard (Xu et al. 2022)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import byzjax
from byzjax.aggregators import signguard
from tests import helpers

R, D = 10, 30


def _np_signguard(x, idx, lower=0.1, upper=3.0, quantile=0.3, iters=50):
  """The three steps with loops, in float64 (same bandwidth estimate and
  flat-kernel mean shift as documented)."""
  x = np.asarray(x, np.float64)
  r = len(x)
  live = np.all(np.isfinite(x), axis=1)
  xs = np.where(live[:, None], x, 0.0)
  norms = np.linalg.norm(xs, axis=1)
  live_idx = np.flatnonzero(live)
  order = sorted(live_idx, key=lambda i: (norms[i], i))
  m = norms[order[(len(order) - 1) // 2]]
  norm_ok = live & (norms / m >= lower) & (norms / m <= upper)
  sub = xs[:, idx]
  feats = np.stack([(sub > 0).mean(1), (sub == 0).mean(1), (sub < 0).mean(1)],
                   axis=1)
  n = live.sum()
  k = min(max(1, int(np.floor(quantile * n))), max(n - 1, 1))
  kth = []
  for i in live_idx:
    d = sorted(np.linalg.norm(feats[j] - feats[i]) for j in live_idx)
    kth.append(d[k])
  h = max(np.mean(kth), 1e-6)
  modes = feats.copy()
  for _ in range(iters):
    new = modes.copy()
    for i in range(r):
      near = [j for j in live_idx if np.linalg.norm(modes[i] - feats[j]) <= h]
      if near:
        new[i] = feats[near].mean(0)
    modes = new
  same = np.array([[live[i] and live[j]
                    and np.linalg.norm(modes[i] - modes[j]) <= h / 2
                    for j in range(r)] for i in range(r)])
  cluster_ok = same[int(np.argmax(same.sum(1)))] & live
  sel = norm_ok & cluster_ok
  if not sel.any():
    return np.zeros(x.shape[1]), sel
  clipped = xs[sel] * np.minimum(1.0, m / norms[sel])[:, None]
  return clipped.mean(0), sel


def _attacked(seed):
  """Honest rows: positive drift plus noise (mostly positive signs); rows
  0-1 flip the sign (sign statistics reversed), row 2 is 50x longer."""
  rng = np.random.default_rng(seed)
  x = 1.0 + 0.5 * rng.normal(size=(R, D))
  x[:2] = -x[:2]
  x[2] *= 50.0
  return x.astype(np.float32)


@pytest.mark.slow  # one compilation (default-suite budget)
def test_matches_oracle_and_filters_attackers():
  x = _attacked(0)
  x[5] = np.nan
  x[7] = 3e38
  key = jax.random.key(0)
  got, info = signguard(helpers.split_leaves(x), key=key, coord_fraction=0.5,
                        return_info=True)
  got = helpers.join_leaves(got)
  idx = np.asarray(jax.random.choice(key, D, (15,), replace=False))
  want, sel = _np_signguard(x, idx)
  np.testing.assert_array_equal(info.selected, sel)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert not np.any(np.asarray(info.selected)[[0, 1, 2, 5, 7]])
  assert np.all(np.asarray(info.selected)[[3, 4, 6, 8, 9]])


@pytest.mark.slow
def test_permutation_invariant_and_scale_equivariant():
  x = _attacked(1)
  key = jax.random.key(1)
  base = signguard({"w": x}, key=key)["w"]
  perm = np.random.default_rng(0).permutation(R)
  np.testing.assert_allclose(signguard({"w": x[perm]}, key=key)["w"], base,
                             rtol=1e-5, atol=1e-6)
  # Positive scaling keeps signs and norm ratios: the output scales.
  np.testing.assert_allclose(signguard({"w": 4.0 * x}, key=key)["w"],
                             4.0 * base, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("bad", [np.inf, -1e30, 3e38, -3e38])
def test_byzantine_rows(bad):
  x = 1.0 + 0.5 * np.random.default_rng(2).normal(size=(R, D))
  x = x.astype(np.float32)
  x[[1, 4]] = bad
  out, info = signguard({"w": x}, key=jax.random.key(2), return_info=True)
  assert np.all(np.isfinite(out["w"]))
  assert not info.selected[1] and not info.selected[4]
  honest = np.delete(x, [1, 4], 0)
  assert np.all(out["w"] <= honest.max(0) + 1e-5)
  assert np.all(out["w"] >= honest.min(0) - 1e-5)


@pytest.mark.slow
def test_in_a_chain_with_a_fresh_key_per_step():
  x = _attacked(3)
  key = jax.random.key(3)
  tx = optax.chain(byzjax.aggregate(signguard, key=key, key_per_step=True,
                                    num_workers=R), optax.sgd(1.0))
  params = {"w": jnp.zeros(D)}
  upd, state = tx.update({"w": x}, tx.init(params), params)
  want = signguard({"w": x}, key=jax.random.split(key)[1])["w"]
  np.testing.assert_allclose(upd["w"], -want, rtol=1e-6)
  assert not np.any(np.asarray(state[0].info.selected)[:3])


@pytest.mark.parametrize("kwargs,match", [
    ({}, "key"),
    ({"key": jax.random.key(0), "lower": 2.0}, "lower"),
    ({"key": jax.random.key(0), "upper": 0.5}, "upper"),
    ({"key": jax.random.key(0), "coord_fraction": 0.0}, "coord_fraction"),
    ({"key": jax.random.key(0), "quantile": 1.5}, "quantile"),
    ({"key": jax.random.key(0), "bandwidth": -1.0}, "bandwidth"),
    ({"key": jax.random.key(0), "mean_shift_iters": 0}, "mean_shift_iters")])
def test_bad_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    signguard({"w": jnp.zeros((R, 3))}, **kwargs)
