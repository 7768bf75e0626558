"""Smoke test of experiments/benchmarks/vs_peers.py at its small size.

Runs the benchmark end to end on R = 16, d = 4000 (hard input, byzjax's
direct geometric median only, so that one Weiszfeld program is compiled) and
checks that every implementation stops by the same rule at the same
objective, and that the tables are written. Timing is never asserted.
"""

import json

import pytest

from tests import helpers

bench = helpers.load_script("experiments/benchmarks/vs_peers.py",
                            "_bench_vs_peers")


@pytest.mark.slow  # end-to-end or many compilations; run with -m slow
def test_small_run_agrees_and_writes_tables(tmp_path):
  rows = bench.main(["--out", str(tmp_path), "--sizes", "small", "--repeats",
                     "1", "--inputs", "hard", "--only", "gm",
                     "--gm-methods", "direct"])
  names = {row["implementation"] for row in rows}
  assert {"byzjax geometric_median (direct)", "numpy Weiszfeld"} <= names
  iters = {row["implementation"]: row["iters"] for row in rows}
  for row in rows:
    assert row["ms"] > 0 and row["passes"] > 0
    # Same rule, same objective: float32 rounding only.
    assert row["objective_rel_diff"] <= 1e-5, row
    assert abs(row["iters"] - iters["numpy Weiszfeld"]) <= 2, iters
  # The hard input needs more than a handful of iterations at this size.
  assert iters["numpy Weiszfeld"] >= 10, iters
  data = json.loads((tmp_path / "vs_peers.json").read_text())
  assert data["bandwidth"]["bandwidth_GBps"] > 0
  assert "load_average_start" in data["machine"]
  assert "| hard | numpy Weiszfeld |" in (tmp_path / "vs_peers.md").read_text()
  lines = (tmp_path / "vs_peers.csv").read_text().splitlines()
  assert len(lines) == 1 + len(rows)


def test_weiszfeld_peers_match_each_other():
  np = pytest.importorskip("numpy")
  x = bench.agg_bench.make_input("easy", 8, 1000, seed=1)
  z, it = bench.numpy_weiszfeld(x)
  assert 1 <= it <= bench.MAX_ITERS
  # The optimality condition of the (smoothed) median: unit vectors sum to ~0.
  units = (x - z) / np.linalg.norm(x - z, axis=1, keepdims=True)
  assert np.linalg.norm(units.sum(axis=0)) < 0.05 * len(x) ** 0.5
