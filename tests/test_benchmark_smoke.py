"""Smoke test of experiments/benchmarks/aggregators.py at a tiny size.

The benchmark itself is never a timed unit test. This runs its code paths
(inputs, leaf splitting, every aggregator case, the NumPy references, the
textbook spectral filter, the table writers) on ``R = 16, d = 2000`` and
checks that the byzjax and NumPy versions of every aggregator agree.
"""

import concurrent.futures
import functools
import json
import math
import sys

import jax
import numpy as np
import pytest

from tests import helpers

bench = helpers.load_script("experiments/benchmarks/aggregators.py",
                             "_bench_aggregators")
npref = bench.npref

R, D = bench.SIZES["tiny"][0]
# Agreement required between byzjax and the NumPy reference (max-norm
# relative error); selections and order statistics are exact up to float32
# rounding of a mean, iterative methods stop at tol=1e-6.
TOLERANCE = {"geometric_median": 1e-5, "geometric_median_of_means": 1e-5,
             "block_geometric_median": 1e-5, "spectral_filter": 1e-5}
DEFAULT_TOLERANCE = 2e-6


@functools.lru_cache(maxsize=None)
def _input(kind):
  x = bench.make_input(kind, R, D, seed=0)
  return x, bench.to_tree(x)


# Compiling is most of this file's cost (several seconds per geometric-median
# variant on a busy 2-core machine). The geometric median's "direct" and
# "gram" variants, the geometric median of means and the block geometric
# median each compile another Weiszfeld loop; "auto" runs the direct phase,
# the Gram phase and the exact refinement, tests/aggregators/ checks every
# method and aggregator against its own oracle, and the benchmark prints the
# agreement of every row, so those four run here only with `-m slow`.
_SLOW = ("geometric_median[direct]", "geometric_median[gram]",
         "geometric_median_of_means(k=16)", "block_geometric_median(0.1)")
_CASES = {c.name: c for c in bench.cases()}
_FAST = [name for name in _CASES if name not in _SLOW]


def _jitted(case):
  fn = bench.load(case)
  if fn is None:
    return None
  kwargs = case.kwargs(R, D)
  if case.module != "byzjax.tree":
    kwargs["return_info"] = True
  return functools.partial(fn, **kwargs)


def _compile(name):
  fn = _jitted(_CASES[name])
  if fn is None:
    return None
  return jax.jit(fn).lower(_input("easy")[1]).compile()


@pytest.fixture(scope="module")
def compiled():
  """The fast cases' executables, compiled two at a time (XLA releases the
  GIL while compiling, so this halves the wait on an idle 2-core machine)."""
  _input("easy")
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    futures = {name: pool.submit(_compile, name) for name in _FAST}
  return {name: f.result() for name, f in futures.items()}


def _case_params():
  return [pytest.param(name, marks=pytest.mark.slow) if name in _SLOW
          else name for name in _CASES]


def test_inputs_have_the_intended_difficulty():
  """Easy: a handful of Weiszfeld iterations; hard: tens of them."""
  iters = {}
  for kind in bench.INPUTS:
    x, tree = _input(kind)
    assert x.shape == (R, D) and x.dtype == np.float32
    np.testing.assert_array_equal(
        np.concatenate([np.asarray(v).reshape(R, -1)
                        for v in jax.tree.leaves(tree)], axis=1), x)
    iters[kind] = npref.geometric_median(x, max_iters=bench.MAX_ITERS,
                                         tol=bench.TOL)[1]["num_iters"]
  assert iters["easy"] <= 10, iters
  assert 20 <= iters["hard"] < bench.MAX_ITERS, iters


@pytest.mark.slow  # several compilations; the default suite keeps a sibling
@pytest.mark.parametrize("kind", bench.INPUTS)
@pytest.mark.parametrize("case_name", _case_params())
def test_jax_matches_numpy_reference(case_name, kind, request):
  case = _CASES[case_name]
  if case_name in _SLOW:
    fn = _compile(case_name)
  else:
    fn = request.getfixturevalue("compiled")[case_name]
  if fn is None:
    pytest.skip(f"{case.module} is not available")
  x, tree = _input(kind)
  if case.group == "spectral_filter":
    # run_spectral times the executable it finds under this key.
    bench._COMPILED[(case.name, R, D)] = fn  # pylint: disable=protected-access
    row = bench.run_spectral(case, bench.load(case), tree, x, R, D, kind,
                             1e10, repeats=1)
    assert row.rel_err <= TOLERANCE["spectral_filter"], row
    assert "kept set differs" not in row.notes, row.notes
    return
  out = fn(tree)
  result = out if case.module == "byzjax.tree" else out[0]
  got = np.asarray(result).ravel() if case.module == "byzjax.tree" else (
      bench.flatten(result))
  ref, ref_info = case.ref(x, R, D)
  err = bench.rel_err(got, np.asarray(ref).ravel())
  assert err <= TOLERANCE.get(case.group, DEFAULT_TOLERANCE), (case_name, err)
  info = None if case.module == "byzjax.tree" else out[1]
  notes = bench.compare_diagnostics(case, info, ref_info)
  assert "differ" not in notes, notes
  if case.group == "geometric_median":
    # Same algorithm, start and stopping rule: the same number of steps up to
    # float32 rounding in the last one.
    assert abs(int(info.num_iters) - ref_info["num_iters"]) <= 2, (
        int(info.num_iters), ref_info["num_iters"])


def test_rel_err_and_passes_helpers():
  assert bench.rel_err(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == 0.5
  # One pass = R*d*4 bytes at the bandwidth.
  assert bench._passes(2.0, 10, 100, 4000.0) == pytest.approx(2.0 * 4000.0
                                                              / 4000.0)


@pytest.mark.slow  # end-to-end or many compilations; run with -m slow
def test_end_to_end_writes_the_table(tmp_path, capsys):
  rows = bench.main(["--out", str(tmp_path), "--sizes", "tiny", "--repeats",
                     "1", "--only", "coordinate_median",
                     "--bandwidth-mb", "8"])
  assert [(r.input, r.aggregator) for r in rows] == [
      (k, "coordinate_median") for k in bench.INPUTS]
  for row in rows:
    assert row.jax_ms > 0 and row.numpy_ms > 0 and row.passes > 0
    assert row.rel_err <= DEFAULT_TOLERANCE
    assert row.met.startswith(("yes (", "no (")), row.met
  text = (tmp_path / "aggregators.md").read_text()
  assert "| coordinate_median |" in text and "passes" in text
  assert "| coordinate_median |" in capsys.readouterr().out
  data = json.loads((tmp_path / "aggregators.json").read_text())
  for key in ("cpu_count", "jax_version", "backend"):
    assert key in data["machine"]
  assert data["bandwidth"]["bandwidth_GBps"] > 0
  lines = (tmp_path / "aggregators.csv").read_text().splitlines()
  assert len(lines) == 1 + len(rows) and lines[0].startswith("R,d,input")
  assert math.isfinite(float(lines[1].split(",")[4]))
