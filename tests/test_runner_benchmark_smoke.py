"""Smoke test of experiments/benchmarks/runner.py (byzjax.study.run vs torch).

No timing is asserted. The PyTorch aggregators and attacks of the benchmark
are checked against NumPy oracles (experiments/benchmarks/_numpy_reference.py
for the aggregators, loops here for the attacks), the reduced grid against
byzfl_like.toml, and (slow: it compiles byzjax programs, minutes on the loaded
2-core machine) the --quick mode end to end, including the benchmark's own
comparison of the torch functions with byzjax's.
"""

import csv
import json
import math
import statistics

import numpy as np
import pytest

from tests import helpers

torch = pytest.importorskip("torch")  # the `bench` extra

bench = helpers.load_script("experiments/benchmarks/runner.py",
                            "_bench_runner")
npref = helpers.load_script("experiments/benchmarks/_numpy_reference.py",
                            "_bench_numpy_reference")

R, F, D = 11, 3, 40


def _input(seed=0):
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=(R, D)) + 2.0 * rng.normal(size=D)).astype(np.float32)
  x[[1, 4]] *= 50.0     # far rows
  byz = np.zeros(R, bool)
  byz[rng.permutation(R)[:F]] = True
  return x, byz


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_aggregators_match_numpy_oracle(seed):
  x, _ = _input(seed)
  xt = torch.from_numpy(x)
  oracle = {
      "mean": npref.mean(x)[0],
      "trimmed_mean": npref.trimmed_mean(x, trim_fraction=F / R)[0],
      "coordinate_median": npref.coordinate_median(x)[0],
      "geometric_median": npref.geometric_median(x)[0],
      "krum": npref.krum(x, num_byzantine=F)[0],
      "multi_krum": npref.krum(x, num_byzantine=F, num_selected=R - F)[0],
  }
  assert set(oracle) == set(bench.TORCH_AGGREGATORS)
  for name, fn in bench.TORCH_AGGREGATORS.items():
    assert _rel(fn(xt, F).numpy(), oracle[name]) < 1e-5, name
  # Even R: the median averages the two middle values (as byzjax's does).
  np.testing.assert_allclose(
      bench.t_coordinate_median(xt[:10], F).numpy(),
      np.median(x[:10], axis=0), rtol=1e-6)


def test_torch_attacks_match_loop_oracle():
  x, byz = _input(2)
  honest = [i for i in range(R) if not byz[i]]
  mu = [sum(float(x[i, j]) for i in honest) / len(honest) for j in range(D)]
  sd = [math.sqrt(sum((float(x[i, j]) - mu[j]) ** 2 for i in honest) /
                  len(honest)) for j in range(D)]
  # Baruch et al. (2019), Alg. 3 with n = R workers, f Byzantine.
  s = math.floor(R / 2 + 1) - F
  z = statistics.NormalDist().inv_cdf((R - s) / R)
  expect = {
      "sign_flip": [[-v for v in x[i]] if byz[i] else list(x[i])
                    for i in range(R)],
      "alie": [[mu[j] - z * sd[j] for j in range(D)] if byz[i] else list(x[i])
               for i in range(R)],
      "ipm": [[-0.1 * mu[j] for j in range(D)] if byz[i] else list(x[i])
              for i in range(R)],
  }
  xt, bt = torch.from_numpy(x), torch.from_numpy(byz)
  for name, want in expect.items():
    got = bench.t_attack(name, xt, bt, None).numpy()
    np.testing.assert_allclose(got, np.array(want), rtol=1e-5, atol=1e-5,
                               err_msg=name)
  for name in ("none", "label_flip"):   # the sent rows are the momenta
    assert bench.t_attack(name, xt, bt, None) is xt
  noisy = bench.t_attack("gaussian_noise", xt, bt,
                         torch.Generator().manual_seed(0)).numpy()
  np.testing.assert_array_equal(noisy[~byz], x[~byz])
  assert 5.0 < np.std(noisy[byz] - x[byz]) < 15.0   # sigma = 10


def test_reduced_grid_is_byzfl_like_reduced():
  full = bench.load_full()
  small = bench.parse_config(bench.reduced_config())
  assert small.task == full.task.__class__(**{
      **full.task.__dict__, "test_samples": 2000})
  for key in ("num_honest", "batch_size", "worker_momentum", "optimizer",
              "seeds"):
    assert getattr(small.training, key) == getattr(full.training, key), key
  assert set(small.heterogeneity) <= set(full.heterogeneity)
  assert set(small.training.num_byzantine) <= set(full.training.num_byzantine)
  assert {d.label for d in small.defenses} <= {d.label for d in full.defenses}
  assert {a.label for a in small.attacks} <= {a.label for a in full.attacks}
  quick = bench.parse_config(bench.reduced_config(quick=True, steps=4))
  assert quick.training.steps == 4 and quick.training.eval_every == 2


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
  s = bench.main(["--quick", "--out", str(tmp_path), "--threads", "1"])
  assert s["cells"] == 2 and len(s["per_cell"]) == 2
  for err in s["checks"].values():   # torch functions vs byzjax's
    assert err < 1e-5
  for p in s["per_cell"]:
    # 10 steps from scratch on Fashion-MNIST: above chance (0.1) for both.
    assert 0.12 < p["byzjax_acc_mean"] <= 1.0
    assert 0.12 < p["torch_acc_mean"] <= 1.0
  assert s["byzjax_s"] > s["byzjax_compile_s"] > 0
  with open(tmp_path / "runner_cells.csv") as fh:
    assert len(list(csv.DictReader(fh))) == 2
  with open(tmp_path / "runner.json") as fh:
    assert json.load(fh)["ratio"] == pytest.approx(s["ratio"])
  assert "cells/hour" in (tmp_path / "runner.md").read_text()
