"""byzjax's geometric median and Krum against the public peers, side by side.

One process, after warm-up, interleaved repeats (round r times every
competitor once before round r + 1 starts), on the inputs of
``aggregators.py`` (stacked float32 updates split into four leaves):

* geometric median, every implementation with the same stopping rule
  (relative objective change ``|f_t - f_{t+1}| / f_{t+1} <= 1e-6``), the same
  smoothing (distances clamped below at ``1e-6``) and at most 100 iterations:
  byzjax (``criterion="objective"``, the default), ``geom_median``'s PyTorch
  backend (``compute_geometric_median(eps=1e-6, ftol=1e-6)``), a plain NumPy
  Weiszfeld and a plain PyTorch Weiszfeld (both start at the mean, as
  ``geom_median`` does). The objective ``mean_i ||x_i - z||`` of every answer
  is evaluated by the same float64 NumPy code and compared.
* Krum (``f = R/4``): byzjax, a NumPy and a PyTorch Krum (Gram matrix of the
  rows centred at their mean, scores from sorted distances), and the Gram
  product alone (``jnp`` ``X X^T`` over the leaves, NumPy ``x @ x.T``).

``passes`` = time x measured bandwidth / bytes of the stacked updates.

    python experiments/benchmarks/vs_peers.py --out DIR [--sizes small|target]
        [--repeats N] [--inputs easy,hard] [--only gm,krum]
        [--gm-methods auto,direct,direct@mean]
"""

import argparse
import csv
import functools
import json
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(os.path.dirname(_HERE)))
# pylint: disable=wrong-import-position
import aggregators as agg_bench  # noqa: E402  (inputs, bandwidth, machine)
from byzjax import tree as btree  # noqa: E402
from byzjax.aggregators import geometric_median  # noqa: E402
from byzjax.aggregators import krum  # noqa: E402

try:
  import torch
except ImportError:  # the bench extra is optional
  torch = None
try:
  from geom_median.torch import compute_geometric_median
except ImportError:
  compute_geometric_median = None

SIZES = {"small": (16, 4_000), "target": (128, 1_000_000)}
TOL = 1e-6
NU = 1e-6
MAX_ITERS = 100


# ----------------------------------------------------------------------------
# peers (plain implementations of the textbook algorithms)


def numpy_weiszfeld(x, *, tol=TOL, eps=NU, max_iters=MAX_ITERS):
  """Smoothed Weiszfeld on an ``[R, d]`` float32 matrix, objective rule."""
  z = x.mean(axis=0)
  diff = np.empty_like(x)

  def dists(z):
    np.subtract(x, z, out=diff)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))

  d = dists(z)
  obj = float(d.sum(dtype=np.float64))
  it = 0
  for it in range(1, max_iters + 1):
    w = 1.0 / np.maximum(d, eps)
    z = (w / w.sum()).astype(np.float32) @ x
    d = dists(z)
    prev, obj = obj, float(d.sum(dtype=np.float64))
    if abs(prev - obj) <= tol * obj:
      break
  return z, it


def torch_weiszfeld(x, *, tol=TOL, eps=NU, max_iters=MAX_ITERS):
  """The same loop on a torch ``[R, d]`` tensor."""
  with torch.no_grad():
    z = x.mean(dim=0)
    d = torch.linalg.vector_norm(x - z, dim=1)
    obj = float(d.sum(dtype=torch.float64))
    it = 0
    for it in range(1, max_iters + 1):
      w = 1.0 / torch.clamp(d, min=eps)
      z = (w / w.sum()) @ x
      d = torch.linalg.vector_norm(x - z, dim=1)
      prev, obj = obj, float(d.sum(dtype=torch.float64))
      if abs(prev - obj) <= tol * obj:
        break
  return z, it


def geom_median_torch(points):
  """``geom_median``'s PyTorch backend on a list of per-worker leaf lists."""
  out = compute_geometric_median(points, eps=NU, maxiter=MAX_ITERS, ftol=TOL,
                                 skip_typechecks=True)
  z = torch.cat([t.reshape(-1) for t in out.median])
  return z, len(out.logs) - 1


def krum_scores_from_gram(gram, f):
  """Krum scores (sum of the R - f - 2 smallest distances to the others)."""
  r = gram.shape[0]
  diag = np.diagonal(gram)
  sq = np.maximum(diag[:, None] + diag[None, :] - 2 * gram, 0)
  np.fill_diagonal(sq, np.inf)
  return np.sort(sq, axis=1)[:, :r - f - 2].sum(axis=1)


def numpy_krum(x, f):
  c = x.mean(axis=0)
  u = x - c
  return x[int(np.argmin(krum_scores_from_gram(u @ u.T, f)))]


def torch_krum(x, f):
  with torch.no_grad():
    u = x - x.mean(dim=0)
    scores = krum_scores_from_gram((u @ u.T).numpy(), f)
    return x[int(np.argmin(scores))]


# ----------------------------------------------------------------------------
# measuring


def objective(x, z):
  """``mean_i ||x_i - z||`` in float64, in row blocks (same for everyone)."""
  z = np.asarray(z, np.float64).ravel()
  total = 0.0
  for i in range(0, x.shape[0], 8):
    diff = x[i:i + 8].astype(np.float64) - z
    total += float(np.sqrt(np.einsum("ij,ij->i", diff, diff)).sum())
  return total / x.shape[0]


def _flat(tree):
  return np.concatenate([np.asarray(v, np.float32).ravel()
                         for v in jax.tree.leaves(tree)])


def competitors(x, tree, r, gm_methods=("auto", "direct")):
  """name -> (group, zero-argument call returning (flat result, iterations))."""
  f = r // 4
  krum_jit = jax.jit(functools.partial(krum, num_byzantine=f))
  gram_jit = jax.jit(btree.worker_gram)
  chunked_jit = jax.jit(lambda t: btree.chunked_gram(t)[0])

  def run_jax(fn):
    def call():
      out, info = jax.block_until_ready(fn(tree))
      return out, int(info.num_iters)
    return call

  out = {}
  for method in gm_methods:
    # "direct@mean": started at the mean like the peers (byzjax's default
    # start, the mean of the nearer half, usually needs fewer iterations).
    name = method.split("@")[0]
    fn = functools.partial(
        geometric_median, tol=TOL, nu=NU, max_iters=MAX_ITERS,
        criterion="objective", method=name, return_info=True)
    if method.endswith("@mean"):
      fn = functools.partial(
          lambda t, g: g(t, init=jax.tree.map(lambda l: jnp.tensordot(
              jnp.full(l.shape[0], 1.0 / l.shape[0], l.dtype), l, 1), t)),
          g=fn)
    out[f"byzjax geometric_median ({method})"] = ("gm", run_jax(jax.jit(fn)))
  out |= {
      "numpy Weiszfeld": ("gm", lambda: numpy_weiszfeld(x)),
      "byzjax krum": ("krum", lambda: (jax.block_until_ready(krum_jit(tree)),
                                       None)),
      "byzjax worker_gram (X X^T alone)": (
          "krum", lambda: (jax.block_until_ready(gram_jit(tree)), None)),
      "byzjax chunked_gram (Krum's Gram alone)": (
          "krum", lambda: (jax.block_until_ready(chunked_jit(tree)), None)),
      "numpy krum": ("krum", lambda: (numpy_krum(x, f), None)),
      "numpy x @ x.T (alone)": ("krum", lambda: (x @ x.T, None)),
  }
  if torch is not None:
    xt = torch.from_numpy(x)
    out["torch Weiszfeld"] = ("gm", lambda: torch_weiszfeld(xt))
    out["torch krum"] = ("krum", lambda: (torch_krum(xt, f), None))
    if compute_geometric_median is not None:
      leaves = [torch.from_numpy(np.array(v)) for v in jax.tree.leaves(tree)]
      points = [[leaf[i] for leaf in leaves] for i in range(r)]
      out["geom_median (torch backend)"] = (
          "gm", lambda: geom_median_torch(points))
  return out


def run(args) -> list:
  r, d = SIZES[args.sizes]
  bw = agg_bench.measure_bandwidth(
      num_bytes=(256 if args.sizes == "target" else 16) * 2**20)
  one_pass = r * d * 4 / (bw["bandwidth_GBps"] * 1e9)
  rows = []
  for kind in args.inputs.split(","):
    x = agg_bench.make_input(kind, r, d, seed=args.seed)
    tree = agg_bench.to_tree(x)
    comps = {k: v for k, v in competitors(
        x, tree, r, tuple(args.gm_methods.split(","))).items()
             if v[0] in args.only.split(",")}
    results, times = {}, {k: [] for k in comps}
    for name, (_, call) in comps.items():  # warm-up (and compilation)
      results[name] = call()
    for _ in range(args.repeats):
      for name, (_, call) in comps.items():
        t0 = time.perf_counter()
        results[name] = call()
        times[name].append(time.perf_counter() - t0)
    objs = {n: objective(x, _flat(results[n][0])
                         if not hasattr(results[n][0], "numpy")
                         else results[n][0].numpy())
            for n in comps if comps[n][0] == "gm"}
    best = min(objs.values()) if objs else None
    ref = {g: min(statistics.median(times[n]) for n in comps
                  if comps[n][0] == g and n.startswith("byzjax ")
                  and "alone" not in n) for g in ("gm", "krum")
           if any(comps[n][0] == g for n in comps)}
    for name, (group, _) in comps.items():
      t = statistics.median(times[name])
      row = {"R": r, "d": d, "input": kind, "group": group,
             "implementation": name, "ms": 1e3 * t,
             "runs": len(times[name]), "passes": t / one_pass,
             "iters": results[name][1], "objective": objs.get(name),
             "objective_rel_diff": (objs[name] / best - 1
                                    if name in objs else None),
             "vs_byzjax": t / ref[group],
             "load_avg": os.getloadavg()[0]}
      rows.append(row)
  return rows, bw


def _fmt(v, spec):
  return "" if v is None else format(v, spec)


def markdown(rows, info, bw) -> str:
  lines = [
      f"machine: {info['cpus_usable']} usable CPUs ({info['cpu_model']}), "
      f"JAX {info['jax_version']} ({info['backend']}), NumPy "
      f"{info['numpy_version']}, torch {info.get('torch_version')}, "
      f"geom_median {info.get('geom_median_version')}; load average "
      f"{info['load_average_start'][0]:.1f} at start, "
      f"{os.getloadavg()[0]:.1f} at end; bandwidth "
      f"{bw['bandwidth_GBps']:.1f} GB/s",
      "",
      "| input | implementation | ms | x byzjax time | passes | iters | "
      "objective | rel. diff to best |",
      "|---|---|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(
        f"| {row['input']} | {row['implementation']} | {row['ms']:.1f} | "
        f"{row['vs_byzjax']:.2f} | {row['passes']:.1f} | "
        f"{'' if row['iters'] is None else row['iters']} | "
        f"{_fmt(row['objective'], '.9g')} | "
        f"{_fmt(row['objective_rel_diff'], '.1e')} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--sizes", choices=sorted(SIZES), default="target")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--inputs", default="hard,easy")
  p.add_argument("--only", default="gm,krum")
  p.add_argument("--gm-methods", default="auto,direct,direct@mean",
                 help="byzjax geometric_median methods to time")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  info = agg_bench.machine_info()
  if torch is not None:
    info["torch_version"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
  try:
    from importlib import metadata
    info["geom_median_version"] = metadata.version("geom_median")
  except Exception:  # pylint: disable=broad-except
    info["geom_median_version"] = None
  rows, bw = run(args)
  info["load_average_end"] = os.getloadavg()
  text = markdown(rows, info, bw)
  print(text)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "vs_peers.md"), "w") as fh:
    fh.write(text)
  with open(os.path.join(args.out, "vs_peers.csv"), "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  with open(os.path.join(args.out, "vs_peers.json"), "w") as fh:
    json.dump({"machine": info, "bandwidth": bw, "rows": rows,
               "args": vars(args)}, fh, indent=1, default=float)
  return rows


if __name__ == "__main__":
  main()
