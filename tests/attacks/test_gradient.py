"""Tests for the gradient attacks: formulas, honest rows kept, transforms."""

import statistics

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byzjax import tree as btree
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.attacks import gradient as G
from byzjax.transforms.aggregate import aggregate
from tests import helpers

R, D = 10, 12
MASK = np.array([1, 0, 0, 1, 0, 0, 1, 0, 0, 0], bool)  # f = 3


def _x(seed=0, r=R, d=D, loc=1.0):
  return (np.random.default_rng(seed).normal(size=(r, d)) + loc).astype(
      np.float32)


def _flat(stacked):
  leaves = jax.tree.leaves(stacked)
  r = leaves[0].shape[0]
  return np.concatenate([np.asarray(a).reshape(r, -1)
                         for a in (stacked["a"], stacked["b"]["c"],
                                   stacked["d"])], axis=1)


ATTACKS = {
    "gaussian_noise": lambda s, m: G.gaussian_noise(s, m,
                                                    key=jax.random.key(0)),
    "bit_flip": G.bit_flip,
    "sign_flip": G.sign_flip,
    "random_gaussian": lambda s, m: G.random_gaussian(s, m,
                                                      key=jax.random.key(1)),
    "alie": G.alie,
    "ipm": G.ipm,
    "annulus": lambda s, m: G.annulus(s, m, key=jax.random.key(2)),
    "nan": lambda s, m: G.constant(s, m, value=float("nan")),
    "inf": lambda s, m: G.constant(s, m, value=float("inf")),
    "huge": lambda s, m: G.constant(s, m, value=1e30),
    "silence": G.silence,
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_only_byzantine_rows_change(name):
  x = _x(1)
  out = _flat(ATTACKS[name](helpers.split_leaves(x), MASK))
  np.testing.assert_array_equal(out[~MASK], x[~MASK])  # bit-identical
  assert not np.any(np.all(out[MASK] == x[MASK], axis=1))


def test_alie_matches_numpy():
  x = _x(2)
  honest = x[~MASK].astype(np.float64)
  n, f = R, MASK.sum()
  s = np.floor(n / 2 + 1) - f
  z = statistics.NormalDist().inv_cdf((n - s) / n)
  want = honest.mean(axis=0) - z * honest.std(axis=0)
  out = _flat(G.alie(helpers.split_leaves(x), MASK))
  np.testing.assert_allclose(out[MASK], np.tile(want, (f, 1)), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(G.alie_z_max(n, f), z, rtol=1e-5)
  # Given z.
  out = _flat(jax.jit(lambda s, m: G.alie(s, m, z=1.5))(
      helpers.split_leaves(x), MASK))
  np.testing.assert_allclose(
      out[MASK][0], honest.mean(axis=0) - 1.5 * honest.std(axis=0),
      rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, f", [(50, 12), (20, 4), (10, 2), (7, 3)])
def test_alie_z_max_formula(n, f):
  s = np.floor(n / 2 + 1) - f
  want = statistics.NormalDist().inv_cdf((n - s) / n)
  np.testing.assert_allclose(G.alie_z_max(n, f), want, rtol=1e-5, atol=1e-6)


def test_alie_huge_honest_rows_do_not_overflow():
  x = (_x(3).astype(np.float64) * 1e30)
  out = _flat(G.alie(helpers.split_leaves(x.astype(np.float32)), MASK,
                     z=1.0))
  honest = x[~MASK]
  want = honest.mean(axis=0) - honest.std(axis=0)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out[MASK][0], want, rtol=1e-4)


def test_ipm_matches_numpy():
  x = _x(4)
  out = _flat(G.ipm(helpers.split_leaves(x), MASK, epsilon=0.5))
  want = -0.5 * x[~MASK].astype(np.float64).mean(axis=0)
  np.testing.assert_allclose(out[MASK], np.tile(want, (3, 1)), rtol=1e-5)


def test_statistics_ignore_erased_honest_rows():
  x = _x(5)
  x[1, 0] = np.nan
  ref = np.delete(x, 1, axis=0)[~np.delete(MASK, 1)]
  out = _flat(G.ipm(helpers.split_leaves(x), MASK, epsilon=1.0))
  np.testing.assert_allclose(out[0], -ref.mean(axis=0), rtol=1e-5)


def test_annulus_construction():
  x = _x(6)
  direction = np.random.default_rng(7).normal(size=(1, D)).astype(np.float32)
  dir_tree = jax.tree.map(lambda a: a[0], helpers.split_leaves(direction))
  out = _flat(G.annulus(helpers.split_leaves(x), MASK, direction=dir_tree,
                        radius_scale=2.0))
  honest = x[~MASK].astype(np.float64)
  mu = honest.mean(axis=0)
  dist = np.sort(np.linalg.norm(honest - mu, axis=1))
  rho = dist[(len(dist) - 1) // 2]
  u = direction[0] / np.linalg.norm(direction[0])
  np.testing.assert_allclose(out[MASK], np.tile(mu + 2.0 * rho * u, (3, 1)),
                             rtol=1e-5, atol=1e-5)


def test_annulus_random_direction_is_at_the_honest_distance():
  x = _x(8)
  out = _flat(G.annulus(helpers.split_leaves(x), MASK, key=jax.random.key(9)))
  honest = x[~MASK].astype(np.float64)
  mu = honest.mean(axis=0)
  rho = np.sort(np.linalg.norm(honest - mu, axis=1))[(len(honest) - 1) // 2]
  byz = out[MASK]
  np.testing.assert_allclose(byz, np.tile(byz[0], (3, 1)))  # one point
  np.testing.assert_allclose(np.linalg.norm(byz[0] - mu), rho, rtol=1e-5)


def test_gaussian_noise_statistics():
  x = np.zeros((4, 20000), np.float32)
  mask = np.array([True, True, False, False])
  out = np.asarray(G.gaussian_noise({"w": x}, mask, key=jax.random.key(4),
                                    variance=10.0)["w"])
  noise = out[mask].ravel()
  # Sample variance of 40000 draws: standard error 10 * sqrt(2 / 40000).
  assert abs(noise.var() - 10.0) < 5 * 10.0 * np.sqrt(2 / noise.size)
  assert abs(noise.mean()) < 5 * np.sqrt(10.0 / noise.size)
  assert not np.array_equal(out[0], out[1])  # independent per worker


def test_random_gaussian_discards_the_gradient():
  x = np.full((3, 20000), 1e6, np.float32)
  mask = np.array([True, False, False])
  out = np.asarray(G.random_gaussian({"w": x}, mask, key=jax.random.key(5),
                                     mean=2.0, variance=4.0)["w"])
  assert abs(out[0].mean() - 2.0) < 5 * 2.0 / np.sqrt(20000)
  assert abs(out[0].std() - 2.0) < 0.05


def test_bit_flip_and_sign_flip_formulas_and_saturation():
  x = _x(10)
  out = _flat(G.bit_flip(helpers.split_leaves(x), MASK))
  np.testing.assert_allclose(out[MASK], -100.0 * x[MASK], rtol=1e-7)
  out = _flat(G.sign_flip(helpers.split_leaves(x), MASK))
  np.testing.assert_array_equal(out[MASK], -x[MASK])
  big = np.full((2, 3), 1e37, np.float32)
  out = np.asarray(G.bit_flip({"w": big}, np.array([True, False]))["w"])
  np.testing.assert_array_equal(out[0], -np.finfo(np.float32).max)


def test_non_finite_attacks_are_erasures():
  x = helpers.split_leaves(_x(11))
  for fn in (G.silence, ATTACKS["nan"], ATTACKS["inf"]):
    live = btree.live_workers(fn(x, MASK))
    np.testing.assert_array_equal(live, ~MASK)
  live = btree.live_workers(ATTACKS["huge"](x, MASK))
  assert np.all(live)


def test_same_key_same_result():
  x = helpers.split_leaves(_x(12))
  for fn in (G.gaussian_noise, G.random_gaussian, G.annulus):
    a = fn(x, MASK, key=jax.random.key(1))
    b = fn(x, MASK, key=jax.random.key(1))
    c = fn(x, MASK, key=jax.random.key(2))
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(_flat(a)[MASK], _flat(c)[MASK])


# --------------------------------------------------------------------------
# Transforms.


def test_transform_uses_the_mask_and_splits_its_key():
  x = helpers.split_leaves(_x(13))
  key = jax.random.key(3)
  tx = G.gaussian_noise_attack(key=key, variance=1.0)
  update = jax.jit(tx.update)
  state = tx.init(None)
  out1, state = update(x, state, byzantine=MASK)
  out2, state = update(x, state, byzantine=MASK)
  _, sub = jax.random.split(key)
  chex.assert_trees_all_close(out1, G.gaussian_noise(x, MASK, key=sub,
                                                     variance=1.0),
                              rtol=1e-6, atol=1e-6)
  assert not np.array_equal(_flat(out1), _flat(out2))
  np.testing.assert_array_equal(_flat(out2)[~MASK], _flat(x)[~MASK])
  # A mask redrawn per step: a different set of rows is rewritten.
  other = ~MASK
  out3, _ = update(x, state, byzantine=other)
  np.testing.assert_array_equal(_flat(out3)[MASK], _flat(x)[MASK])


def test_transform_default_num_byzantine_and_mask_errors():
  x = helpers.split_leaves(_x(14))
  tx = G.sign_flip_attack(num_byzantine=2)
  out, _ = tx.update(x, tx.init(None))
  np.testing.assert_array_equal(_flat(out)[:2], -_flat(x)[:2])
  np.testing.assert_array_equal(_flat(out)[2:], _flat(x)[2:])
  tx = G.sign_flip_attack()
  with pytest.raises(ValueError, match="byzantine"):
    tx.update(x, tx.init(None))
  with pytest.raises(ValueError, match="byzantine"):
    tx.update(x, tx.init(None), byzantine=jnp.ones(R + 1, bool))
  tx = G.sign_flip_attack(num_byzantine=R + 1)
  with pytest.raises(ValueError, match="num_byzantine"):
    tx.update(x, tx.init(None))


def test_attack_in_a_chain_with_an_aggregator():
  x = _x(15, loc=0.0) * 0.1 + 1.0
  tx = optax.chain(G.alie_attack(),
                   aggregate(geometric_median, max_iters=200),
                   optax.sgd(1.0))
  params = jax.tree.map(lambda a: jnp.zeros(a.shape[1:]),
                        helpers.split_leaves(x))
  state = tx.init(params)
  out, state = jax.jit(tx.update)(helpers.split_leaves(x), state,
                                  byzantine=MASK)
  assert helpers.join_leaves(out).shape == (D,)
  chex.assert_tree_all_finite(out)
  # The state keeps no key for a deterministic attack.
  assert state[0].key is None


@pytest.mark.parametrize("make, name", [
    (lambda: G.gaussian_noise_attack(), "key"),
    (lambda: G.random_gaussian_attack(), "key"),
    (lambda: G.annulus_attack(), "key"),
    (lambda: G.gaussian_noise_attack(key=jax.random.key(0), variance=-1.0),
     "variance"),
    (lambda: G.random_gaussian_attack(key=jax.random.key(0), mean="a"),
     "mean"),
    (lambda: G.bit_flip_attack(scale=0.0), "scale"),
    (lambda: G.ipm_attack(epsilon=-0.1), "epsilon"),
    (lambda: G.alie_attack(z="big"), "z"),
    (lambda: G.annulus_attack(key=jax.random.key(0), radius_scale=-1.0),
     "radius_scale"),
    (lambda: G.constant_attack(value="nan"), "value"),
    (lambda: G.sign_flip_attack(num_byzantine=-1), "num_byzantine"),
    (lambda: G.alie_attack(zz=1.0), "zz"),
    (lambda: G.gradient_attack(G.sign_flip, key=jax.random.key(0)), "key"),
])
def test_bad_hyperparameters_raise(make, name):
  with pytest.raises(ValueError, match=name):
    make()


def test_bad_hyperparameters_of_pure_functions_raise():
  x = helpers.split_leaves(_x(16))
  with pytest.raises(ValueError, match="key"):
    G.gaussian_noise(x, MASK)
  with pytest.raises(ValueError, match="byzantine"):
    G.sign_flip(x, MASK[:-1])
  with pytest.raises(ValueError, match="variance"):
    G.random_gaussian(x, MASK, key=jax.random.key(0), variance=-2.0)


def test_attacks_on_a_message_with_sent_norms_rewrite_the_norm_too():
  """A NormMessage is a pytree: Byzantine workers lie about the norm too."""
  from byzjax.transforms.compress import NormMessage  # pylint: disable=g-import-not-at-top
  x = _x(17)
  msg = NormMessage(update=helpers.split_leaves(x),
                    norm=jnp.asarray(np.linalg.norm(x, axis=1)))
  out = jax.jit(G.ipm)(msg, MASK)
  assert isinstance(out, NormMessage)
  np.testing.assert_allclose(out.norm[MASK],
                             -0.1 * np.asarray(msg.norm)[~MASK].mean(),
                             rtol=1e-5)
  np.testing.assert_array_equal(out.norm[~MASK], msg.norm[~MASK])


def test_sign_flip_of_the_honest_mean():
  # ByzFL's convention: every Byzantine row is minus the mean of the honest
  # live rows (an erased honest row is left out).
  x = _x(12)
  x[1, 0] = np.nan
  out = _flat(G.sign_flip(helpers.split_leaves(x), MASK,
                          reference="honest_mean"))
  honest = x[~MASK & np.all(np.isfinite(x), axis=1)].astype(np.float64)
  np.testing.assert_allclose(out[MASK], np.tile(-honest.mean(0), (3, 1)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out[~MASK], x[~MASK])  # NaN == NaN here
  with pytest.raises(ValueError, match="reference"):
    G.sign_flip_attack(reference="mean")
