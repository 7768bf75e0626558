"""Tests of experiments/chen_su_xu.py: its pieces, and the --quick run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers




csx = helpers.load_script("experiments/chen_su_xu.py", "_exp_chen_su_xu")


def test_byzantine_mask_puts_one_worker_per_group():
  # m = 16, k = 4 groups of 4 contiguous workers, q = 3.
  mask = np.asarray(jax.jit(csx.byzantine_mask, static_argnums=(0, 1, 2))(
      16, 3, 4))
  assert mask.sum() == 3
  groups = np.nonzero(mask)[0] // 4
  assert sorted(groups.tolist()) == [0, 1, 2]
  # stride 1: the first q workers.
  np.testing.assert_array_equal(np.nonzero(csx.byzantine_mask(8, 2, 1))[0],
                                [0, 1])


def test_super_sample_loss_is_full_batch_least_squares():
  make = jax.jit(csx.make_data, static_argnums=(1, 2, 3))
  data, theta_star, theta_ls = make(jax.random.key(0), 4, 50, 3, 0.5)
  assert data.x.shape == (4, 1, 50, 3) and data.y.shape == (4, 1, 50)
  w = jnp.array([0.3, -1.0, 2.0])
  x, y = np.asarray(data.x[2, 0]), np.asarray(data.y[2, 0])
  expected = x.T @ (x @ np.asarray(w) - y) / 50
  got = jax.grad(csx.loss_fn)({"w": w}, (data.x[2], data.y[2]))["w"]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # The oracle is the least-squares solution of all 200 samples.
  xa = np.asarray(data.x).reshape(200, 3)
  ya = np.asarray(data.y).reshape(200)
  np.testing.assert_allclose(theta_ls, np.linalg.lstsq(xa, ya, rcond=None)[0],
                             rtol=1e-4, atol=1e-4)
  assert np.linalg.norm(theta_ls - theta_star) < 0.5


def test_slope_and_rate_helpers():
  q = np.array([1, 2, 4, 8])
  assert csx.loglog_slope(q, 3 * q ** 0.5) == pytest.approx(0.5, abs=1e-6)
  to_last = np.array([[0.5 ** t for t in range(30)]] * 2)
  assert csx.convergence_rate(to_last) == pytest.approx(0.5, rel=1e-3)
  # e_t = 0.6^t e_0 + plateau: the transient (e_t > 3 plateau) has
  # (e_t / e_0)^(1/t) <= 0.6 (1 + plateau / (0.6^t e_0))^(1/t), at most ~0.8.
  t = np.arange(1, 31)
  e = np.stack([2.0 * 0.6 ** t + 1e-3, 3.0 * 0.6 ** t + 1e-3])
  rho = csx.transient_contraction(np.array([2.0, 3.0]), e)
  assert 0.6 < rho < 0.8
  # No step above 3x the plateau: nothing to measure.
  assert np.isnan(csx.transient_contraction(np.array([2.0, 3.0]), 0 * e + 1))


@pytest.mark.slow
def test_quick_run(tmp_path):
  # --quick asserts Corollary 1's claims itself (csx.check_claims):
  # contraction <= 1/2 + sqrt(3)/4 per step for GMoM with and without
  # Remark 2's trimming, plateau ~ N^(-1/2), the mean destroyed.
  out = csx.main(["--quick", "--out", str(tmp_path)])
  for name in ("results.csv", "plateaus.csv", "curves.png", "scaling.png",
               "summary.md", "config.json"):
    assert (tmp_path / name).exists(), name
  assert "plateau slope in N" in out["claims"]
  assert max(v for k, v in out["claims"].items()
             if k.startswith("contraction")) <= csx.COROLLARY_RATE
