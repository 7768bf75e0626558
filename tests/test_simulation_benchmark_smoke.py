"""Smoke test of experiments/benchmarks/simulation.py at tiny sizes.

No timing is asserted. The NumPy reference MLP is checked against jax.grad of
byzjax's MLP (the oracle that makes the benchmark's (c) rows the same
computation as the simulator's), one step of the NumPy reference simulator
against the same step done with JAX, and the benchmark's code paths (scan,
Python loop, NumPy, sequential vs vmapped sweep, table writers) are run end
to end on a tiny synthetic dataset.
"""

import csv
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byzjax import models
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.data.partition import Dataset
from tests import helpers

bench = helpers.load_script("experiments/benchmarks/simulation.py",
                             "_bench_simulation")

# Tiny sizes: 4 workers x 24 images of 6x6 pixels, batch 8.
R, N_PER, SIDE, B = 4, 24, 6, 8
TINY = dataclasses.replace(
    bench.QUICK, hidden=(8,), num_workers=R, batch_size=B, steps=2,
    gm_steps=2, sweep_steps=2, seeds=2, repeats=1, numpy_calib_steps=1,
    gm_python_loop=False, aot_vmap=True, train_samples=None)


def _dataset(seed=0, side=SIDE, num=R * N_PER):
  rng = np.random.default_rng(seed)
  x = rng.random((num, side, side, 1), dtype=np.float32)
  y = rng.integers(0, 10, num).astype(np.int32)
  return Dataset(x=x, y=y)


@functools.lru_cache(maxsize=None)
def _value_and_grad(fns):
  return jax.jit(jax.value_and_grad(fns.loss))


def _jax_grads(fns, params, x, y):
  loss, grads = _value_and_grad(fns)(params, (jnp.asarray(x), jnp.asarray(y)))
  return float(loss), bench.layers_from_params(grads)


@functools.lru_cache(maxsize=None)
def _task(seed):
  return bench.Task(TINY, _dataset(seed))


@pytest.mark.parametrize("hidden,side", [((1000,), 28), ((16, 8), SIDE)])
def test_numpy_mlp_gradient_matches_jax_grad(hidden, side):
  """The hand-written NumPy backward pass vs jax.grad of byzjax's MLP."""
  data = _dataset(1, side=side, num=B)
  fns = models.make_classifier(models.MLP(num_classes=10, hidden=hidden))
  params = fns.init(jax.random.key(0), jnp.asarray(data.x[:1]))
  # Non-zero biases, so that their gradients and the ReLU masks are tested.
  params = jax.tree.map(
      lambda p: np.asarray(p) + np.float32(0.05) * np.sin(
          np.arange(p.size, dtype=np.float32)).reshape(p.shape), params)
  layers = bench.layers_from_params(params)
  loss, grads = bench.mlp_loss_and_grad(layers, data.x.reshape(B, -1),
                                        data.y)
  ref_loss, ref = _jax_grads(fns, params, data.x, data.y)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert len(grads) == len(ref) == len(hidden) + 1
  for (dw, db), (rw, rb) in zip(grads, ref):
    assert dw.shape == rw.shape and db.shape == rb.shape
    for got, want in ((dw, rw), (db, rb)):
      scale = float(np.max(np.abs(want)))
      assert scale > 0
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


def test_params_layers_round_trip():
  fns = models.make_classifier(models.MLP(hidden=(5, 3)))
  params = fns.init(jax.random.key(1), jnp.zeros((1, 4)))
  layers = bench.layers_from_params(params)
  assert [w.shape for w, _ in layers] == [(4, 5), (5, 3), (3, 10)]
  back = bench.params_from_layers(layers)
  for name in params:
    for leaf in ("kernel", "bias"):
      np.testing.assert_array_equal(back[name][leaf], params[name][leaf])


def _one_step_by_hand(fns, layers0, x, y, size, seed, lr, reduce):
  """One NumPy-reference step redone with jax.grad on the same batches."""
  params = bench.params_from_layers(layers0)
  rng = np.random.default_rng(seed)
  rows = []
  for r in range(x.shape[0]):
    idx = rng.choice(int(size[r]), B, replace=False)
    _, g = _jax_grads(fns, params, x[r, idx], y[r, idx])
    rows.append(np.concatenate([a.ravel() for wb in g for a in wb]))
  update = reduce(np.stack(rows))
  flat0 = np.concatenate([a.ravel() for wb in layers0 for a in wb])
  return flat0 - lr * update


@pytest.mark.parametrize("aggregator", ["mean", "geometric_median"])
def test_numpy_train_step_matches_jax(aggregator):
  """numpy_train's flat buffers, sampling and update vs a JAX recomputation.

  The geometric-median step is compared with byzjax's own geometric_median
  of the JAX gradients (a cross-implementation check of the reference).
  """
  task = _task(2)
  x, y, size = task.numpy_data()
  layers0 = bench.layers_from_params(task.params)
  out = bench.numpy_train(layers0, x, y, size, steps=1, batch_size=B,
                          lr=0.5, aggregator=aggregator, seed=3)
  if aggregator == "mean":
    reduce = lambda g: g.mean(axis=0)
  else:
    gm = jax.jit(functools.partial(geometric_median, tol=1e-7))
    reduce = lambda g: np.asarray(gm(jnp.asarray(g)))
    assert 1 <= out["gm_iters"][0] <= TINY.gm_max_iters
  want = _one_step_by_hand(task.fns, layers0, x, y, size, 3, 0.5, reduce)
  got = np.concatenate([a.ravel() for wb in out["params"] for a in wb])
  flat0 = np.concatenate([a.ravel() for wb in layers0 for a in wb])
  assert np.max(np.abs(got - flat0)) > 1e-3  # the step moved the parameters
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert len(out["losses"]) == 1 and np.isfinite(out["losses"][0])


def test_numpy_train_rejects_unknown_aggregator():
  task = _task(2)
  x, y, size = task.numpy_data()
  with pytest.raises(ValueError, match="aggregator"):
    bench.numpy_train(bench.layers_from_params(task.params), x, y, size,
                      steps=1, batch_size=B, lr=0.1, aggregator="krum")


@pytest.mark.slow  # end-to-end or many compilations; run with -m slow
def test_benchmark_end_to_end_tiny(tmp_path):
  # Compilation dominates at this size (seconds per program on two shared
  # cores), so the geometric-median scan, the extra AOT vmap program and the
  # per-seed parameter init (slow to compile), which only add or grow
  # compiled programs, are left to the benchmark run itself.
  cfg = dataclasses.replace(TINY, aot_vmap=False, init_per_seed=False)
  task, results = bench.run_benchmark(cfg, _dataset(4), gm=False)
  info = bench.machine_info()
  info["load_average_end"] = info["load_average_start"]
  rows = bench.build_rows(task, results)
  text = bench.write_outputs(str(tmp_path), task, rows, results, info,
                             {"quick": True})

  # The checks the benchmark reports: NumPy gradient oracle, and the
  # sequential runs, vmapped_runs and the AOT vmap computing the same runs.
  assert results["checks"]["grad_oracle_rel_err"] < 1e-4
  sweep = results["sweep"]
  assert len(sweep["vmapped_final_loss"]) == TINY.seeds
  assert sweep["max_abs_loss_diff"] < 1e-5
  assert len(set(np.round(sweep["sequential_final_loss"], 6))) == TINY.seeds
  assert "geometric_median" not in results and "aot_vmap" not in sweep

  measurements = [r["measurement"] for r in rows]
  assert [m[:3] for m in measurements[:3]] == ["(a)", "(b)", "(c)"]
  assert sum("vmapped_runs" in m for m in measurements) == 2  # +- compile
  assert len(measurements) == 7
  for r in rows:
    rate = r["steps"] * r["runs"] * R / r["seconds"]
    np.testing.assert_allclose(r["worker_steps_per_s"], rate, rtol=1e-12)
  by_name = {(r["measurement"], r["aggregator"]): r for r in rows}
  base = next(r for (m, _), r in by_name.items() if m.startswith("(c)"))
  scan = by_name[("(a) jitted scan (simulation.run)", "mean")]
  np.testing.assert_allclose(
      scan["speedup"], scan["worker_steps_per_s"] / base["worker_steps_per_s"])
  assert scan["met"] == ("yes" if scan["speedup"] >= bench.SCAN_TARGET
                         else "no")
  vm = by_name[(f"vmapped_runs(seeds={cfg.seeds})", "mean")]
  np.testing.assert_allclose(
      vm["speedup"],
      sweep["sequential"]["seconds"] / sweep["vmapped"]["seconds"])

  md = (tmp_path / "simulation.md").read_text()
  assert md == text and "| measurement |" in md and "Targets:" in md
  with open(tmp_path / "simulation.csv") as f:
    csv_rows = list(csv.DictReader(f))
  assert [r["measurement"] for r in csv_rows] == measurements
  data = json.loads((tmp_path / "simulation.json").read_text())
  assert data["machine"]["cpus_usable"] >= 1
  assert len(data["machine"]["load_average_start"]) == 3
  assert data["config"]["num_workers"] == R
  assert data["num_params"] == models.num_params(task.params)


def test_compile_clock_counts_a_compilation():
  clock = bench.CompileClock()
  with clock:
    out = jax.jit(lambda v: jnp.cos(v) * 3.0 + 1.25)(jnp.arange(7.0))
    out.block_until_ready()
  assert clock.events >= 1 and clock.seconds > 0
  before = clock.events
  jax.jit(lambda v: v - 2.5)(jnp.arange(5.0)).block_until_ready()
  assert clock.events == before  # the listener was removed on exit


def test_flops_per_worker_step():
  task = _task(2)
  d_in = SIDE * SIDE
  # Layer 0: forward + weight gradient; layer 1: forward, weight and input.
  want = 2 * B * d_in * 8 * 2 + 2 * B * 8 * 10 * 3
  assert task.flops_per_worker_step() == want
