"""Tests for Meamed (Xie et al. 2018) and MoNNA (Farhadkhani et al. 2023)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import byzjax
from byzjax.aggregators import meamed
from byzjax.aggregators import monna
from tests import helpers

R, D = 9, 7


def _np_meamed(x, f):
  """Per coordinate: mean of the R - f live values closest to the median
  (ties in distance: the lower value first)."""
  x = np.asarray(x, np.float64)
  live = x[np.all(np.isfinite(x), axis=1)]
  k = min(len(x) - f, len(live))
  out = np.zeros(x.shape[1])
  for c in range(x.shape[1]):
    v = live[:, c]
    m = np.median(v)
    order = np.lexsort((v, np.abs(v - m)))
    out[c] = v[order[:k]].mean()
  return out


def _np_monna(x, f, t):
  x = np.asarray(x, np.float64)
  live = np.all(np.isfinite(x), axis=1)
  if not live[t]:
    return np.zeros(x.shape[1])
  k = min(len(x) - f, int(live.sum()))
  cands = [j for j in np.flatnonzero(live) if j != t]
  dist = [np.linalg.norm(x[j] - x[t]) for j in cands]
  chosen = [t] + [cands[i] for i in np.argsort(dist, kind="stable")[:k - 1]]
  return x[chosen].mean(axis=0)


def _data(seed, r=R, d=D):
  return np.random.default_rng(seed).normal(size=(r, d)).astype(np.float32)


CALLS = {
    "meamed": (lambda t, f, **kw: meamed(t, num_byzantine=f, **kw),
               lambda x, f: _np_meamed(x, f)),
    "monna": (lambda t, f, **kw: monna(t, num_byzantine=f, trusted_index=2,
                                       **kw),
              lambda x, f: _np_monna(x, f, 2)),
}


def _slow(*args):
  return pytest.param(*args, marks=pytest.mark.slow)


@pytest.mark.parametrize("name,f,jit", [
    ("meamed", 3, False), ("monna", 3, True), _slow("meamed", 3, True),
    _slow("monna", 3, False), _slow("meamed", 0, False),
    _slow("monna", 0, False)])
def test_matches_numpy_oracle(name, f, jit):
  fn, oracle = CALLS[name]
  x = _data(f)
  call = lambda t: fn(t, f)
  got = (jax.jit(call) if jit else call)(helpers.split_leaves(x))
  np.testing.assert_allclose(helpers.join_leaves(got), oracle(x, f),
                             rtol=1e-5, atol=1e-6)


def test_meamed_even_count_and_ties():
  # Median of [0, 1, 2, 3] is 1.5: 1 and 2 tie, then 0 and 3 tie (the lower
  # value wins): R - f = 3 values {1, 2, 0}.
  x = np.array([[3.], [0.], [2.], [1.], [np.nan]], np.float32)
  got = meamed({"w": x}, num_byzantine=2)["w"]
  np.testing.assert_allclose(got, [1.0])
  np.testing.assert_allclose(got, _np_meamed(x, 2))


def test_meamed_permutation_invariant():
  x = _data(4)
  perm = np.random.default_rng(0).permutation(R)
  np.testing.assert_allclose(meamed({"w": x[perm]}, num_byzantine=3)["w"],
                             meamed({"w": x}, num_byzantine=3)["w"],
                             rtol=1e-6)


def test_monna_permutation_invariant_with_the_trusted_row():
  x = _data(5)
  perm = np.random.default_rng(1).permutation(R)
  t_new = int(np.flatnonzero(perm == 2)[0])  # where row 2 moved to
  a = monna({"w": x}, num_byzantine=3, trusted_index=2)["w"]
  b = monna({"w": x[perm]}, num_byzantine=3, trusted_index=t_new)["w"]
  np.testing.assert_allclose(b, a, rtol=1e-6)


@pytest.mark.parametrize("name,bad", [
    ("meamed", np.nan), ("meamed", -3e38), ("monna", np.inf),
    ("monna", 3e38), _slow("meamed", np.inf), _slow("meamed", 1e30),
    _slow("meamed", 3e38), _slow("monna", np.nan), _slow("monna", 1e30),
    _slow("monna", -3e38)])
def test_byzantine_rows_up_to_breakdown(name, bad):
  fn, oracle = CALLS[name]
  x = _data(6)
  f = 4
  bad_rows = [0, 1, 3, 4]  # row 2 (MoNNA's trusted worker) stays honest
  x[bad_rows] = bad
  x[4, 1:] = 0.5  # partly bad
  got, info = fn({"w": x}, f, return_info=True)
  got = np.asarray(got["w"])
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, oracle(x, f), rtol=1e-5, atol=1e-6)
  honest = np.delete(x, bad_rows, axis=0)
  assert np.all(got <= honest.max(0) + 1e-6)
  assert np.all(got >= honest.min(0) - 1e-6)


def test_monna_info_and_erased_trusted_worker():
  x = _data(7)
  out, info = monna({"w": x}, num_byzantine=3, trusted_index=0,
                    return_info=True)
  assert bool(info.selected[0]) and int(info.selected.sum()) == R - 3
  np.testing.assert_allclose(info.dists,
                             np.linalg.norm(x - x[0], axis=1), rtol=1e-5,
                             atol=1e-6)
  x[0, 3] = np.nan
  out, info = monna({"w": x}, num_byzantine=3, return_info=True)
  np.testing.assert_array_equal(out["w"], np.zeros(D))
  assert not bool(info.trusted_live) and not np.any(info.selected)


def test_meamed_info():
  x = _data(8)
  x[1] = np.inf
  _, info = meamed({"w": x}, num_byzantine=3, return_info=True)
  assert int(info.num_live) == R - 1 and int(info.num_averaged) == R - 3


@pytest.mark.parametrize("kwargs", [
    {"num_byzantine": 5}, {"num_byzantine": -1}, {"num_byzantine": 1.0},
    {"num_byzantine": 1, "trusted_index": 9},
    {"num_byzantine": 1, "trusted_index": -1}])
def test_bad_hyperparameters(kwargs):
  x = {"w": _data(0)}
  name = "trusted_index" if "trusted_index" in kwargs else "num_byzantine"
  with pytest.raises(ValueError, match=name):
    monna(x, **kwargs)
  if name == "num_byzantine":
    with pytest.raises(ValueError, match=name):
      meamed(x, **kwargs)


@pytest.mark.parametrize("name", ["monna", _slow("meamed")])
def test_vmap_and_aggregate_transform(name):
  fn, oracle = CALLS[name]
  xs = np.stack([_data(9), _data(10)])
  got = jax.vmap(lambda t: fn(t, 2))({"w": xs})["w"]
  for b in range(2):
    np.testing.assert_allclose(got[b], oracle(xs[b], 2), rtol=1e-5,
                               atol=1e-6)
  agg = {"meamed": meamed, "monna": monna}[name]
  tx = optax.chain(byzjax.nnm(2), byzjax.aggregate(agg, num_byzantine=2),
                   optax.sgd(1.0))
  params = {"w": jnp.zeros(D)}
  out, _ = jax.jit(tx.update)({"w": xs[0]}, tx.init(params), params)
  from byzjax.transforms.nnm import nearest_neighbor_mixing
  mixed = nearest_neighbor_mixing({"w": xs[0]}, num_byzantine=2)["w"]
  mixed = np.asarray(mixed)
  expected = (_np_meamed(mixed, 2) if name == "meamed"
              else _np_monna(mixed, 2, 0))  # aggregate: trusted_index=0
  np.testing.assert_allclose(out["w"], -expected,
                             rtol=1e-5, atol=1e-6)
