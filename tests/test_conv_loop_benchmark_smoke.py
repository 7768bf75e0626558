"""Smoke test of experiments/benchmarks/conv_loop.py (no timing asserted)."""

import pytest
import json

from tests import helpers

bench = helpers.load_script("experiments/benchmarks/conv_loop.py",
                            "_bench_conv_loop")


@pytest.mark.slow  # end-to-end or many compilations; run with -m slow
def test_quick_run_writes_one_row_per_mode(tmp_path):
  rows = bench.main(["--quick", "--out", str(tmp_path), "--steps", "2",
                     "--repeats", "1"])
  assert [r["mode"] for r in rows] == ["scan", "unrolled", "single step"]
  assert all(r["seconds_per_step"] > 0 and r["compile_s"] > 0 for r in rows)
  text = (tmp_path / "conv_loop.md").read_text()
  assert text.count("resnet_small") == 3
  saved = json.loads((tmp_path / "conv_loop.json").read_text())
  assert saved["rows"] == rows and "cpu_count" in saved["machine"]
