"""Seconds per simulated CNN step: step loop as ``lax.scan`` vs unrolled.

Usage::

  python experiments/benchmarks/conv_loop.py --out DIR [--steps N] [--quick]

XLA:CPU runs a convolution inside a loop body several times slower than the
same convolution in straight-line code (jax-ml/jax#12868). This measures what
that costs :func:`byzjax.simulation.run` on a CNN, and what
``Simulation(unroll=True)`` with ``num_evals=1`` (no loop left in the
program) recovers. For each model (``resnet``: :class:`byzjax.models.ResNet`,
ResNet-8 with GroupNorm, 10 workers x 32 images, the class-sharded run of
``experiments/acharya.py``; ``lenet``: :class:`byzjax.models.LeNet`, 32
workers x 64 images, its homogeneous run; ``--quick``: a one-block ResNet of
width 8, 4 workers x 8 images) and each of

* ``scan``: ``run`` of ``--steps`` steps, the step loop a ``lax.scan``
  (``unroll=1``, the default);
* ``unrolled``: the same ``run`` with ``unroll=True``;
* ``single step``: one jitted :func:`byzjax.simulation.step` (no loop);

it compiles the program ahead of time, times ``--repeats`` calls and reports
the best one, divided by the number of steps. Plain SGD with the mean, no
attack: the step is the workers' gradients. Writes ``DIR/conv_loop.md`` (the
table, also printed) and ``DIR/conv_loop.json`` (rows and machine info).
"""

import argparse
import functools
import json
import os
import sys
import time

import jax
import numpy as np
import optax

import byzjax
from byzjax import models
from byzjax import simulation
from byzjax.aggregators.coordinatewise import mean
from byzjax.data import partition
from byzjax.data.partition import Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import machine_info  # pylint: disable=g-import-not-at-top,wrong-import-position

MODELS = {
    "resnet": (lambda: models.ResNet(), 10, 32),
    "lenet": (lambda: models.LeNet(), 32, 64),
}
QUICK_MODELS = {
    "resnet_small": (lambda: models.ResNet(stage_sizes=(1,), widths=(8,),
                                           num_groups=4), 4, 8),
}


def _timed(fn, args, repeats):
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def measure(name, make_model, num_workers, batch, *, steps, repeats, key):
  """Rows ``{model, mode, seconds_per_step, compile_s}`` for one model."""
  k_data, k_init, k_sim = jax.random.split(key, 3)
  n = num_workers * batch * 4
  images = np.asarray(jax.random.uniform(k_data, (n, 28, 28, 1)))
  labels = np.arange(n, dtype=np.int32) % 10
  data = partition.iid_partition(k_data, Dataset(images, labels), num_workers)
  fns = models.make_classifier(make_model())
  params = fns.init(k_init, images[:1])
  rows = []
  for mode in ("scan", "unrolled", "single step"):
    sim = simulation.Simulation(
        loss_fn=fns.loss,
        server_tx=optax.chain(byzjax.aggregate(mean), optax.sgd(0.01)),
        num_workers=num_workers, batch_size=batch,
        eval_every=1 if mode == "single step" else steps,
        unroll=mode == "unrolled")
    state = simulation.init(sim, params, k_sim)
    t0 = time.perf_counter()
    if mode == "single step":
      fn = jax.jit(functools.partial(simulation.step, sim)).lower(
          state, data).compile()
      n_steps = 1
    else:
      fn = jax.jit(functools.partial(simulation.run, sim, num_evals=1)).lower(
          state, data).compile()
      n_steps = steps
    compile_s = time.perf_counter() - t0
    seconds = _timed(fn, (state, data), repeats) / n_steps
    rows.append(dict(model=name, workers=num_workers, batch=batch, mode=mode,
                     seconds_per_step=seconds, compile_s=compile_s))
    print(f"[conv_loop] {name} {mode}: {seconds:.3f} s/step "
          f"(compile {compile_s:.1f} s)", flush=True)
  return rows


def table(rows) -> str:
  lines = ["| model | workers x batch | mode | s/step | vs scan | compile (s) |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    scan = next(q for q in rows if q["model"] == r["model"]
                and q["mode"] == "scan")["seconds_per_step"]
    lines.append(f"| {r['model']} | {r['workers']} x {r['batch']} | "
                 f"{r['mode']} | {r['seconds_per_step']:.3f} | "
                 f"{scan / r['seconds_per_step']:.1f}x | "
                 f"{r['compile_s']:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--models", default=None,
                      help="comma-separated subset of resnet,lenet")
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  chosen = QUICK_MODELS if args.quick else MODELS
  if args.models:
    chosen = {m: MODELS[m] for m in args.models.split(",")}
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for i, (name, (make, r, b)) in enumerate(chosen.items()):
    rows += measure(name, make, r, b, steps=args.steps, repeats=args.repeats,
                    key=jax.random.key(i))
  text = table(rows)
  with open(os.path.join(args.out, "conv_loop.md"), "w") as f:
    f.write(text)
  with open(os.path.join(args.out, "conv_loop.json"), "w") as f:
    json.dump({"rows": rows, "config": vars(args),
               "machine": machine_info()}, f, indent=2)
  print(text)
  return rows


if __name__ == "__main__":
  main()
