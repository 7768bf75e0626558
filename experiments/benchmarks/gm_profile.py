"""Where the time of byzjax's geometric median goes (R = 128, d = 1e6).

Times, each jitted and after warm-up (best of a few), the pieces of the
in-place Weiszfeld path and the whole, as milliseconds and passes over the
stacked updates (bandwidth measured in the same run):

    python experiments/benchmarks/gm_profile.py [--input hard|easy]
"""

import argparse
import functools
import importlib
import os
import sys
import time

import jax
import jax.numpy as jnp

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(os.path.dirname(_HERE)))
# pylint: disable=wrong-import-position
import aggregators as agg_bench  # noqa: E402
from byzjax import tree as btree  # noqa: E402
from byzjax.aggregators.geometric_median import geometric_median  # noqa: E402

# The package re-exports the function under the module's name.
gm_module = importlib.import_module("byzjax.aggregators.geometric_median")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--input", default="hard")
  p.add_argument("--workers", type=int, default=128)
  p.add_argument("--dim", type=int, default=1_000_000)
  args = p.parse_args(argv)
  r, d = args.workers, args.dim
  tree = agg_bench.to_tree(agg_bench.make_input(args.input, r, d))
  bw = agg_bench.measure_bandwidth()["bandwidth_GBps"]
  one = r * d * 4 / (bw * 1e9)
  print(f"bandwidth {bw:.1f} GB/s, one pass {1e3 * one:.1f} ms, "
        f"load {os.getloadavg()[0]:.1f}")

  def timed(name, fn, n=5):
    c = jax.jit(fn).lower(tree).compile()
    jax.block_until_ready(c(tree))
    best = float("inf")
    for _ in range(n):
      t0 = time.perf_counter()
      jax.block_until_ready(c(tree))
      best = min(best, time.perf_counter() - t0)
    print(f"{name:46s} {1e3 * best:8.1f} ms {best / one:6.1f} passes "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return best

  w = jnp.ones(r) / r
  center = jax.tree.map(lambda l: l[3], tree)
  point = jax.tree.map(lambda l: l[5] - l[3], tree)
  timed("plain w @ X (tree.weighted_sum)", lambda s: btree.weighted_sum(w, s))
  timed("tree.weighted_sum_centered",
        lambda s: btree.weighted_sum_centered(w, s, center))
  timed("tree.sq_dists_centered",
        lambda s: btree.sq_dists_centered(s, center, point, 0.5))
  timed("plain sq_dists_to (row reduction)",
        lambda s: btree.sq_dists_to(s, center))
  timed("screen: norms + distances to centre",
        lambda s: gm_module._benign_screen(s)[1:])  # pylint: disable=protected-access
  timed("tree.chunked_gram", lambda s: btree.chunked_gram(s)[0])
  timed("tree.worker_gram (plain X X^T)", btree.worker_gram)
  ts = {k: timed(f"direct, tol=0, max_iters={k}", functools.partial(
      geometric_median, method="direct", tol=0.0, max_iters=k), n=2)
        for k in (5, 25)}
  per = (ts[25] - ts[5]) / 20
  print(f"marginal direct iteration: {1e3 * per:.1f} ms = {per / one:.1f} "
        "passes")
  timed("geometric_median defaults (auto, objective)", geometric_median, n=3)


if __name__ == "__main__":
  main()
