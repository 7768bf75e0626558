"""Running a study: cells, one compiled call each, written as they finish.

A *cell* is one discrete combination (heterogeneity, ``f``, defense,
attack). Its numeric axes, the seeds and the selection hyperparameters
(learning rates), run together in one jitted, ``vmap``-ped call of
:func:`byzjax.simulation.vmapped_runs`, split into chunks of runs when a
``memory`` budget asks for it. ``f`` enters the program as a traced value
wherever the defense does not depend on it (a trimmed mean or Krum is told
``f``, so there it is a constant), so cells that differ only in ``f`` compile
to the same program and JAX's persistent compilation cache serves the
second one from disk.

Every finished cell is written to the :class:`~byzjax.study.store.Store`
before the next one starts; a rerun with the same configuration and folder
runs only the cells that are missing.
"""

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from byzjax import models
from byzjax import simulation
from byzjax.study import registry
from byzjax.study import tasks as tasks_lib
from byzjax.study.config import AttackConfig
from byzjax.study.config import DefenseConfig
from byzjax.study.config import load_config
from byzjax.study.config import settings_hash
from byzjax.study.config import StudyConfig
from byzjax.study.store import Store
from byzjax.study.store import STORE_NAME

# Rules and pre-aggregations whose hyperparameters do not depend on f: where
# a whole defense is made of them, f is traced instead of compiled in.
_F_FREE = ("mean", "coordinate_median", "geometric_median", "spectral_filter",
           "sign_majority_vote", "bucketing")


def _f_is_static(defense: DefenseConfig) -> bool:
  return any(part not in _F_FREE for part in defense.pre + (defense.rule,))
LIBRARY_VERSION = "0.1.0"


@dataclasses.dataclass(frozen=True)
class Cell:
  """One discrete combination of the grid."""
  heterogeneity: str
  num_byzantine: int
  num_workers: int
  defense: DefenseConfig
  attack: AttackConfig

  def settings(self, config: StudyConfig) -> dict:
    """Everything that determines this cell's results (its identity)."""
    return {
        "task": dataclasses.asdict(config.task),
        "training": dataclasses.asdict(config.training),
        "heterogeneity": self.heterogeneity,
        # The data are padded to the longest shard over all settings, which
        # the batch sampling sees: the settings list is part of the identity.
        "padded_like": list(config.heterogeneity),
        "num_byzantine": self.num_byzantine,
        "num_workers": self.num_workers,
        "defense": dataclasses.asdict(self.defense),
        "attack": dataclasses.asdict(self.attack),
        "byzjax": LIBRARY_VERSION,
    }

  def cell_id(self, config: StudyConfig) -> str:
    return settings_hash(self.settings(config))

  def program_key(self) -> tuple:
    """Cells with the same key compile to the same program."""
    f_part = self.num_byzantine if _f_is_static(self.defense) else None
    # Heterogeneity settings are padded to common shapes (Task.partition).
    return (self.num_workers, self.defense, self.attack, f_part)

  def describe(self) -> str:
    return (f"{self.heterogeneity} f={self.num_byzantine}/{self.num_workers} "
            f"{self.defense.label} vs {self.attack.label}")


def expand(config: StudyConfig) -> list[Cell]:
  """All cells of the grid, heterogeneity-major (so data is built once)."""
  t = config.training
  return [Cell(h, f, t.workers_for(f), d, a)
          for h in config.heterogeneity for f in t.num_byzantine
          for d in config.defenses for a in config.attacks]


def _learning_rate(t, lr):
  if t.lr_schedule == "constant":
    return lr
  if t.lr_schedule == "exponential":
    return optax.exponential_decay(lr, transition_steps=1,
                                   decay_rate=t.lr_decay)
  return optax.cosine_decay_schedule(lr, decay_steps=t.steps)


def build_for(config: StudyConfig, task: tasks_lib.Task, cell: Cell):
  """``build(hparams, key) -> (sim, state)`` for :func:`vmapped_runs`."""
  t = config.training
  r, f = cell.num_workers, cell.num_byzantine
  d, a = cell.defense, cell.attack

  def build(hp, key):
    k_init, k_def, k_att, k_run = jax.random.split(key, 4)
    chain = [registry.build_pre(p, jax.random.fold_in(k_def, i), f)
             for i, p in enumerate(d.pre)]
    chain.append(registry.build_aggregate(d.rule, dict(d.args),
                                          registry.rows_after(d.pre, r), f,
                                          jax.random.fold_in(k_def, 99)))
    lr = _learning_rate(t, hp["learning_rate"])
    if t.optimizer == "sgd":
      chain.append(optax.sgd(lr, momentum=t.server_momentum or None))
    else:
      chain.append(optax.adam(lr))
    worker_tx = None
    if t.worker_momentum:
      # Karimireddy, He & Jaggi (ICML 2021): each worker sends its momentum
      # m_t = beta m_{t-1} + (1 - beta) g_t; the attack sees honest momenta.
      worker_tx = optax.ema(t.worker_momentum, debias=False)
    num_byzantine = (f if _f_is_static(d) else
                     jnp.asarray(hp["num_byzantine"]).astype(jnp.int32))
    sim = simulation.Simulation(
        loss_fn=_with_weight_decay(task.fns.loss, t.weight_decay),
        server_tx=optax.chain(*chain),
        num_workers=r, batch_size=t.batch_size, worker_tx=worker_tx,
        attack=registry.build_gradient_attack(
            a.name, dict(a.args), k_att,
            aggregator=(registry.target_aggregator(
                d.rule, dict(d.args), r, f, jax.random.fold_in(k_def, 99))
                        if a.name in registry.TARGETED_ATTACKS else None)),
        data_attack=registry.build_data_attack(a.name, dict(a.args),
                                               num_classes=task.num_classes),
        num_byzantine=num_byzantine,
        redraw_byzantine=t.redraw_byzantine, eval_fn=task.eval_fn,
        eval_every=t.eval_every)
    params = tasks_lib.init_params(task, k_init)
    return sim, simulation.init(sim, params, k_run)

  return build


def _with_weight_decay(loss, weight_decay):
  if not weight_decay:
    return loss
  return lambda p, b: loss(p, b) + 0.5 * weight_decay * models.l2_penalty(p)


def _param_count(task) -> int:
  return models.num_params(task.params)


def runs_per_chunk(config: StudyConfig, task, cell: Cell,
                   memory_bytes: float | None) -> int:
  """How many runs of a cell fit the memory budget at once (>= 1).

  A run holds its stacked per-worker gradients and a few copies of them
  (worker updates, attack output, aggregator temporaries: about 8 copies of
  ``R x d`` floats), its batches, and its optimizer states.
  """
  total = len(config.training.seeds) * len(config.training.learning_rate)
  if memory_bytes is None:
    return total
  d = _param_count(task)
  x_row = int(np.prod(np.shape(task.train.x)[1:]))
  per_run = 4 * (8 * cell.num_workers * d + 4 * d +
                 3 * cell.num_workers * config.training.batch_size * x_row)
  return max(1, min(total, int(memory_bytes // max(per_run, 1))))


def run_cell(config: StudyConfig, task, cell: Cell, *, key: jax.Array,
             memory_bytes: float | None = None, devices: int = 1,
             log: Callable[[str], None] = print) -> list[dict]:
  """Runs every (learning rate, seed) of a cell; returns its tidy rows."""
  t = config.training
  data = task.partition(cell.heterogeneity, cell.num_workers, t.data_seed,
                        pad_like=config.heterogeneity,
                        min_size=t.batch_size)
  if devices > 1:
    mesh = simulation.worker_mesh(devices)
    data = simulation.shard_workers(data, mesh)
  build = build_for(config, task, cell)
  numeric = {"learning_rate": list(t.learning_rate),
             "num_byzantine": [cell.num_byzantine]}
  chunk = runs_per_chunk(config, task, cell, memory_bytes)
  total = len(t.seeds) * len(t.learning_rate)
  seeds = list(t.seeds)
  points, metrics = simulation.vmapped_runs(
      build, data, num_evals=t.steps // t.eval_every, seeds=seeds,
      numeric=numeric, key=key, chunk_size=None if chunk >= total else chunk,
      progress=False)
  rows = simulation.tidy_rows({}, points, seeds, metrics)
  base = {
      "task": task.dataset, "model": config.task.model,
      "heterogeneity": cell.heterogeneity, "num_workers": cell.num_workers,
      "defense": cell.defense.label, "attack": cell.attack.label,
  }
  out = []
  for r in rows:
    row = dict(base)
    row.update(r)
    row["num_byzantine"] = int(round(row["num_byzantine"]))
    row["learning_rate"] = float(row["learning_rate"])
    out.append(row)
  return out


def _final_summary(rows, metric, higher):
  """Seed mean of the final metric at the best learning rate, or "diverged"."""
  last = max(r["round"] for r in rows)
  best = None
  for lr in sorted({r["learning_rate"] for r in rows}):
    final = [r for r in rows if r["round"] == last and r["learning_rate"] == lr]
    vals = np.array([r[metric] for r in final], float)
    # A run whose loss is NaN/Inf diverged even if its accuracy is finite
    # (NaN parameters classify everything as one class), as in the report.
    loss = np.array([r["train_loss"] for r in final], float)
    if not (np.all(np.isfinite(vals)) and np.all(np.isfinite(loss))):
      continue
    m = float(np.mean(vals))
    if best is None or (m > best if higher else m < best):
      best = m
  return "diverged" if best is None else best


def estimate_seconds(config: StudyConfig, cells: Sequence[Cell],
                     store: Store | None, num_params: int) -> tuple[float, str]:
  """A rough wall-clock estimate for the cells still to run, and its basis."""
  past = store.seconds() if store is not None else []
  if past:
    return float(np.median(past)) * len(cells), (
        f"median of {len(past)} finished cells")
  t = config.training
  # Rough model: 6 flops per parameter per example (forward + backward) at
  # the rate a float32 matmul reaches here, plus ~20 s of compilation per
  # distinct program (measured 5-45 s on a 2-core CPU, depending on load
  # and on the defense; the persistent cache removes it on a rerun).
  a = jnp.ones((512, 512), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(5):
    f(a).block_until_ready()
  rate = 5 * 2 * 512 ** 3 / (time.perf_counter() - start)
  programs = len({c.program_key() for c in cells})
  runs = len(t.seeds) * len(t.learning_rate)
  flops = sum(6 * num_params * c.num_workers * t.batch_size * t.steps * runs
              for c in cells)
  return flops / rate + 20.0 * programs, (
      f"{programs} programs at ~20 s of compilation each, {num_params} "
      f"parameters at a matmul rate of {rate / 1e9:.0f} GFLOP/s")


def default_cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "byzjax", "jax")


def _prepare_out(out: str, overwrite: bool) -> None:
  """Checks that the results folder is usable before any work starts."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"--out {out!r} is a file; name a folder.")
  if os.path.isdir(out) and os.listdir(out):
    if overwrite:
      store_path = os.path.join(out, STORE_NAME)
      if os.path.exists(store_path):
        os.remove(store_path)
    elif not os.path.exists(os.path.join(out, STORE_NAME)):
      raise ValueError(
          f"--out {out!r} exists and holds no byzjax results "
          f"({STORE_NAME}); name a new folder so nothing is overwritten, or "
          "pass --overwrite.")
  try:
    os.makedirs(out, exist_ok=True)
    probe = os.path.join(out, ".write-test")
    with open(probe, "w") as fh:
      fh.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"--out {out!r} is not writable: {e}. Choose another "
                     "folder.") from e


def _progress(total, enabled):
  if not enabled:
    return None
  try:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tqdm(total=total, unit="cell", desc="byzjax run", file=sys.stderr)


def run(config, out: str | None = None, *, overwrite: bool = False,
        dry_run: bool = False, memory_gb: float | None = None,
        devices: int = 1, cache_dir: str | None = "default",
        progress: bool = True, report: bool = True,
        log: Callable[[str], None] = print, as_dataframe: bool = True):
  """Runs a study; the Python form of ``byzjax run CONFIG --out DIR``.

  Args:
    config: a :class:`StudyConfig`, a path to a TOML file, a TOML string or a
      dict.
    out: the results folder (created; resumed if it holds a store of
      earlier cells). ``None`` keeps the results in memory only.
    overwrite: discard the folder's earlier results first.
    dry_run: only print the cells, the programs and an estimated time.
    memory_gb: memory budget for the runs of one cell; they are chunked to
      fit it (default: all runs of a cell at once).
    devices: shard the worker axis over this many devices.
    cache_dir: JAX's persistent compilation cache (``"default"``: a
      ``byzjax/jax`` folder in the user cache directory; ``None``: off).
    progress: show a progress bar (tqdm) besides the per-cell lines.
    report: write the report (heatmaps, tables, curves) at the end.
    log: where progress lines go.
    as_dataframe: return a pandas DataFrame when pandas is installed.

  Returns:
    The tidy result rows of every cell of this config (a DataFrame, or a
    list of dicts), or ``None`` for a dry run.
  """
  config = load_config(config)
  cells = expand(config)
  if devices < 1 or devices > len(jax.devices()):
    raise ValueError(f"devices = {devices}, but {len(jax.devices())} "
                     f"device(s) are available.")
  if devices > 1:
    for c in cells:
      if c.num_workers % devices:
        raise ValueError(
            f"devices = {devices} must divide the number of workers; cell "
            f"{c.describe()} has R = {c.num_workers}.")
  if out is not None and not dry_run:
    _prepare_out(out, overwrite)
  store = Store.in_folder(out) if (out is not None and os.path.isdir(out)
                                  and not dry_run) else Store(None)
  if dry_run and out is not None and os.path.exists(os.path.join(
      out, STORE_NAME)):
    store = Store.in_folder(out)
  ids = [c.cell_id(config) for c in cells]
  done = store.done()
  todo = [(c, i) for c, i in zip(cells, ids) if i not in done]

  if dry_run:
    task = tasks_lib.build_task(config.task,
                                data_seed=config.training.data_seed, log=log)
    seconds, basis = estimate_seconds(config, [c for c, _ in todo], store,
                                      _param_count(task))
    programs = len({c.program_key() for c, _ in todo})
    runs = len(config.training.seeds) * len(config.training.learning_rate)
    log(f"{config.name}: {len(cells)} cells ({len(cells) - len(todo)} done, "
        f"{len(todo)} to run), {runs} runs per cell "
        f"({len(config.training.seeds)} seeds x "
        f"{len(config.training.learning_rate)} learning rates), "
        f"{programs} compiled programs.")
    for c, cid in todo:
      log(f"  {cid}  {c.describe()}")
    log(f"Estimated time: {seconds / 60:.1f} min ({basis}; rough).")
    return None

  if cache_dir == "default":
    cache_dir = default_cache_dir()
  if cache_dir:
    simulation.enable_compilation_cache(cache_dir, min_compile_time_secs=0.0)
  store.set_meta("config", config.source or repr(config))
  store.set_meta("name", config.name)
  task = tasks_lib.build_task(config.task, data_seed=config.training.data_seed,
                              log=log)
  store.set_meta("task", {"dataset": task.dataset, "metric": task.metric,
                          "higher_is_better": task.higher_is_better,
                          "note": task.note, "cell_ids": ids,
                          "select": ["learning_rate"]})
  if todo:
    log(f"[byzjax] {config.name}: {len(todo)} of {len(cells)} cells to run "
        f"({len(cells) - len(todo)} already in {out or 'memory'}); "
        f"{len(config.training.seeds)} seeds x "
        f"{len(config.training.learning_rate)} learning rates per cell, "
        f"task {task.dataset}, metric {task.metric}.")
  bar = _progress(len(todo), progress)
  key = jax.random.key(0)
  memory = None if memory_gb is None else memory_gb * 2 ** 30
  worst: dict[str, Any] = {}
  try:
    for n, (cell, cid) in enumerate(todo):
      start = time.perf_counter()
      rows = run_cell(config, task, cell, key=key, memory_bytes=memory,
                      devices=devices, log=log)
      seconds = time.perf_counter() - start
      for r in rows:
        r["cell_id"] = cid
      store.put(cid, cell.settings(config), rows, seconds)
      final = _final_summary(rows, task.metric, task.higher_is_better)
      label = cell.defense.label
      prev = worst.get(label)
      if isinstance(final, str) or prev is None or (
          not isinstance(prev, str) and (
              final < prev if task.higher_is_better else final > prev)):
        worst[label] = final
      shown = final if isinstance(final, str) else f"{final:.4g}"
      w = worst[label]
      w_shown = w if isinstance(w, str) else f"{w:.4g}"
      msg = (f"[{n + 1}/{len(todo)}] {cell.describe()}: {task.metric} "
             f"{shown} (worst so far for {label}: {w_shown}) in "
             f"{seconds:.1f} s")
      if bar is not None:
        bar.update(1)
        bar.write(msg)
      else:
        log(msg)
  finally:
    if bar is not None:
      bar.close()

  rows = store.rows(ids)
  if out is not None:
    if report:
      write_report(out, store=store)
    log(f"[byzjax] results in {out}: {STORE_NAME} (the store), results.csv"
        + (", report.md and figures" if report else ""))
  store.close()
  if as_dataframe:
    try:
      import pandas as pd  # pylint: disable=g-import-not-at-top
      return pd.DataFrame(rows)
    except ImportError:
      pass
  return rows


def write_report(out: str, *, store: Store | None = None) -> str:
  """Writes the report of the study stored in ``out``; returns report.md."""
  from byzjax.study import report as report_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(out, STORE_NAME)
  if store is None:
    if not os.path.exists(path):
      raise ValueError(f"{out!r} holds no byzjax results ({STORE_NAME}); run "
                       "`byzjax run CONFIG --out DIR` first.")
    store = Store(path)
  meta = store.meta("task")
  if meta is None:
    raise ValueError(f"{path}: no study metadata; was the run started?")
  rows = store.rows(meta["cell_ids"])
  if not rows:
    raise ValueError(f"{path}: no finished cell yet.")
  return report_lib.write_report(
      rows, out, metric=meta["metric"],
      higher_is_better=meta["higher_is_better"],
      select=tuple(meta.get("select", ())),
      title=store.meta("name", "byzjax study"))

