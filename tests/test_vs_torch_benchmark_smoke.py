"""Smoke test of experiments/benchmarks/vs_torch.py at tiny sizes.

No timing is asserted. It checks that the torch twins of the models compute
the same per-worker gradients as byzjax on the same batches (so that the
benchmark compares the same computation), that the torch aggregators agree
with byzjax's, and that the outputs are written.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from byzjax.aggregators.norm_threshold import norm_threshold
from byzjax.aggregators.geometric_median import geometric_median
from tests import helpers

torch = pytest.importorskip("torch")  # the optional `bench` extra
bench = helpers.load_script("experiments/benchmarks/vs_torch.py",
                            "_bench_vs_torch")


def test_torch_aggregators_match_byzjax():
  rng = np.random.default_rng(0)
  g = rng.standard_normal((11, 7)).astype(np.float32)
  g[3] *= 50.0
  np.testing.assert_allclose(
      bench.torch_norm_threshold(torch.from_numpy(g), 0.2).numpy(),
      norm_threshold({"w": jnp.asarray(g)}, trim_fraction=0.2)["w"],
      rtol=1e-5, atol=1e-6)
  z, iters = bench.torch_weiszfeld(torch.from_numpy(g))
  tight = geometric_median({"w": jnp.asarray(g)},
                           criterion="step", tol=1e-9, max_iters=1000)["w"]
  objective = lambda p: np.sum(np.linalg.norm(g.astype(np.float64) - p, axis=1))
  assert 1 <= iters <= bench.GM_MAX_ITERS
  # Stopped by the relative-decrease rule: near the minimum, not at it.
  assert objective(z.numpy()) <= objective(np.asarray(tight)) * (1 + 1e-4)


def _check_run(tmp_path, workloads):
  rows = bench.main(["--quick", "--out", str(tmp_path), "--workloads",
                     ",".join(workloads), "--repeats", "1"])
  assert {(r["workload"], r["method"]) for r in rows} == {
      (w, m) for w in workloads
      for m in ("byzjax", "torch loop", "torch vmap")}
  for r in rows:
    assert r["ms_per_step"] > 0 and r["grad_check"] < 1e-4
  assert next(r for r in rows if r["method"] == "byzjax")["compile_s"] > 0
  saved = json.loads((tmp_path / "vs_torch.json").read_text())
  assert len(saved["rows"]) == len(rows) and "torch_version" in saved["machine"]
  assert (tmp_path / "vs_torch.png").stat().st_size > 0
  assert "load average" in (tmp_path / "vs_torch.md").read_text()
  return rows


@pytest.mark.slow  # end-to-end or many compilations; run with -m slow
def test_quick_small_workload(tmp_path):
  rows = _check_run(tmp_path, ["small"])
  assert rows[0]["roofline_ms"] > 0


@pytest.mark.slow
def test_quick_mlp_and_lenet_workloads(tmp_path):
  """The torch MLP/LeNet twins give byzjax's gradients (grad_check)."""
  rows = _check_run(tmp_path, ["mlp_mean", "mlp_gm", "lenet"])
  assert all(r["gm_iters"] >= 1 for r in rows if r["workload"] == "mlp_gm")
