"""Sweeps: many simulated runs in one compiled call, and grids of such calls.

* Numeric hyperparameters (learning rate, corruption level, attack strength)
  and seeds are swept with :func:`jax.vmap` inside one jitted call
  (:func:`vmapped_runs`).
* Discrete choices (aggregator, attack) change the program, so a grid over
  them is a Python loop of compiled calls, with a progress bar
  (:func:`grid`). Every result lands in one tidy table: one row per
  (configuration, seed, evaluation round), with the configuration columns.
"""

import csv
import itertools
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from byzjax import _checks
from byzjax.simulation import loop

# build(hparams, key) -> (simulation, initial train state). `hparams` maps
# names to (possibly traced) scalars; build it inside, so they may be swept.
_NO_POINTS = "__no_points__"

BuildFn = Callable[[Mapping[str, jax.Array], jax.Array],
                   tuple[loop.Simulation, loop.TrainState]]


def _points(numeric: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
  """Cartesian product of numeric values, as one array per name ``[P]``."""
  if not numeric:
    return {}
  names = list(numeric)
  combos = list(itertools.product(*(list(numeric[n]) for n in names)))
  return {n: np.asarray([c[i] for c in combos]) for i, n in enumerate(names)}


def enable_compilation_cache(path: str, *,
                             min_compile_time_secs: float = 1.0) -> None:
  """Turns on JAX's persistent compilation cache in directory ``path``.

  A program whose compilation took at least ``min_compile_time_secs`` is
  stored there, and a later process (a rerun of the same script, another cell
  of the same shape) loads it instead of compiling again: the same program
  (same function, shapes, static arguments, JAX version and flags) is not
  recompiled. Call it once, before the first compilation. Hits and misses can
  be observed through :mod:`jax.monitoring` events
  (``/jax/compilation_cache/cache_hits``).

  Args:
    path: a directory (created if missing); may be shared between runs.
    min_compile_time_secs: compile time below which programs are not cached
      (``0`` caches everything).
  """
  if not isinstance(path, str) or not path:
    raise ValueError(f"path must be a non-empty directory name, got {path!r}.")
  if min_compile_time_secs < 0:
    raise ValueError("min_compile_time_secs must be >= 0, got "
                     f"{min_compile_time_secs}.")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(min_compile_time_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def vmapped_runs(build: BuildFn, data: loop.WorkerData, *, num_evals: int,
                 seeds: int | Sequence[int] = 1,
                 numeric: Mapping[str, Sequence[float]] | None = None,
                 key: jax.Array | None = None,
                 chunk_size: int | None = None,
                 progress: bool = True,
                 log: Callable[[str], None] | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Runs every (numeric point x seed) as one jitted, vmapped call.

  Args:
    build: ``build(hparams, key) -> (sim, state)``.
    data: the worker data, shared by all runs (passed as an argument, not
      closed over, so it is not baked into the compiled program).
    num_evals: evaluation rounds per run (``sim.eval_every`` steps each).
    seeds: number of seeds, or explicit integer seeds; seed ``s`` uses
      ``jax.random.fold_in(key, s)``.
    numeric: optional ``{name: values}``; their Cartesian product is swept.
    key: base key (required: randomness only from explicit keys).
    chunk_size: ``None`` (default): all ``P * S`` runs in one vmapped call.
      An int ``c``: the runs are vmapped ``c`` at a time by one compiled
      program called ``ceil(P * S / c)`` times in sequence (the last chunk
      is padded with repeats of the first run, whose results are dropped);
      every run gives the same metrics as unchunked, up to float rounding.
      Batching runs wins when one run leaves the machine idle (small models,
      accelerators: 20 seeds of the small regression of Ghosh et al. cost
      a few single runs); on a CPU that one run already saturates (the MLP
      of ``experiments/benchmarks/simulation.py`` on 2 cores) a big vmapped
      batch only adds memory traffic, and ``chunk_size=1`` (sequential
      runs, one compilation) is the fastest.
    progress: log a line when compilation starts and ends and when the runs
      (every chunk) are done, so long compilations are visibly alive;
      ``False`` for silence.
    log: where progress lines go (default ``print``).

  Returns:
    ``(points, metrics)``: ``points[name]`` has shape ``[P]`` and every
    ``metrics[name]`` has shape ``[P, S, num_evals]`` (P = 1 without numeric
    hyperparameters).
  """
  if key is None:
    raise ValueError("key: vmapped_runs needs an explicit jax.random key.")
  seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
  if not seed_list:
    raise ValueError("seeds: need at least one seed.")
  points = _points(numeric or {})
  keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.asarray(seed_list))

  # The data is an argument of the compiled program, not a constant baked
  # into it: compiling a program with a large constant is slow, and the same
  # program then serves every dataset of the same shapes (the persistent
  # compilation cache keys on the program).
  def one(hp, k, data):
    hp = {n: v for n, v in hp.items() if n != _NO_POINTS}
    sim, state = build(hp, k)
    _, metrics = loop.run(sim, state, data, num_evals)
    return metrics

  log = log or print
  hp_arrays = {n: jnp.asarray(v) for n, v in points.items()}
  if not points:  # one point with no hyperparameters: a dummy axis of size 1
    hp_arrays = {_NO_POINTS: jnp.zeros(1)}
  num_points = len(next(iter(hp_arrays.values())))
  num_seeds = len(seed_list)
  total = num_points * num_seeds
  if chunk_size is None:
    over_seeds = jax.vmap(one, in_axes=(None, 0, None))
    over_points = jax.vmap(over_seeds, in_axes=(0, None, None))
    fn = _compile(over_points, (hp_arrays, keys, data), total, 1, progress,
                  log)
    start = time.perf_counter()
    metrics = jax.tree.map(np.asarray, fn(hp_arrays, keys, data))
    if progress:
      log(f"vmapped_runs: {total} runs in {time.perf_counter() - start:.1f}s")
    return {n: np.asarray(v) for n, v in points.items()}, metrics

  chunk_size = _checks.check_int("chunk_size", chunk_size, low=1)
  chunk_size = min(chunk_size, total)
  num_chunks = -(-total // chunk_size)
  # Run i is (point i // S, seed i % S); pad to whole chunks with run 0.
  run_ids = np.arange(num_chunks * chunk_size)
  run_ids = np.where(run_ids < total, run_ids, 0)
  flat_hp = {n: v[run_ids // num_seeds] for n, v in hp_arrays.items()}
  flat_keys = keys[run_ids % num_seeds]
  fn = _compile(jax.vmap(one, in_axes=(0, 0, None)), (
      {n: v[:chunk_size] for n, v in flat_hp.items()}, flat_keys[:chunk_size],
      data), total, num_chunks, progress, log)
  outs = []
  start = time.perf_counter()
  for c in range(num_chunks):
    sl = slice(c * chunk_size, (c + 1) * chunk_size)
    outs.append(jax.tree.map(np.asarray, fn(
        {n: v[sl] for n, v in flat_hp.items()}, flat_keys[sl], data)))
    if progress:
      log(f"vmapped_runs: chunk {c + 1}/{num_chunks} done "
          f"({time.perf_counter() - start:.1f}s)")
  metrics = jax.tree.map(
      lambda *m: np.concatenate(m)[:total].reshape(
          (num_points, num_seeds) + m[0].shape[1:]), *outs)
  return {n: np.asarray(v) for n, v in points.items()}, metrics


def _compile(fn, args, total, num_chunks, progress, log):
  """``jax.jit(fn)`` compiled ahead of time, with progress lines."""
  if progress:
    log(f"vmapped_runs: compiling {total} runs in {num_chunks} call(s)...")
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  if progress:
    log(f"vmapped_runs: compiled in {time.perf_counter() - start:.1f}s")
  return compiled


def tidy_rows(config: Mapping[str, Any], points: Mapping[str, np.ndarray],
              seeds: Sequence[int], metrics: Mapping[str, np.ndarray]
              ) -> list[dict[str, Any]]:
  """Flattens ``[P, S, E]`` metrics into one row per (point, seed, round)."""
  any_metric = next(iter(metrics.values()))
  num_points, num_seeds, num_evals = any_metric.shape[:3]
  rows = []
  for p in range(num_points):
    for s in range(num_seeds):
      for e in range(num_evals):
        row = dict(config)
        row.update({n: float(v[p]) for n, v in points.items()})
        row["seed"] = int(seeds[s])
        row["round"] = e
        for name, value in metrics.items():
          v = value[p, s, e]
          row[name] = v.item() if np.ndim(v) == 0 else v.tolist()
        rows.append(row)
  return rows


def grid(build_for: Callable[..., BuildFn], data: loop.WorkerData, *,
         choices: Mapping[str, Iterable[Any]], num_evals: int,
         seeds: int | Sequence[int] = 1,
         numeric: Mapping[str, Sequence[float]] | None = None,
         key: jax.Array, progress: bool = True,
         log: Callable[[str], None] | None = None,
         chunk_size: int | None = None) -> list[dict[str, Any]]:
  """A grid over discrete choices, each cell a :func:`vmapped_runs` call.

  Args:
    build_for: ``build_for(**choice) -> build`` for one combination of the
      discrete choices.
    data: the worker data.
    choices: ``{name: options}``; the Cartesian product is run in order.
    num_evals, seeds, numeric, key: as in :func:`vmapped_runs` (every cell
      uses the same seeds, so cells are paired).
    progress: show a tqdm progress bar when tqdm is installed, else one log
      line per cell; either way also the compile/run lines of
      :func:`vmapped_runs`.
    log: where log lines go (default ``print``).
    chunk_size: as in :func:`vmapped_runs`.

  Returns:
    The tidy rows of all cells (configuration columns first, plus
    ``seconds``: the wall-clock time of the cell, compilation included).
  """
  log = log or print
  names = list(choices)
  cells = list(itertools.product(*(list(choices[n]) for n in names)))
  seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
  bar = None
  if progress:
    try:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      bar = tqdm(total=len(cells), desc="grid", unit="cell")
    except ImportError:
      bar = None
  rows = []
  for i, cell in enumerate(cells):
    config = {n: (c if isinstance(c, (int, float, str, bool)) else str(c))
              for n, c in zip(names, cell)}
    start = time.perf_counter()
    points, metrics = vmapped_runs(build_for(**dict(zip(names, cell))), data,
                                   num_evals=num_evals, seeds=seed_list,
                                   numeric=numeric, key=key,
                                   chunk_size=chunk_size, progress=progress,
                                   log=bar.write if bar is not None else log)
    seconds = time.perf_counter() - start
    cell_rows = tidy_rows(config, points, seed_list, metrics)
    for r in cell_rows:
      r["seconds"] = seconds
    rows.extend(cell_rows)
    if bar is not None:
      bar.set_postfix_str(", ".join(f"{k}={v}" for k, v in config.items()))
      bar.update(1)
    else:
      log(f"[{i + 1}/{len(cells)}] {config} done in {seconds:.1f}s")
  if bar is not None:
    bar.close()
  return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: str) -> None:
  """Writes tidy rows to CSV (columns: union of keys, first-seen order)."""
  columns: list[str] = []
  for r in rows:
    for k in r:
      if k not in columns:
        columns.append(k)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
