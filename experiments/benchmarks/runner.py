"""The robustness grid: `byzjax.study.run` vs a plain PyTorch loop over workers.

Usage::

  python experiments/benchmarks/runner.py --out DIR [--quick] [--steps N]

Runs the grid of ``experiments/configs/byzfl_like.toml`` reduced to a size
that finishes in about ten minutes on 2 CPU cores (see ``reduced_config``:
fewer heterogeneity settings, Byzantine counts and steps, a 2,000-image test
subset; the same model, batch, worker momentum, seeds, defenses and attacks)
twice:

(a) ``byzjax``: :func:`byzjax.study.run` on that config (the Python form of
    ``byzjax run``), with a fresh, empty persistent compilation cache folder,
    so every compilation is counted; the compile share is the sum of JAX's
    compile-duration monitoring events (tracing, lowering, XLA);
(b) ``torch``: a plain PyTorch loop, the way ByzFL and blades simulate: for
    every cell, every learning rate and every seed in turn, for every step,
    for every worker: sample a batch from its shard, forward, backward, copy
    the flat gradient into row ``r`` of an ``[R, d]`` tensor; then worker
    momentum, the attack on the Byzantine rows, the aggregator and the SGD
    step, all in PyTorch (:class:`TorchCell`). The aggregators and attacks
    are written here from the papers' formulas with byzjax's defaults (trim
    ``f`` per side, Krum with ``R - f - 2`` neighbours, Weiszfeld with the
    same start, smoothing, tolerance 1e-6 and ``max_iters`` 100, ALIE's
    ``z_max(R, f)``, IPM's epsilon 0.1, N(0, 100) noise, uniformly random
    labels) and checked against byzjax's functions on random inputs
    (:func:`check_against_byzjax`, also run by the smoke test).

Both use the same data: the same Fashion-MNIST subset, the same worker
partitions (byzjax's :meth:`Task.indices`) and test subset. Models are
initialised and batches drawn by each library's own random numbers, so the
accuracies are comparable, not identical; the table shows a few cells side
by side.

The two are interleaved in one process: (a) calls back after every finished
cell (its ``log``), and the callback runs the same cell in PyTorch before
(a) moves on, so a change of the machine's load hits both alike. (a)'s time
is its wall time minus the time spent in those callbacks. PyTorch uses as
many threads as there are usable cores, or 1 if that is faster (timed first,
not counted: on the oversubscribed 2-core machine 2 threads were 4-60x
slower than 1 for this small MLP).

Reports cells per hour for both and the ratio (target: byzjax >= 5x faster
on the whole grid, compilation included), with the load average and the
versions. Writes ``DIR/runner.md`` (the table, also printed),
``DIR/runner_cells.csv`` (per cell: times and mean final accuracies) and
``DIR/runner.json`` (everything, including machine info).
"""

import argparse
import copy
import csv
import datetime
import json
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
# Run from a checkout without installing: the repository root holds byzjax/.
sys.path.insert(1, os.path.dirname(os.path.dirname(_HERE)))

if sys.version_info >= (3, 11):
  import tomllib
else:  # pragma: no cover - Python 3.10
  import tomli as tomllib

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import torch  # noqa: E402

import _machine  # noqa: E402
import byzjax  # noqa: E402
from byzjax import study  # noqa: E402
from byzjax.study import runner as study_runner  # noqa: E402
from byzjax.study import tasks as study_tasks  # noqa: E402
from byzjax.study.config import parse_config  # noqa: E402
# pylint: enable=wrong-import-position

TARGET = 5.0  # byzjax cells/hour over torch cells/hour, compilation included
BYZFL_LIKE = os.path.join(os.path.dirname(_HERE), "configs", "byzfl_like.toml")
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
# The torch versions below; a defense or attack of the grid outside these
# stops the benchmark before it starts.
TORCH_RULES = ("mean", "trimmed_mean", "coordinate_median", "geometric_median",
               "krum", "multi_krum")
TORCH_ATTACKS = ("none", "sign_flip", "alie", "ipm", "label_flip",
                 "gaussian_noise")


def log(msg: str) -> None:
  stamp = datetime.datetime.now().strftime("%H:%M:%S")
  print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# The grid.


def reduced_config(quick: bool = False, steps: int | None = None, *,
                   defenses=None, attacks=None, heterogeneity=None) -> dict:
  """``byzfl_like.toml`` reduced to about ten minutes on 2 cores (a dict).

  Full grid: 4 heterogeneity settings x f in {1..4} x 7 defenses x 6
  attacks (672 cells, 168 compiled programs), 3 seeds x 3 learning rates,
  1,000 steps. Reduced: the 4 heterogeneity settings, f = 4 (R = 14), 4
  defenses (mean, trimmed_mean, geometric_median, krum) x 2 attacks (alie,
  label_flip): 32 cells, 8 programs; 3 seeds x 1 learning rate, 50 steps,
  test accuracy on 2,000 images every 25 steps. ``quick``: 1 setting,
  f = 2, krum x (alie, label_flip), 2 seeds, 10 steps, a 16-unit MLP on
  4,000 images (the smoke test). ``steps``, ``defenses``, ``attacks`` and
  ``heterogeneity`` (lists) replace the reduced grid's.
  """
  with open(BYZFL_LIKE, "rb") as fh:
    cfg = tomllib.load(fh)
  cfg = copy.deepcopy(cfg)
  cfg["name"] = "byzfl-like, reduced for the speed benchmark"
  t, g, task = cfg["training"], cfg["grid"], cfg["task"]
  task["test_samples"] = 2000
  t["learning_rate"] = [0.1]
  if quick:
    task["model_args"] = {"hidden": [16]}
    task["train_samples"] = 4000
    task["test_samples"] = 500
    t.update(num_byzantine=[2], steps=10, eval_every=5, seeds=2)
    g["heterogeneity"] = ["iid"]
    g["defenses"] = ["krum"]
    g["attacks"] = ["alie", "label_flip"]
  else:
    # All four heterogeneity settings: they share compiled programs (padded
    # partitions), as in the full grid, so each program serves 4 cells.
    t.update(num_byzantine=[4], steps=50, eval_every=25, seeds=3)
    g["defenses"] = ["mean", "trimmed_mean", "geometric_median", "krum"]
    g["attacks"] = ["alie", "label_flip"]
  if steps is not None:
    t["steps"] = steps
    t["eval_every"] = max(d for d in range(1, steps + 1)
                          if steps % d == 0 and d <= max(1, steps // 2))
  for key, value in (("defenses", defenses), ("attacks", attacks),
                     ("heterogeneity", heterogeneity)):
    if value:
      g[key] = list(value)
  for d in g["defenses"]:
    if d not in TORCH_RULES:
      raise ValueError(f"defense {d!r} has no torch version here; valid: "
                       f"{', '.join(TORCH_RULES)}.")
  for a in g["attacks"]:
    if a not in TORCH_ATTACKS:
      raise ValueError(f"attack {a!r} has no torch version here; valid: "
                       f"{', '.join(TORCH_ATTACKS)}.")
  return cfg


# ---------------------------------------------------------------------------
# PyTorch: aggregators and attacks on an [R, d] tensor (rows = workers).


def t_mean(x, f):
  del f
  return x.mean(0)


def t_trimmed_mean(x, f):
  """Yin et al. (2018): drop the f smallest and f largest of every coordinate
  (byzjax's default trim_fraction f / R, b = floor(f / R * R) = f)."""
  r = x.shape[0]
  b = int(math.floor(round(f / r * r, 9)))
  s = torch.sort(x, dim=0).values
  return s[b:r - b].mean(0)


def t_coordinate_median(x, f):
  del f
  r = x.shape[0]
  s = torch.sort(x, dim=0).values
  if r % 2:
    return s[r // 2]
  return 0.5 * (s[r // 2 - 1] + s[r // 2])


def _krum_select(x, f, m):
  """Blanchard et al. (2017): score_i = sum of the R - f - 2 smallest squared
  distances to the other rows; average of the m best-scored rows."""
  r = x.shape[0]
  xc = x - x.mean(0, keepdim=True)   # centred Gram: no cancellation
  gram = (xc @ xc.T).double()
  diag = torch.diagonal(gram)
  sq = (diag[:, None] + diag[None, :] - 2.0 * gram).clamp_min(0.0)
  sq.fill_diagonal_(float("inf"))
  k = r - f - 2
  scores = torch.sort(sq, dim=1).values[:, :k].sum(1)
  chosen = torch.argsort(scores, stable=True)[:m]
  return x[chosen].mean(0)


def t_krum(x, f):
  return _krum_select(x, f, 1)


def t_multi_krum(x, f):
  return _krum_select(x, f, x.shape[0] - f)


def t_geometric_median(x, f, *, max_iters=100, tol=1e-6):
  """Weiszfeld (smoothed, Pillutla et al. 2022) as byzjax's default.

  Centre c: the row of lower-median norm; s: the power of two at or above the
  upper-median distance to c; start: the mean of the ceil(R/2) rows nearest
  to c; beta_i = 1 / max(nu, ||x_i - z||) with nu = 1e-7 s; stop once
  ||z_new - z|| <= tol s or after max_iters iterations.
  """
  del f
  r = x.shape[0]
  norms = torch.linalg.vector_norm(x.double(), dim=1)
  center = x[torch.argsort(norms, stable=True)[(r - 1) // 2]].clone()
  xc = x - center
  cdist = torch.linalg.vector_norm(xc, dim=1)
  med = float(torch.sort(cdist).values[r // 2])
  if not med > 0 or not math.isfinite(med):
    med = 2.0 ** -100
  scale = 2.0 ** math.frexp(np.float32(med))[1]
  nu = 1e-7 * scale
  near = torch.argsort(cdist, stable=True)[:(r + 1) // 2]
  z = xc[near].mean(0)
  dist = torch.linalg.vector_norm(xc - z, dim=1)
  it, err = 0, math.inf
  while err > tol and it < max_iters:
    beta = 1.0 / dist.clamp_min(nu)
    beta = beta / beta.sum()
    z_new = beta @ xc
    dist = torch.linalg.vector_norm(xc - z_new, dim=1)
    err = float(torch.linalg.vector_norm(z_new - z)) / scale
    z = z_new
    it += 1
  return z + center


TORCH_AGGREGATORS = {
    "mean": t_mean, "trimmed_mean": t_trimmed_mean,
    "coordinate_median": t_coordinate_median,
    "geometric_median": t_geometric_median, "krum": t_krum,
    "multi_krum": t_multi_krum,
}


def alie_z(r: int, f: int) -> float:
  """Baruch et al. (2019), Alg. 3: s = floor(R/2 + 1) - f,
  z = Phi^-1((R - s) / R) (probability clipped to [1e-6, 1 - 1e-6])."""
  s = math.floor(r / 2 + 1) - f
  p = min(max((r - s) / r, 1e-6), 1 - 1e-6)
  return statistics.NormalDist().inv_cdf(p)


def t_attack(name, m, byz, gen):
  """The rows the workers send: ``m`` with the Byzantine rows rewritten."""
  if name in ("none", "label_flip") or not bool(byz.any()):
    return m
  out = m.clone()
  honest = m[~byz]
  if name == "sign_flip":
    out[byz] = -m[byz]
  elif name == "alie":
    mu = honest.mean(0)
    sigma = honest.std(0, unbiased=False)
    out[byz] = mu - alie_z(m.shape[0], int(byz.sum())) * sigma
  elif name == "ipm":
    out[byz] = -0.1 * honest.mean(0)
  elif name == "gaussian_noise":
    noise = torch.randn(m[byz].shape, generator=gen)
    out[byz] = m[byz] + 10.0 * noise   # variance 100
  else:
    raise ValueError(f"no torch attack {name!r}")
  return out


# ---------------------------------------------------------------------------
# PyTorch: the training loop.


class TorchData:
  """The study's data as torch tensors, with byzjax's worker partitions."""

  def __init__(self, task, config):
    self.x = torch.from_numpy(np.asarray(task.train.x, np.float32).reshape(
        np.shape(task.train.x)[0], -1).copy())
    self.y = torch.from_numpy(np.asarray(task.train.y).astype(np.int64))
    test = study_tasks._load(config.task, task.dataset,  # pylint: disable=protected-access
                             jax.random.key(config.training.data_seed))[1]
    self.test_x = torch.from_numpy(np.asarray(test.x, np.float32).reshape(
        np.shape(test.x)[0], -1).copy())
    self.test_y = torch.from_numpy(np.asarray(test.y).astype(np.int64))
    self.task, self.config = task, config
    self.num_classes = task.num_classes
    self._shards = {}

  def shards(self, heterogeneity, num_workers):
    key = (heterogeneity, num_workers)
    if key not in self._shards:
      t = self.config.training
      part = self.task.indices(heterogeneity, num_workers, t.data_seed,
                               min_size=t.batch_size)
      self._shards[key] = [torch.from_numpy(
          part.index[r, :part.size[r]].astype(np.int64))
                           for r in range(num_workers)]
    return self._shards[key]


def mlp(in_dim, hidden, num_classes):
  layers, prev = [], in_dim
  for h in hidden:
    layers += [torch.nn.Linear(prev, h), torch.nn.ReLU()]
    prev = h
  layers.append(torch.nn.Linear(prev, num_classes))
  return torch.nn.Sequential(*layers)


def torch_run(data, cell, lr, seed, *, hidden, steps, eval_every, batch_size,
              momentum):
  """One training run of a cell; returns the test accuracy every eval_every."""
  gen = torch.Generator().manual_seed(seed)
  torch.manual_seed(seed)
  model = mlp(data.x.shape[1], hidden, data.num_classes)
  params = list(model.parameters())
  sizes = [p.numel() for p in params]
  offsets = np.cumsum([0] + sizes)
  d = int(offsets[-1])
  r, f = cell.num_workers, cell.num_byzantine
  shards = data.shards(cell.heterogeneity, r)
  byz = torch.zeros(r, dtype=torch.bool)
  byz[torch.randperm(r, generator=gen)[:f]] = True
  grads = torch.zeros(r, d)
  mom = torch.zeros(r, d)
  attack = cell.attack.name
  aggregate = TORCH_AGGREGATORS[cell.defense.rule]
  loss_fn = torch.nn.CrossEntropyLoss()
  accs = []
  for step in range(steps):
    for w in range(r):
      shard = shards[w]
      pick = shard[torch.randperm(shard.numel(), generator=gen)[:batch_size]]
      xb, yb = data.x[pick], data.y[pick]
      if attack == "label_flip" and byz[w]:
        yb = torch.randint(0, data.num_classes, yb.shape, generator=gen)
      model.zero_grad(set_to_none=False)
      loss_fn(model(xb), yb).backward()
      for p, a, b in zip(params, offsets[:-1], offsets[1:]):
        grads[w, a:b].copy_(p.grad.reshape(-1))
    # Worker momentum (Karimireddy, He & Jaggi 2021): m = beta m + (1-beta) g.
    mom.mul_(momentum).add_(grads, alpha=1.0 - momentum)
    sent = t_attack(attack, mom, byz, gen)
    agg = aggregate(sent, f)
    with torch.no_grad():
      for p, a, b in zip(params, offsets[:-1], offsets[1:]):
        p.sub_(lr * agg[a:b].view_as(p))
    if (step + 1) % eval_every == 0:
      with torch.no_grad():
        pred = model(data.test_x).argmax(1)
        accs.append(float((pred == data.test_y).float().mean()))
  return accs


class TorchCell:
  """Runs one cell of the grid in PyTorch: every lr, every seed in turn."""

  def __init__(self, data, config):
    self.data, self.config = data, config

  def __call__(self, cell):
    t = self.config.training
    hidden = tuple(dict(self.config.task.model_args)["hidden"])
    out = {}
    for lr in t.learning_rate:
      for seed in t.seeds:
        out[(lr, seed)] = torch_run(
            self.data, cell, lr, seed, hidden=hidden, steps=t.steps,
            eval_every=t.eval_every, batch_size=t.batch_size,
            momentum=t.worker_momentum)
    return out


# ---------------------------------------------------------------------------
# The torch versions against byzjax's functions.


def check_against_byzjax(r=12, f=3, d=50, seed=0) -> dict:
  """Max relative error of every torch aggregator and attack vs byzjax's."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from byzjax import aggregators  # pylint: disable=g-import-not-at-top
  from byzjax.attacks import gradient  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=(r, d)) + rng.normal(size=d)).astype(np.float32)
  x[:2] *= 30.0   # two far rows, so the robust rules matter
  byz = np.zeros(r, bool)
  byz[rng.permutation(r)[:f]] = True
  xt, xj = torch.from_numpy(x), {"w": jnp.asarray(x)}
  ref = {
      "mean": aggregators.mean(xj),
      "trimmed_mean": aggregators.trimmed_mean(xj, trim_fraction=f / r),
      "coordinate_median": aggregators.coordinate_median(xj),
      "geometric_median": aggregators.geometric_median(xj),
      "krum": aggregators.krum(xj, num_byzantine=f),
      "multi_krum": aggregators.krum(xj, num_byzantine=f, num_selected=r - f),
  }
  errs = {}

  def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))

  for name, fn in TORCH_AGGREGATORS.items():
    errs[name] = rel(fn(xt, f).numpy(), ref[name]["w"])
  bj = jnp.asarray(byz)
  att_ref = {
      "sign_flip": gradient.sign_flip(xj, bj),
      "alie": gradient.alie(xj, bj),
      "ipm": gradient.ipm(xj, bj),
  }
  for name, out in att_ref.items():
    errs["attack " + name] = rel(
        t_attack(name, xt, torch.from_numpy(byz), None).numpy(), out["w"])
  return errs


# ---------------------------------------------------------------------------
# The benchmark.


class CompileClock:
  """Sums JAX's compile-duration events (trace, lowering, XLA)."""

  def __init__(self):
    self.seconds, self.events = 0.0, 0

  def _listener(self, event, duration, **kwargs):
    del kwargs
    if event in COMPILE_EVENTS:
      self.seconds += duration
      self.events += 1

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listener)
    return False


def calibrate_threads(data, config, cell, candidates, steps=3) -> dict:
  """Seconds per torch step of ``cell`` for each thread count (best of 2).

  On an oversubscribed CPU torch's intra-op threads spin and wait: with 2
  threads a step was 4-60x slower than with 1 at load 7-13 on 2 cores. The
  benchmark uses the faster count, so that torch is not handicapped.
  """
  hidden = tuple(dict(config.task.model_args)["hidden"])
  t = config.training
  out = {}
  for _ in range(2):
    for n in candidates:
      torch.set_num_threads(n)
      start = time.perf_counter()
      torch_run(data, cell, t.learning_rate[0], 0, hidden=hidden, steps=steps,
                eval_every=steps, batch_size=t.batch_size,
                momentum=t.worker_momentum)
      sec = (time.perf_counter() - start) / steps
      out[n] = min(out.get(n, math.inf), sec)
  return out


def run_benchmark(cfg_dict: dict, *, threads: int | None) -> dict:
  """Runs the grid with byzjax and with torch, interleaved per cell.

  ``threads``: torch threads; ``None``: the faster of the usable core count
  and 1 (:func:`calibrate_threads`, not counted in torch's time).
  """
  config = parse_config(cfg_dict)
  cells = study_runner.expand(config)
  t0 = time.perf_counter()
  # Torch's data: the same images, partitions and test subset (not timed as
  # byzjax's: counted as torch setup).
  task = study_tasks.build_task(config.task,
                                data_seed=config.training.data_seed,
                                log=lambda m: None)
  tdata = TorchData(task, config)
  torch_cell = TorchCell(tdata, config)
  torch_setup_s = time.perf_counter() - t0
  cores = len(os.sched_getaffinity(0))
  calib = {}
  if threads is None:
    calib = calibrate_threads(tdata, config, cells[-1],
                              sorted({cores, 1}, reverse=True))
    threads = min(calib, key=calib.get)
    log("torch seconds per step by thread count: " + ", ".join(
        f"{n}: {v:.3f}" for n, v in calib.items()) + f"; using {threads}")
  torch.set_num_threads(threads)
  torch_results, torch_seconds, byz_seconds = [], [], []
  state = {"in_callbacks": 0.0, "mark": None}

  def callback(msg: str):
    # byzjax.study.run logs one "[n/N] ..." line per finished cell.
    if not msg.startswith("["):
      return
    if not msg.split("]")[0][1:].split("/")[0].isdigit():
      return
    now = time.perf_counter()
    byz_seconds.append(now - state["mark"])
    n = int(msg[1:msg.index("/")]) - 1
    cell = cells[n]
    start = time.perf_counter()
    torch_results.append(torch_cell(cell))
    secs = time.perf_counter() - start
    torch_seconds.append(secs)
    log(f"cell {n + 1}/{len(cells)} {cell.describe()}: byzjax "
        f"{byz_seconds[-1]:.1f} s, torch {secs:.1f} s")
    end = time.perf_counter()
    state["in_callbacks"] += end - now
    state["mark"] = end

  with tempfile.TemporaryDirectory(prefix="byzjax_runner_bench_") as tmp:
    cache = os.path.join(tmp, "jax_cache")
    with CompileClock() as clock:
      start = time.perf_counter()
      state["mark"] = start
      rows = study.run(config, os.path.join(tmp, "out"), cache_dir=cache,
                       progress=False, report=False, log=callback,
                       as_dataframe=False)
      wall = time.perf_counter() - start
  byz_total = wall - state["in_callbacks"]
  if len(torch_results) != len(cells):
    raise RuntimeError(f"torch ran {len(torch_results)} of {len(cells)} "
                       "cells: byzjax.study.run's per-cell log lines changed?")
  return {"config": config, "cells": cells, "rows": rows,
          "byzjax_s": byz_total, "byzjax_compile_s": clock.seconds,
          "compile_events": clock.events, "byzjax_cell_s": byz_seconds,
          "torch_s": torch_setup_s + sum(torch_seconds),
          "torch_setup_s": torch_setup_s, "torch_cell_s": torch_seconds,
          "torch_results": torch_results, "dataset": task.dataset,
          "torch_threads": threads, "thread_calibration_s_per_step": calib}


def _final_acc_byzjax(rows, cell, lr):
  last = max(r["step"] for r in rows)
  vals = [r["accuracy"] for r in rows
          if r["heterogeneity"] == cell.heterogeneity
          and r["num_byzantine"] == cell.num_byzantine
          and r["defense"] == cell.defense.label
          and r["attack"] == cell.attack.label
          and abs(r["learning_rate"] - lr) < 1e-12 and r["step"] == last]
  return vals


def summarize(res: dict, info: dict, args: dict, checks: dict) -> dict:
  config, cells = res["config"], res["cells"]
  t = config.training
  per_cell = []
  for n, cell in enumerate(cells):
    for lr in t.learning_rate:
      b = _final_acc_byzjax(res["rows"], cell, lr)
      tr = [res["torch_results"][n][(lr, s)][-1] for s in t.seeds]
      per_cell.append({
          "heterogeneity": cell.heterogeneity, "f": cell.num_byzantine,
          "R": cell.num_workers, "defense": cell.defense.label,
          "attack": cell.attack.label, "learning_rate": lr,
          "byzjax_s": res["byzjax_cell_s"][n],
          "torch_s": res["torch_cell_s"][n],
          "byzjax_acc_mean": float(np.mean(b)), "byzjax_acc_sd": float(
              np.std(b)), "torch_acc_mean": float(np.mean(tr)),
          "torch_acc_sd": float(np.std(tr)), "seeds": len(t.seeds)})
  n = len(cells)
  bj_rate = n / res["byzjax_s"] * 3600
  tr_rate = n / res["torch_s"] * 3600
  programs = len({c.program_key() for c in cells})
  diffs = [abs(p["byzjax_acc_mean"] - p["torch_acc_mean"]) for p in per_cell]
  # Projection to the full byzfl_like grid (not measured): compilation per
  # program as measured here, and per (run x step) costs as measured here
  # (the same mix of defenses and attacks assumed; R = 14 here, 11-14 there).
  run_steps = n * len(t.seeds) * len(t.learning_rate) * t.steps
  full = load_full()
  full_cells = (len(full.heterogeneity) * len(full.training.num_byzantine) *
                len(full.defenses) * len(full.attacks))
  full_programs = len({c.program_key() for c in study_runner.expand(full)})
  full_run_steps = (full_cells * len(full.training.seeds) *
                    len(full.training.learning_rate) * full.training.steps)
  byz_run = max(res["byzjax_s"] - res["byzjax_compile_s"], 0.0)
  proj_byz = (res["byzjax_compile_s"] / programs * full_programs +
              byz_run / run_steps * full_run_steps)
  proj_torch = sum(res["torch_cell_s"]) / run_steps * full_run_steps
  return {
      "cells": n, "programs": programs,
      "runs_per_cell": len(t.seeds) * len(t.learning_rate),
      "steps": t.steps, "batch_size": t.batch_size,
      "hidden": list(dict(config.task.model_args)["hidden"]),
      "dataset": res["dataset"],
      "byzjax_s": res["byzjax_s"], "byzjax_compile_s": res["byzjax_compile_s"],
      "byzjax_compile_share": res["byzjax_compile_s"] / res["byzjax_s"],
      "torch_s": res["torch_s"], "torch_setup_s": res["torch_setup_s"],
      "byzjax_cells_per_hour": bj_rate, "torch_cells_per_hour": tr_rate,
      "ratio": bj_rate / tr_rate,
      "ratio_without_compile": (res["torch_s"] /
                                max(res["byzjax_s"] -
                                    res["byzjax_compile_s"], 1e-9)),
      "target": TARGET, "met": bj_rate / tr_rate >= TARGET,
      "torch_threads": res["torch_threads"],
      "thread_calibration_s_per_step": res["thread_calibration_s_per_step"],
      "projection_full_grid": {
          "cells": full_cells, "programs": full_programs,
          "run_steps": full_run_steps, "byzjax_h": proj_byz / 3600,
          "torch_h": proj_torch / 3600, "ratio": proj_torch / proj_byz},
      "acc_abs_diff_mean": float(np.mean(diffs)),
      "acc_abs_diff_max": float(np.max(diffs)),
      "per_cell": per_cell, "checks": checks, "machine": info, "args": args,
      "config": cfg_text(config),
  }


def load_full():
  """The unreduced ``byzfl_like.toml``."""
  with open(BYZFL_LIKE, "rb") as fh:
    return parse_config(tomllib.load(fh))


def cfg_text(config) -> dict:
  t = config.training
  return {"heterogeneity": list(config.heterogeneity),
          "num_byzantine": list(t.num_byzantine),
          "num_honest": t.num_honest,
          "defenses": [d.label for d in config.defenses],
          "attacks": [a.label for a in config.attacks],
          "seeds": list(t.seeds), "learning_rate": list(t.learning_rate),
          "steps": t.steps, "eval_every": t.eval_every,
          "batch_size": t.batch_size, "worker_momentum": t.worker_momentum,
          "test_samples": config.task.test_samples,
          "train_samples": config.task.train_samples}


def _calib(s) -> str:
  c = s["thread_calibration_s_per_step"]
  if not c:
    return ""
  return "; s/step by threads: " + ", ".join(f"{n}: {v:.3f}"
                                            for n, v in c.items())


def _load(la) -> str:
  return " ".join(f"{v:.2f}" for v in la)


def table(s: dict) -> str:
  m = s["machine"]
  lines = [
      "# byzjax.study.run vs a PyTorch loop over workers",
      "",
      f"Grid: {s['cells']} cells ({s['config']['heterogeneity']} x f in "
      f"{s['config']['num_byzantine']} (R = {s['config']['num_honest']} + f) "
      f"x {len(s['config']['defenses'])} defenses x "
      f"{len(s['config']['attacks'])} attacks), {s['runs_per_cell']} runs "
      f"per cell ({len(s['config']['seeds'])} seeds x "
      f"{len(s['config']['learning_rate'])} lr), {s['steps']} steps of "
      f"batch {s['batch_size']} per worker, MLP {s['hidden']}, worker "
      f"momentum {s['config']['worker_momentum']}, dataset {s['dataset']}; "
      f"{s['programs']} distinct compiled programs.",
      "",
      f"Machine: {m['cpus_usable']} usable CPUs ({m['cpu_model']}), load "
      f"average {_load(m['load_average_start'])} at the start, "
      f"{_load(m['load_average_end'])} at the end; python {m['python']}, "
      f"jax {m['jax_version']} ({m['backend']}), torch {m['torch_version']} "
      f"({s['torch_threads']} threads{_calib(s)}), numpy {m['numpy_version']}, commit "
      f"{m['git_commit']}.",
      "",
      "| runner | total s | compile s (share) | cells/hour | ratio | target | met |",
      "|---|---|---|---|---|---|---|",
      f"| byzjax.study.run (fresh compilation cache) | {s['byzjax_s']:.1f} | "
      f"{s['byzjax_compile_s']:.1f} ({100 * s['byzjax_compile_share']:.0f} %)"
      f" | {s['byzjax_cells_per_hour']:.0f} | {s['ratio']:.2f}x | "
      f">= {s['target']:.0f}x | {'yes' if s['met'] else 'no'} |",
      f"| PyTorch loop over workers | {s['torch_s']:.1f} | - | "
      f"{s['torch_cells_per_hour']:.0f} | 1 | | |",
      "",
      f"Without byzjax's compilation time the ratio would be "
      f"{s['ratio_without_compile']:.2f}x. Final test accuracy, mean over "
      f"seeds, |byzjax - torch|: mean {s['acc_abs_diff_mean']:.3f}, max "
      f"{s['acc_abs_diff_max']:.3f} over {len(s['per_cell'])} (cell, lr).",
      "",
      f"Projection (not measured) to the full byzfl_like grid "
      f"({s['projection_full_grid']['cells']} cells, "
      f"{s['projection_full_grid']['programs']} programs, "
      f"{s['projection_full_grid']['run_steps']:.3g} run-steps), from this "
      f"run's compile time per program and costs per run-step: byzjax "
      f"{s['projection_full_grid']['byzjax_h']:.1f} h, torch "
      f"{s['projection_full_grid']['torch_h']:.1f} h, ratio "
      f"{s['projection_full_grid']['ratio']:.1f}x. Assumes the same "
      "per-run-step costs at 9 vmapped runs per cell as at this run's and "
      "the same mix of defenses, and counts byzjax's fixed per-cell time "
      "(data partition, store, dispatch) as per-step time, which overstates "
      "byzjax's projected hours: a lower bound on the ratio if the "
      "assumptions hold.",
      "",
      "Final test accuracy (mean ± sd over seeds), a few cells side by side:",
      "",
      "| heterogeneity | f/R | defense | attack | lr | byzjax | torch |",
      "|---|---|---|---|---|---|---|",
  ]
  shown = _sample_cells(s["per_cell"])
  for p in shown:
    lines.append(
        f"| {p['heterogeneity']} | {p['f']}/{p['R']} | {p['defense']} | "
        f"{p['attack']} | {p['learning_rate']} | {p['byzjax_acc_mean']:.3f} ± "
        f"{p['byzjax_acc_sd']:.3f} | {p['torch_acc_mean']:.3f} ± "
        f"{p['torch_acc_sd']:.3f} |")
  lines += ["", "Torch aggregators and attacks vs byzjax's on a random "
            "12 x 50 input (max relative error): " + ", ".join(
                f"{k} {v:.1e}" for k, v in s["checks"].items()) + "."]
  return "\n".join(lines) + "\n"


def _sample_cells(per_cell, k=8):
  """Up to k cells: the largest f, every defense, against a strong attack."""
  if len(per_cell) <= k:
    return per_cell
  fmax = max(p["f"] for p in per_cell)
  pick = [p for p in per_cell if p["f"] == fmax and p["attack"] in (
      "alie", "sign_flip") and p["heterogeneity"] == per_cell[-1][
          "heterogeneity"]]
  rest = [p for p in per_cell if p not in pick]
  return (pick + rest)[:k]


def write_outputs(out: str, s: dict) -> str:
  os.makedirs(out, exist_ok=True)
  text = table(s)
  with open(os.path.join(out, "runner.md"), "w") as fh:
    fh.write(text)
  with open(os.path.join(out, "runner_cells.csv"), "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(s["per_cell"][0]))
    w.writeheader()
    w.writerows(s["per_cell"])
  with open(os.path.join(out, "runner.json"), "w") as fh:
    json.dump(s, fh, indent=1, default=str)
  return text


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="results folder (created)")
  parser.add_argument("--quick", action="store_true",
                      help="a 4-cell, 10-step grid (the smoke test)")
  parser.add_argument("--steps", type=int, default=None,
                      help="training steps per run (default 50; quick 10)")
  for name in ("defenses", "attacks", "heterogeneity"):
    parser.add_argument(f"--{name}", default=None,
                        help=f"comma-separated {name} replacing the reduced "
                        "grid's (a sub-grid, e.g. to time longer runs)")
  parser.add_argument("--threads", type=int, default=None,
                      help="torch threads (default: the faster of the "
                      "usable core count and 1, timed)")
  args = parser.parse_args(argv)
  if args.steps is not None and args.steps < 1:
    parser.error("--steps must be >= 1")
  threads = args.threads
  def names(v):
    return v.split(",") if v else None
  cfg = reduced_config(args.quick, args.steps, defenses=names(args.defenses),
                       attacks=names(args.attacks),
                       heterogeneity=names(args.heterogeneity))
  info = _machine.machine_info()
  info["torch_version"] = torch.__version__
  info["byzjax_file"] = byzjax.__file__
  log(f"load average {_load(info['load_average_start'])}; "
      f"{info['cpus_usable']} usable CPUs; torch {torch.__version__}")
  checks = check_against_byzjax()
  log("torch vs byzjax aggregators/attacks, max rel err: " + ", ".join(
      f"{k} {v:.1e}" for k, v in checks.items()))
  start = time.perf_counter()
  res = run_benchmark(cfg, threads=threads)
  info["load_average_end"] = os.getloadavg()
  info["wall_s"] = time.perf_counter() - start
  s = summarize(res, info, vars(args), checks)
  print(write_outputs(args.out, s))
  log(f"wrote runner.md, runner_cells.csv, runner.json to {args.out} "
      f"({info['wall_s']:.0f} s)")
  return s


if __name__ == "__main__":
  main()
