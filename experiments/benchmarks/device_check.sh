#!/usr/bin/env bash
# One-shot GPU check (issue 11, section 5): installs jax[cuda12] pinned to the
# JAX version in use, then, within about 10 minutes in all, runs the
# aggregator tests, the aggregator benchmarks at R = 128, d = 1e6 and the
# simulation benchmark at GPU sizes, writing their tables under $OUT.
#
#   OUT=/some/dir bash experiments/benchmarks/device_check.sh
#
# Stage limits sum to 570 s (plus pip's own). Every stage has its own time limit and a failing stage does not stop the
# next one; $OUT/summary.txt lists each stage's exit status and wall time.
# The machine may have no internet access: set WHEELS=/dir/with/wheels to
# install from local wheels (pip --no-index --find-links), or have a CUDA
# jaxlib preinstalled; the script says which backend it ended up with.
set -u -o pipefail

OUT="${OUT:-$(pwd)/device_check_out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."   # repository root
PY="${PYTHON:-python}"
JAX_VERSION="$("$PY" -c 'import jax; print(jax.__version__)' 2>/dev/null || echo 0.10.2)"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

stage() {  # stage NAME SECONDS COMMAND...
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s): $*" | tee -a "$OUT/log.txt"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc wall=$((SECONDS - t0))s" | tee -a "$SUMMARY"
  tail -n 40 "$OUT/$name.log" >> "$OUT/log.txt"
}

# 1. jax[cuda12] at the version in use (about 60 s when reachable).
if [ -n "${WHEELS:-}" ]; then
  stage install 90 "$PY" -m pip install --no-index --find-links "$WHEELS" \
    "jax[cuda12]==$JAX_VERSION"
else
  stage install 90 "$PY" -m pip install "jax[cuda12]==$JAX_VERSION"
fi
stage devices 30 "$PY" -c 'import jax; print(jax.__version__, jax.default_backend(), jax.devices())'
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -c 'import jax; print(jax.default_backend())' > "$OUT/backend.txt" 2>&1 || true

# 2. The aggregator tests (the suite's own fast selection, not the slow ones).
stage tests_aggregators 150 "$PY" -m pytest -q -x -m "not slow" tests/aggregators \
  tests/test_benchmark_smoke.py tests/test_vs_peers_smoke.py

# 3. Aggregators at R = 128, d = 1e6: byzjax vs the peers (same stopping
#    rule), then byzjax vs its NumPy references for the geometric median and
#    Krum (the target size of aggregators.py).
stage vs_peers 120 "$PY" experiments/benchmarks/vs_peers.py --out "$OUT/vs_peers" \
  --sizes target --repeats 3 --inputs hard,easy
stage aggregators 60 "$PY" experiments/benchmarks/aggregators.py \
  --out "$OUT/aggregators" --sizes target --repeats 3 \
  --only geometric_median,krum

# 4. The simulation benchmark (MLP steps, geometric median, the seed sweep)
#    at its full sizes when the data set is present.
if [ -d /usr/share/datasets/fashion-mnist ]; then
  stage simulation 120 "$PY" experiments/benchmarks/simulation.py \
    --out "$OUT/simulation"
else
  echo "simulation skipped: /usr/share/datasets/fashion-mnist missing" | tee -a "$SUMMARY"
fi

echo "tables: $(ls "$OUT"/*/*.md 2>/dev/null | tr '\n' ' ')" | tee -a "$SUMMARY"
