"""The robustness report: heatmaps, worst-case tables and curves from tidy rows.

The runner stores one tidy row per (cell, numeric point, seed, evaluation
round); this module turns a list of such rows into ``report.md`` with PNG
figures and CSV tables. The computations are pure functions over the rows
(:func:`final_values`, :func:`worst_case_table`, :func:`defense_ranking`,
:func:`seed_curves`, :func:`diagnostics_table`) so they can be tested and
reused from a notebook; :func:`write_report` only formats and draws them.

Definitions used throughout:

* A *run* is one (defense, attack, R, f, heterogeneity, selection
  hyperparameters, seed); its *final* value is the metric at its last
  evaluation round.
* A run *diverged* when its final metric or final ``train_loss`` is NaN or
  infinite (a missing metric counts as NaN). A cell (a run without the seed)
  diverged when any of its seeds did; it then has no mean and ranks below
  every finite value.
* The *worst case* of a defense at (R, f, heterogeneity) is the worst
  seed-mean final metric over attacks (``none`` included), at the selection
  hyperparameter whose worst case is best (a minimax choice: the
  hyperparameter is tuned against the worst attack, not on average).

.. note:: Rows must not hold two values for the same run and round: a column
  that distinguishes runs (an attack strength, a learning rate) must be part
  of the ``attack`` label or listed in ``select``.
"""

from __future__ import annotations

import csv
import math
import os
import re
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

REQUIRED_KEYS = ("defense", "attack", "num_byzantine", "num_workers",
                 "heterogeneity", "seed", "round", "step")
DIAGNOSTIC_KEYS = ("byz_kept", "honest_dropped", "byz_weight")
DIAGNOSTIC_NAMES = {
    "byz_kept": "Byzantine workers kept",
    "honest_dropped": "honest workers dropped",
    "byz_weight": "weight on Byzantine workers",
}
MAX_CURVE_FIGURES = 12
FIGURE_DIR = "figures"
FIGURE_PREFIXES = ("heatmap_", "curves_")
DPI = 110
DIVERGED = "diverged"

# Line styles and markers cycled per defense so overlapping lines stay visible.
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


class FinalValue(NamedTuple):
  """The final metric of one cell (a run without its seed), over seeds."""
  defense: str
  attack: str
  num_workers: int
  num_byzantine: int
  heterogeneity: str
  hparams: tuple  # values of the ``select`` columns, in ``select`` order
  seeds: tuple  # ints, sorted
  values: tuple  # final metric per seed (raw, NaN where missing)
  seed_diverged: tuple  # bools, per seed
  step: int  # training steps done at the last evaluation (max over seeds)
  diverged: bool  # any seed diverged
  mean: float  # mean over seeds; NaN when diverged
  sd: float  # sample sd over seeds (ddof=1); 0 with one seed; NaN if diverged


class WorstCase(NamedTuple):
  """A line of the worst-case table: a defense at (R, f, heterogeneity)."""
  defense: str
  num_workers: int
  num_byzantine: int
  heterogeneity: str
  hparams: tuple  # selection hyperparameters chosen against the worst attack
  attack: str  # attack achieving the worst case at ``hparams``
  mean: float  # its seed-mean final metric; NaN when diverged
  sd: float
  num_seeds: int
  diverged: bool
  num_attacks: int  # attacks present for this defense and setting


class Ranking(NamedTuple):
  """A defense's worst case over every setting and attack."""
  defense: str
  worst: WorstCase  # the worst line of the table for this defense
  num_diverged: int  # settings whose worst case diverged
  num_settings: int


class Curve(NamedTuple):
  """Metric against step for one cell, one row per seed."""
  steps: np.ndarray  # [num_rounds], int
  values: np.ndarray  # [num_seeds, num_rounds], NaN where a round is missing
  seeds: tuple


# --------------------------------------------------------------------------
# Pure computations.


def _first_seen(values: Iterable[Any]) -> list:
  out, seen = [], set()
  for v in values:
    if v not in seen:
      seen.add(v)
      out.append(v)
  return out


def _as_float(value: Any) -> float:
  if value is None or value == "":
    return math.nan
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def _check_rows(rows: Sequence[Mapping[str, Any]], metric: str,
                select: Sequence[str]) -> None:
  """Raises ``ValueError`` for rows the report cannot read."""
  if isinstance(select, str):
    raise ValueError(
        f"select must be a sequence of column names, got the string "
        f"{select!r}; write select=({select!r},).")
  if not rows:
    raise ValueError("No result rows to report on: the store is empty. Run "
                     "`byzjax run CONFIG --out DIR` first.")
  needed = REQUIRED_KEYS + (metric,) + tuple(select)
  for i, row in enumerate(rows):
    missing = [k for k in needed if k not in row]
    if missing:
      hint = ""
      if metric in missing:
        hint = (f" Is metric={metric!r} the right name? The row has "
                f"{sorted(row)}.")
      raise ValueError(f"Result row {i} lacks the column(s) {missing}; every "
                       f"row needs {list(needed)}.{hint}")


def _cell_key(row: Mapping[str, Any], select: Sequence[str]) -> tuple:
  return (str(row["defense"]), str(row["attack"]), int(row["num_workers"]),
          int(row["num_byzantine"]), str(row["heterogeneity"]),
          tuple(row[k] for k in select))


def _runs(rows, metric, select):
  """Groups rows: {cell key: {seed: {round: row}}}, in first-seen order."""
  _check_rows(rows, metric, select)
  runs: dict = {}
  for row in rows:
    key = _cell_key(row, select)
    by_round = runs.setdefault(key, {}).setdefault(int(row["seed"]), {})
    rnd = int(row["round"])
    if rnd in by_round:
      raise ValueError(
          f"Two result rows for the same run and round: defense={key[0]!r}, "
          f"attack={key[1]!r}, num_workers={key[2]}, num_byzantine={key[3]}, "
          f"heterogeneity={key[4]!r}, {dict(zip(select, key[5]))}, "
          f"seed={row['seed']}, round={rnd}. A column tells these runs apart: "
          f"add it to select=... or to the attack/defense label.")
    by_round[rnd] = row
  return runs


def _diverged(row: Mapping[str, Any], metric: str) -> bool:
  value = _as_float(row.get(metric))
  loss = _as_float(row.get("train_loss", 0.0))
  return not (math.isfinite(value) and math.isfinite(loss))


def final_values(rows: Sequence[Mapping[str, Any]], *, metric: str,
                 select: Sequence[str] = ()) -> list[FinalValue]:
  """Final-round metric of every cell, over seeds.

  Args:
    rows: tidy result rows (see the module docstring); extra keys are ignored.
    metric: the column holding the main metric.
    select: columns holding selection hyperparameters.

  Returns:
    One :class:`FinalValue` per (defense, attack, R, f, heterogeneity,
    hyperparameters), in order of first appearance in ``rows``.
  """
  out = []
  for key, by_seed in _runs(rows, metric, select).items():
    seeds = tuple(sorted(by_seed))
    last = [by_seed[s][max(by_seed[s])] for s in seeds]
    values = tuple(_as_float(r[metric]) for r in last)
    seed_div = tuple(_diverged(r, metric) for r in last)
    diverged = any(seed_div)
    arr = np.asarray(values, dtype=np.float64)
    if diverged:
      mean = sd = math.nan
    else:
      mean = float(arr.mean())
      sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    out.append(FinalValue(*key, seeds=seeds, values=values,
                          seed_diverged=seed_div,
                          step=max(int(r["step"]) for r in last),
                          diverged=diverged, mean=mean, sd=sd))
  return out


def _score(cell, higher_is_better: bool) -> float:
  """Larger is better; a diverged cell scores -inf."""
  if cell.diverged:
    return -math.inf
  return cell.mean if higher_is_better else -cell.mean


def _setting_order(het_order):
  """Sort key for (R, f, heterogeneity): R, then f, then first appearance."""
  het_index = {h: i for i, h in enumerate(het_order)}
  return lambda it: (it.num_workers, it.num_byzantine,
                     het_index[it.heterogeneity])


def worst_case_table(finals: Sequence[FinalValue], *, higher_is_better: bool
                     ) -> list[WorstCase]:
  """Worst case over attacks per defense and setting, hyperparameters minimax.

  For each defense and (R, f, heterogeneity), and each value h of the
  selection hyperparameters, the worst case at h is the worst seed-mean final
  metric over the attacks run there. The chosen h is the one whose worst case
  is best; ties go to the h with more non-diverged attacks, then to the better
  mean over its non-diverged attacks, then to the first seen.

  Args:
    finals: output of :func:`final_values`.
    higher_is_better: True for accuracy-like metrics, False for errors.

  Returns:
    One :class:`WorstCase` per (defense, R, f, heterogeneity), ordered by
    defense (first appearance), R, f, heterogeneity (first appearance).
  """
  groups: dict = {}
  for cell in finals:
    key = (cell.defense, cell.num_workers, cell.num_byzantine,
           cell.heterogeneity)
    groups.setdefault(key, {}).setdefault(cell.hparams, []).append(cell)
  table = []
  for (defense, workers, byz, het), by_h in groups.items():
    best = None
    for h, cells in by_h.items():
      scores = [_score(c, higher_is_better) for c in cells]
      worst_i = int(np.argmin(scores))  # first attack among ties
      finite = [s for s in scores if math.isfinite(s)]
      rank = (scores[worst_i], len(finite),
              float(np.mean(finite)) if finite else -math.inf)
      if best is None or rank > best[0]:
        best = (rank, h, cells[worst_i], len(cells))
    _, h, cell, num_attacks = best
    table.append(WorstCase(defense, workers, byz, het, h, cell.attack,
                           cell.mean, cell.sd, len(cell.seeds), cell.diverged,
                           num_attacks))
  defenses = _first_seen(c.defense for c in finals)
  hets = _first_seen(c.heterogeneity for c in finals)
  d_index = {d: i for i, d in enumerate(defenses)}
  setting = _setting_order(hets)
  table.sort(key=lambda w: (d_index[w.defense],) + setting(w))
  return table


def defense_ranking(table: Sequence[WorstCase], *, higher_is_better: bool
                    ) -> list[Ranking]:
  """Defenses ranked best to worst by their worst case over everything.

  A defense's score is its worst line in ``table`` (worst over settings of
  the worst over attacks); a defense with a diverged line ranks below every
  defense without one, and among those by fewer diverged settings. Remaining
  ties keep the order of first appearance.

  Args:
    table: output of :func:`worst_case_table`.
    higher_is_better: True for accuracy-like metrics, False for errors.

  Returns:
    A list of :class:`Ranking`, best first.
  """
  by_defense: dict = {}
  for line in table:
    by_defense.setdefault(line.defense, []).append(line)
  out = []
  for defense, lines in by_defense.items():
    scores = [_score(w, higher_is_better) for w in lines]
    worst = lines[int(np.argmin(scores))]
    out.append(Ranking(defense, worst, sum(w.diverged for w in lines),
                       len(lines)))
  out.sort(key=lambda r: (-_score(r.worst, higher_is_better), r.num_diverged))
  return out


def seed_curves(rows: Sequence[Mapping[str, Any]], *, metric: str,
                select: Sequence[str] = ()) -> dict[tuple, Curve]:
  """Metric against step per cell, with one row per seed.

  A round that diverged (non-finite metric or ``train_loss``) or is missing for
  a seed holds NaN, as do all later rounds of that seed.

  Args:
    rows: tidy result rows.
    metric: the column holding the main metric.
    select: columns holding selection hyperparameters.

  Returns:
    ``{(defense, attack, R, f, heterogeneity, hparams): Curve}``.
  """
  out = {}
  for key, by_seed in _runs(rows, metric, select).items():
    rounds = sorted({r for by_round in by_seed.values() for r in by_round})
    steps = np.asarray([
        next(int(by_seed[s][r]["step"]) for s in by_seed if r in by_seed[s])
        for r in rounds])
    seeds = tuple(sorted(by_seed))
    values = np.full((len(seeds), len(rounds)), np.nan)
    for i, s in enumerate(seeds):
      for j, r in enumerate(rounds):
        row = by_seed[s].get(r)
        if row is None or _diverged(row, metric):
          break
        values[i, j] = _as_float(row[metric])
    out[key] = Curve(steps, values, seeds)
  return out


def diagnostics_table(rows: Sequence[Mapping[str, Any]], table:
                      Sequence[WorstCase], *, metric: str,
                      select: Sequence[str] = ()) -> dict[tuple, dict]:
  """Mean Byzantine diagnostics at the final round, per defense x attack x f.

  Averages over seeds and heterogeneity settings, at the hyperparameters
  chosen in ``table`` for each setting. Values that are absent or NaN (the
  defense does not report them) are left out of the means.

  Args:
    rows: tidy result rows.
    table: output of :func:`worst_case_table` (gives the chosen
      hyperparameters).
    metric: the column holding the main metric.
    select: columns holding selection hyperparameters.

  Returns:
    ``{(defense, attack, R, f): {diagnostic: mean}}`` holding only the
    diagnostics with at least one finite value; keys without any are absent.
  """
  chosen = {(w.defense, w.num_workers, w.num_byzantine, w.heterogeneity):
            w.hparams for w in table}
  sums: dict = {}
  for key, by_seed in _runs(rows, metric, select).items():
    defense, attack, workers, byz, het, h = key
    if chosen.get((defense, workers, byz, het)) != h:
      continue
    for by_round in by_seed.values():
      last = by_round[max(by_round)]
      for name in DIAGNOSTIC_KEYS:
        value = _as_float(last.get(name))
        if math.isfinite(value):
          acc = sums.setdefault((defense, attack, workers, byz), {})
          total, count = acc.get(name, (0.0, 0))
          acc[name] = (total + value, count + 1)
  return {k: {n: t / c for n, (t, c) in v.items()} for k, v in sums.items()}


# --------------------------------------------------------------------------
# Formatting.


def _fmt(value: float) -> str:
  if not math.isfinite(value):
    return str(value)
  if value == 0 or 1e-3 <= abs(value) < 1e4:
    return f"{value:.3f}"
  return f"{value:.3e}"


def _fmt_mean_sd(mean: float, sd: float, num_seeds: int) -> str:
  if num_seeds < 2:
    return _fmt(mean)
  fixed = mean == 0 or 1e-3 <= abs(mean) < 1e4
  return f"{_fmt(mean)} ± " + (f"{sd:.3f}" if fixed else f"{sd:.1e}")


def _fmt_hparams(select: Sequence[str], hparams: tuple) -> str:
  return ", ".join(f"{k}={v}" for k, v in zip(select, hparams))


def _md(text: Any) -> str:
  """A label as Markdown table code, with pipes escaped."""
  return "`" + str(text).replace("|", "\\|") + "`"


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")[:40] or "x"


def _write_csv(path: str, header: Sequence[str], lines: Iterable[Sequence]):
  with open(path, "w", newline="", encoding="utf-8") as fh:
    writer = csv.writer(fh)
    writer.writerow(header)
    for line in lines:
      writer.writerow(["" if v is None else v for v in line])


def _results_columns(rows: Sequence[Mapping[str, Any]], metric: str,
                     select: Sequence[str]) -> list[str]:
  first = (list(REQUIRED_KEYS[:5]) + list(select) +
           ["seed", "round", "step", "train_loss", metric] +
           list(DIAGNOSTIC_KEYS))
  present = _first_seen(k for row in rows for k in row)
  head = [k for k in _first_seen(first) if k in set(present)]
  return head + sorted(k for k in present if k not in set(head))


# --------------------------------------------------------------------------
# Figures.


def _pyplot():
  """``matplotlib.pyplot`` on the Agg backend, or None when not installed."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


class _Grid(NamedTuple):
  """Heatmap axes: (R, f) columns and heterogeneity rows."""
  columns: list  # (R, f) pairs, x axis
  hets: list  # y axis

  def tick(self, workers: int, byz: int) -> str:
    one_r = len({w for w, _ in self.columns}) == 1
    if one_r or self.honest is not None:
      return str(byz)
    return f"{byz}/{workers}"

  @property
  def honest(self):
    """The number of honest workers when it is the same in every column."""
    counts = {w - f for w, f in self.columns}
    return counts.pop() if len(counts) == 1 else None

  @property
  def xlabel(self) -> str:
    workers = {w for w, _ in self.columns}
    if len(workers) == 1:
      return f"f, Byzantine workers (of R = {workers.pop()})"
    if self.honest is not None:
      return f"f, Byzantine workers (R = {self.honest} honest + f)"
    return "f / R, Byzantine / all workers"


def _color_scale(plt, values, higher_is_better):
  """Shared colormap and norm: best is yellow, worst is dark purple."""
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  finite = np.asarray([v for v in values if math.isfinite(v)])
  cmap = plt.get_cmap("viridis" if higher_is_better else "viridis_r")
  cmap = cmap.with_extremes(bad="#d9d9d9")  # missing cells
  if finite.size == 0:
    return cmap, colors.Normalize(0.0, 1.0)
  lo, hi = float(finite.min()), float(finite.max())
  if not higher_is_better and lo > 0 and hi / lo > 50:
    return cmap, colors.LogNorm(lo, hi)
  if higher_is_better and lo >= 0 and hi <= 1:
    lo = min(lo, 0.0) if hi - lo > 0.5 else lo
  if hi == lo:
    lo, hi = lo - 0.5 * abs(lo or 1), hi + 0.5 * abs(hi or 1)
  return cmap, colors.Normalize(lo, hi)


def _heatmap_figure(plt, panels, grid, title, metric_label, cmap, norm,
                    higher_is_better):
  """One subplot per panel; panel = (subtitle, {(R, f, het): (value, div)})."""
  from matplotlib import patches  # pylint: disable=g-import-not-at-top
  ncols = min(len(panels), 3)
  nrows = -(-len(panels) // ncols)
  width = max(3.2, 0.75 * len(grid.columns) + 1.6)
  height = max(2.4, 0.5 * len(grid.hets) + 1.5)
  fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                           figsize=(width * ncols + 1.2, height * nrows + 0.6))
  worst = norm.vmin if higher_is_better else norm.vmax
  image = None
  for ax, (subtitle, cells) in zip(axes.ravel(), panels):
    data = np.full((len(grid.hets), len(grid.columns)), np.nan)
    for i, het in enumerate(grid.hets):
      for j, (workers, byz) in enumerate(grid.columns):
        value, div = cells.get((workers, byz, het), (math.nan, False))
        data[i, j] = worst if div else value
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=norm,
                      aspect="auto")
    for i, het in enumerate(grid.hets):
      for j, (workers, byz) in enumerate(grid.columns):
        value, div = cells.get((workers, byz, het), (math.nan, False))
        if div:
          text = "div."
        elif math.isfinite(value):
          text = (f"{value:.2f}" if 0.01 <= abs(value) < 100 or value == 0
                  else f"{value:.1e}")
        else:
          text = "n/a"
        shade = cmap(norm(data[i, j])) if math.isfinite(data[i, j]) else None
        light = shade is not None and (0.299 * shade[0] + 0.587 * shade[1] +
                                       0.114 * shade[2]) > 0.5
        if div:
          ax.add_patch(patches.Rectangle(
              (j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//",
              edgecolor="#888888", linewidth=0))
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="black" if (shade is None or light) else "white",
                fontweight="bold" if div else "normal")
    ax.set_xticks(range(len(grid.columns)),
                  [grid.tick(w, f) for w, f in grid.columns])
    ax.set_yticks(range(len(grid.hets)), grid.hets)
    ax.set_title(subtitle, fontsize=10)
    ax.set_xlabel(grid.xlabel, fontsize=9)
  for ax in axes[:, 0]:
    ax.set_ylabel("heterogeneity (data split)", fontsize=9)
  for ax in axes.ravel()[len(panels):]:
    ax.set_visible(False)
  fig.colorbar(image, ax=axes.ravel().tolist(), label=metric_label,
               shrink=0.9)
  fig.suptitle(title, fontsize=11)
  return fig


def _save(plt, fig, path):
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def _curve_figure(plt, curves, finals_chosen, setting, attacks, defenses,
                  select, metric, higher_is_better):
  """Subplot per attack, line per defense at its chosen hyperparameters."""
  workers, byz, het = setting
  ncols = min(len(attacks), 3)
  nrows = -(-len(attacks) // ncols)
  fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                           figsize=(4.3 * ncols + 1.8, 3.2 * nrows + 0.6))
  log_y = not higher_is_better
  colors = plt.get_cmap("tab10").colors
  handles = {}
  for ax, attack in zip(axes.ravel(), attacks):
    ys, starts = [], []
    for d_i, defense in enumerate(defenses):
      h = finals_chosen.get((defense, workers, byz, het))
      curve = curves.get((defense, attack, workers, byz, het, h))
      if h is None or curve is None:
        continue
      ok = np.all(np.isfinite(curve.values), axis=0)
      if log_y:
        ok &= np.all(curve.values > 0, axis=0)
      bad = np.flatnonzero(~ok)
      end = bad[0] if bad.size else len(curve.steps)  # clip at divergence
      steps = curve.steps[:end]
      vals = curve.values[:, :end]
      color = colors[d_i % len(colors)]
      label = defense + (f" ({_fmt_hparams(select, h)})" if select else "")
      if end:
        mean = vals.mean(axis=0)
        ax.fill_between(steps, vals.min(axis=0), vals.max(axis=0),
                        color=color, alpha=0.18, linewidth=0)
        handles[label] = ax.plot(
            steps, mean, color=color, linestyle=_LINESTYLES[d_i % 4],
            marker=_MARKERS[d_i % len(_MARKERS)], markersize=4,
            markevery=max(1, len(steps) // 8), linewidth=1.4, label=label)[0]
        ys.append(vals)
        starts.append(mean[0])
      if bad.size:
        first_bad = curve.steps[bad[0]]
        ax.axvline(first_bad, color=color, linestyle=":", linewidth=1)
        handles["a seed diverged here"] = ax.plot(
            [first_bad], [0.95], transform=ax.get_xaxis_transform(),
            marker="X", markersize=9, color=color, linestyle="none",
            markeredgecolor="black", label="a seed diverged here")[0]
    if log_y:
      ax.set_yscale("log")
      if starts and ys:
        # Keep the plot readable when a run blows up without going non-finite.
        top = 1e3 * max(starts)
        if max(float(np.max(v)) for v in ys) > top:
          ax.set_ylim(top=top)
    elif ys and all(0 <= float(np.min(v)) and float(np.max(v)) <= 1
                    for v in ys):
      ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"attack: {attack}", fontsize=10)
    ax.set_xlabel("training step (steps)", fontsize=9)
    ax.set_ylabel(metric + (" (log scale)" if log_y else ""), fontsize=9)
    ax.grid(True, alpha=0.3)
  for ax in axes.ravel()[len(attacks):]:
    ax.set_visible(False)
  f_text = f"f={byz}, R={workers}"
  fig.suptitle(f"{metric} vs step, {f_text}, heterogeneity {het} "
               f"(line: seed mean, band: seed min-max)", fontsize=11)
  if handles:
    fig.legend(list(handles.values()), list(handles), loc="outside right "
               "upper", fontsize=8)
  return fig


# --------------------------------------------------------------------------
# The report.


def write_report(rows: Sequence[Mapping[str, Any]], out_dir: str, *,
                 metric: str, higher_is_better: bool,
                 select: Sequence[str] = (),
                 title: str = "byzjax robustness benchmark") -> str:
  """Writes ``report.md``, its PNG figures and CSV tables into ``out_dir``.

  Files written (earlier versions are overwritten; figures of an earlier
  report under ``out_dir/figures`` are removed first, since the report is
  derived from the store):

  * ``report.md``: counts, definitions, the defense ranking, the worst-case
    table, the Byzantine diagnostics and the embedded figures;
  * ``results.csv`` (the rows, union of keys as columns), ``worst_case.csv``,
    ``diagnostics.csv`` (when any defense reports diagnostics);
  * ``figures/heatmap_worst_case.png``, one ``figures/heatmap_attack_*.png``
    per attack, and ``figures/curves_*.png`` for at most
    ``MAX_CURVE_FIGURES`` (R, f, heterogeneity) settings. Figures need
    matplotlib; without it the report says so and holds the tables only.

  Args:
    rows: tidy result rows, one per (cell, numeric point, seed, evaluation
      round) with the keys ``defense``, ``attack``, ``num_byzantine``,
      ``num_workers``, ``heterogeneity``, ``seed``, ``round``, ``step``, the
      ``metric`` column and the ``select`` columns; ``train_loss``,
      ``byz_kept``, ``honest_dropped`` and ``byz_weight`` are optional, other
      keys are carried to ``results.csv`` only.
    out_dir: folder to write to; created if missing.
    metric: name of the main metric column, e.g. ``"accuracy"`` or
      ``"error"``.
    higher_is_better: True when larger ``metric`` is better (accuracy).
    select: columns holding hyperparameters chosen against the worst attack.
    title: the report's heading.

  Returns:
    The path of ``report.md``.

  Raises:
    ValueError: when ``rows`` is empty, a row lacks a needed column, or two
      rows hold the same run and round.
  """
  select = tuple(select) if not isinstance(select, str) else select
  finals = final_values(rows, metric=metric, select=select)
  table = worst_case_table(finals, higher_is_better=higher_is_better)
  ranking = defense_ranking(table, higher_is_better=higher_is_better)
  diags = diagnostics_table(rows, table, metric=metric, select=select)

  defenses = _first_seen(c.defense for c in finals)
  attacks = _first_seen(c.attack for c in finals)
  hets = _first_seen(c.heterogeneity for c in finals)
  columns = sorted({(c.num_workers, c.num_byzantine) for c in finals})
  one_r = len({w for w, _ in columns}) == 1
  grid = _Grid(columns, hets)
  seeds = sorted({int(r["seed"]) for r in rows})
  settings = sorted({(w.num_workers, w.num_byzantine, w.heterogeneity)
                     for w in table},
                    key=lambda s: (s[0], s[1], hets.index(s[2])))
  chosen = {(w.defense, w.num_workers, w.num_byzantine, w.heterogeneity):
            w.hparams for w in table}
  direction = "higher is better" if higher_is_better else "lower is better"
  worst_word = "minimum" if higher_is_better else "maximum"

  os.makedirs(out_dir, exist_ok=True)
  fig_dir = os.path.join(out_dir, FIGURE_DIR)

  # Tables.
  cols = _results_columns(rows, metric, select)
  _write_csv(os.path.join(out_dir, "results.csv"), cols,
             ([row.get(k) for k in cols] for row in rows))
  _write_csv(
      os.path.join(out_dir, "worst_case.csv"),
      ["defense", "num_workers", "num_byzantine", "heterogeneity",
       *select, "worst_attack", f"{metric}_mean", f"{metric}_sd",
       "num_seeds", "diverged", "num_attacks"],
      ([w.defense, w.num_workers, w.num_byzantine, w.heterogeneity,
        *w.hparams, w.attack, "" if w.diverged else w.mean,
        "" if w.diverged else w.sd, w.num_seeds, w.diverged, w.num_attacks]
       for w in table))
  diag_names = [n for n in DIAGNOSTIC_KEYS if any(n in v
                                                  for v in diags.values())]
  diag_path = os.path.join(out_dir, "diagnostics.csv")
  if diags:
    _write_csv(diag_path,
               ["defense", "attack", "num_workers", "num_byzantine",
                *diag_names],
               ([*k, *(v.get(n) for n in diag_names)]
                for k, v in diags.items()))
  elif os.path.exists(diag_path):
    os.remove(diag_path)

  # Figures.
  plt = _pyplot()
  figures = {"worst": None, "attacks": [], "curves": []}
  omitted_settings = settings[MAX_CURVE_FIGURES:]
  if plt is not None:
    os.makedirs(fig_dir, exist_ok=True)
    for name in os.listdir(fig_dir):
      if name.startswith(FIGURE_PREFIXES) and name.endswith(".png"):
        os.remove(os.path.join(fig_dir, name))
    cell_of = {(c.defense, c.attack, c.num_workers, c.num_byzantine,
                c.heterogeneity, c.hparams): c for c in finals}
    per_attack = {a: {d: {} for d in defenses} for a in attacks}
    for (d, w, f, het), h in chosen.items():
      for a in attacks:
        cell = cell_of.get((d, a, w, f, het, h))
        if cell is not None:
          per_attack[a][d][(w, f, het)] = (cell.mean, cell.diverged)
    all_values = [c.mean for c in finals if chosen.get(
        (c.defense, c.num_workers, c.num_byzantine, c.heterogeneity))
                  == c.hparams]
    cmap, norm = _color_scale(plt, all_values, higher_is_better)
    label = f"{metric} ({direction})"
    sel_text = f", {', '.join(select)} chosen vs worst attack" if select else ""
    worst_panels = [
        (d, {(w.num_workers, w.num_byzantine, w.heterogeneity):
             (w.mean, w.diverged) for w in table if w.defense == d})
        for d in defenses]
    fig = _heatmap_figure(
        plt, worst_panels, grid,
        f"Final {metric}, worst case over attacks ({worst_word}), "
        f"mean over {len(seeds)} seed(s){sel_text}", label, cmap, norm,
        higher_is_better)
    figures["worst"] = f"{FIGURE_DIR}/heatmap_worst_case.png"
    _save(plt, fig, os.path.join(out_dir, figures["worst"]))
    for i, a in enumerate(attacks):
      fig = _heatmap_figure(
          plt, [(d, per_attack[a][d]) for d in defenses], grid,
          f"Final {metric} under attack {a}, mean over {len(seeds)} "
          f"seed(s){sel_text}", label, cmap, norm, higher_is_better)
      path = f"{FIGURE_DIR}/heatmap_attack_{i:02d}_{_slug(a)}.png"
      _save(plt, fig, os.path.join(out_dir, path))
      figures["attacks"].append((a, path))
    curves = seed_curves(rows, metric=metric, select=select)
    for i, setting in enumerate(settings[:MAX_CURVE_FIGURES]):
      workers, byz, het = setting
      fig = _curve_figure(plt, curves, chosen, setting, attacks, defenses,
                          select, metric, higher_is_better)
      path = (f"{FIGURE_DIR}/curves_{i:02d}_R{workers}_f{byz}_"
              f"{_slug(het)}.png")
      _save(plt, fig, os.path.join(out_dir, path))
      figures["curves"].append((setting, path))

  # report.md.
  lines = [f"# {title}", ""]
  f_values = sorted({f for _, f in columns})
  r_values = sorted({w for w, _ in columns})
  num_runs = sum(len(c.seeds) for c in finals)
  honest = (f" ({grid.honest} honest + f)" if grid.honest is not None
            and not one_r else "")
  lines += [
      f"Generated from {len(rows)} result rows: {num_runs} runs in "
      f"{len(finals)} cells (defense x attack x f x heterogeneity"
      f"{' x ' + ' x '.join(select) if select else ''}), each summarised by "
      "its last evaluation round.", "",
      f"- defenses ({len(defenses)}): " + ", ".join(map(_md, defenses)),
      f"- attacks ({len(attacks)}): " + ", ".join(map(_md, attacks)),
      f"- f values ({len(f_values)}): {', '.join(map(str, f_values))} "
      f"Byzantine workers, of R = {', '.join(map(str, r_values))} workers"
      f"{honest}",
      f"- heterogeneity settings ({len(hets)}): " + ", ".join(map(_md, hets)),
      f"- seeds ({len(seeds)}): {', '.join(map(str, seeds))}",
  ]
  if select:
    values = {k: _first_seen(r[k] for r in rows) for k in select}
    lines.append("- selection hyperparameters: " + "; ".join(
        f"`{k}` in {{{', '.join(map(str, v))}}}" for k, v in values.items()))
  lines += [
      "", "## Definitions", "",
      f"- **Metric**: `{metric}` at the last evaluation round of each run "
      f"({direction}).",
      f"- **Diverged**: a run whose final `{metric}` or `train_loss` is NaN "
      "or infinite; a cell (a run without its seed) is diverged when any "
      "seed diverged. Diverged cells rank below every finite value, show "
      "`diverged` in tables and `div.` in the worst colour of the heatmaps.",
      f"- **Worst case**: for a defense at (f, heterogeneity), the {worst_word}"
      f" over attacks (`none` included) of the mean over seeds of the final "
      f"`{metric}`; `± sd` is the sample standard deviation over seeds "
      "(ddof = 1) of that attack's cell.",
  ]
  if select:
    lines.append(
        f"- **Selection**: the {', '.join(f'`{k}`' for k in select)} value is "
        "chosen per defense and (f, heterogeneity) against the worst attack: "
        "the value whose worst case is best (minimax); the worst case is "
        "reported at that value, and the per-attack heatmaps and curves use "
        "it too.")
  lines.append("- **Curves**: line = mean over seeds, band = min-max over "
               "seeds; a curve stops where a seed diverges, marked by an X on "
               "the top edge and a dotted vertical line.")

  lines += ["", "## Ranking (best to worst by worst case over everything)",
            ""]
  for i, r in enumerate(ranking, 1):
    w = r.worst
    value = (DIVERGED if w.diverged else
             _fmt_mean_sd(w.mean, w.sd, w.num_seeds))
    extra = (f", diverged in {r.num_diverged} of {r.num_settings} settings"
             if r.num_diverged else "")
    hp = f", {_fmt_hparams(select, w.hparams)}" if select else ""
    lines.append(f"{i}. {_md(r.defense)}: worst {metric} {value} (f="
                 f"{w.num_byzantine}, R={w.num_workers}, {w.heterogeneity}, "
                 f"attack {_md(w.attack)}{hp}){extra}")

  if plt is None:
    lines += ["", "**No figures**: matplotlib is not installed; plots need "
              "`pip install byzjax[experiments]`. Rerun `byzjax report DIR` "
              "after installing it."]
  else:
    lines += ["", "## Worst case over attacks", "",
              f"![worst-case heatmap]({figures['worst']})"]

  header = ["defense", "f", "R", "heterogeneity",
            f"worst {metric} (mean ± sd)", "worst attack", *select,
            "attacks"]
  lines += ["", "## Worst-case table", "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|"]
  for w in table:
    value = (DIVERGED if w.diverged else
             _fmt_mean_sd(w.mean, w.sd, w.num_seeds))
    lines.append("| " + " | ".join([
        _md(w.defense), str(w.num_byzantine), str(w.num_workers),
        _md(w.heterogeneity), value, _md(w.attack),
        *(str(v) for v in w.hparams), str(w.num_attacks)]) + " |")
  lines += ["", "Also in `worst_case.csv` (empty mean/sd where diverged)."]

  if figures["attacks"]:
    lines += ["", "## Per attack", "",
              f"Final `{metric}`, mean over seeds, at the selected "
              "hyperparameters; same colour scale as the worst-case heatmap.",
              ""]
    for a, path in figures["attacks"]:
      lines += [f"### attack {_md(a)}", "", f"![{a} heatmap]({path})", ""]

  if figures["curves"]:
    lines += ["## Curves", "",
              f"`{metric}` against training step, per attack, one line per "
              "defense (at its selected hyperparameters); line = seed mean, "
              "band = seed min-max. One figure per (f, R, heterogeneity) "
              f"setting, at most {MAX_CURVE_FIGURES}."]
    if omitted_settings:
      lines.append(
          f"At most {MAX_CURVE_FIGURES} figures are drawn; "
          f"{len(omitted_settings)} (f, R, heterogeneity) settings are "
          "omitted: " + ", ".join(f"(f={f}, R={w}, {h})"
                                  for w, f, h in omitted_settings) +
          ". `results.csv` holds all rounds.")
    lines.append("")
    for (workers, byz, het), path in figures["curves"]:
      lines += [f"### f={byz}, R={workers}, {het}", "",
                f"![curves f={byz} {het}]({path})", ""]

  lines += ["## Byzantine diagnostics", ""]
  if diags:
    diag_text = " / ".join(DIAGNOSTIC_NAMES[n] for n in diag_names)
    keys_f = sorted({(k[2], k[3]) for k in diags})
    lines += [f"Each cell: mean {diag_text} at the final round, over seeds "
              "and heterogeneity settings, at the selected hyperparameters.",
              ""]
    head = ["defense", "attack"] + [
        f"f={f}" + ("" if one_r else f", R={w}") for w, f in keys_f]
    lines += ["| " + " | ".join(head) + " |",
              "|" + "|".join("---" for _ in head) + "|"]
    for d in defenses:
      for a in attacks:
        cells = [diags.get((d, a, w, f)) for w, f in keys_f]
        if not any(cells):
          continue
        lines.append("| " + " | ".join(
            [_md(d), _md(a)] + [
                " / ".join(f"{c[n]:.2f}" if n in c else "n/a"
                           for n in diag_names) if c else ""
                for c in cells]) + " |")
    silent = [d for d in defenses if not any(k[0] == d for k in diags)]
    if silent:
      lines += ["", "Not reported by: " + ", ".join(map(_md, silent)) + "."]
    lines += ["", "Also in `diagnostics.csv`."]
  else:
    lines.append("No defense reported diagnostics (`byz_kept`, "
                 "`honest_dropped`, `byz_weight`).")

  lines += ["", "## Files", "",
            "- `results.csv`: every result row (one per cell, seed and "
            "evaluation round)",
            "- `worst_case.csv`: the worst-case table"]
  if diags:
    lines.append("- `diagnostics.csv`: the Byzantine diagnostics table")
  path = os.path.join(out_dir, "report.md")
  with open(path, "w", encoding="utf-8") as fh:
    fh.write("\n".join(lines) + "\n")
  return path
