"""Tests of experiments/acharya.py: its pieces, and the --quick run."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from tests.helpers import np_geometric_median




acharya = helpers.load_script("experiments/acharya.py", "_exp_acharya")


def test_rows_match_the_paper_table():
  assert set(acharya.ROWS) == set(acharya.PAPER)
  assert len(acharya.ROWS) == 11
  for row, (_, fraction) in acharya.ROWS.items():
    assert row == "clean" or row.endswith(f"_{round(100 * fraction)}")


@pytest.mark.parametrize("row,expected", [
    ("clean", 0), ("bit_flip_20", 6), ("bit_flip_40", 12),
    ("impulse_20", 6), ("backdoor_40", 12)])
def test_num_byzantine_is_floor_of_fraction_of_32(row, expected):
  assert acharya.num_byzantine(row, 32) == expected


def test_num_byzantine_exact_fractions():
  assert acharya.num_byzantine("bit_flip_20", 10) == 2
  assert acharya.num_byzantine("bit_flip_40", 10) == 4


def test_fixed_rows_are_their_base_rows():
  assert acharya.base_row("bit_flip_40_fixed") == "bit_flip_40"
  assert acharya.base_row("clean") == "clean"
  assert acharya.num_byzantine("bit_flip_20_fixed", 32) == 6
  attack, _ = acharya.corruption("bit_flip_20_fixed", jax.random.key(0))
  g = {"w": jnp.ones((2, 3))}
  out, _ = attack.update(g, attack.init(g), byzantine=jnp.array([True, False]))
  np.testing.assert_allclose(out["w"][0], -100.0)


def test_gradient_corruptions_rewrite_only_byzantine_rows():
  g = {"w": jnp.arange(12.0).reshape(4, 3) + 1.0}
  byz = jnp.array([True, False, False, True])
  attack, data_attack = acharya.corruption("bit_flip_20", jax.random.key(0))
  assert data_attack is None
  out, _ = attack.update(g, attack.init(g), byzantine=byz)
  np.testing.assert_allclose(out["w"][0], -100 * g["w"][0])
  np.testing.assert_allclose(out["w"][1:3], g["w"][1:3])
  attack, _ = acharya.corruption("additive_40", jax.random.key(1))
  out, _ = attack.update(g, attack.init(g), byzantine=byz)
  np.testing.assert_allclose(out["w"][1:3], g["w"][1:3])
  noise = np.asarray(out["w"] - g["w"])[np.asarray(byz)]
  assert np.all(np.abs(noise) > 0) and np.std(noise) > 3  # sd 10


def test_data_corruptions():
  key = jax.random.key(0)
  x = jnp.full((5, 28, 28, 1), 0.5)
  y = jnp.arange(5, dtype=jnp.int32)
  _, attack = acharya.corruption("backdoor_20", key)
  ax, ay = attack(key, x, y)
  np.testing.assert_array_equal(ay, np.full(5, acharya.BACKDOOR_CLASS))
  np.testing.assert_array_equal(ax, x)
  _, attack = acharya.corruption("impulse_40", key)
  ax, ay = attack(key, x, y)
  np.testing.assert_array_equal(ay, y)
  hit = np.asarray(ax != 0.5)
  assert 0.85 < hit.mean() < 0.95  # 90% of the pixels
  assert set(np.unique(np.asarray(ax)[hit])) <= {0.0, 1.0}
  _, attack = acharya.corruption("feature_additive_20", key)
  ax, _ = attack(key, x, y)
  assert 8 < float(jnp.std(ax - x)) < 12  # variance 100
  assert acharya.corruption("clean", key) == (None, None)


@pytest.mark.parametrize("name", acharya.AGGREGATORS + (
    # One more compilation; block_geometric_median has its own tests.
    pytest.param("bgmd_nomem", marks=pytest.mark.slow),))
def test_server_tx_aggregates_like_numpy(name):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 5)).astype(np.float32)
  x[0] += 50.0  # one outlier
  params = {"w": jnp.zeros(5)}
  # block fraction 1: BGMD's block is every coordinate, i.e. the full GM.
  tx = acharya.server_tx(name, learning_rate=1.0, num_workers=7,
                         block_fraction=1.0, gm_iters=500)
  update, _ = jax.jit(tx.update)({"w": jnp.asarray(x)}, tx.init(params),
                                 params)
  expected = {"sgd": x.mean(0), "cmd": np.median(x, 0),
              "gmd": np_geometric_median(x),
              "bgmd": np_geometric_median(x),
              "bgmd_pw": np_geometric_median(x),
              "bgmd_nomem": np_geometric_median(x)}[name]
  np.testing.assert_allclose(-np.asarray(update["w"]), expected, rtol=2e-4,
                             atol=2e-4)


@pytest.mark.slow  # three compilations; r_t = 1 - mass is also checked in
# the default suite (tests/transforms/test_block_memory.py)
def test_block_diagnostics_match_numpy():
  """r_t = |G - C_k(G)|^2 / |G|^2 and the memory norms, step 1 and 2."""
  rng = np.random.default_rng(1)
  r, d = 5, 10
  g = rng.normal(size=(2, r, d)).astype(np.float32) * rng.uniform(
      0.1, 3.0, size=d).astype(np.float32)
  params = {"w": jnp.zeros(d)}
  for name in ("bgmd", "bgmd_pw", "bgmd_nomem"):
    tx = acharya.server_tx(name, learning_rate=0.5, num_workers=r,
                           block_fraction=0.3, gm_iters=50)
    state = tx.init(params)
    assert np.isnan(acharya.block_diagnostics(
        state, per_worker=name == "bgmd_pw")["memory_norm"])
    memory = np.zeros((r, d)) if name == "bgmd_pw" else np.zeros(d)
    for t in range(2):
      _, state = tx.update({"w": jnp.asarray(g[t])}, state, params)
      diag = acharya.block_diagnostics(state, per_worker=name == "bgmd_pw")
      if name == "bgmd_nomem":  # no memory: G_t is the raw updates
        big = g[t].astype(np.float64)
      else:  # step-size units: G_t = 0.5 g + m_t
        big = 0.5 * g[t] + memory
      score = (big ** 2).sum(axis=0)
      keep = np.argsort(-score)[:3]  # k = ceil(0.3 * 10)
      resid = big.copy()
      resid[:, keep] = 0.0
      np.testing.assert_allclose(diag["residual"],
                                 (resid ** 2).sum() / (big ** 2).sum(),
                                 rtol=1e-4)
      if name == "bgmd_nomem":
        assert np.isnan(diag["memory_norm"])
        continue
      memory = resid if name == "bgmd_pw" else resid.mean(axis=0)
      rows = np.sqrt((np.atleast_2d(memory) ** 2).sum(axis=1))
      np.testing.assert_allclose(diag["memory_norm"],
                                 np.sqrt(np.mean(rows ** 2)), rtol=1e-4)
      np.testing.assert_allclose(diag["memory_norm_max"], rows.max(),
                                 rtol=1e-4)
  assert all(np.isnan(v) for v in acharya.block_diagnostics(
      acharya.server_tx("gmd", learning_rate=0.5, num_workers=r,
                        block_fraction=0.3, gm_iters=5).init(params),
      per_worker=False).values())


def test_time_to_reach_and_speedup():
  wall = np.array([0.0, 1.0, 2.0, 3.0])
  acc = np.array([0.1, 0.5, 0.8, 0.9])
  assert acharya.time_to_reach(wall, acc, 0.8) == 2.0
  assert np.isnan(acharya.time_to_reach(wall, acc, 0.95))
  rows = []
  for agg, scale in (("bgmd", 1.0), ("gmd", 3.0)):
    for s, (w, a) in enumerate(zip(wall, acc)):
      rows.append(dict(row="clean", aggregator=agg, step=s, wall_s=scale * w,
                       test_accuracy=a, seed=0))
  s = acharya.speedup(rows, "clean", "bgmd")
  assert s["speedup"] == pytest.approx(3.0)
  assert s["per_step"] == pytest.approx(3.0)
  assert s["target"] == pytest.approx(0.99 * 0.9)


def test_load_rows_round_trips_and_reuse_selects(tmp_path):
  rows = [dict(row="clean", aggregator=a, step=s, epoch=s / 4, wall_s=0.5 * s,
               train_loss=float("nan") if s == 0 else 1.0 / s,
               test_accuracy=0.1 * s, backdoor_rate=0.0, compile_s=1.0,
               seed=0) for a in ("sgd", "gmd") for s in range(3)]
  from byzjax import simulation
  simulation.write_csv(rows, str(tmp_path / "table.csv"))
  back = acharya.load_rows(str(tmp_path / "table.csv"))
  assert len(back) == len(rows)
  for a, b in zip(rows, back):
    assert a.keys() == b.keys()
    for k in a:
      if isinstance(a[k], float) and np.isnan(a[k]):
        assert np.isnan(b[k])
      else:
        assert a[k] == b[k] and type(a[k]) is type(b[k]), k
  assert len(acharya._reused(back, "clean", "gmd", 0)) == 3
  assert acharya._reused(back, "clean", "cmd", 0) == []
  assert acharya.load_rows(str(tmp_path / "missing.csv")) == []


def test_final_stats_counts_divergence():
  rows = [dict(row="r", aggregator="sgd", step=10, seed=s, wall_s=1.0,
               test_accuracy=a, train_loss=l, backdoor_rate=0.0)
          for s, (a, l) in enumerate([(0.8, 0.5), (0.1, 2.3),
                                      (0.7, float("nan"))])]
  st = acharya.final_stats(rows, row="r", aggregator="sgd")
  assert st["n"] == 3 and st["n_diverged"] == 2
  assert st["acc_mean"] == pytest.approx(0.8)
  assert acharya._cell(st).startswith("80.00")


@pytest.mark.slow
def test_quick_run(tmp_path):
  out = acharya.main(["--quick", "--out", str(tmp_path)])
  for name in ("table.csv", "hetero.csv", "hetero_lr_search.csv",
               "memory.csv", "timing.csv", "table.png", "hetero.png",
               "memory.png", "summary.md", "config.json"):
    assert (tmp_path / name).exists(), name
  cfg = out["cfg"]
  rows = out["table"]
  stats = {(row, a): acharya.final_stats(rows, row=row, aggregator=a)
           for row in cfg["rows"] for a in cfg["aggregators"]}
  # Training works; the mean breaks under the -100 g bit flip of 3 of 8
  # workers (redrawn every step) and the full geometric median does not.
  assert stats["clean", "sgd"]["acc_mean"] > 0.5
  assert stats["bit_flip_40", "sgd"]["n_diverged"] == 1
  assert stats["bit_flip_40", "gmd"]["n_diverged"] == 0
  assert stats["bit_flip_40", "gmd"]["acc_mean"] > 0.3
  # With one Byzantine set kept throughout, BGMD with per-worker memory
  # trains (at full scale it matches GMD; after 20 quick
  # steps it is behind), and Algorithm 1's shared memory (which averages
  # the -100 g residuals into every row) does not.
  fixed = "bit_flip_40" + acharya.FIXED
  assert stats[fixed, "bgmd_pw"]["n_diverged"] == 0
  assert stats[fixed, "bgmd_pw"]["acc_mean"] > 0.3
  assert (stats[fixed, "bgmd_pw"]["acc_all_mean"]
          > stats[fixed, "bgmd"]["acc_all_mean"] + 0.1)
  # Redrawn every step (the paper's protocol), the per-worker memory also
  # carries the Byzantine residuals into honest steps: it falls far behind
  # GMD and behind itself with the fixed set (our finding; the paper
  # reports BGMD at or above GMD).
  assert (stats["bit_flip_40", "bgmd_pw"]["acc_all_mean"]
          < stats["bit_flip_40", "gmd"]["acc_mean"] - 0.2)
  assert (stats["bit_flip_40", "bgmd_pw"]["acc_all_mean"]
          < stats[fixed, "bgmd_pw"]["acc_all_mean"] - 0.1)
  # The backdoor pushes the mean towards class 8 more than it does clean.
  assert (stats["backdoor_20", "sgd"]["backdoor_rate"]
          > stats["clean", "sgd"]["backdoor_rate"])
  # Figure 1: at β = 0.01 the memory is what makes the block GM train: well
  # above the block GM without memory, and near the full GM.
  mem = out["memory"]
  with_m = acharya.final_stats(mem, aggregator="bgmd_pw", block_fraction=0.01)
  without = acharya.final_stats(mem, aggregator="bgmd_nomem",
                                block_fraction=0.01)
  full = acharya.final_stats(mem, aggregator="gmd")
  assert with_m["acc_all_mean"] > without["acc_all_mean"] + 0.1
  assert with_m["acc_all_mean"] > full["acc_all_mean"] - 0.05
  assert all(0.0 <= r["residual"] <= 1.0 for r in mem
             if r["aggregator"] != "gmd" and r["step"] > 0)
  # App. C.1's search: the step size used is the grid's best final accuracy.
  search = out["hetero_lr_search"]
  finals = {lr: acharya.final_stats(search, lr=lr)["acc_all_mean"]
            for lr in acharya.LR_GRID}
  assert cfg["hetero_lr"] == max(finals, key=finals.get)
  # Class-sharded: the mean breaks under the bit flip of 2 of 10 clients
  # (18.8% at quick scale, 10% at full scale); GMD keeps training.
  het = out["hetero"]
  assert acharya.final_stats(het, row="bit_flip_20",
                             aggregator="sgd")["acc_all_mean"] < 0.25
  assert (acharya.final_stats(het, row="bit_flip_20",
                              aggregator="gmd")["acc_all_mean"]
          > acharya.final_stats(het, row="bit_flip_20",
                                aggregator="sgd")["acc_all_mean"] + 0.1)
  assert len(out["timing"]) == 1 + len(cfg["aggregators"])
  assert all(r["seconds"] > 0 for r in out["timing"])
