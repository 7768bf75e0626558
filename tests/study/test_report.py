"""Tests for byzjax.study.report: tables from rows whose answer is known."""

import csv
import itertools
import math
import os
import re
import struct
import sys

import numpy as np
import pytest

from byzjax.study import report

SEED_OFFSETS = (-0.01, 0.0, 0.01)  # mean 0, sample sd 0.01


def _rows(final, *, defenses, attacks, fs, hets, seeds=(0, 1, 2), lrs=None,
          num_rounds=3, metric="accuracy", num_workers=10):
  """Tidy rows whose last-round metric is ``final(d, a, f, het, lr, seed)``.

  Earlier rounds hold a different value (-1), so a report that reads any
  round but the last gets the wrong numbers.
  """
  rows = []
  for d, a, f, het, lr, seed in itertools.product(
      defenses, attacks, fs, hets, lrs or (None,), seeds):
    for rnd in range(num_rounds):
      value = final(d, a, f, het, lr, seed) if rnd == num_rounds - 1 else -1.0
      row = dict(defense=d, attack=a, num_byzantine=f,
                 num_workers=num_workers, heterogeneity=het, seed=seed,
                 round=rnd, step=10 * rnd, train_loss=1.0 / (rnd + 1),
                 cell_id=f"{d}/{a}", task="synthetic", seconds=0.5)
      row[metric] = value
      if lrs is not None:
        row["lr"] = lr
      rows.append(row)
  return rows


def _by_setting(table):
  return {(w.defense, w.num_byzantine, w.heterogeneity): w for w in table}


def _accuracy_a_b(d, a, f, het, lr, seed):
  """A: 0.9 except under X at f=2 (0.3); B: 0.8 except under Y at f=1, iid."""
  del lr
  noise = SEED_OFFSETS[seed]
  if d == "A":
    return (0.3 if (a == "X" and f == 2) else 0.9) + noise
  return (0.5 if (a == "Y" and f == 1 and het == "iid") else 0.8) + noise


def test_worst_case_known_by_construction():
  rows = _rows(_accuracy_a_b, defenses=("A", "B"), attacks=("none", "X", "Y"),
               fs=(1, 2), hets=("iid", "dirichlet(0.1)"))
  rows = rows[::-1]  # the last round is found by number, not by position
  finals = report.final_values(rows, metric="accuracy")
  table = report.worst_case_table(finals, higher_is_better=True)
  assert len(table) == 2 * 2 * 2
  got = _by_setting(table)
  for het in ("iid", "dirichlet(0.1)"):
    a2 = got[("A", 2, het)]
    assert (a2.attack, a2.num_seeds, a2.diverged) == ("X", 3, False)
    np.testing.assert_allclose([a2.mean, a2.sd], [0.3, 0.01], atol=1e-12)
    # Every attack ties at 0.9: the first attack seen wins.
    assert got[("A", 1, het)].attack == "Y"  # rows reversed: Y seen first
    np.testing.assert_allclose(got[("A", 1, het)].mean, 0.9, atol=1e-12)
  b1 = got[("B", 1, "iid")]
  assert b1.attack == "Y"
  np.testing.assert_allclose(b1.mean, 0.5, atol=1e-12)
  np.testing.assert_allclose(got[("B", 1, "dirichlet(0.1)")].mean, 0.8,
                             atol=1e-12)
  assert all(w.num_attacks == 3 for w in table)
  ranking = report.defense_ranking(table, higher_is_better=True)
  assert [r.defense for r in ranking] == ["B", "A"]
  assert ranking[1].worst.attack == "X" and ranking[1].worst.num_byzantine == 2


def test_table_order_follows_first_appearance_and_f():
  rows = _rows(_accuracy_a_b, defenses=("B", "A"), attacks=("none",),
               fs=(2, 1), hets=("shards(4)", "iid"), seeds=(0,))
  table = report.worst_case_table(report.final_values(rows, metric="accuracy"),
                                  higher_is_better=True)
  assert [(w.defense, w.num_byzantine, w.heterogeneity) for w in table] == [
      ("B", 1, "shards(4)"), ("B", 1, "iid"), ("B", 2, "shards(4)"),
      ("B", 2, "iid"), ("A", 1, "shards(4)"), ("A", 1, "iid"),
      ("A", 2, "shards(4)"), ("A", 2, "iid")]
  assert all(w.sd == 0.0 and w.num_seeds == 1 for w in table)


# lr = 1.0 is best on average over attacks (0.675 vs 0.65) but lr = 0.1 is
# best against the worst attack (0.6 vs 0.4).
_LR_ACCURACY = {(1.0, "none"): 0.95, (1.0, "X"): 0.4,
                (0.1, "none"): 0.7, (0.1, "X"): 0.6}


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_hyperparameter_chosen_against_the_worst_attack(higher_is_better):
  def final(d, a, f, het, lr, seed):
    del d, f, het
    acc = _LR_ACCURACY[(lr, a)] + SEED_OFFSETS[seed]
    return acc if higher_is_better else 1.0 - acc

  metric = "accuracy" if higher_is_better else "error"
  rows = _rows(final, defenses=("A",), attacks=("none", "X"), fs=(1,),
               hets=("iid",), lrs=(1.0, 0.1), metric=metric)
  finals = report.final_values(rows, metric=metric, select=("lr",))
  assert len(finals) == 4
  (line,) = report.worst_case_table(finals,
                                    higher_is_better=higher_is_better)
  assert line.hparams == (0.1,)
  assert line.attack == "X"
  np.testing.assert_allclose(line.mean, 0.6 if higher_is_better else 0.4,
                             atol=1e-12)
  np.testing.assert_allclose(line.sd, 0.01, atol=1e-12)


def _oracle_worst_case(values, higher_is_better):
  """Brute force: values[(d, a, f, het, lr)] = seed-mean; returns minimax."""
  sign = 1.0 if higher_is_better else -1.0
  out = {}
  for d, f, het in {(k[0], k[2], k[3]) for k in values}:
    best = None
    for lr in sorted({k[4] for k in values}):
      worst = None
      for a in sorted({k[1] for k in values}):
        v = sign * values[(d, a, f, het, lr)]
        if worst is None or v < worst[0]:
          worst = (v, a)
      if best is None or worst[0] > best[0]:
        best = (worst[0], lr, worst[1])
    out[(d, f, het)] = (sign * best[0], best[1], best[2])
  return out


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_matches_brute_force_oracle(higher_is_better):
  rng = np.random.default_rng(0)
  keys = list(itertools.product(("A", "B", "C"), ("none", "X", "Y", "Z"),
                                (1, 3), ("iid", "dir"), (0.01, 0.1, 1.0)))
  draws = {k: rng.uniform(0, 1, size=2) for k in keys}
  rows = _rows(lambda d, a, f, het, lr, seed: float(draws[(d, a, f, het, lr)]
                                                    [seed]),
               defenses=("A", "B", "C"), attacks=("none", "X", "Y", "Z"),
               fs=(1, 3), hets=("iid", "dir"), lrs=(0.01, 0.1, 1.0),
               seeds=(0, 1))
  finals = report.final_values(rows, metric="accuracy", select=("lr",))
  table = report.worst_case_table(finals, higher_is_better=higher_is_better)
  oracle = _oracle_worst_case({k: v.mean() for k, v in draws.items()},
                              higher_is_better)
  assert len(table) == len(oracle) == 12
  for w in table:
    mean, lr, attack = oracle[(w.defense, w.num_byzantine, w.heterogeneity)]
    assert (w.hparams, w.attack) == ((lr,), attack)
    np.testing.assert_allclose(w.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(
        w.sd, np.std(draws[(w.defense, attack, w.num_byzantine,
                            w.heterogeneity, lr)], ddof=1), rtol=1e-12)
  # Ranking: by each defense's worst line, best first.
  ranking = report.defense_ranking(table, higher_is_better=higher_is_better)
  sign = 1.0 if higher_is_better else -1.0
  worst = {d: min(sign * m for (dd, _, _), (m, _, _) in oracle.items()
                  if dd == d) for d in ("A", "B", "C")}
  assert [r.defense for r in ranking] == sorted(worst, key=lambda d:
                                                -worst[d])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None,
                                 "train_loss_nan"])
def test_diverged_cell_is_the_worst_case(bad):
  def final(d, a, f, het, lr, seed):
    del d, f, het, lr
    if a == "X" and seed == 1 and bad != "train_loss_nan":
      return bad
    return {"none": 0.9, "X": 0.8, "Y": 0.05}[a]

  rows = _rows(final, defenses=("A",), attacks=("none", "X", "Y"), fs=(2,),
               hets=("iid",))
  if bad == "train_loss_nan":
    for row in rows:
      if row["attack"] == "X" and row["seed"] == 1 and row["round"] == 2:
        row["train_loss"] = math.nan
  finals = report.final_values(rows, metric="accuracy")
  x_cell = next(c for c in finals if c.attack == "X")
  assert x_cell.diverged and x_cell.seed_diverged == (False, True, False)
  assert math.isnan(x_cell.mean)
  (line,) = report.worst_case_table(finals, higher_is_better=True)
  # 0.05 under Y is a finite value; a diverged run is worse than any.
  assert line.diverged and line.attack == "X"


def test_diverged_lower_is_better_and_selection_avoids_it():
  def final(d, a, f, het, lr, seed):
    del d, f, het, seed
    if lr == 1.0:
      return math.inf if a == "X" else 0.01
    return 0.5

  rows = _rows(final, defenses=("A",), attacks=("none", "X"), fs=(1,),
               hets=("iid",), lrs=(1.0, 0.1), metric="error")
  finals = report.final_values(rows, metric="error", select=("lr",))
  (line,) = report.worst_case_table(finals, higher_is_better=False)
  assert line.hparams == (0.1,) and not line.diverged
  np.testing.assert_allclose(line.mean, 0.5)


def test_all_diverged_defense_ranks_last():
  def final(d, a, f, het, lr, seed):
    del a, het, lr, seed
    if d == "mean" and f == 2:
      return math.nan
    return {"mean": 0.95, "median": 0.1}[d]

  rows = _rows(final, defenses=("mean", "median"), attacks=("none", "X"),
               fs=(1, 2), hets=("iid",))
  table = report.worst_case_table(report.final_values(rows, metric="accuracy"),
                                  higher_is_better=True)
  ranking = report.defense_ranking(table, higher_is_better=True)
  assert [r.defense for r in ranking] == ["median", "mean"]
  assert (ranking[1].num_diverged, ranking[1].num_settings) == (1, 2)


def test_seed_curves_stop_at_divergence():
  rows = _rows(lambda *_: 0.5, defenses=("A",), attacks=("X",), fs=(1,),
               hets=("iid",), seeds=(0, 1), num_rounds=4)
  for row in rows:
    if row["seed"] == 1 and row["round"] == 1:
      row["train_loss"] = math.inf
  (curve,) = report.seed_curves(rows, metric="accuracy").values()
  np.testing.assert_array_equal(curve.steps, [0, 10, 20, 30])
  expected = np.array([[-1, -1, -1, 0.5], [-1, np.nan, np.nan, np.nan]])
  np.testing.assert_array_equal(curve.values, expected)


def test_diagnostics_means_and_missing():
  rows = _rows(lambda *_: 0.9, defenses=("krum", "mean", "median"),
               attacks=("none", "X"), fs=(2,), hets=("iid", "dir"),
               seeds=(0, 1))
  for row in rows:
    if row["defense"] == "krum":  # reports both, varying over seed and het
      row["byz_kept"] = row["seed"] + (2.0 if row["heterogeneity"] == "dir"
                                       else 0.0)
      row["honest_dropped"] = math.nan if row["attack"] == "X" else 1.0
    elif row["defense"] == "mean":  # reports, but only NaN
      row["byz_kept"] = math.nan
  table = report.worst_case_table(report.final_values(rows, metric="accuracy"),
                                  higher_is_better=True)
  diags = report.diagnostics_table(rows, table, metric="accuracy")
  assert set(diags) == {("krum", "none", 10, 2), ("krum", "X", 10, 2)}
  # byz_kept over seeds {0, 1} and hets {+0, +2}: mean of 0, 1, 2, 3.
  assert diags[("krum", "none", 10, 2)] == {"byz_kept": 1.5,
                                            "honest_dropped": 1.0}
  assert diags[("krum", "X", 10, 2)] == {"byz_kept": 1.5}


def test_diagnostics_use_the_selected_hyperparameter():
  def final(d, a, f, het, lr, seed):
    del d, f, het, seed
    return _LR_ACCURACY[(lr, a)]

  rows = _rows(final, defenses=("A",), attacks=("none", "X"), fs=(1,),
               hets=("iid",), lrs=(1.0, 0.1), seeds=(0,))
  for row in rows:
    row["byz_kept"] = row["lr"] * 10  # 10 at lr=1, 1 at lr=0.1 (selected)
  table = report.worst_case_table(
      report.final_values(rows, metric="accuracy", select=("lr",)),
      higher_is_better=True)
  diags = report.diagnostics_table(rows, table, metric="accuracy",
                                   select=("lr",))
  assert {k: v["byz_kept"] for k, v in diags.items()} == {
      ("A", "none", 10, 1): 1.0, ("A", "X", 10, 1): 1.0}


@pytest.mark.parametrize("mutate, match", [
    (lambda rows: rows.clear(), "empty"),
    (lambda rows: rows[3].pop("heterogeneity"), "heterogeneity"),
    (lambda rows: rows[0].pop("accuracy"), "metric='accuracy'"),
    (lambda rows: rows.append(dict(rows[0])), "same run and round"),
])
def test_bad_rows_raise(mutate, match):
  rows = _rows(_accuracy_a_b, defenses=("A",), attacks=("X",), fs=(1,),
               hets=("iid",))
  mutate(rows)
  with pytest.raises(ValueError, match=match):
    report.final_values(rows, metric="accuracy")


def test_select_errors():
  rows = _rows(_accuracy_a_b, defenses=("A",), attacks=("X",), fs=(1,),
               hets=("iid",))
  with pytest.raises(ValueError, match=r"select=\('lr',\)"):
    report.final_values(rows, metric="accuracy", select="lr")
  with pytest.raises(ValueError, match="lr"):
    report.final_values(rows, metric="accuracy", select=("lr",))


# --------------------------------------------------------------------------
# Files.


def _png_size(path):
  with open(path, "rb") as fh:
    head = fh.read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n", path
  assert head[12:16] == b"IHDR"
  return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  """One report with figures (drawing is the slow part: do it once)."""
  pytest.importorskip("matplotlib")

  def final(d, a, f, het, lr, seed):
    del het
    if d == "mean" and a == "X" and f == 2:
      return math.nan
    return _LR_ACCURACY[(lr, "X" if a == "X" else "none")] - 0.1 * f + (
        SEED_OFFSETS[seed])

  rows = _rows(final, defenses=("mean", "nnm+trimmed_mean"),
               attacks=("none", "X"), fs=(1, 2), hets=("iid",),
               lrs=(1.0, 0.1), num_rounds=4)
  for row in rows:
    row["accuracy"] = abs(row["accuracy"])  # earlier rounds: 1.0
    if row["defense"] != "mean":
      row["byz_kept"] = 1.0
  rows[0]["only_here"] = "x"  # a key present in one row only
  out = tmp_path_factory.mktemp("report") / "sub"  # created by write_report
  stale = out / "figures" / "heatmap_attack_09_old.png"
  stale.parent.mkdir(parents=True)
  stale.write_bytes(b"old")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(report, "MAX_CURVE_FIGURES", 1)
    path = report.write_report(rows, str(out), metric="accuracy",
                               higher_is_better=True, select=("lr",))
  return rows, out, path


def test_report_files(written):
  rows, out, path = written
  assert path == str(out / "report.md")
  text = open(path, encoding="utf-8").read()
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
  # worst-case heatmap, 2 attacks, 1 curve figure (capped from 2 settings).
  assert len(links) == 4
  assert sorted(links) == sorted(
      f"figures/{n}" for n in os.listdir(out / "figures"))  # stale one gone
  for link in links:
    assert not os.path.isabs(link)
    width, height = _png_size(out / link)
    assert width > 300 and height > 200
    assert os.path.getsize(out / link) > 10_000
  assert "At most 1 figures are drawn; 1 (f, R, heterogeneity) settings " \
         "are omitted: (f=2, R=10, iid)" in text
  for needed in ("defenses (2)", "attacks (2)", "f values (2)",
                 "heterogeneity settings (1)", "seeds (3)",
                 "band = min-max over seeds", "| diverged |"):
    assert needed in text, needed
  # The ranking: nnm+trimmed_mean first (finite), mean diverged at f=2.
  ranking = text.split("## Ranking")[1].split("##")[0]
  assert ranking.index("nnm+trimmed_mean") < ranking.index("`mean`")
  assert "diverged in 1 of 2 settings" in ranking
  assert "Not reported by: `mean`" in text


def test_report_csvs(written):
  rows, out, _ = written
  with open(out / "results.csv", encoding="utf-8") as fh:
    results = list(csv.DictReader(fh))
  assert len(results) == len(rows)
  assert set(results[0]) == set().union(*rows)
  assert results[0]["only_here"] == "x" and results[1]["only_here"] == ""
  assert float(results[5]["accuracy"]) == rows[5]["accuracy"]
  with open(out / "worst_case.csv", encoding="utf-8") as fh:
    worst = list(csv.DictReader(fh))
  assert len(worst) == 4
  line = next(w for w in worst if w["defense"] == "nnm+trimmed_mean"
              and w["num_byzantine"] == "1")
  assert (line["lr"], line["worst_attack"]) == ("0.1", "X")
  np.testing.assert_allclose(float(line["accuracy_mean"]), 0.6 - 0.1)
  diverged = next(w for w in worst if w["defense"] == "mean"
                  and w["num_byzantine"] == "2")
  assert diverged["diverged"] == "True" and diverged["accuracy_mean"] == ""
  assert os.path.exists(out / "diagnostics.csv")


def test_report_without_matplotlib(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
  rows = _rows(_accuracy_a_b, defenses=("A", "B"), attacks=("none", "X"),
               fs=(1, 2), hets=("iid",))
  path = report.write_report(rows, str(tmp_path), metric="accuracy",
                             higher_is_better=True)
  text = open(path, encoding="utf-8").read()
  assert "pip install byzjax[experiments]" in text
  assert "![" not in text and not os.path.exists(tmp_path / "figures")
  assert "No defense reported diagnostics" in text
  assert "| `A` | 2 | 10 | `iid` | 0.300 ± 0.010 | `X` | 2 |" in text
  assert sorted(os.listdir(tmp_path)) == ["report.md", "results.csv",
                                          "worst_case.csv"]
