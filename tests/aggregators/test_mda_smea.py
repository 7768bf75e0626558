"""Tests for MDA (minimum-diameter averaging) and SMEA (smallest maximum
eigenvalue averaging), both exact by enumeration of the removed sets."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import byzjax
from byzjax.aggregators import mda
from byzjax.aggregators import smea
from byzjax.aggregators import TooManySubsetsError
from tests import helpers

R, D, F = 9, 6, 3


def _np_subset_rule(x, f, score):
  """Brute force over the removed sets T (|T| = f, lexicographic order):
  the kept set must contain no erased row; the first strict minimum of
  ``score(rows)`` wins. More than f erased rows: the mean of the live rows."""
  x = np.asarray(x, np.float64)
  r = len(x)
  live = np.all(np.isfinite(x), axis=1)
  best = None
  for removed in itertools.combinations(range(r), f):
    kept = [i for i in range(r) if i not in removed]
    if not live[kept].all():
      continue
    s = score(x[kept])
    if best is None or s < best[0]:
      best = (s, kept)
  if best is None:
    kept = list(np.flatnonzero(live))
    return x[kept].mean(axis=0), kept
  return x[best[1]].mean(axis=0), best[1]


def _diameter(rows):
  return max([np.linalg.norm(a - b) for a in rows for b in rows] + [0.0])


def _max_eig(rows):
  c = rows - rows.mean(axis=0)
  return np.linalg.eigvalsh(c.T @ c / len(rows))[-1]


ORACLES = {"mda": lambda x, f: _np_subset_rule(x, f, _diameter),
           "smea": lambda x, f: _np_subset_rule(x, f, _max_eig)}
RULES = {"mda": mda, "smea": smea}


def _data(seed, r=R, d=D):
  return np.random.default_rng(seed).normal(size=(r, d)).astype(np.float32)


@pytest.mark.parametrize("name", [
    "mda", pytest.param("smea", marks=pytest.mark.slow)])
def test_matches_oracle_with_byzantine_rows(name):
  # One compilation per rule: an erased row, a row at 1e30 and seven honest
  # rows with f = 3, so the rule must also choose which honest row to drop.
  x = _data(0)
  x[2] = np.nan
  x[5, :] = 1e30
  x[5, ::2] = -1e30
  got, info = RULES[name](helpers.split_leaves(x), num_byzantine=F,
                          return_info=True)
  got = helpers.join_leaves(got)
  want, kept = ORACLES[name](x, F)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.flatnonzero(info.selected), kept)
  assert not info.selected[2] and not info.selected[5]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mda", "smea"])
@pytest.mark.parametrize("jit", [False, True])
def test_matches_oracle_clean(name, jit):
  x = _data(1)
  fn = lambda t: RULES[name](t, num_byzantine=F, return_info=True)
  got, info = (jax.jit(fn) if jit else fn)({"w": x})
  want, kept = ORACLES[name](x, F)
  np.testing.assert_allclose(got["w"], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.flatnonzero(info.selected), kept)
  kept_rows = x[kept].astype(np.float64)
  if name == "mda":
    np.testing.assert_allclose(info.diameter, _diameter(kept_rows), rtol=1e-4)
  else:
    np.testing.assert_allclose(info.max_eigval, _max_eig(kept_rows),
                               rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mda", "smea"])
def test_permutation_invariant_and_translation_equivariant(name):
  x = _data(2)
  fn = RULES[name]
  base = fn({"w": x}, num_byzantine=F)["w"]
  perm = np.random.default_rng(0).permutation(R)
  np.testing.assert_allclose(fn({"w": x[perm]}, num_byzantine=F)["w"], base,
                             rtol=1e-5, atol=1e-6)
  shift = np.linspace(-3.0, 7.0, D).astype(np.float32)
  np.testing.assert_allclose(fn({"w": x + shift}, num_byzantine=F)["w"],
                             base + shift, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mda", "smea"])
def test_far_cluster_is_excluded(name):
  # f Byzantine rows in a tight cluster far away (a coordinated attack): the
  # honest rows are the only set of R - f with a small diameter/eigenvalue.
  x = _data(3)
  x[:F] = 30.0 + 0.01 * x[:F]
  out, info = RULES[name]({"w": x}, num_byzantine=F, return_info=True)
  np.testing.assert_array_equal(info.selected, np.arange(R) >= F)
  np.testing.assert_allclose(out["w"], x[F:].mean(axis=0), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mda", "smea"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38,
                                 -3e38])
def test_byzantine_rows_up_to_breakdown(name, bad):
  x = _data(4)
  x[[0, 4, 7]] = bad
  x[4, 1:] = 0.5  # partly bad
  out, info = RULES[name]({"w": x}, num_byzantine=F, return_info=True)
  assert np.all(np.isfinite(out["w"]))
  np.testing.assert_array_equal(info.selected,
                                ~np.isin(np.arange(R), [0, 4, 7]))
  np.testing.assert_allclose(out["w"], np.delete(x, [0, 4, 7], 0).mean(0),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mda", "smea"])
def test_more_erasures_than_f_average_the_live_rows(name):
  x = _data(5)
  x[[1, 2, 3, 6]] = np.nan
  out, info = RULES[name]({"w": x}, num_byzantine=F, return_info=True)
  np.testing.assert_allclose(out["w"], ORACLES[name](x, F)[0], rtol=1e-5,
                             atol=1e-6)
  assert int(info.selected.sum()) == R - 4
  assert np.isinf(info.diameter if name == "mda" else info.max_eigval)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mda", "smea"])
def test_vmap_and_chain(name):
  xs = np.stack([_data(6), _data(7)])
  fn = lambda t: RULES[name](t, num_byzantine=2)
  batched = jax.vmap(fn)({"w": xs})["w"]
  for b in range(2):
    np.testing.assert_allclose(batched[b], fn({"w": xs[b]})["w"], rtol=1e-6)
  # In an optax chain, without num_workers: the 4096-worker probe does not
  # trip the enumeration bound; the real R does at the first update.
  tx = optax.chain(byzjax.aggregate(RULES[name], num_byzantine=2),
                   optax.sgd(1.0))
  params = {"w": jnp.zeros(D)}
  upd, _ = tx.update({"w": xs[0]}, tx.init(params), params)
  np.testing.assert_allclose(upd["w"], -fn({"w": xs[0]})["w"], rtol=1e-6)


@pytest.mark.parametrize("name", ["mda", "smea"])
def test_enumeration_bound(name):
  x = {"w": jnp.zeros((40, 2))}
  with pytest.raises(TooManySubsetsError, match="max_subsets"):
    RULES[name](x, num_byzantine=10)
  with pytest.raises(ValueError, match="C\\(40, 10\\)"):
    byzjax.aggregate(RULES[name], num_workers=40, num_byzantine=10)
  # Without num_workers the check waits for the real R (no error now).
  byzjax.aggregate(RULES[name], num_byzantine=10)


@pytest.mark.parametrize("name", ["mda", "smea"])
@pytest.mark.parametrize("kwargs,match", [
    ({"num_byzantine": 5}, "num_byzantine"),
    ({"num_byzantine": -1}, "num_byzantine"),
    ({"num_byzantine": 1.0}, "num_byzantine"),
    ({"num_byzantine": 1, "max_subsets": 0}, "max_subsets")])
def test_bad_hyperparameters(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    RULES[name]({"w": jnp.zeros((R, 2))}, **kwargs)
