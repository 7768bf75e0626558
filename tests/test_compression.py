"""Tests for the pure compressors against NumPy oracles."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byzjax import compression as C
from tests import helpers

D = 12


def _x(seed=0, d=D):
  return np.random.default_rng(seed).normal(size=(1, d)).astype(np.float32)


def _tree(flat_row):
  """One worker's update as a pytree of several leaves (no worker axis)."""
  t = helpers.split_leaves(flat_row)
  return jax.tree.map(lambda a: jnp.asarray(a[0]), t)


def _flat(tree):
  return helpers.join_leaves(tree)


def _maybe_jit(fn, jit):
  return jax.jit(fn) if jit else fn


# --------------------------------------------------------------------------
# sign, scaled_sign


@pytest.mark.parametrize("jit", [False, True])
def test_sign_matches_numpy(jit):
  x = _x(1)
  x[0, 3] = 0.0
  got = _flat(_maybe_jit(C.sign, jit)(_tree(x)))
  np.testing.assert_array_equal(got, np.sign(x[0]))


@pytest.mark.parametrize("jit", [False, True])
def test_scaled_sign_matches_formula(jit):
  x = _x(2)
  got = _flat(_maybe_jit(C.scaled_sign, jit)(_tree(x)))
  want = np.abs(x[0]).sum() / D * np.sign(x[0])
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_scaled_sign_is_delta_approximate_with_exact_delta():
  """||Q(x) - x||^2 = (1 - delta) ||x||^2, delta = ||x||_1^2 / (d ||x||^2)."""
  x = _x(3).astype(np.float64)[0]
  q = _flat(C.scaled_sign(_tree(x[None].astype(np.float32))))
  delta = np.abs(x).sum() ** 2 / (D * (x ** 2).sum())
  np.testing.assert_allclose(((q - x) ** 2).sum(), (1 - delta) * (x ** 2).sum(),
                             rtol=1e-5)


@pytest.mark.parametrize("value", [1e30, -1e30, 3e38, -3e38])
def test_scaled_sign_of_huge_rows_is_finite_and_exact(value):
  x = np.full((1, D), value, np.float32)
  x[0, ::2] *= -1
  got = _flat(C.scaled_sign(_tree(x)))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, x[0], rtol=1e-5)


def test_scaled_sign_of_mixed_huge_and_small():
  x = _x(4)
  x[0, 0] = 3e38
  got = _flat(C.scaled_sign(_tree(x)))
  want = (np.abs(x[0].astype(np.float64)).sum() / D) * np.sign(x[0])
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=1e-5)


# --------------------------------------------------------------------------
# top_k


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("k", [1, 5, D])
def test_top_k_matches_numpy(k, jit):
  x = _x(5)[0]
  fn = _maybe_jit(functools.partial(C.top_k, k=k), jit)
  got = _flat(fn(_tree(x[None])))
  keep = np.argsort(-np.abs(x))[:k]
  want = np.zeros_like(x)
  want[keep] = x[keep]
  np.testing.assert_array_equal(got, want)
  assert np.count_nonzero(got) == k


def test_top_k_keeps_exactly_k_with_ties():
  x = np.ones((1, D), np.float32)
  got = _flat(C.top_k(_tree(x), k=4))
  assert np.count_nonzero(got) == 4


def test_top_k_delta_at_least_k_over_d():
  x = _x(6).astype(np.float64)[0]
  k = 3
  q = _flat(C.top_k(_tree(x[None].astype(np.float32)), k=k))
  assert ((q - x) ** 2).sum() <= (1 - k / D) * (x ** 2).sum() + 1e-9


# --------------------------------------------------------------------------
# rand_k and shared coordinates


def test_rand_k_keeps_k_scaled_coordinates():
  x = _x(7)[0]
  k = 4
  got = _flat(C.rand_k(_tree(x[None]), k=k, key=jax.random.key(0)))
  nz = np.flatnonzero(got)
  assert len(nz) == k
  np.testing.assert_allclose(got[nz], x[nz] * D / k, rtol=1e-6)


def test_rand_k_is_unbiased():
  """Mean over many keys -> x, within 5 standard errors per coordinate."""
  x = _x(8)[0]
  k, n = 3, 4000
  keys = jax.random.split(jax.random.key(1), n)
  samples = jax.jit(jax.vmap(
      lambda kk: C.rand_k({"w": jnp.asarray(x)}, k=k, key=kk)["w"]))(keys)
  mean = np.asarray(samples, np.float64).mean(axis=0)
  se = np.abs(x) * np.sqrt((D / k - 1) / n)
  assert np.all(np.abs(mean - x) <= 5 * se), (mean, x)


def test_rand_k_same_key_same_result_and_keys_differ():
  t = _tree(_x(9))
  a = _flat(C.rand_k(t, k=3, key=jax.random.key(3)))
  b = _flat(C.rand_k(t, k=3, key=jax.random.key(3)))
  c = _flat(C.rand_k(t, k=3, key=jax.random.key(4)))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a != 0, c != 0)


def test_draw_coordinates_are_sorted_unique_and_uniform():
  like = _tree(_x(0))
  k, n = 4, 6000
  coords = jax.jit(jax.vmap(lambda kk: C.draw_coordinates(kk, like, k)))(
      jax.random.split(jax.random.key(2), n))
  coords = np.asarray(coords)
  assert coords.shape == (n, k) and coords.dtype == np.int32
  assert np.all(np.diff(coords, axis=1) > 0)  # sorted and unique
  assert coords.min() >= 0 and coords.max() < D
  freq = np.bincount(coords.ravel(), minlength=D) / n
  p = k / D
  se = np.sqrt(p * (1 - p) / n)
  assert np.all(np.abs(freq - p) <= 5 * se), freq


def test_gather_and_scatter_match_numpy():
  r, k = 4, 5
  x = np.random.default_rng(10).normal(size=(r, D)).astype(np.float32)
  stacked = helpers.split_leaves(x)
  like = _tree(x[:1])
  coords = C.draw_coordinates(jax.random.key(5), like, k)
  gathered = jax.jit(C.gather_coordinates)(stacked, coords)
  np.testing.assert_array_equal(gathered, x[:, np.asarray(coords)])
  agg = np.asarray(gathered).mean(axis=0)
  back = _flat(C.scatter_coordinates(jnp.asarray(agg), coords, like,
                                     scale=2.0))
  want = np.zeros(D, np.float32)
  want[np.asarray(coords)] = 2.0 * agg
  np.testing.assert_allclose(back, want, rtol=1e-6)
  # The params-shaped form keeps the same coordinates (scaled by d/k).
  one = _flat(C.shared_rand_k(_tree(x[2:3]), coords=coords))
  want = np.zeros(D, np.float32)
  want[np.asarray(coords)] = D / k * x[2, np.asarray(coords)]
  np.testing.assert_allclose(one, want, rtol=1e-6)


def _np_algorithm2_message(p, coords, d, k):
  """Data & Diggavi, Algorithm 2 line 7: (d/k) select_K(p), by a loop."""
  out = np.zeros(d, np.float64)
  for j in range(d):
    if j in set(int(c) for c in coords):
      out[j] = d / k * p[j]
  return out


@pytest.mark.parametrize("jit, k", [(False, 1), (True, 5), (False, D)])
def test_shared_rand_k_is_the_papers_scaled_message(jit, k):
  """Default scale is d/k (the paper's); scale=1.0 is plain select_K."""
  p = _x(21)
  coords = C.draw_coordinates(jax.random.key(k), _tree(p), k)
  fn = _maybe_jit(lambda t, c: C.shared_rand_k(t, coords=c), jit)
  got = _flat(fn(_tree(p), coords))
  want = _np_algorithm2_message(p[0], np.asarray(coords), D, k)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  plain = _flat(C.shared_rand_k(_tree(p), coords=coords, scale=1.0))
  np.testing.assert_allclose(plain, want * k / D, rtol=1e-6)
  # The server's k-dimensional path scatters with the same default d/k.
  gathered = C.gather_coordinates(helpers.split_leaves(p), coords)
  back = _flat(C.scatter_coordinates(gathered[0], coords, _tree(p)))
  np.testing.assert_allclose(back, want, rtol=1e-6)


def test_shared_rand_k_is_unbiased_over_server_draws():
  """E_K[(d/k) select_K(p)] = p (Data & Diggavi, §5.2, eq. (14))."""
  p = _x(22)
  k, n = 3, 4000
  keys = jax.random.split(jax.random.key(23), n)
  msgs = jax.jit(jax.vmap(lambda kk: C.shared_rand_k(
      _tree(p), coords=C.draw_coordinates(kk, _tree(p), k))))(keys)
  msgs = np.concatenate([np.asarray(m).reshape(n, -1)
                         for m in jax.tree.leaves(msgs)], axis=1)
  # Coordinate j of one message is (d/k) p_j with probability k/d, else 0:
  # mean p_j, standard deviation |p_j| sqrt(d/k - 1).
  se = np.abs(p[0]) * np.sqrt(D / k - 1) / np.sqrt(n)
  np.testing.assert_array_less(np.abs(msgs.mean(0) - p[0]), 5 * se + 1e-7)
  # ...and each coordinate is nonzero in about a fraction k/d of draws.
  freq = np.mean(msgs != 0, axis=0)
  np.testing.assert_array_less(np.abs(freq - k / D),
                               5 * np.sqrt(k / D * (1 - k / D) / n))


def test_scatter_of_stacked_values():
  like = _tree(_x(0))
  coords = jnp.array([0, 5, 11])
  vals = jnp.arange(6.0).reshape(2, 3)
  out = C.scatter_coordinates(vals, coords, like)
  assert jax.tree.leaves(out)[0].shape[0] == 2
  row1 = helpers.join_leaves(jax.tree.map(lambda a: a[1], out))
  want = np.zeros(D, np.float32)
  want[[0, 5, 11]] = [3.0, 4.0, 5.0]
  np.testing.assert_allclose(row1, D / 3 * want, rtol=1e-6)  # default d/k
  out = C.scatter_coordinates(vals, coords, like, scale=1.0)  # unscaled
  row1 = helpers.join_leaves(jax.tree.map(lambda a: a[1], out))
  np.testing.assert_array_equal(row1, want)


# --------------------------------------------------------------------------
# qsgd


def test_qsgd_values_lie_on_the_levels():
  x = _x(11)[0]
  s = 4
  got = _flat(C.qsgd(_tree(x[None]), levels=s, key=jax.random.key(0)))
  norm = np.linalg.norm(x)
  levels = np.abs(got) / norm * s
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  assert np.all((got == 0) | (np.sign(got) == np.sign(x)))
  # |Q(x)_j| / ||x|| is floor or ceil of s |x_j| / ||x||, divided by s.
  r = np.abs(x) / norm * s
  assert np.all((np.round(levels) == np.floor(r)) |
                (np.round(levels) == np.ceil(r)))


@pytest.mark.parametrize("levels", [1, 3])
def test_qsgd_is_unbiased(levels):
  x = _x(12)[0]
  n = 20000
  keys = jax.random.split(jax.random.key(6), n)
  samples = jax.jit(jax.vmap(
      lambda kk: C.qsgd({"w": jnp.asarray(x)}, levels=levels, key=kk)["w"]))(
          keys)
  samples = np.asarray(samples, np.float64)
  mean, sd = samples.mean(axis=0), samples.std(axis=0)
  se = np.maximum(sd, 1e-6) / np.sqrt(n)
  assert np.all(np.abs(mean - x) <= 5 * se + 1e-6), (mean, x)
  # Alistarh et al. Lemma 3.1: E||Q(x) - x||^2 <= min(d/s^2, sqrt(d)/s) ||x||^2.
  err = ((samples - x) ** 2).sum(axis=1).mean()
  bound = min(D / levels ** 2, np.sqrt(D) / levels) * (x ** 2).sum()
  assert err <= bound


def test_qsgd_huge_rows_are_finite():
  x = np.full((1, D), 1e30, np.float32)
  got = _flat(C.qsgd(_tree(x), levels=2, key=jax.random.key(1)))
  assert np.all(np.isfinite(got))
  x = np.full((1, D), 3e38, np.float32)  # norm exceeds float32: saturates
  got = _flat(C.qsgd(_tree(x), levels=2, key=jax.random.key(1)))
  assert np.all(np.isfinite(got))


# --------------------------------------------------------------------------
# Shared conventions.

COMPRESSORS = {
    "sign": C.sign,
    "scaled_sign": C.scaled_sign,
    "top_k": functools.partial(C.top_k, k=3),
    "rand_k": functools.partial(C.rand_k, k=3, key=jax.random.key(0)),
    "qsgd": functools.partial(C.qsgd, levels=2, key=jax.random.key(0)),
    "shared_rand_k": functools.partial(C.shared_rand_k,
                                       coords=jnp.array([0, 4, 9])),
}


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_erasures_stay_erasures_and_huge_rows_stay_finite(name):
  """Rows 0-2 have one NaN/Inf entry; rows 3-6 are huge (vmapped, jitted)."""
  rows = np.repeat(_x(13), 7, axis=0)
  rows[0, 7], rows[1, 7], rows[2, 7] = np.nan, np.inf, -np.inf
  rows[3:] = np.array([1e30, -1e30, 3e38, -3e38], np.float32)[:, None]
  rows[3:, ::2] *= -1
  got = jax.jit(jax.vmap(COMPRESSORS[name]))(helpers.split_leaves(rows))
  got = np.concatenate([np.asarray(g).reshape(7, -1)
                        for g in jax.tree.leaves(got)], axis=1)
  assert np.all(np.isnan(got[:3]))  # coordinate 7 would often be dropped
  assert np.all(np.isfinite(got[3:]))


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_structure_shapes_and_dtypes_preserved(name):
  t = _tree(_x(14))
  out = COMPRESSORS[name](t)
  assert jax.tree.structure(out) == jax.tree.structure(t)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(t)):
    assert a.shape == b.shape and a.dtype == b.dtype


def test_l2_norm_overflow_safe():
  x = np.full((1, D), 1e30, np.float32)
  np.testing.assert_allclose(C.l2_norm(_tree(x)), 1e30 * np.sqrt(D),
                             rtol=1e-6)
  np.testing.assert_allclose(C.l2_norm(_tree(_x(15))),
                             np.linalg.norm(_x(15)), rtol=1e-6)
  x[0, 1] = np.nan
  assert C.l2_norm(_tree(x)) == np.inf


@pytest.mark.parametrize("call, name", [
    (lambda t: C.top_k(t, k=0), "k"),
    (lambda t: C.top_k(t, k=D + 1), "k"),
    (lambda t: C.top_k(t, k=2.0), "k"),
    (lambda t: C.rand_k(t, k=0, key=jax.random.key(0)), "k"),
    (lambda t: C.rand_k(t, k=D + 1, key=jax.random.key(0)), "k"),
    (lambda t: C.draw_coordinates(jax.random.key(0), t, D + 1), "k"),
    (lambda t: C.qsgd(t, levels=0, key=jax.random.key(0)), "levels"),
    (lambda t: C.qsgd(t, levels=1.5, key=jax.random.key(0)), "levels"),
    (lambda t: C.shared_rand_k(t, coords=jnp.zeros((2, 2), int)), "coords"),
    (lambda t: C.shared_rand_k(t, coords=jnp.array([1]), scale=0.0), "scale"),
])
def test_bad_hyperparameters_raise(call, name):
  with pytest.raises(ValueError, match=name):
    call(_tree(_x(0)))
