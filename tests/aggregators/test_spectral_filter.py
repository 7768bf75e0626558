"""Tests for byzjax.aggregators.spectral_filter."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byzjax.aggregators.spectral_filter import spectral_filter
from byzjax.aggregators.spectral_filter import top_eigenvector
from tests import helpers

# The package re-exports the function under the module's name.
sf_module = importlib.import_module("byzjax.aggregators.spectral_filter")

MAD_TO_STD = 1.482602218505602


def _np_median(a):
  return float(np.median(a))


def _np_filter(x, sigma=None, max_rounds=None):
  """Textbook filter: float64, full eigendecomposition of the d x d covariance.

  Returns ``(mean, info)`` with the kept set, weights, rounds, final statistic
  and threshold, for comparison with the worker-space implementation.
  """
  x = np.asarray(x, np.float64)
  num, _ = x.shape
  live = np.all(np.isfinite(x), axis=1)
  x = np.where(live[:, None], x, 0.0)
  n = live.sum()
  c = live.astype(np.float64)
  active = live.copy()
  max_rounds = num if max_rounds is None else min(max_rounds, num)
  rounds = 0
  margin = np.inf  # closest call of any decision, to rule out near-ties
  while True:
    mu = (c @ x) / c.sum()
    y = x - mu
    cov = (y * c[:, None]).T @ y  # sum_i c_i (x_i - mu)(x_i - mu)^T
    _, eigvecs = np.linalg.eigh(cov)
    v = eigvecs[:, -1]
    p = np.where(active, y @ v, 0.0)
    tau = p**2
    stat = float(np.sum(c * tau))
    if sigma is None:
      pa = p[active]
      spread = MAD_TO_STD * _np_median(np.abs(pa - _np_median(pa)))
    else:
      spread = sigma
    threshold = 4.0 * n * spread**2
    margin = min(margin, abs(stat - threshold) / threshold)
    if stat <= threshold or rounds >= max_rounds:
      break
    tau_max = tau[active].max()
    new_c = np.where(active, (1.0 - tau / tau_max) * c, 0.0)
    new_active = active & (new_c >= 0.5)
    margin = min(margin, np.min(np.abs(new_c[active] - 0.5)))
    if not new_active.any():  # the round that would empty A is not applied
      break
    active, c = new_active, np.where(new_active, new_c, 0.0)
    rounds += 1
  mean = x[active].mean(axis=0) if active.any() else np.zeros(x.shape[1])
  return mean, dict(c=c, active=active, rounds=rounds, stat=stat,
                    threshold=threshold, margin=margin)


def _attacked(rng, num=20, dim=6, num_bad=4, offset=12.0):
  """Honest N(0, I) rows plus a loose cluster and one far corrupt row."""
  x = rng.normal(size=(num, dim))
  honest_mean = x[num_bad:].mean(axis=0)
  direction = np.zeros(dim)
  direction[0] = 1.0
  x[:num_bad] = (honest_mean + offset * direction
                 + 0.3 * rng.normal(size=(num_bad, dim)))
  x[num_bad - 1] *= 3.0
  return x.astype(np.float32)


# One jitted entry point shared by the tests, so that equal shapes and
# hyperparameters compile once for the whole file.
_jitted = jax.jit(spectral_filter, static_argnames=(
    "sigma", "max_rounds", "power_iters", "power_tol", "return_info"))


def _sf(x, sigma=None, max_rounds=None, jit=True):
  """``spectral_filter(x, return_info=True)`` with every argument explicit."""
  fn = _jitted if jit else spectral_filter
  tree = x if isinstance(x, dict) else {"w": jnp.asarray(x)}
  return fn(tree, sigma=sigma, max_rounds=max_rounds, power_iters=100,
            power_tol=1e-5, return_info=True)


@pytest.mark.parametrize("sigma", [None, 1.5])
def test_matches_textbook_oracle(sigma):
  rng = np.random.default_rng(0)
  for trial in range(4):
    x = _attacked(rng)
    if trial == 3:
      x[7] = np.nan  # an erasure: outside A from the start, n counts live
    want, ref = _np_filter(x, sigma=sigma)
    assert ref["margin"] > 0.03  # no near-tie that float32 could flip
    # Eager once per sigma (slow: every call traces), jitted always.
    for jit in ([True, False] if trial == 3 else [True]):
      out, info = _sf(x, sigma=sigma, jit=jit)
      _check_against_oracle(out, info, want, ref)
    # Multi-round runs that remove exactly the corrupt rows.
    assert ref["rounds"] == 2
    np.testing.assert_array_equal(ref["active"][:4], False)
    assert ref["active"][4:].sum() == (15 if trial == 3 else 16)


def _check_against_oracle(out, info, want, ref):
  np.testing.assert_array_equal(np.asarray(info.active), ref["active"])
  assert int(info.num_rounds) == ref["rounds"]
  np.testing.assert_allclose(out["w"], want, rtol=0, atol=2e-6)
  np.testing.assert_allclose(info.weights, ref["c"], atol=1e-4)
  np.testing.assert_allclose(info.statistic, ref["stat"], rtol=1e-4)
  np.testing.assert_allclose(info.threshold, ref["threshold"], rtol=1e-4)
  assert bool(info.converged) == (ref["stat"] <= ref["threshold"])


@pytest.mark.slow  # several compilations; the default suite keeps a sibling
def test_max_rounds_bounds_the_filter():
  x = _attacked(np.random.default_rng(1))
  x[5] = np.inf
  out0, info0 = _sf(x, max_rounds=0)
  np.testing.assert_allclose(out0["w"], np.delete(x, 5, axis=0).mean(axis=0),
                             atol=1e-6)
  assert int(info0.num_rounds) == 0 and not bool(info0.converged)
  # sigma = 0.3 is far below the honest spread: unbounded, the filter would
  # keep going; max_rounds = 1 stops it after one round, as in the oracle.
  _, unbounded = _np_filter(x, sigma=0.3)
  assert unbounded["rounds"] > 1
  out, info = _sf(x, sigma=0.3, max_rounds=1)
  want, ref = _np_filter(x, sigma=0.3, max_rounds=1)
  assert int(info.num_rounds) == ref["rounds"] == 1
  assert not bool(info.converged)
  np.testing.assert_array_equal(np.asarray(info.active), ref["active"])
  np.testing.assert_allclose(out["w"], want, atol=2e-6)


def test_top_eigenvector_matches_eigh():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(9, 5))
  m = (a @ a.T).astype(np.float32)
  u, _ = top_eigenvector(jnp.asarray(m), jnp.ones(9), num_iters=500, tol=1e-6)
  _, vecs = np.linalg.eigh(m.astype(np.float64))
  assert abs(float(np.dot(np.asarray(u), vecs[:, -1]))) > 1 - 1e-5
  # The zero matrix (identical workers) gives a zero vector, not NaN.
  u0, it = top_eigenvector(jnp.zeros((4, 4)), jnp.zeros(4), num_iters=10,
                           tol=1e-6)
  np.testing.assert_array_equal(np.asarray(u0), np.zeros(4))
  assert int(it) == 0


def test_worker_space_scores_are_projections_on_top_direction():
  """p = K_c C^{1/2} u / sqrt(u'Mu) equals <x_i - mu_c, v> for the top v."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(10, 4)) * np.array([3.0, 1.0, 0.5, 0.2])
  c = np.array([1, 0.9, 0.6, 0, 1, 0.7, 1, 0.55, 0, 1.0])
  p = sf_module._scores(jnp.asarray(x @ x.T, jnp.float32),
                        jnp.asarray(c, jnp.float32), 0.0, power_iters=1000,
                        power_tol=1e-7)
  mu = c @ x / c.sum()
  y = x - mu
  _, vecs = np.linalg.eigh((y * c[:, None]).T @ y)
  want = y @ vecs[:, -1]
  sign = np.sign(np.dot(np.asarray(p), want))
  np.testing.assert_allclose(sign * np.asarray(p), want, atol=2e-4)


def test_permutation_invariant():
  rng = np.random.default_rng(4)
  x = _attacked(rng, offset=8.0)
  perm = rng.permutation(20)
  out, info = _sf(x)
  out_p, info_p = _sf(x[perm])
  assert 0 < int(info.num_rounds)
  np.testing.assert_array_equal(np.asarray(info_p.active),
                                np.asarray(info.active)[perm])
  np.testing.assert_allclose(info_p.weights, np.asarray(info.weights)[perm],
                             atol=1e-5)
  np.testing.assert_allclose(out_p["w"], out["w"], atol=1e-6)


def test_translation_and_scale_equivariant():
  rng = np.random.default_rng(5)
  x = _attacked(rng)
  shift = rng.normal(size=6).astype(np.float32) * 100.0
  out, info = _sf(x)
  out_t, info_t = _sf(x + shift)
  out_s, info_s = _sf(x * 3.0)
  assert 0 < int(info.num_rounds)
  np.testing.assert_array_equal(np.asarray(info_t.active),
                                np.asarray(info.active))
  np.testing.assert_array_equal(np.asarray(info_s.active),
                                np.asarray(info.active))
  np.testing.assert_allclose(out_t["w"], np.asarray(out["w"]) + shift,
                             atol=2e-5)
  np.testing.assert_allclose(out_s["w"], 3.0 * np.asarray(out["w"]),
                             atol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_identical_workers_give_that_worker(offset):
  row = np.random.default_rng(6).normal(size=(1, 6)).astype(np.float32)
  x = np.tile(row + np.float32(offset), (20, 1))
  out, info = _sf(x)
  np.testing.assert_array_equal(out["w"], x[0])
  assert bool(np.all(info.active)) and int(info.num_rounds) == 0


def test_pytree_equals_flat():
  x = _attacked(np.random.default_rng(7))
  flat, info = _sf(x)
  tree, info_tree = _sf(helpers.split_leaves(x))
  np.testing.assert_array_equal(np.asarray(info_tree.active),
                                np.asarray(info.active))
  np.testing.assert_allclose(helpers.join_leaves(tree), flat["w"], atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e30, -1e30, 3e38, -3e38])
def test_byzantine_rows_are_removed(bad):
  rng = np.random.default_rng(8)
  x = (rng.normal(size=(20, 6)) + 5.0).astype(np.float32)
  x[:4] = bad
  if np.isfinite(bad):
    x[1, ::2] = -bad  # mixed signs inside one row
    x[2, 3] = 1.0     # and one ordinary entry
  out, info = _sf(x)
  assert np.all(np.isfinite(out["w"]))
  np.testing.assert_array_equal(np.asarray(info.active), np.arange(20) >= 4)
  np.testing.assert_allclose(out["w"], x[4:].mean(axis=0), atol=1e-5)
  assert np.isfinite(float(info.statistic))
  assert np.isfinite(float(info.threshold))


def test_mixed_byzantine_rows_within_a_quarter():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(20, 6)).astype(np.float32)
  x[0], x[1], x[2] = np.nan, 3e38, -1e30  # 4 of 20: eps = 0.2 < 1/4
  x[1, 0] = -2.5e38
  x[3] = x[4:].mean(axis=0) + 40.0  # a moderate far row
  out, info = _sf(x)
  assert np.all(np.isfinite(out["w"]))
  np.testing.assert_array_equal(np.asarray(info.active), np.arange(20) >= 4)
  np.testing.assert_allclose(out["w"], x[4:].mean(axis=0), atol=1e-5)


def _annulus(rng, dim, num=40, num_bad=8):
  """Corrupt rows at the honest norm, all shifted along one direction."""
  x = rng.normal(size=(num, dim))
  honest_mean = x[num_bad:].mean(axis=0)
  radius = np.median(np.linalg.norm(x[num_bad:] - honest_mean, axis=1))
  direction = np.zeros(dim)
  direction[0] = 1.0
  x[:num_bad] = honest_mean + radius * direction
  return x.astype(np.float32), honest_mean


def test_error_is_dimension_free_under_annulus_attack():
  """eps = 0.2: the mean's error grows like sqrt(d), the filter's does not."""
  rng = np.random.default_rng(10)
  batched = jax.jit(jax.vmap(lambda t: spectral_filter(t, return_info=True)))
  errors = {}
  for dim in (10, 1000):
    draws = [_annulus(rng, dim) for _ in range(3)]
    x = np.stack([d[0] for d in draws])
    honest_mean = np.stack([d[1] for d in draws])
    # Zero-padding to 1000 coordinates changes no distance: one compile.
    padded = np.pad(x, ((0, 0), (0, 0), (0, 1000 - dim)))
    out, info = batched({"w": jnp.asarray(padded)})
    out_w = np.asarray(out["w"])[:, :dim]
    filt = np.linalg.norm(out_w - honest_mean, axis=1)
    mean = np.linalg.norm(x.mean(axis=1) - honest_mean, axis=1)
    if dim == 1000:  # the filter removes exactly the corrupt rows
      np.testing.assert_array_equal(np.asarray(info.active),
                                    np.tile(np.arange(40) >= 8, (3, 1)))
    errors[dim] = (filt.max(), mean.min())
  # Honest rows are N(0, I): the filter's error stays below one honest
  # standard deviation in both dimensions ...
  assert errors[10][0] < 1.0 and errors[1000][0] < 1.0
  # ... while the mean's error is 0.2 * sqrt(d): ~0.63 and ~6.3.
  assert errors[1000][1] > 5.0
  assert errors[1000][1] > 7.0 * errors[10][1]


def test_clean_data_is_not_over_filtered():
  rng = np.random.default_rng(11)
  batched = jax.jit(jax.vmap(
      lambda t: spectral_filter(t, return_info=True)))
  for dim in (5, 200):
    x = rng.normal(size=(10, 32, dim)).astype(np.float32)
    # Zero-padding to 200 coordinates changes no distance: one compile.
    padded = np.pad(x, ((0, 0), (0, 0), (0, 200 - dim)))
    out, info = batched({"w": jnp.asarray(padded)})
    out = {"w": np.asarray(out["w"])[:, :dim]}
    dropped = 32 - np.asarray(info.active).sum(axis=1)
    # 10 independent draws: at most one draw loses any worker, none loses
    # more than a couple.
    assert (dropped > 0).sum() <= 1 and dropped.max() <= 3, dropped
    err = np.linalg.norm(np.asarray(out["w"]) - x.mean(axis=1), axis=1)
    spread = np.sqrt(dim / 32.0)  # the sampling error of the mean itself
    assert err.max() < 0.3 * spread, err


def test_symmetric_clusters_do_not_empty_the_kept_set():
  rng = np.random.default_rng(12)
  x = (0.01 * rng.normal(size=(20, 6))).astype(np.float32)
  x[:10, 0] += 1.0
  x[10:, 0] -= 1.0
  # threshold 4 * 20 * 0.09 = 7.2 < 20; one round suffices for both cases
  # (max_rounds=1 shares the compile of test_max_rounds_bounds_the_filter).
  out, info = _sf(x, sigma=0.3, max_rounds=1)
  # Every score is within a few percent of tau_max, so the round would
  # remove everyone: it is not applied, the filter stops unconverged.
  assert bool(np.all(info.active)) and not bool(info.converged)
  assert int(info.num_rounds) == 0
  np.testing.assert_allclose(info.statistic, 20.0, rtol=0.02)
  np.testing.assert_allclose(out["w"], x.mean(axis=0), atol=1e-6)
  x[8:10, 0] -= 2.0  # 8 against 12: the minority goes
  out, info = _sf(x, sigma=0.3, max_rounds=1)
  assert int(info.num_rounds) == 1 and bool(info.converged)
  np.testing.assert_array_equal(np.asarray(info.active), np.arange(20) >= 8)
  np.testing.assert_allclose(out["w"], x[8:].mean(axis=0), atol=1e-6)


def test_all_erased_gives_zeros():
  x = np.full((20, 6), np.nan, np.float32)
  out, info = _sf(x)
  np.testing.assert_array_equal(out["w"], np.zeros(6))
  assert not np.asarray(info.active).any()


@pytest.mark.parametrize("kwargs,name", [
    (dict(sigma=0.0), "sigma"),
    (dict(sigma=-1.0), "sigma"),
    (dict(sigma="1"), "sigma"),
    (dict(max_rounds=-1), "max_rounds"),
    (dict(max_rounds=1.5), "max_rounds"),
    (dict(power_iters=0), "power_iters"),
    (dict(power_iters=2.0), "power_iters"),
    (dict(power_tol=-1e-3), "power_tol"),
])
def test_bad_hyperparameters_raise(kwargs, name):
  x = {"w": jnp.zeros((4, 3))}
  with pytest.raises(ValueError, match=name):
    spectral_filter(x, **kwargs)


def test_mismatched_worker_axes_raise():
  with pytest.raises(ValueError, match="worker"):
    spectral_filter({"a": jnp.zeros((4, 3)), "b": jnp.zeros((5, 3))})


# --------------------------------------------------------------------------
# theorem_sigma0: Data & Diggavi's sigma_0 (Theorem 1 / Theorem 3, eq. (12)).


def _np_theorem_sigma0_sq(sigma, b, r, d, eps, eps_prime, kappa):
  """sigma_0^2 = 24 sigma^2 / (b eps') (1 + d / ((1 - (eps + eps')) R))
  + 16 kappa^2, written out term by term."""
  sampling = 24.0 * sigma * sigma / (b * eps_prime)
  honest_workers = (1.0 - (eps + eps_prime)) * r
  return sampling * (1.0 + d / honest_workers) + 16.0 * kappa * kappa


@pytest.mark.parametrize("sigma, b, r, d, eps, eps_prime, kappa", [
    (1.0, 1, 50, 1000, 0.2, 0.05, 0.0),
    (3.0, 16, 50, 100, 0.0, 0.25, 0.0),
    (0.5, 64, 10, 7, 0.1, 0.1, 2.0),
])
def test_theorem_sigma0_matches_the_papers_formula(sigma, b, r, d, eps,
                                                   eps_prime, kappa):
  got = sf_module.theorem_sigma0(sigma=sigma, batch_size=b, num_workers=r,
                                 dim=d, eps=eps, eps_prime=eps_prime,
                                 kappa=kappa)
  want = _np_theorem_sigma0_sq(sigma, b, r, d, eps, eps_prime, kappa)
  assert got ** 2 == pytest.approx(want, rel=1e-12)


def test_theorem_sigma0_scaling_in_b_and_r():
  """sigma_0 ~ 1/sqrt(b) (kappa = 0); the 1 + d/R term tends to 1 in R."""
  kw = dict(sigma=2.0, dim=400, eps=0.2, eps_prime=0.05)
  s1 = sf_module.theorem_sigma0(batch_size=1, num_workers=50, **kw)
  s16 = sf_module.theorem_sigma0(batch_size=16, num_workers=50, **kw)
  assert s1 / s16 == pytest.approx(4.0, rel=1e-12)
  big_r = sf_module.theorem_sigma0(batch_size=1, num_workers=10**9, **kw)
  assert big_r ** 2 == pytest.approx(24 * 4.0 / 0.05, rel=1e-6)
  assert s1 ** 2 / big_r ** 2 == pytest.approx(1 + 400 / (0.75 * 50),
                                               rel=1e-6)


@pytest.mark.parametrize("kwargs, name", [
    (dict(eps=0.2, eps_prime=0.1), "eps_prime"),  # eps + eps' > 1/4
    (dict(eps=0.2, eps_prime=0.0), "eps_prime"),
    (dict(eps=0.25, eps_prime=0.01), "eps"),
    (dict(batch_size=0), "batch_size"),
    (dict(num_workers=2.5), "num_workers"),
    (dict(sigma=-1.0), "sigma"),
    (dict(kappa=float("nan")), "kappa"),
])
def test_theorem_sigma0_bad_arguments_raise(kwargs, name):
  kw = dict(sigma=1.0, batch_size=1, num_workers=20, dim=6, eps=0.2,
            eps_prime=0.05)
  kw.update(kwargs)
  with pytest.raises(ValueError, match=name):
    sf_module.theorem_sigma0(**kw)


def test_papers_stopping_rule_keeps_attacks_within_its_bound():
  """With the theorem's sigma_0 the filter runs the paper's rule, 4 R s0^2.

  Honest rows N(0, I_6) are mini-batch gradients with trace variance
  sigma^2 / b = 6 (b = 1). For the R = 20, eps = 0.2, eps' = 0.05 of the
  theorem, sigma_0 ~ 63: a cluster at offset 12 (far outside the honest
  spread) pulls the mean by less than sigma_0 sqrt(eps + eps'), so the
  paper's rule keeps it; one at offset 2000 is removed.
  """
  s0 = sf_module.theorem_sigma0(sigma=np.sqrt(6.0), batch_size=1,
                                num_workers=20, dim=6, eps=0.2,
                                eps_prime=0.05)
  # The filter is scale-equivariant: rows / s and sigma_0 / s decide the
  # same, so sigma = 1.5 (compiled for the oracle test above) is reused.
  unit = s0 / 1.5
  rng = np.random.default_rng(3)
  near = _attacked(rng, offset=12.0)
  out, info = _sf(near / unit, sigma=1.5)
  assert int(info.num_rounds) == 0 and np.asarray(info.active).all()
  np.testing.assert_allclose(info.threshold * unit ** 2, 4 * 20 * s0 ** 2,
                             rtol=1e-5)
  np.testing.assert_allclose(out["w"] * unit, near.mean(0), rtol=0,
                             atol=1e-5)
  assert np.linalg.norm(near.mean(0) - near[4:].mean(0)) < s0 * 0.5
  far = _attacked(rng, offset=2000.0)
  out, info = _sf(far / unit, sigma=1.5)
  np.testing.assert_array_equal(np.asarray(info.active)[:4], False)
  assert np.asarray(info.active)[4:].all()
  np.testing.assert_allclose(out["w"] * unit, far[4:].mean(0), rtol=0,
                             atol=1e-3)
