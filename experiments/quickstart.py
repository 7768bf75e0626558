"""Quickstart: robust aggregators against two attacks, in under two minutes.

Trains with R = 20 simulated workers, 4 of them Byzantine (20%), and compares
the mean, the coordinate-wise median, the geometric median and the spectral
filter under two attacks (the scaled bit flip -100 g of Acharya et al. and
"a little is enough" of Baruch et al.). Every (aggregator, attack) cell runs
all seeds in one vmapped, jitted call.

Datasets (``--dataset``):
  * ``synthetic``: linear regression, ``A ~ N(0,1)^{N x d}``, ``b = A w*``,
    metric ``||w - w*||`` (needs nothing installed).
  * ``fashion-mnist``: a small MLP on the real Fashion-MNIST (Debian package
    ``dataset-fashion-mnist``), metric test accuracy.
  * ``auto`` (default): synthetic, plus Fashion-MNIST when it is installed.

Writes ``results.csv`` (tidy: one row per configuration, seed and evaluation
round), ``curves.png`` and ``summary.md`` into ``--out``.

Usage::

  python experiments/quickstart.py --out results/quickstart
"""

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import byzjax
from byzjax import simulation
from byzjax.aggregators.coordinatewise import coordinate_median
from byzjax.aggregators.coordinatewise import mean
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.aggregators.spectral_filter import spectral_filter
from byzjax.attacks.gradient import alie_attack
from byzjax.attacks.gradient import bit_flip_attack
from byzjax.data import fashion_mnist
from byzjax.data import partition
from byzjax.data import synthetic
from byzjax import models

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _figures  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_WORKERS = 20
NUM_BYZANTINE = 4

AGGREGATORS = {
    "mean": (mean, {}),
    "coordinate_median": (coordinate_median, {}),
    "geometric_median": (geometric_median, {"max_iters": 100}),
    "spectral_filter": (spectral_filter, {}),
}
ATTACKS = {
    "bit_flip": lambda: bit_flip_attack(scale=100.0),
    "alie": lambda: alie_attack(),
}


def _synthetic_task(key, num_features=100, num_samples=4000):
  dataset, w_star = synthetic.linear_regression(key, num_samples, num_features)
  data = partition.iid_partition(key, dataset, NUM_WORKERS)
  fns = models.make_regressor(models.Linear(1, use_bias=False))
  params = fns.init(key, dataset.x[:1])

  def eval_fn(p):
    w = p["Dense_0"]["kernel"][:, 0]
    return {"error": jnp.linalg.norm(w - w_star)}

  return dict(name="synthetic", data=data, loss=fns.loss, params=params,
              eval_fn=eval_fn, metric="error", lr=0.05, batch_size=16,
              better="lower")


def _fashion_task(key, path):
  train = fashion_mnist.load_fashion_mnist(path, split="train")
  test = fashion_mnist.load_fashion_mnist(path, split="test")
  # A fixed 2000-image slice of the test set keeps evaluation cheap.
  test_x, test_y = jnp.asarray(test.x[:2000]), jnp.asarray(test.y[:2000])
  data = partition.iid_partition(key, train, NUM_WORKERS)
  fns = models.make_classifier(models.MLP(num_classes=10, hidden=(128,)))
  params = fns.init(key, jnp.asarray(train.x[:1]))

  def eval_fn(p):
    return {"accuracy": fns.accuracy(p, (test_x, test_y))}

  return dict(name="fashion-mnist", data=data, loss=fns.loss, params=params,
              eval_fn=eval_fn, metric="accuracy", lr=0.05, batch_size=32,
              better="higher")


def _build_for(task, eval_every):
  def build_for(aggregator, attack):
    agg_fn, hparams = AGGREGATORS[aggregator]

    def build(hp, key):
      del hp
      sim = simulation.Simulation(
          loss_fn=task["loss"],
          server_tx=optax.chain(byzjax.aggregate(agg_fn, **hparams),
                                optax.sgd(task["lr"])),
          num_workers=NUM_WORKERS, batch_size=task["batch_size"],
          attack=ATTACKS[attack](), num_byzantine=NUM_BYZANTINE,
          eval_fn=task["eval_fn"], eval_every=eval_every)
      return sim, simulation.init(sim, task["params"], key)
    return build
  return build_for


def _plot(rows, tasks, path):
  plt = _figures.pyplot()
  fig, axes = plt.subplots(len(tasks), len(ATTACKS), squeeze=False,
                           figsize=(5 * len(ATTACKS), 3.6 * len(tasks)))
  for i, task in enumerate(tasks):
    for j, attack in enumerate(ATTACKS):
      ax = axes[i][j]
      for agg in AGGREGATORS:
        sel = [r for r in rows if r["dataset"] == task["name"]
               and r["attack"] == attack and r["aggregator"] == agg]
        steps = sorted({r["step"] for r in sel})
        vals = np.array([[r[task["metric"]] for r in sel if r["step"] == s]
                         for s in steps], dtype=float)
        with np.errstate(invalid="ignore"):
          ax.plot(steps, np.nanmean(vals, axis=1), label=agg)
      ax.set_title(f"{task['name']}: {attack}, {NUM_BYZANTINE}/{NUM_WORKERS} "
                   "Byzantine")
      ax.set_xlabel("step")
      ax.set_ylabel(task["metric"])
      if task["metric"] == "error":
        ax.set_yscale("log")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
  _figures.save(fig, path, dpi=110)


def _summary(rows, tasks, seconds):
  lines = ["# byzjax quickstart", "",
           f"{NUM_WORKERS} workers, {NUM_BYZANTINE} Byzantine; final metric, "
           "mean ± sd over seeds (nan: the run diverged).", ""]
  for task in tasks:
    lines += [f"## {task['name']} ({task['metric']}, "
              f"{task['better']} is better)", "",
              "| aggregator | " + " | ".join(ATTACKS) + " |",
              "|---|" + "---|" * len(ATTACKS)]
    for agg in AGGREGATORS:
      cells = []
      for attack in ATTACKS:
        sel = [r for r in rows if r["dataset"] == task["name"]
               and r["attack"] == attack and r["aggregator"] == agg]
        last = max(r["round"] for r in sel)
        vals = np.array([r[task["metric"]] for r in sel if r["round"] == last],
                        dtype=float)
        vals = np.where(np.isfinite(vals), vals, np.nan)
        cells.append(f"{np.mean(vals):.4g} ± {np.std(vals):.2g}")
      lines.append(f"| {agg} | " + " | ".join(cells) + " |")
    lines.append("")
  lines.append(f"Total wall-clock time: {seconds:.0f} s.")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="results/quickstart",
                      help="results folder (created)")
  parser.add_argument("--dataset", default="auto",
                      choices=["auto", "synthetic", "fashion-mnist"])
  parser.add_argument("--fashion-mnist-path",
                      default=fashion_mnist.DEFAULT_PATH)
  parser.add_argument("--steps", type=int, default=120)
  parser.add_argument("--eval-every", type=int, default=20)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0, help="base PRNG seed")
  args = parser.parse_args(argv)
  if args.steps < args.eval_every or args.steps % args.eval_every:
    parser.error("--steps must be a positive multiple of --eval-every")

  os.makedirs(args.out, exist_ok=True)
  key = jax.random.key(args.seed)
  tasks = []
  if args.dataset in ("auto", "synthetic"):
    tasks.append(_synthetic_task(jax.random.fold_in(key, 0)))
  if args.dataset in ("auto", "fashion-mnist"):
    try:
      tasks.append(_fashion_task(jax.random.fold_in(key, 1),
                                 args.fashion_mnist_path))
    except FileNotFoundError as e:
      if args.dataset == "fashion-mnist":
        raise
      print(f"[quickstart] skipping Fashion-MNIST: {e}", file=sys.stderr)

  start = time.perf_counter()
  rows = []
  for task in tasks:
    print(f"[quickstart] {task['name']}: {len(AGGREGATORS)} aggregators x "
          f"{len(ATTACKS)} attacks x {args.seeds} seeds, {args.steps} steps",
          flush=True)
    cell_rows = simulation.grid(
        _build_for(task, args.eval_every), task["data"],
        choices={"aggregator": list(AGGREGATORS), "attack": list(ATTACKS)},
        num_evals=args.steps // args.eval_every, seeds=args.seeds,
        key=jax.random.fold_in(key, 2))
    for r in cell_rows:
      r["dataset"] = task["name"]
    rows.extend(cell_rows)
  seconds = time.perf_counter() - start

  simulation.write_csv(rows, os.path.join(args.out, "results.csv"))
  _plot(rows, tasks, os.path.join(args.out, "curves.png"))
  summary = _summary(rows, tasks, seconds)
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write(summary)
  with open(os.path.join(args.out, "config.json"), "w") as f:
    json.dump({**vars(args), "num_workers": NUM_WORKERS,
               "num_byzantine": NUM_BYZANTINE, "seconds": seconds,
               "jax": jax.__version__, "backend": jax.default_backend()},
              f, indent=2)
  print(summary)
  print(f"[quickstart] wrote results.csv, curves.png, summary.md to {args.out}")


if __name__ == "__main__":
  main()
