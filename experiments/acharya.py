"""Acharya et al.: BGMD on Fashion-MNIST (Table 2, Figures 1-4, non-i.i.d.).

Reproduces the experiments of Acharya, Hashemi, Jain, Sanghavi, Dhillon &
Topcu, "Robust Training in High Dimensions via Block Coordinate Geometric
Median Descent" (AISTATS 2022, arXiv 2106.08882) with byzjax.

**Table 2 and Figures 2-4** (``--part table``). Homogeneous setup (§4):
``R = 32`` workers with i.i.d. shares of the 60000 training images,
per-worker batch 64, cross-entropy with weight decay 1e-5 (App. C.1), plain
SGD with step size 0.01 decayed by 1% per epoch (``0.01 * 0.99**epoch``;
App. C.1 says "per round"; a per-step decay would freeze training after
~300 of its ~1465 steps). Rows (corruption, fraction ψ of Byzantine
workers):

* ``clean``;
* ``bit_flip``: Byzantine workers send :math:`-100\\, g_i` (§4.1);
* ``additive``: gradient plus :math:`\\mathcal N(0, 100 I)`;
* ``feature_additive``: images plus :math:`\\mathcal N(0, 100)` pixel noise;
* ``impulse``: 90% of the pixels set to 0 or 1 (salt and pepper);
* ``backdoor``: every label of a Byzantine batch set to class 8,

each at 20% and 40%. The Byzantine workers are drawn anew at every step
(§4.1: "at each iteration ... randomly chosen ψ fraction"), ``floor(ψ R)``
of them: 6 of 32 at 20% (6.4 rounded down, 18.75%) and 12 at 40% (12.8
rounded down, 37.5%), the cap of the authors' attack code. A row name with
the suffix ``_fixed`` (e.g. ``bit_flip_20_fixed``, not in the paper) keeps
one set drawn at the start instead. The corrupted unit is a worker's whole
mini-batch (a row of the paper's ``G_t``, whose rows are the 32
mini-batch gradients), also for the backdoor, as in the authors' code.

Columns: ``sgd`` (mean), ``cmd`` (coordinate-wise median), ``bgmd``
(:func:`byzjax.block_geometric_median_descent`, Algorithm 1 as printed:
one shared memory), ``bgmd_pw`` (the same with one memory row per worker),
``gmd`` (full geometric median); block fraction :math:`\\beta` =
``--block-fraction``, default 0.1. Metric: test accuracy on the 10000 test
images; a run whose final accuracy is below 20% or whose loss is not finite
counts as diverged ("–", like the paper). For the backdoor rows the script
also reports the attack's success: the share of test images not of class 8
that the model classifies as 8. Accuracy is recorded every
``--eval-every`` steps against the training wall-clock time (evaluation
excluded), which gives the accuracy-vs-time curves of Figures 2-4 and
BGMD's speed-up over GMD to reach the same accuracy. Block runs also record
the relative residual r_t and the memory's norm (``residual``,
``memory_norm``, ``memory_norm_max``).

**Figure 1** (``--part memory``). Clean, the table's setup: (a) the
relative residual :math:`r_t = \\|G_t - C_k(G_t)\\|^2 / \\|G_t\\|^2` over
training and (b) the final accuracy against :math:`\\beta`, with the
memory (``bgmd_pw``) and without it (``bgmd_nomem``: the block geometric
median alone), GMD as the :math:`\\beta = 1` reference. The paper's claim
(§3, Summary C): with the memory a much smaller :math:`\\beta` reaches the
same accuracy.

The model is the paper's LeNet (:class:`byzjax.models.LeNet`, 1,163,978
parameters) with ``--model lenet``; its 32 x 64 per-worker gradients take
about 9 s per step on the 2-core CPU this was developed on, so the full
grid (11 rows x 4 aggregators x 50 epochs) is out of reach there and the
default is ``--model mlp`` (:class:`byzjax.models.MLP`, one hidden layer of
1000 units, 795,010 parameters: the same high-dimensional regime). The
``timing`` part measures one step of the paper's LeNet setup, split into
worker gradients and each aggregator, and the speed-up that implies.

**Non-i.i.d. run** (``--part hetero``). App. C.2's split: the training set
sorted by label, cut into 40 consecutive shards, 4 drawn per client for 10
clients (:func:`byzjax.data.partition.class_sharded_partition`), batch 128
per client (§4). The paper's run is ResNet-18 on CIFAR-10 (no CIFAR-10
here); this one is Fashion-MNIST with ``--hetero-model`` (default the MLP).
The initial step size comes from App. C.1's search over
``{1e-3, 5e-3, 1e-2, 5e-2, 1e-1}`` (clean, mean aggregation, best final
test accuracy), decayed by 1% per epoch; ``--hetero-lr`` skips the search.
(App. C.1 states 0.1 with cosine annealing for the CIFAR-10 ResNet-18 run;
that is a different model and data set.)

Writes ``table.csv``, ``hetero.csv``, ``hetero_lr_search.csv``,
``memory.csv`` and ``timing.csv`` (tidy rows), ``table.png`` (accuracy vs
wall-clock, one panel per row), ``hetero.png``, ``memory.png``,
``summary.md`` and ``config.json`` into ``--out``.

Usage::

  python experiments/acharya.py --out results/acharya
  python experiments/acharya.py --quick --out /tmp/acharya
"""

import argparse
import csv
import functools
import json
import math
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import byzjax
from byzjax import models
from byzjax import simulation
from byzjax.aggregators.block_coordinate import block_geometric_median
from byzjax.aggregators.block_coordinate import BlockGeometricMedianInfo
from byzjax.aggregators.coordinatewise import coordinate_median
from byzjax.aggregators.coordinatewise import mean
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.attacks import data as data_attacks
from byzjax.attacks.gradient import bit_flip_attack
from byzjax.attacks.gradient import gaussian_noise_attack
from byzjax.data import fashion_mnist
from byzjax.data import partition
from byzjax.data.partition import Dataset
from byzjax.transforms.block_memory import block_geometric_median_descent
from byzjax.transforms.block_memory import BlockMemoryState

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _figures  # pylint: disable=g-import-not-at-top,wrong-import-position

AGGREGATORS = ("sgd", "cmd", "bgmd", "bgmd_pw", "gmd")
# Every column server_tx knows; "bgmd_nomem" is Figure 1's "without memory".
ALL_AGGREGATORS = AGGREGATORS + ("bgmd_nomem",)
LABELS = {"sgd": "SGD (mean)", "cmd": "CMD (coord. median)",
          "bgmd_nomem": "block GM, no memory",
          "bgmd": "BGMD (shared memory)", "bgmd_pw": "BGMD (per-worker memory)",
          "gmd": "GMD (full GM)"}
# The paper's column for each of ours (both BGMD variants against its BGMD).
PAPER_COLUMN = {"sgd": 0, "cmd": 1, "bgmd": 2, "bgmd_pw": 2, "gmd": 3,
                "bgmd_nomem": 2}
# A row name with this suffix runs its row with one Byzantine set drawn at the
# start and kept (not the paper's; for the comparison with the redrawn set).
FIXED = "_fixed"
# Row name -> (corruption, fraction of Byzantine workers).
ROWS = {
    "clean": (None, 0.0),
    "bit_flip_20": ("bit_flip", 0.2), "bit_flip_40": ("bit_flip", 0.4),
    "additive_20": ("additive", 0.2), "additive_40": ("additive", 0.4),
    "feature_additive_20": ("feature_additive", 0.2),
    "feature_additive_40": ("feature_additive", 0.4),
    "impulse_20": ("impulse", 0.2), "impulse_40": ("impulse", 0.4),
    "backdoor_20": ("backdoor", 0.2), "backdoor_40": ("backdoor", 0.4),
}
# Their Table 2 (Fashion-MNIST, LeNet, 50 epochs, mean over 5 seeds; None:
# diverged), columns SGD, CMD, BGMD, GMD.
PAPER = {
    "clean": (89.39, 83.82, 89.25, 88.98),
    "bit_flip_20": (None, 84.20, 88.42, 88.07),
    "bit_flip_40": (None, 82.33, 85.67, 85.57),
    "additive_20": (None, 72.55, 87.87, 87.24),
    "additive_40": (None, 41.04, 88.29, 83.89),
    "feature_additive_20": (None, 82.38, 86.76, 86.63),
    "feature_additive_40": (None, 78.54, 82.27, 81.23),
    "impulse_20": (79.18, 82.59, 86.91, 86.23),
    "impulse_40": (None, 78.03, 82.11, 81.41),
    "backdoor_20": (86.99, 76.38, 88.97, 88.26),
    "backdoor_40": (73.01, 60.85, 84.69, 81.32),
}
# Their Table 2, ResNet-18 on class-sharded CIFAR-10 (10 clients, 200 epochs).
PAPER_HETERO = {
    "clean": (82.29, 85.50, 84.82, 85.65),
    "bit_flip_20": (None, 80.87, 87.56, 88.07),
    "bit_flip_40": (None, 77.41, 82.66, 80.81),
    "additive_20": (20.7, 54.75, 83.84, 82.40),
    "additive_40": (None, 23.35, 82.79, 79.46),
}
# App. C.1's search grid for the initial step size.
LR_GRID = (1e-3, 5e-3, 1e-2, 5e-2, 1e-1)
BACKDOOR_CLASS = 8
DIVERGED_BELOW = 0.2

FULL = dict(model="mlp", num_workers=32, batch=64, epochs=5.0,
            eval_every=10, seeds=1, train_subset=None, test_subset=None,
            rows=tuple(ROWS), hetero_model="mlp", hetero_workers=10,
            hetero_shards=4, hetero_batch=128, hetero_steps=100,
            hetero_eval_every=10, hetero_search_steps=50, hetero_lr=None,
            hetero_rows=("clean", "bit_flip_20"),
            memory_betas=(0.01, 0.05, 0.1, 0.3),
            memory_variants=("bgmd_nomem", "bgmd_pw"), memory_steps=60,
            memory_eval_every=10, timing_repeats=3, lr=0.01)
QUICK = dict(model="mlp_small", num_workers=8, batch=16, epochs=2.0,
             eval_every=5, seeds=1, train_subset=1600, test_subset=1000,
             rows=("clean", "bit_flip_40", "bit_flip_40" + FIXED,
                   "backdoor_20"),
             hetero_model="mlp_small", hetero_workers=10, hetero_shards=4,
             hetero_batch=16, hetero_steps=30, hetero_eval_every=10,
             hetero_search_steps=10, hetero_lr=None,
             hetero_rows=("clean", "bit_flip_20"), memory_betas=(0.01, 0.1),
             memory_variants=("bgmd_nomem", "bgmd_pw"), memory_steps=20,
             memory_eval_every=5, timing_repeats=1, lr=0.1,
             aggregators=("sgd", "bgmd", "bgmd_pw", "gmd"))


def _log(msg: str) -> None:
  print(f"[acharya] {msg}", flush=True)


# ---------------------------------------------------------------------------
# Building blocks.


def make_model(name: str) -> Any:
  """The network: ``lenet`` (the paper's), ``mlp``, ``mlp_small``, ``resnet``."""
  if name == "lenet":
    return models.LeNet()
  if name == "mlp":
    return models.MLP(num_classes=10, hidden=(1000,))
  if name == "mlp_small":
    return models.MLP(num_classes=10, hidden=(32,))
  if name == "resnet":
    return models.ResNet()
  if name == "resnet_small":
    return models.ResNet(stage_sizes=(1,), widths=(8,), num_groups=4)
  raise ValueError(f"unknown model {name!r}")


def base_row(row: str) -> str:
  """The table row of a row name (``bit_flip_20_fixed`` -> ``bit_flip_20``)."""
  return row[:-len(FIXED)] if row.endswith(FIXED) else row


def num_byzantine(row: str, num_workers: int) -> int:
  """``floor(fraction * R)`` Byzantine workers for a table row.

  20% of 32 is 6.4 and 40% is 12.8: 6 and 12 workers (18.75% and 37.5%),
  the largest counts within the paper's fraction, as the authors' attack
  code caps them (``max_adv = int(frac_adv * G.shape[0])``).
  """
  return int(math.floor(ROWS[base_row(row)][1] * num_workers + 1e-9))


def corruption(row: str, key: jax.Array):
  """``(gradient attack or None, data attack or None)`` of a table row."""
  kind = ROWS[base_row(row)][0]
  if kind == "bit_flip":
    return bit_flip_attack(scale=100.0), None
  if kind == "additive":
    return gaussian_noise_attack(key=key, variance=100.0), None
  if kind == "feature_additive":
    return None, data_attacks.feature_noise(variance=100.0)
  if kind == "impulse":
    return None, data_attacks.impulse_noise(fraction=0.9)
  if kind == "backdoor":
    return None, data_attacks.backdoor(BACKDOOR_CLASS)
  if kind is None:
    return None, None
  raise ValueError(f"unknown corruption {kind!r}")


def server_tx(aggregator: str, *, learning_rate, num_workers: int,
              block_fraction: float, gm_iters: int
              ) -> optax.GradientTransformation:
  """The aggregator followed by SGD with the step-size schedule."""
  if aggregator == "sgd":
    agg = byzjax.aggregate(mean)
  elif aggregator == "cmd":
    agg = byzjax.aggregate(coordinate_median)
  elif aggregator == "gmd":
    # The step rule: the one the recorded results (RESULTS.md) were run
    # with, before the library default became the peers' objective rule.
    agg = byzjax.aggregate(geometric_median, max_iters=gm_iters,
                           criterion="step", num_workers=num_workers)
  elif aggregator == "bgmd_nomem":
    # The block geometric median alone (Algorithm 1 without its memory):
    # the unselected coordinates are dropped every step (Figure 1(b), "no m").
    agg = byzjax.aggregate(block_geometric_median,
                           block_fraction=block_fraction, max_iters=gm_iters,
                           criterion="step", num_workers=num_workers)
  elif aggregator in ("bgmd", "bgmd_pw"):
    # Memory in step-size units (Algorithm 1 with a decaying step size);
    # "bgmd" is Algorithm 1 as printed (one memory, the mean residual),
    # "bgmd_pw" the authors' experiment code (one residual per worker).
    agg = block_geometric_median_descent(
        block_fraction=block_fraction, learning_rate=learning_rate,
        max_iters=gm_iters, criterion="step",
        memory="per_worker" if aggregator == "bgmd_pw" else "shared",
        num_workers=num_workers)
  else:
    raise ValueError(f"unknown aggregator {aggregator!r}")
  return optax.chain(agg, optax.sgd(learning_rate))


class Task(NamedTuple):
  """A training problem: worker data, model functions and test metrics."""
  data: partition.WorkerData
  fns: models.ModelFns
  sample_x: jax.Array
  evaluate: Any  # params -> dict of test metrics
  train_size: int
  convolutional: bool  # unroll the step loop (see Simulation.unroll)


def _subset(dataset: Dataset, size: int | None) -> Dataset:
  if size is None or size >= len(dataset.y):
    return dataset
  return Dataset(x=dataset.x[:size], y=dataset.y[:size])


def make_task(key: jax.Array, train: Dataset, test: Dataset, *,
              model: str, num_workers: int, split: str = "iid",
              shards_per_worker: int = 4, weight_decay: float = 1e-5,
              eval_batch: int = 1000) -> Task:
  """Partitions ``train`` over the workers and builds the test metrics."""
  if split == "iid":
    data = partition.iid_partition(key, train, num_workers)
  else:
    data = partition.class_sharded_partition(
        key, train, num_workers, shards_per_worker=shards_per_worker)
  fns = models.make_classifier(make_model(model), weight_decay=weight_decay)
  n_test = len(test.y) - len(test.y) % min(eval_batch, len(test.y))
  chunk = min(eval_batch, n_test)
  test_x = jnp.asarray(test.x[:n_test]).reshape(
      (n_test // chunk, chunk) + test.x.shape[1:])
  test_y = jnp.asarray(test.y[:n_test]).reshape(n_test // chunk, chunk)

  @jax.jit
  def counts(params, x, y):
    pred = jnp.argmax(fns.apply(params, x), axis=-1)
    not_target = y != BACKDOOR_CLASS
    return jnp.stack([jnp.sum(pred == y),
                      jnp.sum((pred == BACKDOOR_CLASS) & not_target),
                      jnp.sum(not_target)])

  def evaluate(params):
    # A host loop over test chunks: on XLA:CPU a convolution inside a
    # lax.map loop body runs several times slower (see Simulation.unroll).
    correct, to_target, n_other = np.sum(
        [np.asarray(counts(params, x, y)) for x, y in zip(test_x, test_y)],
        axis=0)
    return {"test_accuracy": correct / n_test,
            "backdoor_rate": to_target / max(n_other, 1)}

  return Task(data, fns, jnp.asarray(train.x[:1]), evaluate, len(train.y),
              convolutional=not model.startswith("mlp"))


def train_run(task: Task, *, row: str, aggregator: str, seed_key: jax.Array,
              num_workers: int, batch: int, steps: int, eval_every: int,
              lr: float | Any, steps_per_epoch: int, block_fraction: float,
              gm_iters: int) -> list[dict[str, Any]]:
  """Trains one configuration; rows with test metrics vs wall-clock time.

  Training runs in jitted chunks of ``eval_every`` steps (one nested
  ``lax.scan`` each, compiled ahead of time); only these chunks are timed,
  the evaluation between them is not.

  The Byzantine workers are redrawn at every step (the paper's §4.1: "at
  each iteration ... randomly chosen ψ fraction"), except for a row named
  ``<row>_fixed``: one set drawn at the start and kept. Block runs also
  record, at each evaluation, the relative residual of the last step,
  ``residual`` = r_t = ||G_t - C_k(G_t)||² / ||G_t||² (Figure 1(a);
  ``1 - mass`` of the block selection), and the memory's size in step-size
  units: ``memory_norm`` (the shared memory's norm, or the root mean square
  of the per-worker rows' norms) and ``memory_norm_max`` (the largest row).
  ``lr`` is a float (decayed by 1% per epoch, App. C.1) or a schedule.
  """
  k_init, k_sim, k_attack = jax.random.split(seed_key, 3)
  schedule = (lr if callable(lr) else optax.exponential_decay(
      lr, transition_steps=steps_per_epoch, decay_rate=0.99, staircase=True))
  attack, data_attack = corruption(row, k_attack)
  sim = simulation.Simulation(
      loss_fn=task.fns.loss,
      server_tx=server_tx(aggregator, learning_rate=schedule,
                          num_workers=num_workers,
                          block_fraction=block_fraction, gm_iters=gm_iters),
      num_workers=num_workers, batch_size=batch, attack=attack,
      data_attack=data_attack, num_byzantine=num_byzantine(row, num_workers),
      redraw_byzantine=not row.endswith(FIXED), eval_every=eval_every,
      unroll=task.convolutional)
  state = simulation.init(sim, task.fns.init(k_init, task.sample_x), k_sim)
  t0 = time.perf_counter()
  chunk = jax.jit(functools.partial(simulation.run, sim, num_evals=1)).lower(
      state, task.data).compile()
  compile_s = time.perf_counter() - t0

  def record(step, wall, loss):
    metrics = {k: float(v) for k, v in task.evaluate(state.params).items()}
    return dict(row=row, aggregator=aggregator, step=step,
                epoch=step / steps_per_epoch, wall_s=wall, train_loss=loss,
                compile_s=compile_s, **metrics,
                **block_diagnostics(state.server_state,
                                   per_worker=aggregator == "bgmd_pw",
                                   stepped=step > 0))

  out = [record(0, 0.0, float("nan"))]
  wall = 0.0
  for _ in range(steps // eval_every):
    t0 = time.perf_counter()
    state, m = chunk(state, task.data)
    jax.block_until_ready(state.params)
    wall += time.perf_counter() - t0
    out.append(record(int(m["step"][0]), wall, float(m["train_loss"][0])))
  return out


def block_diagnostics(server_state, per_worker: bool,
                      stepped: bool = True) -> dict[str, float]:
  """Relative residual r_t and memory norms of a block run's server state.

  ``residual`` is ``1 - mass`` of the last step's block selection (the
  share of ``||G_t||_F^2`` outside the block, Figure 1(a)'s r_t); the
  memory norms are in step-size units. NaN where the aggregator keeps no
  block selection (``sgd``, ``cmd``, ``gmd``) or no memory (``bgmd_nomem``),
  and before the first step (``stepped=False``; the aggregator's info
  holds zeros then).
  """
  out = dict(residual=float("nan"), memory_norm=float("nan"),
             memory_norm_max=float("nan"))
  if not stepped:
    return out
  is_leaf = lambda s: isinstance(s, (BlockMemoryState,
                                     BlockGeometricMedianInfo))
  for s in jax.tree.leaves(server_state, is_leaf=is_leaf):
    if isinstance(s, BlockGeometricMedianInfo):
      out["residual"] = 1.0 - float(s.mass)
    elif isinstance(s, BlockMemoryState) and int(s.count) > 0:
      out["residual"] = 1.0 - float(s.mass)
      # Squared norm per memory row ([R] per worker, one row when shared).
      sq = sum(np.sum(np.square(np.asarray(m, np.float64)).reshape(
          (m.shape[0] if per_worker else 1, -1)), axis=1)
               for m in jax.tree.leaves(s.memory))
      out["memory_norm"] = float(np.sqrt(np.mean(sq)))
      out["memory_norm_max"] = float(np.sqrt(np.max(sq)))
  return out


_INT_COLUMNS = ("step", "seed")
_STR_COLUMNS = ("row", "aggregator")


def load_rows(path: str) -> list[dict[str, Any]]:
  """Rows of a ``table.csv``/``hetero.csv`` written by an earlier run."""
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    for k, v in r.items():
      if k in _INT_COLUMNS:
        r[k] = int(v)
      elif k not in _STR_COLUMNS:
        r[k] = float(v)
  return rows


def _reused(previous, row, agg, seed) -> list[dict[str, Any]]:
  return [r for r in previous
          if (r["row"], r["aggregator"], r["seed"]) == (row, agg, seed)]


def diverged(acc: float, loss: float) -> bool:
  return not np.isfinite(loss) or not acc >= DIVERGED_BELOW


# ---------------------------------------------------------------------------
# Parts.


def part_table(cfg, train, test, key, args,
               previous=()) -> list[dict[str, Any]]:
  """Table 2 and Figures 2-4: every row x aggregator x seed.

  Runs found in ``previous`` (rows of an earlier ``table.csv`` with the same
  settings, see ``--reuse``) are taken from there instead of rerun.
  """
  r = cfg["num_workers"]
  steps_per_epoch = max(1, len(train.y) // (r * cfg["batch"]))
  steps = cfg.get("steps") or int(round(cfg["epochs"] * steps_per_epoch))
  steps -= steps % cfg["eval_every"]
  steps = max(steps, cfg["eval_every"])
  cfg["table_steps"], cfg["steps_per_epoch"] = steps, steps_per_epoch
  runs = [(row, agg, s) for s in range(cfg["seeds"]) for row in cfg["rows"]
          for agg in cfg["aggregators"]]
  _log(f"table: {cfg['model']} on Fashion-MNIST, {r} workers x batch "
       f"{cfg['batch']}, {steps} steps ({steps / steps_per_epoch:.2f} epochs) "
       f"per run, {len(runs)} runs")
  rows, tasks = [], {}
  t_start = time.perf_counter()
  for i, (row, agg, seed) in enumerate(runs):
    old = _reused(previous, row, agg, seed)
    if old:
      rows.extend(old)
      _log(f"[{i + 1}/{len(runs)}] {row} {agg} seed {seed}: reused")
      continue
    if seed not in tasks:
      tasks[seed] = make_task(jax.random.fold_in(key, seed), train, test,
                              model=cfg["model"], num_workers=r)
    out = train_run(tasks[seed], row=row, aggregator=agg,
                    seed_key=jax.random.fold_in(key, 1000 + seed),
                    num_workers=r, batch=cfg["batch"], steps=steps,
                    eval_every=cfg["eval_every"], lr=cfg["lr"],
                    steps_per_epoch=steps_per_epoch,
                    block_fraction=args.block_fraction,
                    gm_iters=args.gm_iters)
    for o in out:
      o["seed"] = seed
    rows.extend(out)
    simulation.write_csv(rows, os.path.join(args.out, "table.csv"))
    last = out[-1]
    elapsed = time.perf_counter() - t_start
    _log(f"[{i + 1}/{len(runs)}] {row:>19s} {agg:>4s} seed {seed}: "
         f"acc {last['test_accuracy']:.4f} loss {last['train_loss']:.3g} "
         f"train {last['wall_s']:.1f}s compile {last['compile_s']:.1f}s "
         f"(elapsed {elapsed / 60:.1f} min, eta "
         f"{elapsed / (i + 1) * (len(runs) - i - 1) / 60:.1f} min)")
  return rows


def part_hetero(cfg, train, test, key, args,
                previous=()) -> tuple[list[dict[str, Any]], list[dict]]:
  """Class-sharded split (§4, App. C.2): step-size search, then the rows.

  The split is App. C.2's: the training set sorted by label, cut into 40
  consecutive shards, 4 drawn per client for 10 clients. The initial step
  size is App. C.1's search: every value of ``LR_GRID`` on the clean row
  with the mean (SGD), ``hetero_search_steps`` steps each, decayed by 1%
  per epoch; the one with the best final test accuracy is used for every
  row and aggregator (``--hetero-lr`` skips the search). Returns
  ``(rows, search rows)``.
  """
  r = cfg["hetero_workers"]
  task = make_task(key, train, test, model=cfg["hetero_model"],
                   num_workers=r, split="class_sharded",
                   shards_per_worker=cfg["hetero_shards"])
  sizes = np.asarray(task.data.size)
  classes = [len(np.unique(np.asarray(task.data.y[i, :sizes[i]])))
             for i in range(r)]
  cfg["hetero_classes_per_worker"] = classes
  steps_per_epoch = max(1, len(train.y) // (r * cfg["hetero_batch"]))
  cfg["hetero_steps_per_epoch"] = steps_per_epoch
  common = dict(num_workers=r, batch=cfg["hetero_batch"],
                eval_every=cfg["hetero_eval_every"],
                steps_per_epoch=steps_per_epoch,
                block_fraction=args.block_fraction, gm_iters=args.gm_iters)
  search = []
  if cfg.get("hetero_lr") is None:
    for lr in LR_GRID:
      out = train_run(task, row="clean", aggregator="sgd",
                      seed_key=jax.random.fold_in(key, 7),
                      steps=cfg["hetero_search_steps"], lr=lr, **common)
      search.extend(dict(o, lr=lr, seed=0) for o in out)
      _log(f"hetero lr search: lr {lr:g}: acc {out[-1]['test_accuracy']:.4f}"
           f" loss {out[-1]['train_loss']:.3g}")
    finals = {lr: [o for o in search if o["lr"] == lr][-1] for lr in LR_GRID}
    best = max(LR_GRID, key=lambda lr: (
        finals[lr]["test_accuracy"] if np.isfinite(finals[lr]["train_loss"])
        else -1.0))
    cfg["hetero_lr"] = best
    _log(f"hetero lr search picked {best:g}")
  runs = [(row, agg) for row in cfg["hetero_rows"]
          for agg in cfg["aggregators"]]
  _log(f"hetero: {cfg['hetero_model']} on class-sharded Fashion-MNIST, {r} "
       f"workers x batch {cfg['hetero_batch']} (classes per worker "
       f"{classes}), {cfg['hetero_steps']} steps, lr {cfg['hetero_lr']:g}, "
       f"{len(runs)} runs")
  rows = []
  for i, (row, agg) in enumerate(runs):
    old = _reused(previous, row, agg, 0)
    if old:
      rows.extend(old)
      _log(f"[{i + 1}/{len(runs)}] hetero {row} {agg}: reused")
      continue
    out = train_run(task, row=row, aggregator=agg,
                    seed_key=jax.random.fold_in(key, 7),
                    steps=cfg["hetero_steps"], lr=cfg["hetero_lr"], **common)
    rows.extend(dict(o, seed=0) for o in out)
    simulation.write_csv(rows, os.path.join(args.out, "hetero.csv"))
    _log(f"[{i + 1}/{len(runs)}] hetero {row} {agg}: acc "
         f"{out[-1]['test_accuracy']:.4f} train {out[-1]['wall_s']:.1f}s")
  return rows, search


def part_memory(cfg, train, test, key, args) -> list[dict[str, Any]]:
  """Figure 1: residual r_t and accuracy across block fractions β.

  Clean i.i.d. setup of the table (its model, workers, batch and step
  size), ``memory_steps`` steps per run, for every β of ``memory_betas``
  and every variant of ``memory_variants`` (``bgmd_nomem``: the block
  geometric median alone; ``bgmd``/``bgmd_pw``: with the shared or the
  per-worker memory), plus GMD (β = 1) as the reference.
  """
  r = cfg["num_workers"]
  steps_per_epoch = max(1, len(train.y) // (r * cfg["batch"]))
  steps = cfg["memory_steps"]
  task = make_task(jax.random.fold_in(key, 0), train, test,
                   model=cfg["model"], num_workers=r)
  runs = [(agg, beta) for beta in cfg["memory_betas"]
          for agg in cfg["memory_variants"]] + [("gmd", 1.0)]
  _log(f"memory (Figure 1): {cfg['model']}, {r} workers x batch "
       f"{cfg['batch']}, clean, {steps} steps per run, {len(runs)} runs")
  rows = []
  for i, (agg, beta) in enumerate(runs):
    out = train_run(task, row="clean", aggregator=agg,
                    seed_key=jax.random.fold_in(key, 1000), num_workers=r,
                    batch=cfg["batch"], steps=steps,
                    eval_every=cfg["memory_eval_every"], lr=cfg["lr"],
                    steps_per_epoch=steps_per_epoch, block_fraction=beta,
                    gm_iters=args.gm_iters)
    rows.extend(dict(o, block_fraction=beta, seed=0) for o in out)
    simulation.write_csv(rows, os.path.join(args.out, "memory.csv"))
    _log(f"[{i + 1}/{len(runs)}] memory {agg} beta {beta:g}: acc "
         f"{out[-1]['test_accuracy']:.4f} r_t {out[-1]['residual']:.3f} "
         f"train {out[-1]['wall_s']:.1f}s")
  return rows


def plot_memory(rows, path) -> None:
  """Figure 1 (a) r_t over training, (b) final accuracy against β."""
  plt = _figures.pyplot()
  fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(9.5, 3.4))
  betas = sorted({r["block_fraction"] for r in rows if r["aggregator"] != "gmd"})
  variants = list(dict.fromkeys(r["aggregator"] for r in rows
                                if r["aggregator"] != "gmd"))
  styles = {"bgmd_nomem": ":", "bgmd": "--", "bgmd_pw": "-"}
  for v in variants:
    for n, beta in enumerate(betas):
      sel = [r for r in rows if r["aggregator"] == v
             and r["block_fraction"] == beta and r["step"] > 0]
      ax_a.plot([r["step"] for r in sel], [r["residual"] for r in sel],
                styles.get(v, "-"), color=f"C{n}",
                label=f"β={beta:g}, {LABELS[v]}")
    acc = [100 * final_stats(rows, aggregator=v, block_fraction=b)[
        "acc_all_mean"] for b in betas]
    ax_b.plot(betas, acc, styles.get(v, "-") + "o", label=LABELS[v])
  gmd = [r for r in rows if r["aggregator"] == "gmd"]
  if gmd:
    ax_b.axhline(100 * final_stats(gmd)["acc_all_mean"], color="k", lw=0.8,
                 label="GMD (β = 1)")
  ax_a.set_xlabel("step", fontsize=8)
  ax_a.set_ylabel("r_t = |G - C_k(G)|² / |G|²", fontsize=8)
  ax_a.set_ylim(0, 1)
  ax_a.set_title("(a) relative residual of the block", fontsize=9)
  ax_a.legend(fontsize=5, ncol=2)
  ax_b.set_xscale("log")
  ax_b.set_xlabel("block fraction β", fontsize=8)
  ax_b.set_ylabel("final test accuracy (%)", fontsize=8)
  ax_b.set_title("(b) with and without memory", fontsize=9)
  ax_b.legend(fontsize=7)
  for ax in (ax_a, ax_b):
    ax.grid(alpha=0.3)
  _figures.save(fig, path, dpi=120)


def _median_time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def part_timing(cfg, train, key, args, models_to_time) -> list[dict[str, Any]]:
  """One step of the paper's setup, split into gradients and aggregation."""
  r, b = cfg["num_workers"], cfg["batch"]
  rows = []
  x = jnp.asarray(train.x[:r * b]).reshape((r, b) + train.x.shape[1:])
  y = jnp.asarray(train.y[:r * b]).reshape(r, b)
  for name in models_to_time:
    fns = models.make_classifier(make_model(name), weight_decay=1e-5)
    params = fns.init(key, x[0, :1])
    grads_fn = jax.jit(lambda p, xy, fns=fns: jax.vmap(
        jax.grad(fns.loss), in_axes=(None, 0))(p, xy))
    grads = grads_fn(params, (x, y))
    t_grad = _median_time(grads_fn, params, (x, y),
                          repeats=cfg["timing_repeats"])
    d = models.num_params(params)
    rows.append(dict(model=name, params=d, part="worker_gradients",
                     seconds=t_grad))
    _log(f"timing {name} ({d:,} params): worker gradients {t_grad:.3f}s")
    for agg in cfg["aggregators"]:
      tx = server_tx(agg, learning_rate=cfg["lr"], num_workers=r,
                     block_fraction=args.block_fraction,
                     gm_iters=args.gm_iters)
      state = tx.init(params)
      update = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p))
      t_agg = _median_time(update, grads, state, params,
                           repeats=cfg["timing_repeats"])
      rows.append(dict(model=name, params=d, part=agg, seconds=t_agg))
      _log(f"timing {name}: {agg} aggregation {t_agg:.3f}s")
  return rows


# ---------------------------------------------------------------------------
# Reports.


def final_stats(rows, **conds) -> dict[str, Any]:
  """Mean/sd of the last evaluation over seeds, and the divergence count."""
  sel = [r for r in rows if all(r[k] == v for k, v in conds.items())]
  last_step = max(r["step"] for r in sel)
  last = [r for r in sel if r["step"] == last_step]
  acc = np.array([r["test_accuracy"] for r in last])
  div = [diverged(r["test_accuracy"], r["train_loss"]) for r in last]
  ok = acc[~np.array(div)]
  return dict(acc_mean=float(np.mean(ok)) if ok.size else float("nan"),
              acc_sd=float(np.std(ok)) if ok.size > 1 else 0.0,
              acc_all_mean=float(np.mean(acc)), n=len(last),
              n_diverged=int(sum(div)),
              backdoor_rate=float(np.mean([r["backdoor_rate"] for r in last])),
              wall_s=float(np.mean([r["wall_s"] for r in last])))


def mean_curve(rows, **conds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(steps, mean wall-clock, mean accuracy)`` over seeds."""
  sel = [r for r in rows if all(r[k] == v for k, v in conds.items())]
  steps = np.array(sorted({r["step"] for r in sel}))
  wall = np.array([np.mean([r["wall_s"] for r in sel if r["step"] == s])
                   for s in steps])
  acc = np.array([np.mean([r["test_accuracy"] for r in sel if r["step"] == s])
                  for s in steps])
  return steps, wall, acc


def time_to_reach(wall, acc, target) -> float:
  """First wall-clock time at which ``acc >= target`` (nan if never)."""
  hit = np.nonzero(acc >= target)[0]
  return float(wall[hit[0]]) if hit.size else float("nan")


def speedup(rows, row, fast="bgmd_pw") -> dict[str, float]:
  """BGMD's speed-up over GMD to reach 99% of the lower final accuracy."""
  _, w_b, a_b = mean_curve(rows, row=row, aggregator=fast)
  _, w_g, a_g = mean_curve(rows, row=row, aggregator="gmd")
  target = 0.99 * min(a_b[-1], a_g[-1])
  t_b, t_g = time_to_reach(w_b, a_b, target), time_to_reach(w_g, a_g, target)
  return dict(target=float(target), bgmd_s=t_b, gmd_s=t_g,
              speedup=t_g / t_b if t_b > 0 else float("nan"),
              per_step=(w_g[-1] / w_b[-1]) if w_b[-1] > 0 else float("nan"))


def plot_curves(rows, row_names, aggregators, path, title) -> None:
  """Accuracy vs training wall-clock, one panel per row (Figures 2-4)."""
  plt = _figures.pyplot()
  cols = min(4, len(row_names))
  nrows = -(-len(row_names) // cols)
  fig, axes = plt.subplots(nrows, cols, squeeze=False,
                           figsize=(3.4 * cols, 2.7 * nrows))
  for ax, row in zip(axes.flat, row_names):
    for agg in aggregators:
      _, wall, acc = mean_curve(rows, row=row, aggregator=agg)
      ax.plot(wall, 100 * np.nan_to_num(acc), label=LABELS[agg])
    ax.set_title(row, fontsize=9)
    ax.set_xlabel("training wall-clock (s)", fontsize=8)
    ax.set_ylabel("test accuracy (%)", fontsize=8)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(row_names):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  _figures.save(fig, path, dpi=120)


def _cell(stats) -> str:
  if stats["n_diverged"] == stats["n"]:
    return f"– ({100 * stats['acc_all_mean']:.1f})"
  text = f"{100 * stats['acc_mean']:.2f}"
  if stats["n"] > 1:
    text += f" ± {100 * stats['acc_sd']:.2f}"
  if stats["n_diverged"]:
    text += f" ({stats['n_diverged']}/{stats['n']} diverged)"
  return text


def _paper(v) -> str:
  return "–" if v is None else f"{v:.2f}"


def summarize(table_rows, hetero_rows, timing_rows, cfg, args,
              seconds, search_rows=(), memory_rows=()) -> str:
  aggs = cfg["aggregators"]
  lines = ["# Acharya et al. (BGMD) on Fashion-MNIST with byzjax", ""]
  if table_rows:
    rows_run = [r for r in cfg["rows"]]
    lines += [
        f"Model `{cfg['model']}`, {cfg['num_workers']} workers x batch "
        f"{cfg['batch']}, {cfg['table_steps']} steps = "
        f"{cfg['table_steps'] / cfg['steps_per_epoch']:.2f} epochs "
        f"({cfg['steps_per_epoch']} steps per epoch), {cfg['seeds']} "
        f"seed(s), SGD lr {cfg['lr']} x 0.99^epoch, BGMD block fraction "
        f"{args.block_fraction}, GM at most {args.gm_iters} Weiszfeld "
        "iterations. Test accuracy (%) at the end, ours / paper's "
        "(50 epochs, LeNet, 5 seeds); – = diverged (our final accuracy in "
        "brackets).", "",
        "| row | " + " | ".join(LABELS[a] for a in aggs) + " |",
        "|---|" + "---|" * len(aggs)]
    for row in rows_run:
      cells = [f"{_cell(final_stats(table_rows, row=row, aggregator=a))} / "
               f"{_paper(PAPER[base_row(row)][PAPER_COLUMN[a]])}"
               for a in aggs]
      lines.append(f"| {row} | " + " | ".join(cells) + " |")
    backdoor = [r for r in rows_run if ROWS[base_row(r)][0] == "backdoor"]
    if backdoor:
      lines += ["", "Backdoor success (share of non-8 test images "
                "classified as 8, %):", "",
                "| row | " + " | ".join(aggs) + " |",
                "|---|" + "---|" * len(aggs)]
      for row in ["clean"] * ("clean" in rows_run) + backdoor:
        cells = [f"{100 * final_stats(table_rows, row=row, aggregator=a)['backdoor_rate']:.1f}"
                 for a in aggs]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    for fast in [a for a in ("bgmd_pw", "bgmd") if a in aggs]:
      if "gmd" not in aggs:
        break
      lines += ["", f"{LABELS[fast]} vs GMD: training wall-clock to first "
                "reach 99% of the lower of their final accuracies, and the "
                "ratio of their total training times (per-step cost):", "",
                "| row | target acc | BGMD (s) | GMD (s) | speed-up | "
                "per-step ratio |", "|---|---|---|---|---|---|"]
      for row in rows_run:
        s = speedup(table_rows, row, fast)
        lines.append(f"| {row} | {100 * s['target']:.1f} | "
                     f"{s['bgmd_s']:.1f} | {s['gmd_s']:.1f} | "
                     f"{s['speedup']:.2f} | {s['per_step']:.2f} |")
    lines.append("")
  if timing_rows:
    lines += ["One step of the paper's setup (median of "
              f"{cfg['timing_repeats']} timed calls, after compilation): "
              f"{cfg['num_workers']} worker gradients of batch {cfg['batch']},"
              " then each aggregator plus the SGD update.", "",
              "| model | params | worker gradients (s) | " +
              " | ".join(f"{a} (s)" for a in aggs) +
              " | GMD/BGMD step-time ratio (shared, per-worker) |",
              "|---|---|---|" + "---|" * len(aggs) + "---|"]
    for name in dict.fromkeys(r["model"] for r in timing_rows):
      t = {r["part"]: r for r in timing_rows if r["model"] == name}
      g = t["worker_gradients"]["seconds"]
      ratio = ", ".join(
          f"{(g + t['gmd']['seconds']) / (g + t[b]['seconds']):.2f}"
          for b in ("bgmd", "bgmd_pw") if b in t and "gmd" in t)
      lines.append(
          f"| {name} | {t['worker_gradients']['params']:,} | {g:.3f} | " +
          " | ".join(f"{t[a]['seconds']:.3f}" for a in aggs) +
          f" | {ratio} |")
    lines.append("")
  if search_rows:
    lines += ["Step-size search (App. C.1's grid, clean class-sharded run "
              f"with the mean, {cfg['hetero_search_steps']} steps each): "
              "final test accuracy (%).", "",
              "| lr | " + " | ".join(f"{v:g}" for v in LR_GRID) + " |",
              "|---|" + "---|" * len(LR_GRID),
              "| acc | " + " | ".join(
                  _cell(final_stats(search_rows, lr=v)) for v in LR_GRID)
              + " |", "", f"Picked lr {cfg['hetero_lr']:g}.", ""]
  if hetero_rows:
    lines += [f"Class-sharded split ({cfg['hetero_workers']} workers, "
              f"{cfg['hetero_shards']} shards each; classes per worker "
              f"{cfg['hetero_classes_per_worker']}), {cfg['hetero_model']}, "
              f"batch {cfg['hetero_batch']}, {cfg['hetero_steps']} steps "
              f"({cfg['hetero_steps'] / cfg['hetero_steps_per_epoch']:.2f} "
              f"epochs), lr {cfg['hetero_lr']:g} x 0.99^epoch: final test "
              "accuracy (%), ours / paper's (ResNet-18 on CIFAR-10, 200 "
              "epochs).", "",
              "| row | " + " | ".join(LABELS[a] for a in aggs) + " |",
              "|---|" + "---|" * len(aggs)]
    for row in cfg["hetero_rows"]:
      cells = [f"{_cell(final_stats(hetero_rows, row=row, aggregator=a))} / "
               f"{_paper(PAPER_HETERO[row][PAPER_COLUMN[a]]) if row in PAPER_HETERO else '?'}"
               for a in aggs]
      lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
  if memory_rows:
    betas = sorted({r["block_fraction"] for r in memory_rows
                    if r["aggregator"] != "gmd"})
    variants = list(dict.fromkeys(r["aggregator"] for r in memory_rows
                                  if r["aggregator"] != "gmd"))
    gmd = [r for r in memory_rows if r["aggregator"] == "gmd"]
    lines += [f"Figure 1 (clean, {cfg['model']}, {cfg['memory_steps']} steps"
              "): final test accuracy (%) and the last relative residual "
              "r_t against the block fraction β" + (
                  f"; GMD (β = 1): {_cell(final_stats(gmd))}" if gmd else "")
              + ".", "",
              "| variant | " + " | ".join(f"β={b:g}" for b in betas) + " |",
              "|---|" + "---|" * len(betas)]
    for v in variants:
      cells = []
      for b in betas:
        st = final_stats(memory_rows, aggregator=v, block_fraction=b)
        last = [r for r in memory_rows if r["aggregator"] == v
                and r["block_fraction"] == b][-1]
        cells.append(f"{_cell(st)} (r_t {last['residual']:.2f})")
      lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " |")
    lines.append("")
  lines.append(f"Total wall-clock {seconds / 60:.1f} min.")
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="results/acharya")
  parser.add_argument("--quick", action="store_true",
                      help="small sizes that run in a few minutes")
  parser.add_argument("--part", default="all",
                      choices=["all", "table", "timing", "hetero",
                               "memory"])
  parser.add_argument("--model", default=None,
                      choices=["lenet", "mlp", "mlp_small"],
                      help="network for the table (default mlp; the paper's "
                      "is lenet)")
  parser.add_argument("--epochs", type=float, default=None,
                      help="training length of the table runs (default 5)")
  parser.add_argument("--steps", type=int, default=None,
                      help="training steps of the table runs (overrides "
                      "--epochs; rounded down to a multiple of --eval-every)")
  parser.add_argument("--eval-every", type=int, default=None)
  parser.add_argument("--seeds", type=int, default=None)
  parser.add_argument("--rows", default=None,
                      help="comma-separated table rows (default: all 11)")
  parser.add_argument("--aggregators", default=None,
                      help="comma-separated columns (default: "
                      f"{','.join(AGGREGATORS)})")
  parser.add_argument("--reuse", default=None,
                      help="directory of an earlier run with the same "
                      "settings: its table.csv/hetero.csv runs are reused")
  parser.add_argument("--hetero-steps", type=int, default=None)
  parser.add_argument("--hetero-model", default=None,
                      choices=["mlp", "mlp_small", "resnet", "resnet_small"],
                      help="network of the class-sharded run (default mlp; "
                      "the paper's is ResNet-18)")
  parser.add_argument("--hetero-lr", type=float, default=None,
                      help="initial step size of the class-sharded runs "
                      "(default: App. C.1's search over "
                      f"{', '.join(f'{v:g}' for v in LR_GRID)})")
  parser.add_argument("--hetero-rows", default=None,
                      help="comma-separated rows of the class-sharded run "
                      f"(default clean,bit_flip_20; the paper's: "
                      f"{','.join(PAPER_HETERO)})")
  parser.add_argument("--memory-steps", type=int, default=None,
                      help="training steps of each Figure 1 run")
  parser.add_argument("--memory-betas", default=None,
                      help="comma-separated block fractions of Figure 1 "
                      "(default 0.01,0.05,0.1,0.3)")
  parser.add_argument("--hetero-search-steps", type=int, default=None,
                      help="training steps of each step-size search run")
  parser.add_argument("--lr", type=float, default=None,
                      help="initial SGD step size (default 0.01, the paper's; "
                      "--quick: 0.1)")
  parser.add_argument("--block-fraction", type=float, default=0.1)
  parser.add_argument("--gm-iters", type=int, default=100)
  parser.add_argument("--timing-models", default=None,
                      help="comma-separated models for --part timing "
                      "(default lenet,mlp; --quick: mlp_small)")
  parser.add_argument("--fashion-mnist-path",
                      default=fashion_mnist.DEFAULT_PATH)
  parser.add_argument("--seed", type=int, default=0, help="base PRNG seed")
  args = parser.parse_args(argv)

  cfg = dict(QUICK if args.quick else FULL)
  for name in ("model", "epochs", "steps", "eval_every", "seeds",
               "hetero_model", "hetero_steps", "hetero_lr",
               "hetero_search_steps",
               "memory_steps", "lr"):
    if getattr(args, name) is not None:
      cfg[name] = getattr(args, name)
  if args.rows is not None:
    cfg["rows"] = tuple(args.rows.split(","))
    unknown = [r for r in cfg["rows"] if base_row(r) not in ROWS]
    if unknown:
      parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}, "
                   f"each optionally with the suffix {FIXED!r}")
  cfg["aggregators"] = (tuple(args.aggregators.split(","))
                        if args.aggregators else
                        cfg.get("aggregators", AGGREGATORS))
  unknown = [a for a in cfg["aggregators"] if a not in ALL_AGGREGATORS]
  if unknown:
    parser.error(f"unknown aggregators {unknown}; choose from "
                 f"{ALL_AGGREGATORS}")
  if cfg["hetero_steps"] % cfg["hetero_eval_every"]:
    parser.error(f"--hetero-steps must be a multiple of "
                 f"{cfg['hetero_eval_every']}")
  if args.memory_betas is not None:
    cfg["memory_betas"] = tuple(float(b) for b in args.memory_betas.split(","))
  if args.hetero_rows is not None:
    cfg["hetero_rows"] = tuple(args.hetero_rows.split(","))
    unknown = [r for r in cfg["hetero_rows"] if r not in ROWS]
    if unknown:
      parser.error(f"unknown hetero rows {unknown}; choose from {list(ROWS)}")
  timing_models = (args.timing_models.split(",") if args.timing_models else
                   (["mlp_small"] if args.quick else ["lenet", "mlp"]))

  os.makedirs(args.out, exist_ok=True)
  train = _subset(fashion_mnist.load_fashion_mnist(args.fashion_mnist_path,
                                                   split="train"),
                  cfg["train_subset"])
  test = _subset(fashion_mnist.load_fashion_mnist(args.fashion_mnist_path,
                                                  split="test"),
                 cfg["test_subset"])
  key = jax.random.key(args.seed)
  start = time.perf_counter()
  table_rows, hetero_rows, timing_rows, timings = [], [], [], {}
  search_rows, memory_rows = [], []
  if args.part in ("all", "timing"):
    t0 = time.perf_counter()
    timing_rows = part_timing(cfg, train, jax.random.fold_in(key, 3), args,
                              timing_models)
    timings["timing_seconds"] = time.perf_counter() - t0
    simulation.write_csv(timing_rows, os.path.join(args.out, "timing.csv"))
  if args.part in ("all", "table"):
    t0 = time.perf_counter()
    previous = (load_rows(os.path.join(args.reuse, "table.csv"))
                if args.reuse else [])
    table_rows = part_table(cfg, train, test, jax.random.fold_in(key, 1), args,
                            previous)
    timings["table_seconds"] = time.perf_counter() - t0
    simulation.write_csv(table_rows, os.path.join(args.out, "table.csv"))
    plot_curves(table_rows, list(cfg["rows"]), cfg["aggregators"],
                os.path.join(args.out, "table.png"),
                f"{cfg['model']}, {cfg['num_workers']} workers: test accuracy "
                "vs training time")
  if args.part in ("all", "hetero"):
    t0 = time.perf_counter()
    previous = (load_rows(os.path.join(args.reuse, "hetero.csv"))
                if args.reuse else [])
    hetero_rows, search_rows = part_hetero(
        cfg, train, test, jax.random.fold_in(key, 2), args, previous)
    timings["hetero_seconds"] = time.perf_counter() - t0
    simulation.write_csv(hetero_rows, os.path.join(args.out, "hetero.csv"))
    if search_rows:
      simulation.write_csv(search_rows,
                           os.path.join(args.out, "hetero_lr_search.csv"))
    plot_curves(hetero_rows, list(cfg["hetero_rows"]), cfg["aggregators"],
                os.path.join(args.out, "hetero.png"),
                f"class-sharded Fashion-MNIST, {cfg['hetero_model']}")
  if args.part in ("all", "memory"):
    t0 = time.perf_counter()
    memory_rows = part_memory(cfg, train, test, jax.random.fold_in(key, 4),
                              args)
    timings["memory_seconds"] = time.perf_counter() - t0
    simulation.write_csv(memory_rows, os.path.join(args.out, "memory.csv"))
    plot_memory(memory_rows, os.path.join(args.out, "memory.png"))

  seconds = time.perf_counter() - start
  summary = summarize(table_rows, hetero_rows, timing_rows, cfg, args,
                      seconds, search_rows=search_rows,
                      memory_rows=memory_rows)
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write(summary)
  with open(os.path.join(args.out, "config.json"), "w") as f:
    json.dump({**vars(args), **cfg, **timings, "seconds": seconds,
               "jax": jax.__version__, "backend": jax.default_backend()},
              f, indent=2, default=str)
  print(summary)
  _log(f"wrote csv, png, summary.md to {args.out}")
  return dict(table=table_rows, hetero=hetero_rows, timing=timing_rows,
              hetero_lr_search=search_rows, memory=memory_rows, cfg=cfg,
              seconds=seconds)


if __name__ == "__main__":
  main()
