"""Tests for nearest-neighbour mixing (Allouah et al., AISTATS 2023, Alg. 1)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import byzjax
from byzjax.aggregators import coordinate_median
from byzjax.aggregators import krum
from byzjax.aggregators import trimmed_mean
from byzjax.transforms.nnm import nearest_neighbor_mixing
from byzjax.transforms.nnm import nnm
from tests import helpers

R, D, F = 9, 7, 3


def _np_nnm(x, f):
  """Algorithm 1 from its definition, float64, with erasures as documented:
  erased rows are no one's neighbour and come out NaN."""
  x = np.asarray(x, np.float64)
  live = np.all(np.isfinite(x), axis=1)
  k = min(len(x) - f, int(live.sum()))
  out = np.full_like(x, np.nan)
  for i in np.flatnonzero(live):
    cands = [j for j in np.flatnonzero(live) if j != i]
    dist = [np.sum((x[j] - x[i]) ** 2) for j in cands]
    order = [cands[t] for t in np.argsort(dist, kind="stable")]
    out[i] = np.mean(x[[i] + order[:k - 1]], axis=0)
  return out


def _join_stacked(tree):
  r = np.asarray(tree["a"]).shape[0]
  return np.concatenate([np.asarray(tree[k] if k != "b" else tree["b"]["c"])
                         .reshape(r, -1) for k in ("a", "b", "d")], axis=1)


def _data(seed, r=R, d=D):
  return np.random.default_rng(seed).normal(size=(r, d)).astype(np.float32)


@pytest.mark.parametrize("f,jit", [
    (F, False), (1, True), pytest.param(0, False, marks=pytest.mark.slow),
    pytest.param(F, True, marks=pytest.mark.slow)])
def test_matches_numpy_oracle(f, jit):
  x = _data(f)
  fn = functools.partial(nearest_neighbor_mixing, num_byzantine=f)
  got = (jax.jit(fn) if jit else fn)(helpers.split_leaves(x))
  np.testing.assert_allclose(_join_stacked(got), _np_nnm(x, f), rtol=1e-5,
                             atol=1e-6)


def test_info_neighbour_sets_include_self():
  x = _data(1)
  out, info = nearest_neighbor_mixing({"w": x}, num_byzantine=F,
                                      return_info=True)
  sel = np.asarray(info.neighbours)
  assert np.all(np.diag(sel)) and np.all(sel.sum(1) == R - F)
  np.testing.assert_allclose(out["w"], sel @ x / (R - F), rtol=1e-5,
                             atol=1e-6)


def test_permutation_equivariant():
  x = _data(2)
  perm = np.random.default_rng(0).permutation(R)
  a = nearest_neighbor_mixing({"w": x}, num_byzantine=F)["w"]
  b = nearest_neighbor_mixing({"w": x[perm]}, num_byzantine=F)["w"]
  np.testing.assert_allclose(np.asarray(b), np.asarray(a)[perm], rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("bad", [
    np.nan, -3e38, pytest.param(np.inf, marks=pytest.mark.slow),
    pytest.param(1e30, marks=pytest.mark.slow)])
def test_byzantine_rows_up_to_breakdown(bad):
  # f = 4 of 9: the largest minority. Erasures stay erased (NaN); huge rows
  # never enter an honest row's neighbourhood and never overflow.
  x = _data(3)
  f = 4
  x[:f - 1] = bad
  x[f - 1, 0] = bad  # one partly bad row
  got = np.asarray(nearest_neighbor_mixing({"w": x}, num_byzantine=f)["w"])
  expected = _np_nnm(x, f)
  honest = slice(f, R)
  np.testing.assert_allclose(got[honest], expected[honest], rtol=1e-5,
                             atol=1e-6)
  assert np.all(np.abs(got[honest]) <= np.abs(x[honest]).max())
  if np.isfinite(bad):
    # Rows beyond the taming radius mix by their tamed positions (module
    # docstring): their values are not compared, only their finiteness.
    assert np.all(np.isfinite(got))
  else:
    assert np.all(np.isnan(got[:f]))


def test_more_erasures_than_f_average_the_live_rows():
  x = _data(4)
  x[:5] = np.nan  # 5 erased > f = 2: neighbourhoods shrink to the 4 live rows
  got = np.asarray(nearest_neighbor_mixing({"w": x}, num_byzantine=2)["w"])
  np.testing.assert_allclose(got[5:], np.repeat(x[5:].mean(0)[None], 4, 0),
                             rtol=1e-5)
  assert np.all(np.isnan(got[:5]))


@pytest.mark.parametrize("f,match", [(5, "num_byzantine"), (-1, "num_byzantine"),
                                     (1.0, "num_byzantine")])
def test_bad_hyperparameters(f, match):
  with pytest.raises(ValueError, match=match):
    nearest_neighbor_mixing({"w": _data(0)}, num_byzantine=f)
  if isinstance(f, int) and f < 0:
    with pytest.raises(ValueError, match=match):
      nnm(f)


def test_vmap_matches_loop():
  xs = np.stack([_data(5), _data(6)])
  got = jax.vmap(lambda t: nearest_neighbor_mixing(t, num_byzantine=F))(
      {"w": xs})["w"]
  for b in range(2):
    np.testing.assert_allclose(got[b], _np_nnm(xs[b], F), rtol=1e-5,
                               atol=1e-6)


def test_chain_with_trimmed_mean():
  params = jax.tree.map(lambda l: jnp.asarray(l[0]),
                        helpers.split_leaves(np.zeros((1, D), np.float32)))
  tx = optax.chain(byzjax.nnm(F),
                   byzjax.aggregate(trimmed_mean, trim_fraction=0.34),
                   optax.sgd(0.1))
  state = jax.jit(tx.init)(params)
  x = _data(7)
  x[0] = 1e30
  x[1] = np.nan
  updates, new_state = jax.jit(tx.update)(helpers.split_leaves(x), state,
                                          params)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  mixed = _np_nnm(x, F)
  live = np.all(np.isfinite(mixed), axis=1)
  expected = -0.1 * np.asarray(trimmed_mean({"w": mixed[live]},
                                            trim_fraction=0.34)["w"])
  np.testing.assert_allclose(helpers.join_leaves(updates), expected,
                             rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Behaviour (Allouah et al. 2023, Theorem 1): under heterogeneity the plain
# rule is far from the honest mean, the NNM composition is not.


def _heterogeneous(seed, r=20, f=4, num_classes=10):
  """Label-skewed honest "gradients" plus ALIE rows, as stacked vectors.

  Worker i's class proportions p_i ~ Dirichlet(0.1); class c's gradient is
  5 on its own two coordinates (last-layer-like, so workers differ a lot);
  honest row i = sum_c p_ic g_c + N(0, 0.1^2). The f Byzantine rows all send
  ALIE's mu - z sigma (coordinate-wise honest mean and std, z = 0.5).
  """
  rng = np.random.default_rng(seed)
  grads = np.kron(np.eye(num_classes), np.ones((1, 2))) * 5.0
  props = rng.dirichlet(0.1 * np.ones(num_classes), size=r - f)
  honest = props @ grads + 0.1 * rng.normal(size=(r - f, 2 * num_classes))
  mu, sd = honest.mean(0), honest.std(0)
  byz = np.repeat((mu - 0.5 * sd)[None], f, 0)
  x = np.concatenate([honest, byz]).astype(np.float32)
  return x, mu, f


@pytest.mark.parametrize("rule", ["coordinate_median", "krum"])
def test_nnm_fixes_heterogeneity(rule):
  for seed in range(4):
    x, mu, f = _heterogeneous(seed)
    agg = {"coordinate_median": coordinate_median,
           "krum": functools.partial(krum, num_byzantine=f)}[rule]
    plain = np.linalg.norm(agg({"w": x})["w"] - mu)
    mixed = nearest_neighbor_mixing({"w": x}, num_byzantine=f)
    composed = np.linalg.norm(agg(mixed)["w"] - mu)
    # The honest heterogeneity (root-mean-square distance to the mean).
    rho = np.sqrt(np.mean(np.sum((x[:-f] - mu) ** 2, axis=1)))
    assert plain > 0.4 * rho, (seed, plain, rho)        # the plain rule fails
    assert composed < 0.55 * plain, (seed, composed, plain)
