"""Tests of experiments/data_diggavi.py: its pieces, and the --quick run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byzjax.attacks.gradient import annulus
from byzjax.compression import draw_coordinates

from tests import helpers




dd = helpers.load_script("experiments/data_diggavi.py", "_exp_data_diggavi")


def test_fit_slope_recovers_power_law():
  x = np.array([10.0, 100.0, 1000.0])
  assert dd.fit_slope(x, 3.0 * x ** 0.5) == pytest.approx(0.5, abs=1e-9)
  assert dd.fit_slope(x, 2.0 * x ** -1.0) == pytest.approx(-1.0, abs=1e-9)
  assert np.isnan(dd.fit_slope([1.0], [1.0]))


@pytest.mark.parametrize("radius", [0.3, 2.0])
def test_scaled_annulus_matches_library_annulus(radius):
  """Moving the radius-1 annulus point along its ray = annulus at radius c."""
  def both(key):
    x, _, byz = dd.attacked_gradients(key, 5, radius, 2, num_workers=7,
                                      max_dim=8)
    # The honest rows and the direction, rebuilt as the function does.
    k_noise, k_dir = jax.random.split(key)
    mask = (jnp.arange(8) < 5).astype(jnp.float32)
    honest = mask + mask * jax.random.normal(k_noise, (7, 8))
    u = mask * jax.random.normal(k_dir, (8,))
    ref = annulus({"w": honest}, byz, direction={"w": u},
                  radius_scale=radius)["w"]
    return x, byz, ref

  x, byz, ref = jax.jit(both)(jax.random.key(3))
  np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(x)[:, 5:], 0.0)  # padding
  np.testing.assert_array_equal(np.asarray(byz), [1, 1, 0, 0, 0, 0, 0])


def test_part_a_tiny_filter_removes_annulus_and_mean_grows_like_sqrt_d():
  """Fast version of part (a): d = 100 and 1000 in one compile, 2 seeds."""
  rows = dd.aggregation_sweep([(100, 1.0, 10), (1000, 1.0, 10)], seeds=2,
                              key=jax.random.key(0),
                              names=("mean", "spectral_filter"))
  by_dim = {d: [r for r in rows if r["dim"] == d] for d in (100, 1000)}
  mean_ex = {d: np.mean([r["mean/excess"] for r in v])
             for d, v in by_dim.items()}
  filt_ex = {d: np.mean([r["spectral_filter/excess"] for r in v])
             for d, v in by_dim.items()}
  # The mean moves by eps * rho = 0.2 * (about sigma sqrt(d)).
  assert mean_ex[1000] == pytest.approx(0.2 * np.sqrt(1000), rel=0.15)
  assert dd.fit_slope([100, 1000], [mean_ex[100], mean_ex[1000]]) == (
      pytest.approx(0.5, abs=0.05))
  # The filter keeps exactly the honest workers at d = 1000.
  assert filt_ex[1000] < 1e-4 * mean_ex[1000]
  for r in by_dim[1000]:
    assert r["spectral_filter/byz_kept"] == 0
    assert r["spectral_filter/honest_dropped"] == 0
    assert r["spectral_filter/error"] == pytest.approx(r["oracle"], rel=1e-4)


def test_honest_optimum_zeroes_honest_gradient_and_kappa_matches():
  """_honest_stats against jax.grad of the tilted loss on full batches."""
  r, n, d = 5, 12, 3
  task = dd.regression_task(jax.random.key(1), num_workers=r, samples=n,
                            dim=d)
  byz = jnp.array([True, False, False, True, False])
  shift = 2.5
  w_hat, mean_tilt, stats = dd._honest_stats(task, byz, shift)
  loss = dd._regression_loss(n, shift, mean_tilt, n)
  grads = np.asarray(jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(
      {"w": w_hat}, (task.data.x, task.data.y))["w"])
  honest = ~np.asarray(byz)
  g_h = grads[honest].mean(0)
  np.testing.assert_allclose(g_h, 0.0, atol=1e-4)
  dev = np.linalg.norm(grads[honest] - g_h, axis=1)
  np.testing.assert_allclose(stats["kappa_sup"], dev.max(), rtol=1e-4)
  np.testing.assert_allclose(stats["kappa_rms"], np.sqrt(np.mean(dev ** 2)),
                             rtol=1e-4)
  # The honest optimum does not depend on the heterogeneity.
  w0, _, stats0 = dd._honest_stats(task, byz, 0.0)
  np.testing.assert_allclose(w_hat, w0, rtol=1e-5, atol=1e-6)
  assert stats["kappa_sup"] > stats0["kappa_sup"]


def test_shared_rand_k_filter_updates_only_shared_coordinates():
  """Identical workers: the filter returns (d/k) times their row at K."""
  key = jax.random.key(2)
  tx = dd.shared_rand_k_filter(3, key, num_workers=6)
  params = {"a": jnp.zeros(4), "b": jnp.zeros((2, 2))}
  row = np.arange(1.0, 9.0, dtype=np.float32)
  x = np.tile(row, (6, 1))
  updates = {"a": x[:, :4], "b": x[:, 4:].reshape(6, 2, 2)}
  state = tx.init(params)
  out, state = jax.jit(tx.update)(updates, state, params)
  coords = np.asarray(draw_coordinates(jax.random.split(key)[1], params, 3))
  flat = np.concatenate([np.asarray(out["a"]), np.asarray(out["b"]).ravel()])
  expected = np.zeros(8, np.float32)
  expected[coords] = 8 / 3 * row[coords]  # (d/k) select_K: Algorithm 2
  np.testing.assert_allclose(flat, expected, rtol=1e-6)
  assert np.asarray(state.filter.info.active).all()  # diagnostics kept
  # The key advances, so the next step draws new coordinates.
  assert not np.array_equal(jax.random.key_data(state.key),
                            jax.random.key_data(key))


@pytest.mark.slow
def test_quick_run_writes_outputs_and_shows_the_claims(tmp_path):
  out = tmp_path / "dd"
  s = dd.main(["--out", str(out), "--quick"])
  for name in dd.NAMES.values():
    for ext in ("csv", "png", "md"):
      path = out / f"{name}.{ext}"
      assert path.exists() and path.stat().st_size > 0, path
  assert (out / "summary.md").exists() and (out / "config.json").exists()

  # (a) At the largest d the filter's added error is ~0 (byzjax's sigma=None
  # rule), the others' is not, and theirs grows like sqrt(d).
  a = s["a"]
  for name in ("mean", "coordinate_median", "krum", "geometric_median"):
    assert a["slopes"][name] == pytest.approx(0.5, abs=0.1), name
    assert a["excess"]["spectral_filter"][-1] < 1e-3 * a["excess"][name][-1]
  assert a["error"]["spectral_filter"][-1] == pytest.approx(a["oracle"][-1],
                                                            rel=1e-3)
  # ...but its worst case over the radius is of order sqrt(eps) sigma_emp.
  fw = a["filter_worst"]
  ratio = fw["values"][-1] / (np.sqrt(0.2) * fw["sigma_emp"][-1])
  assert 0.2 < ratio < 2.0
  # The paper's stopping rule (sigma_0 of Theorem 1) keeps all 10 attackers
  # of the radius-1 annulus at R = 50, at every d: its output is the mean.
  assert all(k == 10 for k in a["paper_filter_byz_kept"])
  np.testing.assert_allclose(a["excess"]["spectral_filter_paper"],
                             a["excess"]["mean"], rtol=1e-4)
  # It removes the attack only at a radius c* whose pull on the mean exceeds
  # the theorem's own bound sigma_0 sqrt(eps + eps'); c* shrinks with R like
  # sqrt(1 + d / ((1 - eps - eps') R)), the paper's 1 + d/R term.
  rule = {t["R"]: t for t in a["rule"]["table"]}
  lo, hi = min(rule), max(rule)
  for t in rule.values():
    assert t["c_star"] is not None and t["kept_c1"] == t["f"]
    assert t["mean_excess_at_c_star"] > t["bound"]
    # O(sigma_0 sqrt(eps + eps')) hides a constant; measured about 1.7.
    assert t["paper_worst_excess"] < 4 * t["bound"]
  shrink = rule[lo]["c_cross"] / rule[hi]["c_cross"]
  assert shrink == pytest.approx(
      np.sqrt(rule[lo]["factor"] / rule[hi]["factor"]), rel=0.2)

  # (b) Error falls like b^(-1/2) (against the without-replacement b_eff).
  b = s["b"]
  key = ("spectral_filter", 10.0, 1.0)
  assert b["slopes_eff"][key] == pytest.approx(-0.5, abs=0.2)

  # (c) Breakdown: GM bounded up to 0.4 and broken beyond 1/2; the filter
  # bounded at eps = 0.2; the mean broken at once.
  c = s["c"]["breakdown"]
  assert c["geometric_median"]["last_bounded_eps"] >= 0.4
  assert c["geometric_median"]["first_broken_eps"] >= 0.5
  assert c["spectral_filter"]["last_bounded_eps"] >= 0.2
  assert c["mean"]["first_broken_eps"] == pytest.approx(0.1)

  # (d) Under the annulus attack the filter's error does not follow kappa,
  # the mean's does.
  d = s["d"]
  big = float(max(d["shifts"]))
  fil = d["error"][("spectral_filter", 10.0, 1.0, big)]
  avg = d["error"][("mean", 10.0, 1.0, big)]
  assert fil < 0.2 * avg

  # (e) Algorithm 2 with the paper's (d/k) scaling. At step (k/d) mu/L^2,
  # without attackers, it converges to the same plateau, in more steps; at
  # Theorem 5's mu/L^2 it diverges once d/k is large (k = d/5 here), although
  # it converges at k = d. Under attack, the k-dimensional filter keeps more
  # attackers outside Theorem 5's condition k >= (1 - eps - eps') R.
  e = s["e"]
  k_lo, k_hi = min(e["ks"]), max(e["ks"])
  assert k_lo < e["k_min"] <= sorted(e["ks"])[1]
  slow = "theorem_k_over_d"
  assert e["final"][(0.0, k_lo, slow)] < 1.5 * e["final"][(0.0, k_hi, slow)]
  assert (e["converged_at"][(0.0, k_lo, slow)] >
          e["converged_at"][(0.0, k_hi, slow)])
  assert e["diverged"][(0.0, k_lo, "theorem")] == 1.0
  assert e["diverged"][(0.0, k_hi, "theorem")] == 0.0
  assert e["byz_kept"][(10.0, k_lo, slow)] >= 8
  assert (e["final"][(10.0, k_lo, slow)] >
          1.5 * e["final"][(10.0, k_hi, slow)])
  t = sorted(e["timing"], key=lambda r: r["k"])
  assert t[0]["filter_min_s"] * 2 < t[-1]["filter_min_s"]
  assert os.path.getsize(out / "a_dimension.png") < 200_000
