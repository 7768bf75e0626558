"""Times every byzjax aggregator against NumPy references and memory bandwidth.

Usage::

  python experiments/benchmarks/aggregators.py --out DIR \\
      [--sizes small|full] [--repeats N] [--only NAME,...]

For every size ``(R, d)`` (full: ``R in {32, 128}``, ``d in {1e5, 1e6}``;
small: ``R in {16, 32}``, ``d = 1e4``) and two inputs, "easy" and "hard" (see
:func:`make_input`), the stacked float32 updates are split across four leaves
of different shapes and every aggregator is jitted, compiled, and timed
(median over repeats, ``block_until_ready``). In the same run the script times
a NumPy reference of the same algorithm (``_numpy_reference.py``) and checks
that the results agree, and measures the machine's memory bandwidth with a
STREAM-like copy, so that each time is also reported as *passes over the
stacked updates*: ``time * bandwidth / (R * d * 4 bytes)``.

Writes ``DIR/aggregators.md`` (the Markdown table, also printed),
``DIR/aggregators.csv`` and ``DIR/aggregators.json`` (rows plus machine info).
The targets in the ``target`` column are stated for ``R = 128, d = 1e6``; the
``met`` column evaluates them on every row, honestly, at whatever size.
"""

import argparse
import csv
import dataclasses
import datetime
import functools
import importlib
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
# Run from a checkout without installing: the repository root holds byzjax/.
sys.path.insert(1, os.path.dirname(os.path.dirname(_HERE)))
# pylint: disable-next=wrong-import-position
import _machine  # noqa: E402
import _numpy_reference as npref  # noqa: E402

SIZES = {
    "tiny": [(16, 2_000)],  # the smoke test's size
    "small": [(16, 10_000), (32, 10_000)],
    "medium": [(128, 100_000)],
    "target": [(128, 1_000_000)],  # the size the targets are stated for
    "full": [(32, 100_000), (32, 1_000_000), (128, 100_000),
             (128, 1_000_000)],
}
INPUTS = ("easy", "hard")
TOL = 1e-6
MAX_ITERS = 100
# Per-row wall-clock budget for the timed repeats (at least one run is made).
ROW_BUDGET_S = 4.0
# The textbook spectral filter is run to the end only if that is expected to
# take at most this long; otherwise one round is timed and extrapolated.
SPECTRAL_TEXTBOOK_BUDGET_S = 20.0


def log(msg: str) -> None:
  stamp = datetime.datetime.now().strftime("%H:%M:%S")
  print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------
# inputs


def leaf_shapes(d: int) -> dict:
  """Four leaves of different ranks and sizes: 60%, 30%, 9.9% and 0.1% of d."""
  if d % 1000:
    raise ValueError(f"d must be a multiple of 1000, got {d}.")
  # Keys sort in this order, which is jax.tree.leaves' order for a dict.
  return {"a_kernel": (d // 1000, 600), "b_conv": (3, d // 100, 10),
          "c_embed": (d // 10 - d // 1000,), "d_bias": (d // 1000,)}


def make_input(kind: str, num_workers: int, d: int, seed: int = 0):
  """The stacked updates as one ``[R, d]`` float32 matrix.

  Both inputs sit around a common offset ``mu`` of norm ~3 (so relative
  errors are meaningful).

  * ``easy``: i.i.d. Gaussian honest rows (spread of norm ~1 around ``mu``),
    and ``max(1, R // 16)`` far outliers (spread 100x). Weiszfeld converges
    in a handful of iterations.
  * ``hard``: the honest three quarters of the rows in three tight clusters
    (within-cluster spread 0.01, centres ~1.4 apart, cluster sizes 2:1:1) and
    the last quarter a tight Byzantine cluster at distance 0.3 from the
    largest honest cluster. The geometric median sits near, not at, a dense
    cluster, where Weiszfeld's iterations converge slowly (tens of them at
    tolerance 1e-6; the benchmark prints the counts).
  """
  rng = np.random.default_rng(seed)
  r = num_workers
  f32 = np.float32
  mu = rng.standard_normal(d, dtype=f32) * f32(3 / math.sqrt(d))
  x = np.empty((r, d), f32)
  if kind == "easy":
    x[:] = rng.standard_normal((r, d), dtype=f32)
    x *= f32(1 / math.sqrt(d))
    x[:max(1, r // 16)] *= f32(100)
  elif kind == "hard":
    nb = r // 4
    nh = r - nb
    counts = np.array([nh - 2 * (nh // 4), nh // 4, nh // 4])
    centres = rng.standard_normal((3, d), dtype=f32) * f32(1 / math.sqrt(d))
    labels = np.repeat(np.arange(3), counts)
    x[:] = rng.standard_normal((r, d), dtype=f32)
    x *= f32(0.01 / math.sqrt(d))
    x[:nh] += centres[labels]
    byz = centres[0] + (rng.standard_normal(d, dtype=f32)
                        * f32(0.3 / math.sqrt(d)))
    x[nh:] += byz
  else:
    raise ValueError(f"unknown input kind {kind!r}")
  x += mu
  return x


def to_tree(x: np.ndarray) -> dict:
  """Splits the ``[R, d]`` matrix into the leaves of :func:`leaf_shapes`."""
  r, d = x.shape
  tree, off = {}, 0
  for name, shape in leaf_shapes(d).items():
    n = math.prod(shape)
    tree[name] = jnp.asarray(x[:, off:off + n].reshape((r,) + shape))
    off += n
  return tree


def flatten(tree) -> np.ndarray:
  return np.concatenate([np.asarray(v, np.float32).ravel()
                         for v in jax.tree.leaves(tree)])


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
  """``max_j |got_j - ref_j| / max_j |ref_j|``."""
  got = np.asarray(got, np.float64)
  ref = np.asarray(ref, np.float64)
  return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


# ----------------------------------------------------------------------------
# timing and bandwidth


def _median_time(call: Callable[[], Any], repeats: int, budget: float):
  times = []
  start = time.perf_counter()
  out = None
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    out = call()
    times.append(time.perf_counter() - t0)
    if time.perf_counter() - start > budget:
      break
  return statistics.median(times), len(times), out


_COMPILED = {}
_REF_CACHE = {}
_SVD_EVAL_S = {}


def time_jax(fn, tree, repeats: int, budget: float = ROW_BUDGET_S,
             cache_key=None):
  """Compiles ``fn`` on ``tree``, runs it once untimed, then times it.

  With ``cache_key``, the executable is reused for later inputs of the same
  shapes (the easy and hard inputs of one size); ``compile_s`` is then 0.
  """
  t0 = time.perf_counter()
  if cache_key is not None and cache_key in _COMPILED:
    compiled = _COMPILED[cache_key]
  else:
    compiled = jax.jit(fn).lower(tree).compile()
    if cache_key is not None:
      _COMPILED[cache_key] = compiled
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(compiled(tree))
  first = time.perf_counter() - t0
  # A slow function is timed fewer times (the budget counts the warm run).
  reps = repeats if first < budget / 2 else 1
  med, n, out = _median_time(lambda: jax.block_until_ready(compiled(tree)),
                             reps, max(budget - first, 0.0))
  return med, n, out, compile_s


def time_numpy(fn, repeats: int, budget: float = ROW_BUDGET_S):
  """Times a NumPy call: up to ``repeats`` runs while within the budget.

  A call that takes more than half of the budget runs once.
  """
  times = []
  start = time.perf_counter()
  out = None
  while len(times) < max(1, repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
    if times[0] > budget / 2 or time.perf_counter() - start > budget:
      break
  return statistics.median(times), len(times), out


def measure_bandwidth(num_bytes: int = 256 * 2**20, repeats: int = 7) -> dict:
  """STREAM-like copy bandwidth, best of several, in bytes moved per second.

  A copy of ``n`` bytes moves ``2 n`` (read + write). NumPy copies into a
  preallocated array; JAX scales an array in place (the input buffer is
  donated, so XLA writes into it instead of faulting in fresh pages). The
  JAX figure for a fresh output buffer (no donation) is reported too: it is
  what an XLA computation pays for every large temporary on this machine.
  """
  n = num_bytes // 4
  a = np.ones(n, np.float32)
  b = np.empty_like(a)
  np.copyto(b, a)
  np_best = min(_timeit(lambda: np.copyto(b, a)) for _ in range(repeats))
  del a, b
  scale = jax.jit(lambda v: v * np.float32(1.0000001), donate_argnums=0)
  box = [jnp.ones(n, jnp.float32)]
  box[0] = scale(box[0]).block_until_ready()

  def donated():
    box[0] = scale(box[0])
    box[0].block_until_ready()

  jax_best = min(_timeit(donated) for _ in range(repeats))
  fresh = jax.jit(lambda v: v * np.float32(1.0000001))
  x = box[0]
  fresh(x).block_until_ready()
  fresh_best = min(_timeit(lambda: fresh(x).block_until_ready())
                   for _ in range(repeats))
  del box, x
  moved = 2 * n * 4
  return {"numpy_copy_GBps": moved / np_best / 1e9,
          "jax_copy_donated_GBps": moved / jax_best / 1e9,
          "jax_copy_fresh_output_GBps": moved / fresh_best / 1e9,
          "bandwidth_GBps": max(moved / np_best, moved / jax_best) / 1e9,
          "array_MB": num_bytes / 2**20}


def _timeit(call) -> float:
  t0 = time.perf_counter()
  call()
  return time.perf_counter() - t0


machine_info = _machine.machine_info


# ----------------------------------------------------------------------------
# the cases


@dataclasses.dataclass
class Case:
  """One aggregator configuration to benchmark."""
  name: str                       # row label, e.g. "geometric_median[gram]"
  group: str                      # --only selects by group (aggregator name)
  module: str
  attr: str
  kwargs: Callable[[int, int], dict]          # (R, d) -> hparams
  ref: Callable[..., Any] | None = None       # (x, R, d) -> (vec, info)
  ref_name: str = ""
  iters: Callable[[Any], str] = lambda info: ""
  ref_iters: Callable[[dict], str] = lambda info: ""
  target: str = ""
  numpy_budget: float = ROW_BUDGET_S
  # Rows with the same ref_key share one timed reference run per input.
  ref_key: str = ""


def _gm_iters(info) -> str:
  return f"{int(info.num_iters)} (gram {int(info.gram_iters)})"


def _np_iters(info) -> str:
  return str(info.get("num_iters", ""))


def _gm_kwargs(method):
  # The NumPy reference stops on the step rule; vs_peers.py compares the
  # default objective rule with the public implementations.
  return lambda r, d: {"method": method, "max_iters": MAX_ITERS, "tol": TOL,
                       "criterion": "step"}


def _f_bulyan(r):
  return (r - 3) // 4


def _f_krum(r):
  return r // 4


def _num_groups(r):
  return min(16, r)


def cases() -> list:
  gm = "byzjax.aggregators.geometric_median"
  cw = "byzjax.aggregators.coordinatewise"
  out = [
      Case("mean", "mean", cw, "mean", lambda r, d: {},
           lambda x, r, d: npref.mean(x), "x.mean(0)"),
      Case("coordinate_median", "coordinate_median", cw, "coordinate_median",
           lambda r, d: {}, lambda x, r, d: npref.coordinate_median(x),
           "np.median", target="<=1.5x np.median"),
      Case("trimmed_mean(0.25)", "trimmed_mean", cw, "trimmed_mean",
           lambda r, d: {"trim_fraction": 0.25},
           lambda x, r, d: npref.trimmed_mean(x, trim_fraction=0.25),
           "np.partition", target="<=1.5x np.partition"),
      Case("sign_majority_vote", "sign_majority_vote",
           "byzjax.aggregators.sign_vote", "sign_majority_vote",
           lambda r, d: {}, lambda x, r, d: npref.sign_majority_vote(x),
           "np.sign(sum sign)"),
      Case("norm_threshold(0.25)", "norm_threshold",
           "byzjax.aggregators.norm_threshold", "norm_threshold",
           lambda r, d: {"trim_fraction": 0.25},
           lambda x, r, d: npref.norm_threshold(x, trim_fraction=0.25),
           "norms+argsort"),
      Case("worker_gram (X X^T)", "krum", "byzjax.tree", "worker_gram",
           lambda r, d: {}, lambda x, r, d: (x @ x.T, {}), "x @ x.T"),
      Case("krum(f=R/4)", "krum", "byzjax.aggregators.krum", "krum",
           lambda r, d: {"num_byzantine": _f_krum(r)},
           lambda x, r, d: npref.krum(x, num_byzantine=_f_krum(r)),
           "NumPy Gram", target="<=t(gram)+O(R^2)"),
      Case("bulyan(f=(R-3)/4)", "bulyan", "byzjax.aggregators.bulyan",
           "bulyan", lambda r, d: {"num_byzantine": _f_bulyan(r)},
           lambda x, r, d: npref.bulyan(x, num_byzantine=_f_bulyan(r)),
           "NumPy Gram+median"),
  ]
  for method in ("direct", "gram", "auto"):
    target = {"direct": "<=2 passes/iter; rel<=1e-5",
              "gram": "cost flat in iters; rel<=1e-5",  # see gm_growth_rows
              "auto": ">=5x NumPy (hard); flat; rel<=1e-5"}[method]
    out.append(Case(
        f"geometric_median[{method}]", "geometric_median", gm,
        "geometric_median", _gm_kwargs(method),
        lambda x, r, d: npref.geometric_median(x, max_iters=MAX_ITERS,
                                               tol=TOL),
        "NumPy Weiszfeld f32", _gm_iters, _np_iters, target,
        ref_key="weiszfeld"))
  out += [
      Case("geometric_median_of_means(k=16)", "geometric_median_of_means",
           "byzjax.aggregators.geometric_median_of_means",
           "geometric_median_of_means",
           lambda r, d: {"num_groups": _num_groups(r), "max_iters": MAX_ITERS,
                         "tol": TOL},
           lambda x, r, d: npref.geometric_median_of_means(
               x, num_groups=_num_groups(r), max_iters=MAX_ITERS, tol=TOL),
           "group means+Weiszfeld", _gmom_iters, _np_iters),
      Case("block_geometric_median(0.1)", "block_geometric_median",
           "byzjax.aggregators.block_coordinate", "block_geometric_median",
           lambda r, d: {"block_fraction": 0.1, "max_iters": MAX_ITERS,
                         "tol": TOL, "criterion": "step"},
           lambda x, r, d: npref.block_geometric_median(
               x, num_coords=math.ceil(0.1 * d - 1e-9), max_iters=MAX_ITERS,
               tol=TOL),
           "col norms+argpartition+Weiszfeld", _bgmd_iters, _np_iters,
           target=">=5x faster than GM[auto]"),
  ]
  out += spectral_cases()
  return out


def _gmom_iters(info) -> str:
  return _gm_iters(info.median_info)


def _bgmd_iters(info) -> str:
  return _gm_iters(info.gm)


def spectral_cases() -> list:
  return [Case(
      "spectral_filter", "spectral_filter",
      "byzjax.aggregators.spectral_filter", "spectral_filter",
      spectral_kwargs, None, "full SVD per round",
      _spectral_iters, lambda info: str(info.get("rounds", "")),
      target=">=50x textbook; same kept set")]


def spectral_kwargs(r, d):
  del r, d
  return {}


def _spectral_iters(info) -> str:
  for name in ("num_rounds", "rounds", "num_iters"):
    if hasattr(info, name):
      return str(int(getattr(info, name)))
  return ""


def load(case: Case):
  """The aggregator function, or None (with a printed note) if missing."""
  try:
    module = importlib.import_module(case.module)
  except ModuleNotFoundError as e:
    if case.module.startswith(e.name or "\0"):
      log(f"{case.name}: not available ({case.module} does not exist)")
      return None
    raise
  fn = getattr(module, case.attr, None)
  if fn is None:
    log(f"{case.name}: not available ({case.module}.{case.attr} missing)")
  return fn


# ----------------------------------------------------------------------------
# running


@dataclasses.dataclass
class Row:
  R: int
  d: int
  input: str
  aggregator: str
  jax_ms: float | None = None
  jax_runs: int = 0
  compile_s: float | None = None
  passes: float | None = None
  iters: str = ""
  numpy_ref: str = ""
  numpy_ms: float | None = None
  numpy_runs: int = 0
  numpy_passes: float | None = None
  numpy_iters: str = ""
  speedup: float | None = None
  rel_err: float | None = None
  target: str = ""
  met: str = ""
  notes: str = ""


def _passes(seconds, r, d, bandwidth):
  return seconds * bandwidth / (r * d * 4)


def run_case(case, fn, tree, x, r, d, kind, bw, repeats):
  kwargs = case.kwargs(r, d)
  if case.module == "byzjax.tree":
    jfn = functools.partial(fn, **kwargs)
  else:
    jfn = functools.partial(fn, return_info=True, **kwargs)
  med, n, out, compile_s = time_jax(jfn, tree, repeats,
                                    cache_key=(case.name, r, d))
  if case.module == "byzjax.tree":
    result, info = out, None
  else:
    result, info = out
  row = Row(r, d, kind, case.name, jax_ms=med * 1e3, jax_runs=n,
            compile_s=compile_s, passes=_passes(med, r, d, bw),
            iters=case.iters(info) if info is not None else "",
            numpy_ref=case.ref_name, target=case.target)
  row._info = info  # pylint: disable=protected-access
  row._result = result  # pylint: disable=protected-access
  if case.ref is not None:
    key = (case.ref_key, r, d, kind)
    if case.ref_key and key in _REF_CACHE:
      t_np, n_np, (ref_vec, ref_info) = _REF_CACHE[key]
    else:
      t_np, n_np, (ref_vec, ref_info) = time_numpy(
          lambda: case.ref(x, r, d), repeats, case.numpy_budget)
      if case.ref_key:
        _REF_CACHE.clear()
        _REF_CACHE[key] = (t_np, n_np, (ref_vec, ref_info))
    row.numpy_ms = t_np * 1e3
    row.numpy_runs = n_np
    row.numpy_passes = _passes(t_np, r, d, bw)
    row.numpy_iters = case.ref_iters(ref_info)
    row.speedup = row.numpy_ms / row.jax_ms
    if case.module == "byzjax.tree":
      got = np.asarray(result).ravel()
    else:
      got = flatten(result)
    row.rel_err = rel_err(got, np.asarray(ref_vec).ravel())
    row._ref_info = ref_info  # pylint: disable=protected-access
    notes = compare_diagnostics(case, info, ref_info)
    if notes:
      row.notes = notes
  return row


def compare_diagnostics(case, info, ref_info) -> str:
  """Extra agreement checks beyond the result vector."""
  notes = []
  if case.group == "block_geometric_median" and info is not None:
    got = np.sort(np.asarray(info.indices))
    diff = np.setxor1d(got, ref_info["indices"]).size // 2
    notes.append("same block" if diff == 0 else
                 f"block differs in {diff} coords")
  if case.group == "krum" and info is not None and "selected" in ref_info:
    sel = _selected(info)
    if sel is not None:
      same = np.array_equal(np.sort(sel), ref_info["selected"])
      notes.append("same selection" if same else
                   f"selection differs: {sel} vs {ref_info['selected']}")
  if case.group == "bulyan" and info is not None and "selected" in ref_info:
    sel = _selected(info)
    if sel is not None:
      same = np.array_equal(np.sort(sel), ref_info["selected"])
      notes.append("same selection" if same else "selection differs")
  if case.group == "norm_threshold" and info is not None:
    kept = _kept(info)
    if kept is not None:
      same = np.array_equal(kept, ref_info["kept"])
      notes.append("same kept set" if same else "kept set differs")
  return "; ".join(notes)


def _selected(info):
  for name in ("selected", "indices", "chosen"):
    if hasattr(info, name):
      v = np.asarray(getattr(info, name))
      if v.dtype == bool:
        return np.flatnonzero(v)
      return v.ravel()
  return None


def _kept(info):
  for name in ("kept", "keep", "mask"):
    if hasattr(info, name):
      return np.asarray(getattr(info, name)).astype(bool)
  return None


def gm_extra_rows(tree, r, d, kind, bw, repeats) -> tuple[list, dict]:
  """The marginal cost of one direct Weiszfeld iteration (hard input).

  ``method="direct"`` with ``tol=0`` runs exactly ``max_iters`` iterations;
  the difference of the times at ``max_iters`` 5 and 25, over 20, is the cost
  of one iteration (the fixed cost of standardizing cancels).
  """
  # pylint: disable-next=import-outside-toplevel
  from byzjax.aggregators.geometric_median import geometric_median
  t = {}
  lo, hi = 5, 25
  for it in (lo, hi):
    fn = functools.partial(geometric_median, method="direct", tol=0.0,
                           max_iters=it)
    t[it] = time_jax(fn, tree, repeats)[0]
  per_iter = (t[hi] - t[lo]) / (hi - lo)
  p = _passes(per_iter, r, d, bw)
  row = Row(r, d, kind, "GM[direct] marginal cost per iteration",
            jax_ms=per_iter * 1e3, passes=p,
            iters=f"{hi}-{lo} (tol=0)", target="<=2 passes/iter",
            met=("yes" if 0 < p <= 2.0 else
                 "no" if p > 2.0 else "n/a (timing noise)"),
            notes=(f"t({hi} it)={t[hi]*1e3:.1f} ms, "
                   f"t({lo} it)={t[lo]*1e3:.1f} ms"))
  return [row], {"per_iter": p}


def gm_growth_rows(by_kind, r, d) -> tuple[list, dict]:
  """Cost growth with the iteration count: t(hard) / t(easy) per GM method.

  The hard input needs ~15x the easy input's iterations at the same
  tolerance; a method whose iterations are O(R^2) after one Gram matrix should
  cost about the same on both (met if the ratio is at most 1.5).
  """
  rows, flat = [], {}
  for method in ("direct", "gram", "auto"):
    name = f"geometric_median[{method}]"
    easy, hard = by_kind["easy"].get(name), by_kind["hard"].get(name)
    if not (easy and hard and easy.jax_ms and hard.jax_ms):
      continue
    ratio = hard.jax_ms / easy.jax_ms
    flat[method] = ratio
    target = ("(reference: grows with iters)" if method == "direct" else
              "cost flat in iters (ratio<=1.5)")
    met = "" if method == "direct" else ("yes" if ratio <= 1.5 else "no")
    rows.append(Row(r, d, "hard/easy", f"GM[{method}] t(hard)/t(easy)",
                    iters=f"{hard.iters} vs {easy.iters}", target=target,
                    met=met, notes=f"ratio {ratio:.2f}"))
  return rows, flat


def evaluate_targets(rows: dict, extra: dict) -> None:
  """Fills ``met`` for the rows that have a target, from this config's rows."""
  def verdict(ok, why):
    return ("yes" if ok else "no") + (f" ({why})" if why else "")

  cm = rows.get("coordinate_median")
  if cm and cm.speedup is not None:
    ratio = 1 / cm.speedup
    cm.met = verdict(ratio <= 1.5, f"{ratio:.2f}x np")
  tm = rows.get("trimmed_mean(0.25)")
  if tm and tm.speedup is not None:
    ratio = 1 / tm.speedup
    tm.met = verdict(ratio <= 1.5, f"{ratio:.2f}x np")
  kr, gr = rows.get("krum(f=R/4)"), rows.get("worker_gram (X X^T)")
  if kr and gr and kr.jax_ms is not None and gr.jax_ms is not None:
    ratio = kr.jax_ms / gr.jax_ms
    kr.met = verdict(kr.jax_ms <= 1.1 * gr.jax_ms + 1.0,
                     f"{ratio:.2f}x t(gram)")
  flat = extra.get("flat", {})
  per_iter = extra.get("per_iter")
  for method in ("direct", "gram", "auto"):
    row = rows.get(f"geometric_median[{method}]")
    if not row:
      continue
    checks = []
    if row.rel_err is not None:
      checks.append((row.rel_err <= 1e-5, f"rel {row.rel_err:.1e}"))
    if method == "direct" and per_iter is not None and per_iter > 0:
      checks.append((per_iter <= 2.0, f"{per_iter:.2f} passes/iter"))
    if method in ("gram", "auto") and method in flat:
      checks.append((flat[method] <= 1.5,
                     f"t(hard)/t(easy)={flat[method]:.2f}"))
    if method == "auto" and row.input == "hard" and row.speedup is not None:
      checks.append((row.speedup >= 5, f"{row.speedup:.1f}x np"))
    if checks:
      ok = all(c for c, _ in checks)
      row.met = verdict(ok, ", ".join(w for _, w in checks))
  bg, full = rows.get("block_geometric_median(0.1)"), rows.get(
      "geometric_median[auto]")
  if bg and full and bg.jax_ms is not None and full.jax_ms is not None:
    ratio = full.jax_ms / bg.jax_ms
    bg.met = verdict(ratio >= 5, f"{ratio:.1f}x faster than GM")
  sp = rows.get("spectral_filter")
  if sp and sp.speedup is not None:
    same = getattr(sp, "_same_kept", None)
    why = f"{sp.speedup:.0f}x textbook"
    if same is not None:
      why += ", same kept set" if same else ", kept set differs"
    sp.met = verdict(sp.speedup >= 50 and same is not False, why)


# ----------------------------------------------------------------------------
# output


COLUMNS = [
    ("R", "R", "{}"), ("d", "d", "{:.0e}"), ("input", "input", "{}"),
    ("aggregator", "aggregator", "{}"), ("jax_ms", "JAX ms", "{:.2f}"),
    ("passes", "passes", "{:.1f}"), ("iters", "iters", "{}"),
    ("numpy_ref", "NumPy reference", "{}"), ("numpy_ms", "NumPy ms", "{:.1f}"),
    ("numpy_iters", "NumPy iters", "{}"),
    ("speedup", "speedup", "{:.1f}x"), ("rel_err", "max rel err", "{:.1e}"),
    ("target", "target", "{}"), ("met", "met", "{}"), ("notes", "notes", "{}"),
]


def _fmt(value, spec):
  if value is None or value == "":
    return ""
  return spec.format(value)


def markdown(rows: list) -> str:
  head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
  sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
  lines = [head, sep]
  for row in rows:
    lines.append("| " + " | ".join(
        _fmt(getattr(row, k), s).replace("|", "/") for k, _, s in COLUMNS)
        + " |")
  return "\n".join(lines)


def row_dict(row: Row) -> dict:
  return {f.name: getattr(row, f.name) for f in dataclasses.fields(Row)}


def write_outputs(out_dir, rows, info, bandwidth, args):
  os.makedirs(out_dir, exist_ok=True)
  table = markdown(rows)
  bw = bandwidth
  header = (
      f"Machine: {info['cpu_model']}, {info['cpus_usable']} usable CPUs, "
      f"JAX {info['jax_version']} ({info['backend']}), NumPy "
      f"{info['numpy_version']}; load average at start "
      f"{info['load_average_start'][0]:.1f}.\n"
      f"Bandwidth (STREAM-like copy, bytes read+written per second, best of "
      f"7 on {bw['array_MB']:.0f} MB): NumPy {bw['numpy_copy_GBps']:.1f} "
      f"GB/s, JAX (donated, in place) {bw['jax_copy_donated_GBps']:.1f} GB/s,"
      f" JAX into a fresh output buffer {bw['jax_copy_fresh_output_GBps']:.1f}"
      f" GB/s. One pass = R*d*4 bytes at {bw['bandwidth_GBps']:.1f} GB/s.\n"
      f"Times: median over up to {args.repeats} runs after compilation "
      f"(fewer when a run is slow); tol={TOL}, max_iters={MAX_ITERS}.\n")
  with open(os.path.join(out_dir, "aggregators.md"), "w") as f:
    f.write(header + "\n" + table + "\n")
  with open(os.path.join(out_dir, "aggregators.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=[x.name for x in
                                           dataclasses.fields(Row)])
    writer.writeheader()
    for row in rows:
      writer.writerow(row_dict(row))
  with open(os.path.join(out_dir, "aggregators.json"), "w") as f:
    json.dump({"machine": info, "bandwidth": bandwidth,
               "settings": {"sizes": args.sizes, "repeats": args.repeats,
                            "only": args.only, "tol": TOL,
                            "max_iters": MAX_ITERS},
               "rows": [row_dict(r) for r in rows]}, f, indent=1,
              default=_json_default)
  return header + "\n" + table


def _json_default(v):
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  if isinstance(v, tuple):
    return list(v)
  return str(v)


def run(args) -> list:
  info = machine_info()
  log(f"machine: {info['cpus_usable']} CPUs, jax {info['jax_version']} "
      f"({info['backend']}), load {info['load_average_start'][0]:.1f}")
  bandwidth = measure_bandwidth(args.bandwidth_mb * 2**20)
  bw = bandwidth["bandwidth_GBps"] * 1e9
  log("bandwidth: " + ", ".join(f"{k}={v:.1f}" for k, v in bandwidth.items()))
  only = set(args.only.split(",")) if args.only else None
  selected = [c for c in cases() if only is None or c.group in only
              or c.name in only]
  fns = {c.name: load(c) for c in selected}
  with_gm_extras = only is None or "geometric_median" in only
  rows = []
  for r, d in SIZES[args.sizes]:
    _COMPILED.clear()  # executables are reused across the inputs of one size
    by_kind, extra = {}, {}
    for kind in INPUTS:
      x = make_input(kind, r, d, seed=args.seed)
      tree = to_tree(x)
      by_name = by_kind[kind] = {}
      for case in selected:
        fn = fns[case.name]
        if fn is None:
          rows.append(Row(r, d, kind, case.name, target=case.target,
                          notes="not available"))
          continue
        t0 = time.perf_counter()
        if case.group == "spectral_filter":
          row = run_spectral(case, fn, tree, x, r, d, kind, bw, args.repeats,
                             args.textbook_max_cols)
        else:
          row = run_case(case, fn, tree, x, r, d, kind, bw, args.repeats)
        by_name[case.name] = row
        rows.append(row)
        log(f"R={r} d={d:.0e} {kind:4s} {case.name:34s} jax {row.jax_ms:9.2f}"
            f" ms ({row.passes:6.1f} passes) iters {row.iters or '-':>12s} | "
            f"numpy {_fmt(row.numpy_ms, '{:.1f}') or '-':>9s} ms "
            f"iters {row.numpy_iters or '-':>4s} | rel err "
            f"{_fmt(row.rel_err, '{:.1e}') or '-'} {row.notes} "
            f"[{time.perf_counter() - t0:.1f} s]")
      if with_gm_extras and kind == "hard":
        t0 = time.perf_counter()
        extra_rows, marginal = gm_extra_rows(tree, r, d, kind, bw,
                                             args.repeats)
        extra.update(marginal)
        for er in extra_rows:
          log(f"R={r} d={d:.0e} {kind:4s} {er.aggregator}: {er.jax_ms:.2f} ms"
              f" ({er.passes:.2f} passes) {er.notes} "
              f"[{time.perf_counter() - t0:.1f} s]")
        rows.extend(extra_rows)
      del x, tree
    if with_gm_extras:
      growth_rows, extra["flat"] = gm_growth_rows(by_kind, r, d)
      for gr in growth_rows:
        log(f"R={r} d={d:.0e} {gr.aggregator}: {gr.notes} ({gr.iters})")
      rows.extend(growth_rows)
    # The per-iteration rows (measured on the hard input) apply to both.
    for by_name in by_kind.values():
      evaluate_targets(by_name, extra)
  info["load_average_end"] = os.getloadavg()
  text = write_outputs(args.out, rows, info, bandwidth, args)
  print(text)
  return rows


def run_spectral(case, fn, tree, x, r, d, kind, bw, repeats,
                 max_cols=0) -> Row:
  """The spectral filter against the textbook full-SVD-per-round version.

  One evaluation of the textbook filter (the centred weighted matrix and its
  full SVD) is timed first, at the full size (or, with ``max_cols``, on the
  first ``max_cols`` columns, scaled by ``d / max_cols``: the SVD of a wide
  ``R x d`` matrix costs ``O(R^2 d)``). If all its evaluations fit in
  ``SPECTRAL_TEXTBOOK_BUDGET_S``, the textbook filter is run to the end (once)
  and timed; otherwise its time is extrapolated as (one evaluation) x (rounds
  + 1), with the number of rounds taken from the same filter computed with
  the exact float64 eigenvector of the ``R x R`` Gram matrix, which also
  provides the kept set to compare with.
  """
  kwargs = case.kwargs(r, d)
  jfn = functools.partial(fn, return_info=True, **kwargs)
  med, n, (result, info), compile_s = time_jax(jfn, tree, repeats,
                                               cache_key=(case.name, r, d))
  row = Row(r, d, kind, case.name, jax_ms=med * 1e3, jax_runs=n,
            compile_s=compile_s, passes=_passes(med, r, d, bw),
            iters=(f"{int(info.num_rounds)} rounds, "
                   f"{int(np.sum(np.asarray(info.active)))} kept"),
            numpy_ref="full SVD per round", target=case.target)
  ref_kwargs = {k: v for k, v in kwargs.items() if k in ("sigma",
                                                         "max_rounds")}
  cols = d if not max_cols or max_cols >= d else max_cols
  # One evaluation costs the same on every input of this size: timed once.
  if (r, d, cols) not in _SVD_EVAL_S:
    t0 = time.perf_counter()
    npref.spectral_filter_textbook(np.ascontiguousarray(x[:, :cols]),
                                   rounds_only=0, **ref_kwargs)
    _SVD_EVAL_S[(r, d, cols)] = (time.perf_counter() - t0) * d / cols
  t_eval = _SVD_EVAL_S[(r, d, cols)]
  gram64, gram64_info = npref.spectral_filter_textbook(x, solver="gram64",
                                                       **ref_kwargs)
  expected = (gram64_info["rounds"] + 1) * t_eval
  if expected <= SPECTRAL_TEXTBOOK_BUDGET_S:
    t0 = time.perf_counter()
    ref, ref_info = npref.spectral_filter_textbook(x, **ref_kwargs)
    t_np = time.perf_counter() - t0
    row.notes = "textbook run to the end (1 run)"
  else:
    ref, ref_info = gram64, gram64_info
    t_np = expected
    scaled = "" if cols == d else f" (timed on {cols} columns, x{d // cols})"
    row.notes = (f"textbook time extrapolated: one SVD evaluation "
                 f"{t_eval:.1f} s{scaled} x {gram64_info['rounds'] + 1} "
                 "evaluations; kept set from the same filter with a float64 "
                 "eigh")
  same = bool(np.array_equal(np.asarray(info.active), ref_info["kept"]))
  row._same_kept = same  # pylint: disable=protected-access
  row.notes += "; same kept set" if same else (
      f"; kept set differs ({int(np.sum(np.asarray(info.active)))} vs "
      f"{int(ref_info['kept'].sum())} kept)")
  row.numpy_ms = t_np * 1e3
  row.numpy_runs = 1
  row.numpy_passes = _passes(t_np, r, d, bw)
  row.numpy_iters = (f"{ref_info['rounds']} rounds, "
                     f"{int(ref_info['kept'].sum())} kept")
  row.speedup = row.numpy_ms / row.jax_ms
  row.rel_err = rel_err(flatten(result), ref)
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--sizes", default="full", choices=sorted(SIZES))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--only", default="",
                      help="comma-separated aggregator names (groups)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--textbook-max-cols", type=int, default=0,
                      help="time the textbook spectral filter's SVD round on "
                      "at most this many columns and scale linearly in d "
                      "(0: at the full size)")
  parser.add_argument("--bandwidth-mb", type=int, default=256,
                      help="array size of the bandwidth measurement")
  args = parser.parse_args(argv)
  return run(args)


if __name__ == "__main__":
  main()
