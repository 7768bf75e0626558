"""The runner end to end on a tiny synthetic grid: rows, resume, kill -9, CLI."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from byzjax import study
from byzjax import cli
from byzjax.study import store as store_lib

CONFIG = textwrap.dedent("""
    name = "tiny"

    [task]
    dataset = "synthetic_classification"
    model = "mlp"
    model_args = { hidden = [8] }
    num_features = 6
    num_classes = 3
    train_samples = 480
    test_samples = 120

    [training]
    num_workers = 6
    num_byzantine = [1, 2]
    batch_size = 8
    steps = 6
    eval_every = 3
    learning_rate = [0.3, 0.03]
    worker_momentum = 0.5
    seeds = 2

    [grid]
    heterogeneity = ["iid", "gamma:0.2"]
    defenses = ["mean"]
    attacks = ["alie"]
    """)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache):
  out = str(tmp_path_factory.mktemp("full") / "results")
  lines = []
  rows = study.run(CONFIG, out, cache_dir=cache, progress=False,
                   log=lines.append, as_dataframe=False)
  return out, rows, lines


def _key(r):
  return (r["heterogeneity"], r["num_byzantine"], r["defense"], r["attack"],
          r["learning_rate"], r["seed"], r["round"])


def test_rows_cover_the_grid_and_are_plausible(full_run):
  out, rows, lines = full_run
  # 2 het x 2 f x 1 defense x 1 attack x 2 lr x 2 seeds x 2 rounds.
  assert len(rows) == 2 * 2 * 1 * 1 * 2 * 2 * 2
  assert len({_key(r) for r in rows}) == len(rows)
  acc = np.array([r["accuracy"] for r in rows])
  assert np.all((acc >= 0) & (acc <= 1))
  assert {r["step"] for r in rows} == {3, 6}
  assert all(r["num_workers"] == 6 for r in rows)
  assert any("[1/4]" in line for line in lines)
  for name in ("results.sqlite", "results.csv", "report.md",
               "worst_case.csv"):
    assert os.path.exists(os.path.join(out, name)), name


def test_a_rerun_resumes_with_nothing_to_do_and_same_rows(full_run, cache):
  out, rows, _ = full_run
  lines = []
  again = study.run(CONFIG, out, cache_dir=cache, progress=False,
                    log=lines.append, as_dataframe=False, report=False)
  assert not any("cells to run" in line for line in lines)
  assert sorted(map(_key, again)) == sorted(map(_key, rows))


@pytest.mark.slow  # compiles a third program (the new attack)
def test_a_changed_config_runs_only_the_new_cells(full_run, cache):
  out, _, _ = full_run
  changed = CONFIG.replace('attacks = ["alie"]',
                           'attacks = ["alie", "bit_flip"]')
  lines = []
  rows = study.run(changed, out, cache_dir=cache, progress=False,
                   log=lines.append, as_dataframe=False, report=False)
  assert any("4 of 8 cells to run" in line for line in lines), lines
  assert {r["attack"] for r in rows} == {"alie", "bit_flip"}


def _done(path):
  try:
    with sqlite3.connect(path, timeout=0.1) as db:
      return db.execute("SELECT count(*) FROM cells").fetchone()[0]
  except sqlite3.Error:
    return 0


@pytest.mark.slow  # a subprocess that starts JAX and runs part of the grid
def test_kill_9_mid_grid_then_resume_completes_with_identical_results(
    full_run, tmp_path, cache):
  _, rows, _ = full_run
  config_path = tmp_path / "tiny.toml"
  config_path.write_text(CONFIG)
  out = tmp_path / "killed"
  proc = subprocess.Popen(
      [sys.executable, "-m", "byzjax", "run", str(config_path), "--out",
       str(out), "--cache", cache, "--no-progress"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  store_path = str(out / store_lib.STORE_NAME)
  deadline = time.time() + 240
  while _done(store_path) < 1 and time.time() < deadline:
    if proc.poll() is not None:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  finished = _done(store_path)
  assert 1 <= finished < 4, f"kill landed after {finished} of 4 cells"
  before = store_lib.Store(store_path).rows()
  lines = []
  resumed = study.run(str(config_path), str(out), cache_dir=cache,
                      progress=False, log=lines.append, as_dataframe=False,
                      report=False)
  assert any(f"{4 - finished} of 4 cells to run" in line for line in lines)
  assert len(resumed) == len(rows)
  by_key = {_key(r): r for r in rows}
  # Cells finished before the kill are kept as they were, and every cell
  # equals the uninterrupted run bit for bit.
  for r in before:
    assert r["accuracy"] == by_key[_key(r)]["accuracy"]
  for r in resumed:
    assert r["accuracy"] == by_key[_key(r)]["accuracy"]
    assert r["train_loss"] == by_key[_key(r)]["train_loss"]


def test_cli_dry_run_lists_cells_and_programs(tmp_path, capsys):
  path = tmp_path / "tiny.toml"
  path.write_text(CONFIG)
  assert cli.main(["run", str(path), "--out", str(tmp_path / "o"),
                   "--dry-run"]) == 0
  text = capsys.readouterr().out
  assert "4 cells (0 done, 4 to run)" in text
  # The mean ignores f and the two heterogeneity settings share shapes: one
  # program for the whole grid.
  assert "1 compiled programs" in text
  assert "Estimated time" in text
  assert not os.path.exists(tmp_path / "o")


def test_cli_errors_name_the_problem(tmp_path, capsys):
  bad = tmp_path / "bad.toml"
  bad.write_text(CONFIG.replace('"alie"', '"aliee"'))
  assert cli.main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
  assert "Did you mean 'alie'" in capsys.readouterr().err
  # A non-empty folder that is not a byzjax results folder is not touched.
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  good = tmp_path / "good.toml"
  good.write_text(CONFIG)
  assert cli.main(["run", str(good), "--out", str(other)]) == 2
  assert "holds no byzjax results" in capsys.readouterr().err
  assert (other / "notes.txt").read_text() == "mine"
  assert cli.main(["report", str(tmp_path / "missing")]) == 2
  assert "holds no byzjax results" in capsys.readouterr().err
  assert cli.main(["run", str(good), "--out", str(tmp_path / "o"),
                   "--memory", "-1"]) == 2
  assert "--memory must be a positive" in capsys.readouterr().err


@pytest.mark.slow  # compiles the chunked program
def test_memory_budget_chunks_runs_with_the_same_results(full_run, cache):
  _, rows, _ = full_run
  one_cell = CONFIG.replace('num_byzantine = [1, 2]', 'num_byzantine = [1]')
  one_cell = one_cell.replace('heterogeneity = ["iid", "gamma:0.2"]',
                              'heterogeneity = ["iid"]')
  chunked = study.run(one_cell, None, cache_dir=cache, progress=False,
                      log=lambda s: None, as_dataframe=False,
                      memory_gb=1e-9)  # one run at a time
  assert len(chunked) == 2 * 2 * 2
  by_key = {(r["learning_rate"], r["seed"], r["round"]): r for r in rows
            if r["heterogeneity"] == "iid" and r["num_byzantine"] == 1
            and r["defense"] == "mean" and r["attack"] == "alie"}
  for r in chunked:
    ref = by_key[(r["learning_rate"], r["seed"], r["round"])]
    np.testing.assert_allclose(r["accuracy"], ref["accuracy"], atol=1e-6)


@pytest.mark.slow  # compiles the sharded program
def test_worker_axis_sharded_over_devices_gives_the_same_results(full_run,
                                                                 cache):
  import jax  # pylint: disable=g-import-not-at-top
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices (tests/conftest.py emulates 8 on CPU)")
  _, rows, _ = full_run
  one = CONFIG.replace('num_byzantine = [1, 2]', 'num_byzantine = [2]')
  one = one.replace('heterogeneity = ["iid", "gamma:0.2"]',
                    'heterogeneity = ["iid"]')
  sharded = study.run(one, None, cache_dir=cache, progress=False,
                      log=lambda s: None, as_dataframe=False, devices=2)
  assert len(sharded) == 2 * 2 * 2
  by_key = {_key(r): r for r in rows}
  for r in sharded:
    np.testing.assert_allclose(r["accuracy"], by_key[_key(r)]["accuracy"],
                               atol=1e-6)
    np.testing.assert_allclose(r["train_loss"],
                               by_key[_key(r)]["train_loss"], rtol=1e-4)
  with pytest.raises(ValueError, match="must divide the number of workers"):
    study.run(one, None, devices=4, progress=False, log=lambda s: None)
