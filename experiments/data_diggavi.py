"""Testing the claims of Data & Diggavi with byzjax's spectral filter.

Data & Diggavi ("Byzantine-resilient SGD in high dimensions on heterogeneous
data", arXiv:2005.07866, and the short "Byzantine-resilient high-dimensional
SGD"; shared/papers/001_... and 000_...) analyse distributed SGD whose
server filters the workers' gradients with the outlier filter of
Steinhardt, Charikar & Valiant (their Algorithm 3). Their papers have no
experiments; this script tests five of their claims. The attack is the
annulus of 000's Section IV: the corrupt points sit "in a concentrated form
around the annulus" of radius ~ sigma sqrt(d) where honest Gaussian
gradients lie, at one shared direction (corrupt point mu + c rho u, c = 1
being the construction; c is swept where said).

The filter runs with two stopping rules, labelled everywhere:
``spectral_filter_paper`` is the paper's Algorithm 3 rule
sum_i c_i tau_i <= 4 R sigma_0^2 with sigma_0 from Theorem 1
(:func:`byzjax.aggregators.theorem_sigma0`); ``spectral_filter`` is byzjax's
``sigma=None`` rule (its own robust estimate, an extension not in the paper).

(a) dimension: under the annulus attack the error that the attack adds to
    the mean, the coordinate median, Krum and the geometric median grows
    like sqrt(d). R = 50 workers, f = 10 Byzantine (eps = 0.2); every
    (d, seed) is one trial, all seeds of a d vmapped in one jitted call. A
    radius sweep finds byzjax's filter's worst case; a sweep over R and the
    radius finds where the paper's rule starts to remove the attack (its
    threshold carries the factor 1 + d / ((1 - eps - eps') R)).
(b) mini-batch size: SGD on linear regression (R = 50 workers, d = 100)
    through the simulator, b swept with vmap; the distance to the honest
    optimum falls like 1/sqrt(b). Steps: Theorem 1's eta = mu / L^2 and the
    fixed 0.05.
(c) breakdown: excess error against the corruption fraction eps for the
    mean, coordinate median, geometric median and both filters; an
    aggregator is broken at eps when its error grows with the attack's
    radius.
(d) heterogeneity: worker i's loss gets a linear tilt s <delta_i, w>, which
    moves its local optimum by -s delta_i / 2 (tilts centred over the honest
    workers); error against the measured gradient dissimilarity
    kappa = max_i ||grad f_i - grad f_H|| at the honest optimum. Same two
    steps as (b).
(e) compression (their Algorithm 2): the server draws k of the d coordinates
    every step, shared by all workers; each worker sends (d/k) select_K(p)
    (line 7); the server filters the [R, k] matrix and updates those
    coordinates. k inside and outside Theorem 5's condition
    k >= (1 - eps - eps') R, steps eta = mu / L^2 (Theorem 5) and eta k / d;
    convergence against steps and coordinates sent, and the filter's time on
    [R, k] against [R, d].

Writes, into ``--out``, for each part: ``<part>.csv`` (tidy rows),
``<part>.png`` and ``<part>.md`` (tables, fitted slopes), plus
``summary.md`` and ``config.json``.

Usage::

  python experiments/data_diggavi.py --out results/data_diggavi
  python experiments/data_diggavi.py --out /tmp/dd --quick --part a,c

References:
  Data & Diggavi, `Byzantine-Resilient SGD in High Dimensions on
  Heterogeneous Data <https://arxiv.org/abs/2005.07866>`_, ISIT 2021 (full
  version: Theorems 1, 3 and 5, Algorithms 2 and 3).

  Data & Diggavi, `Byzantine-Resilient High-Dimensional SGD with Local
  Iterations on Heterogeneous Data
  <https://icml.cc/virtual/2021/spotlight/8728>`_, ICML 2021.

  Steinhardt, Charikar & Valiant, `Resilience: A Criterion for Learning in
  the Presence of Arbitrary Outliers <https://arxiv.org/abs/1703.04940>`_,
  ITCS 2018.
"""

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import byzjax
from byzjax import simulation
from byzjax.aggregators.coordinatewise import coordinate_median
from byzjax.aggregators.coordinatewise import mean
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.aggregators.krum import krum
from byzjax.aggregators.spectral_filter import spectral_filter
from byzjax.aggregators.spectral_filter import theorem_sigma0
from byzjax.attacks.gradient import annulus
from byzjax.compression import draw_coordinates
from byzjax.compression import gather_coordinates
from byzjax.compression import scatter_coordinates
from byzjax.data import partition
from byzjax.data import synthetic
from byzjax.transforms.aggregate import AggregateState

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _figures  # pylint: disable=g-import-not-at-top,wrong-import-position

HIGHEST = jax.lax.Precision.HIGHEST
PARTS = ("a", "b", "c", "d", "e")
NAMES = {"a": "a_dimension", "b": "b_batch_size", "c": "c_breakdown",
         "d": "d_heterogeneity", "e": "e_compression"}

# Aggregation-error experiments (parts a, c): R workers, F of them Byzantine
# in part (a); Krum is told F.
R_AGG = 50
F_AGG = 10
# The theorem's constant eps' (Theorem 1 of Data & Diggavi needs
# eps <= 1/4 - eps'); at eps = 0.2 the largest allowed, 0.05, gives the
# smallest sigma_0. Parts with another eps use eps' = 1/4 - eps.
EPS_PRIME = 0.05
AGGREGATORS = ("mean", "coordinate_median", "krum", "geometric_median",
               "spectral_filter", "spectral_filter_paper")
# "spectral_filter" is byzjax's filter with sigma=None: its stopping rule
# re-estimates sigma_0 every round (byzjax's extension, not the paper's).
# "spectral_filter_paper" is the same filter with the paper's rule
# sum c_i tau_i <= 4 R sigma_0^2 and sigma_0 from Theorem 1.
LABELS = {"mean": "mean", "coordinate_median": "coord. median",
          "krum": "Krum", "geometric_median": "geometric median",
          "spectral_filter": "filter, byzjax σ̂ (extension)",
          "spectral_filter_paper": "filter, paper's σ₀ (Thm 1)"}


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes of one run of the script (see ``FULL`` and ``QUICK``)."""
  seeds: int
  # (a): dimensions, attack radii and the dimensions at which they are swept.
  dims: tuple[int, ...]
  radii: tuple[float, ...]
  radius_dims: tuple[int, ...]
  # (a): where the paper's rule starts to work: d, R values, radii.
  rule_dim: int
  rule_workers: tuple[int, ...]
  rule_radii: tuple[float, ...]
  # (c)
  breakdown_dim: int
  breakdown_byzantine: tuple[int, ...]
  breakdown_radii: tuple[float, ...]
  # (b), (d), (e): simulated training.
  steps: int
  sim_seeds: int
  num_workers: int
  num_byzantine: int
  samples_per_worker: int
  dim: int
  batch_sizes: tuple[int, ...]
  batch_radii: tuple[float, ...]
  shifts: tuple[float, ...]
  het_batch: int
  het_radii: tuple[float, ...]
  comp_dim: int
  comp_fractions: tuple[float, ...]
  comp_steps_factor: int
  # (e) timing
  time_dim: int
  time_fractions: tuple[float, ...]
  time_repeats: int


FULL = Config(
    seeds=8,
    dims=(10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000),
    radii=(0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 1.0, 2.0, 5.0),
    radius_dims=(100, 1000, 10000),
    rule_dim=1000, rule_workers=(50, 100, 200, 400, 800),
    rule_radii=tuple(float(2 ** (i / 2)) for i in range(27)),
    breakdown_dim=1000,
    breakdown_byzantine=(0, 2, 5, 7, 10, 12, 13, 15, 17, 19, 20, 22, 24, 25,
                         27, 30),
    breakdown_radii=(1.0, 10.0, 100.0),
    steps=300, sim_seeds=4, num_workers=R_AGG, num_byzantine=F_AGG,
    samples_per_worker=1000, dim=100,
    batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128), batch_radii=(0.3, 1.0),
    shifts=(0.0, 1.0, 3.0, 10.0, 30.0, 100.0), het_batch=16,
    het_radii=(0.3, 1.0),
    comp_dim=200, comp_fractions=(1.0, 0.5, 0.25, 0.1),
    comp_steps_factor=3,
    time_dim=100000, time_fractions=(0.01, 0.1, 1.0), time_repeats=7)

QUICK = Config(
    seeds=4,
    dims=(10, 100, 1000),
    radii=(0.2, 0.35, 1.0, 3.0),
    radius_dims=(1000,),
    rule_dim=1000, rule_workers=(50, 400),
    rule_radii=tuple(float(2 ** i) for i in range(14)),
    breakdown_dim=1000,
    breakdown_byzantine=(0, 5, 10, 15, 20, 25, 30),
    breakdown_radii=(1.0, 10.0, 100.0),
    steps=100, sim_seeds=3, num_workers=R_AGG, num_byzantine=F_AGG,
    samples_per_worker=256, dim=100,
    batch_sizes=(4, 16, 64), batch_radii=(1.0,),
    shifts=(0.0, 10.0, 100.0), het_batch=16, het_radii=(1.0,),
    comp_dim=100, comp_fractions=(1.0, 0.5, 0.2), comp_steps_factor=3,
    time_dim=10000, time_fractions=(0.01, 1.0), time_repeats=3)


def _log(msg: str) -> None:
  print(f"[data_diggavi] {msg}", flush=True)


def _norm(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x)))


def fit_slope(x, y) -> float:
  """Least-squares slope of ``log y`` against ``log x`` (nan if < 2 points)."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
  if ok.sum() < 2:
    return float("nan")
  return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


# ---------------------------------------------------------------------------
# (a), (c): aggregation error of one corrupted step.


def attacked_gradients(key: jax.Array, dim, radius, num_byzantine, *,
                       num_workers: int, max_dim: int, sigma: float = 1.0):
  """One step's gradients under the (radius-scaled) annulus attack.

  Honest worker i sends :math:`g + \\sigma \\xi_i`, :math:`\\xi_i \\sim
  N(0, I_d)`, with the true gradient :math:`g = (1, \\dots, 1)`. The first
  ``num_byzantine`` workers send :math:`\\mu + c \\rho u`, where
  :math:`\\mu` is the honest mean, :math:`\\rho` the median distance of the
  honest rows to it and :math:`u` a random unit vector: the library's
  :func:`~byzjax.attacks.gradient.annulus` point :math:`\\mu + \\rho u`
  (radius 1) moved along its ray to radius :math:`c`, so that ``radius`` can
  be a traced (vmapped) value.

  To compile one program for several dimensions, vectors live in
  ``max_dim`` coordinates and only the first ``dim`` (traced) are used; the
  other coordinates are exactly zero in every row, which changes no
  aggregator's output there (all rows agree) nor any distance.

  Returns:
    ``(x [R, max_dim], g [max_dim], byzantine bool [R])``.
  """
  k_noise, k_dir = jax.random.split(key)
  mask = (jnp.arange(max_dim) < dim).astype(jnp.float32)
  g = mask
  x = g + sigma * mask * jax.random.normal(k_noise, (num_workers, max_dim))
  byzantine = jnp.arange(num_workers) < num_byzantine
  honest = ~byzantine
  hm = jnp.sum(jnp.where(honest[:, None], x, 0.0), 0) / jnp.maximum(
      jnp.sum(honest), 1)
  u = mask * jax.random.normal(k_dir, (max_dim,))
  at_radius_one = annulus({"w": x}, byzantine, direction={"w": u},
                          radius_scale=1.0)["w"]
  x = jnp.where(byzantine[:, None], hm + radius * (at_radius_one - hm), x)
  return x, g, byzantine


def paper_sigma0(dim: int, num_byzantine: int, num_workers: int = R_AGG,
                 sigma: float = 1.0, batch_size: int = 1) -> float:
  """Theorem 1's sigma_0 for the honest rows of :func:`attacked_gradients`.

  Each honest row is one mini-batch gradient g + sigma N(0, I_d): the
  paper's variance bound (eq. (7)), E||g_r - grad F_r||^2 <= sigma_p^2 / b,
  is a trace, d sigma^2, so sigma_p^2 / b = d sigma^2 (we take b = 1 and
  sigma_p = sqrt(d) sigma; any other b with the same sigma_p^2 / b gives
  the same sigma_0). kappa = 0 (i.i.d.). eps = f / R and eps' = 1/4 - eps,
  the largest the theorem allows (EPS_PRIME at eps = 0.2). NaN when
  eps >= 1/4, where the theorem gives no sigma_0.
  """
  eps = num_byzantine / num_workers
  if eps >= 0.25:
    return float("nan")
  return theorem_sigma0(sigma=float(np.sqrt(dim * batch_size)) * sigma,
                        batch_size=batch_size, num_workers=num_workers,
                        dim=int(dim), eps=eps, eps_prime=0.25 - eps)


def _paper_filter(x: jax.Array, sigma0: jax.Array):
  """The filter with the paper's stopping rule 4 R sigma_0^2 (traced s0).

  ``spectral_filter`` takes ``sigma`` as a Python number; to vmap over d
  (hence sigma_0) the rows are divided by sigma_0 and the filter runs with
  sigma = 1, which decides exactly as sigma = sigma_0 on the original rows
  (the filter is scale-equivariant: rows and sigma scale together).
  """
  out, info = spectral_filter({"w": x / sigma0}, sigma=1.0, return_info=True)
  ok = jnp.isfinite(sigma0)
  return jnp.where(ok, out["w"] * sigma0, jnp.nan), info


def _aggregate(name: str, x: jax.Array, sigma0=None):
  stacked = {"w": x}
  if name == "mean":
    return mean(stacked)["w"], None
  if name == "coordinate_median":
    return coordinate_median(stacked)["w"], None
  if name == "krum":
    return krum(stacked, num_byzantine=F_AGG)["w"], None
  if name == "geometric_median":
    return geometric_median(stacked)["w"], None
  if name == "spectral_filter":
    out, info = spectral_filter(stacked, return_info=True)
    return out["w"], info
  if name == "spectral_filter_paper":
    return _paper_filter(x, sigma0)
  raise ValueError(f"unknown aggregator {name!r}")


def aggregation_trial(key, dim, radius, num_byzantine, sigma0=jnp.nan, *,
                      max_dim: int, names: tuple[str, ...],
                      num_workers: int = R_AGG,
                      sigma: float = 1.0) -> dict[str, jax.Array]:
  """Errors of every aggregator on one attacked step (units of sigma).

  Metrics: ``oracle`` = :math:`\\|\\bar g_H - g\\|` (the honest mean, the
  best any aggregator can hope for), ``sigma_emp`` = the square root of the
  top eigenvalue of the honest rows' empirical covariance (the
  :math:`\\sigma_0` of the filter's guarantee), and per aggregator
  ``<name>/excess`` = :math:`\\|\\hat g - \\bar g_H\\|` (the error the attack
  adds) and ``<name>/error`` = :math:`\\|\\hat g - g\\|`; for the filter
  also the number of Byzantine workers kept and honest workers dropped.
  ``sigma0`` (traced) is the paper's sigma_0 for ``spectral_filter_paper``
  (:func:`paper_sigma0`, in the units of the rows).
  """
  x, g, byzantine = attacked_gradients(key, dim, radius, num_byzantine,
                                       num_workers=num_workers,
                                       max_dim=max_dim, sigma=sigma)
  honest = ~byzantine
  n_h = jnp.maximum(jnp.sum(honest), 1)
  hm = jnp.sum(jnp.where(honest[:, None], x, 0.0), 0) / n_h
  z = jnp.where(honest[:, None], x - hm, 0.0)
  gram = jnp.matmul(z, z.T, precision=HIGHEST)
  top = jnp.linalg.eigvalsh(gram)[-1] / n_h
  out = {"oracle": _norm(hm - g) / sigma,
         "sigma_emp": jnp.sqrt(jnp.maximum(top, 0.0)) / sigma}
  for name in names:
    agg, info = _aggregate(name, x, sigma0)
    out[f"{name}/excess"] = _norm(agg - hm) / sigma
    out[f"{name}/error"] = _norm(agg - g) / sigma
    if info is not None:
      out[f"{name}/byz_kept"] = jnp.sum(info.active & byzantine)
      out[f"{name}/honest_dropped"] = jnp.sum(~info.active & honest)
      out[f"{name}/rounds"] = info.num_rounds
  return out


@functools.lru_cache(maxsize=None)
def _trial_fn(max_dim: int, names: tuple[str, ...]):
  """Jitted ``(keys [S], dim, radius, f, s0) -> metrics [S]``, per max_dim."""
  fn = functools.partial(aggregation_trial, max_dim=max_dim, names=names)
  return jax.jit(jax.vmap(fn, in_axes=(0, None, None, None, None)))


def _bucket(dim: int) -> int:
  """The padded size a dimension is computed in (one compile per bucket)."""
  for b in (1000, 10000, 100000, 1000000):
    if dim <= b:
      return b
  return dim


def aggregation_sweep(points, *, seeds: int, key: jax.Array,
                      names: tuple[str, ...] = AGGREGATORS,
                      part: str = "a") -> list[dict[str, Any]]:
  """Runs aggregation trials at ``points`` = [(dim, radius, f)], all seeds.

  Points are grouped by padded size (:func:`_bucket`), so one compile serves
  every point of a bucket; each point runs all seeds in one vmapped call.
  Seeds are paired across points (same keys). Returns tidy rows.
  """
  keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(seeds))
  rows = []
  by_bucket: dict[int, list] = {}
  for p in points:
    by_bucket.setdefault(_bucket(p[0]), []).append(p)
  for max_dim in sorted(by_bucket):
    fn = _trial_fn(max_dim, tuple(names))
    start = time.perf_counter()
    for dim, radius, f in by_bucket[max_dim]:
      sigma0 = paper_sigma0(dim, f)
      metrics = jax.tree.map(np.asarray, fn(keys, dim, radius, f, sigma0))
      for s in range(seeds):
        row = {"part": part, "dim": dim, "radius": radius,
               "num_byzantine": f, "eps": f / R_AGG, "seed": s,
               "paper_sigma0": sigma0}
        row.update({k: float(v[s]) for k, v in metrics.items()})
        rows.append(row)
    _log(f"({part}) {len(by_bucket[max_dim])} points x {seeds} seeds in "
         f"{max_dim} coordinates: {time.perf_counter() - start:.1f}s "
         "(compile included)")
  return rows


def _mean_over_seeds(rows, keys, metric):
  """{key tuple: mean of metric over seeds}, keys in first-seen order."""
  acc: dict[tuple, list] = {}
  for r in rows:
    acc.setdefault(tuple(r[k] for k in keys), []).append(r[metric])
  return {k: float(np.mean(v)) for k, v in acc.items()}


def part_a(cfg: Config, key: jax.Array, names=AGGREGATORS) -> tuple[list, dict]:
  """Error vs dimension at eps = 0.2 (and vs radius at a few dimensions)."""
  points = [(d, 1.0, F_AGG) for d in cfg.dims]
  points += [(d, c, F_AGG) for d in cfg.radius_dims for c in cfg.radii
             if c != 1.0]
  rows = aggregation_sweep(points, seeds=cfg.seeds, key=key, names=names)
  main = [r for r in rows if r["radius"] == 1.0]
  dims = sorted({r["dim"] for r in main})
  summary = {"dims": dims, "excess": {}, "error": {}, "slopes": {},
             "error_slopes": {}}
  for name in ("oracle", "sigma_emp"):
    m = _mean_over_seeds(main, ("dim",), name)
    summary[name] = [m[(d,)] for d in dims]
  fit_dims = [d for d in dims if d >= 100] or dims
  for name in names:
    ex = _mean_over_seeds(main, ("dim",), f"{name}/excess")
    er = _mean_over_seeds(main, ("dim",), f"{name}/error")
    summary["excess"][name] = [ex[(d,)] for d in dims]
    summary["error"][name] = [er[(d,)] for d in dims]
    summary["slopes"][name] = fit_slope(fit_dims, [ex[(d,)] for d in fit_dims])
    summary["error_slopes"][name] = fit_slope(fit_dims,
                                              [er[(d,)] for d in fit_dims])
  summary["oracle_slope"] = fit_slope(
      fit_dims, [summary["oracle"][dims.index(d)] for d in fit_dims])
  if "spectral_filter" in names:
    for k in ("byz_kept", "honest_dropped"):
      m = _mean_over_seeds(main, ("dim",), f"spectral_filter/{k}")
      summary[f"filter_{k}"] = [m[(d,)] for d in dims]
  if "spectral_filter_paper" in names:
    for k in ("byz_kept", "honest_dropped"):
      m = _mean_over_seeds(main, ("dim",), f"spectral_filter_paper/{k}")
      summary[f"paper_filter_{k}"] = [m[(d,)] for d in dims]
    summary["paper_sigma0"] = [paper_sigma0(d, F_AGG) for d in dims]
  # Radius sweep: worst case of the filter over the attack's radius.
  worst = {}
  for d in cfg.radius_dims:
    sel = [r for r in rows if r["dim"] == d]
    radii = sorted({r["radius"] for r in sel})
    curves = {}
    for name in names:
      m = _mean_over_seeds(sel, ("radius",), f"{name}/excess")
      curves[name] = [m[(c,)] for c in radii]
    sig = _mean_over_seeds(sel, ("radius",), "sigma_emp")
    worst[d] = {"radii": radii, "curves": curves,
                "sigma_emp": float(np.mean(list(sig.values())))}
  summary["radius_sweep"] = worst
  if "spectral_filter" in names and worst:
    wd = sorted(worst)
    summary["filter_worst"] = {
        "dims": wd,
        "values": [max(worst[d]["curves"]["spectral_filter"]) for d in wd],
        "argmax_radius": [worst[d]["radii"][int(np.argmax(
            worst[d]["curves"]["spectral_filter"]))] for d in wd],
        "sigma_emp": [worst[d]["sigma_emp"] for d in wd]}
    summary["filter_worst"]["slope"] = fit_slope(
        wd, summary["filter_worst"]["values"])
  if cfg.rule_workers:
    rule_rows, summary["rule"] = paper_rule_sweep(
        cfg, jax.random.fold_in(key, 7))
    rows += rule_rows
  return rows, summary


def rule_trial(key, radius, sigma0, *, dim: int, num_workers: int,
               num_byzantine: int) -> dict[str, jax.Array]:
  """Mean and the paper's filter on one attacked step (units of sigma)."""
  x, _, byzantine = attacked_gradients(key, dim, radius, num_byzantine,
                                       num_workers=num_workers, max_dim=dim)
  honest = ~byzantine
  hm = jnp.sum(jnp.where(honest[:, None], x, 0.0), 0) / jnp.sum(honest)
  agg, info = _paper_filter(x, sigma0)
  return {"mean/excess": _norm(jnp.mean(x, 0) - hm),
          "paper/excess": _norm(agg - hm),
          "paper/byz_kept": jnp.sum(info.active & byzantine),
          "paper/honest_dropped": jnp.sum(~info.active & honest),
          # Round-0 statistic over the threshold 4 n sigma_0^2 (both in
          # units of sigma_0^2): the paper's rule filters iff it is > 1.
          "paper/stat_over_threshold": jnp.where(
              info.num_rounds == 0, info.statistic / info.threshold,
              jnp.inf)}


@functools.lru_cache(maxsize=None)
def _rule_fn(dim: int, num_workers: int, num_byzantine: int):
  fn = functools.partial(rule_trial, dim=dim, num_workers=num_workers,
                         num_byzantine=num_byzantine)
  return jax.jit(jax.vmap(fn, in_axes=(0, None, None)))


def paper_rule_sweep(cfg: Config, key: jax.Array) -> tuple[list, dict]:
  """Where the paper's stopping rule starts to remove the annulus attack.

  At d = ``cfg.rule_dim`` and eps = 0.2, for each number of workers R
  (f = 0.2 R), sweeps the attack's radius c and records whether the filter
  with Theorem 1's sigma_0 removes the corrupt cluster. Its threshold
  4 R sigma_0^2 has the factor 1 + d / ((1 - eps - eps') R); the smallest
  radius c* that is removed should shrink like sqrt of it as R grows.
  Seeds are vmapped; one compile per R.
  """
  keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(
      jnp.arange(cfg.seeds))
  rows = []
  d = cfg.rule_dim
  for r in cfg.rule_workers:
    f = int(round(0.2 * r))
    sigma0 = paper_sigma0(d, f, num_workers=r)
    fn = _rule_fn(d, r, f)
    start = time.perf_counter()
    for c in cfg.rule_radii:
      m = jax.tree.map(np.asarray, fn(keys, c, sigma0))
      for seed in range(cfg.seeds):
        row = {"part": "a_rule", "dim": d, "num_workers": r,
               "num_byzantine": f, "radius": c, "seed": seed,
               "paper_sigma0": sigma0}
        row.update({k: float(v[seed]) for k, v in m.items()})
        rows.append(row)
    _log(f"(a) paper's rule, R={r}: {len(cfg.rule_radii)} radii x "
         f"{cfg.seeds} seeds in {time.perf_counter() - start:.1f}s")
  table = []
  for r in cfg.rule_workers:
    sel = [x for x in rows if x["num_workers"] == r]
    f = sel[0]["num_byzantine"]
    eps = f / r
    kept = {c: max(x["paper/byz_kept"] for x in sel if x["radius"] == c)
            for c in cfg.rule_radii}
    removed = [c for c in cfg.rule_radii if kept[c] == 0
               and all(kept[c2] == 0 for c2 in cfg.rule_radii if c2 > c)]
    c_star = min(removed) if removed else None
    mean_ex = _mean_over_seeds(sel, ("radius",), "mean/excess")
    paper_ex = _mean_over_seeds(sel, ("radius",), "paper/excess")
    sigma0 = sel[0]["paper_sigma0"]
    factor = 1 + d / ((1 - 0.25) * r)  # eps + eps' = 1/4
    # Finer than the grid: the round-0 statistic grows like c^2 once the
    # attack dominates it, so from the largest radius that is kept with a
    # ratio stat/threshold = q < 1 the crossing is at about c / sqrt(q).
    ratio = _mean_over_seeds(sel, ("radius",), "paper/stat_over_threshold")
    below = [(c, ratio[(c,)]) for c in cfg.rule_radii
             if np.isfinite(ratio[(c,)]) and ratio[(c,)] < 1]
    c_cross = (max(below)[0] / np.sqrt(max(below)[1])) if below else None
    table.append({
        "R": r, "f": f, "sigma0": sigma0, "factor": factor,
        "bound": sigma0 * np.sqrt(0.25),
        "c_star": c_star, "c_cross": c_cross,
        "c_cross_over_sqrt_factor": (c_cross / np.sqrt(factor)
                                     if c_cross else None),
        "c_star_over_sqrt_factor": (c_star / np.sqrt(factor)
                                    if c_star else None),
        "b_star": c_star ** 2 if c_star else None,
        "mean_excess_at_c_star": mean_ex[(c_star,)] if c_star else None,
        "paper_worst_excess": max(paper_ex.values()),
        "paper_worst_radius": max(paper_ex, key=paper_ex.get)[0],
        "paper_excess_c1": paper_ex.get((1.0,)),
        "mean_excess_c1": mean_ex.get((1.0,)),
        "kept_c1": kept.get(1.0), "eps": eps})
  return rows, {"dim": d, "table": table, "radii": list(cfg.rule_radii),
                "curves": {r: {
                    "paper": [_mean_over_seeds(
                        [x for x in rows if x["num_workers"] == r],
                        ("radius",), "paper/excess")[(c,)]
                              for c in cfg.rule_radii],
                    "mean": [_mean_over_seeds(
                        [x for x in rows if x["num_workers"] == r],
                        ("radius",), "mean/excess")[(c,)]
                             for c in cfg.rule_radii]}
                           for r in cfg.rule_workers}}


def part_c(cfg: Config, key: jax.Array) -> tuple[list, dict]:
  """Excess error vs the corruption fraction, at radii 1, 10 and 100."""
  # Krum is told f = F_AGG, which is wrong when f varies: computed (the
  # compiled program is shared with part (a)) but not reported.
  names = ("mean", "coordinate_median", "geometric_median", "spectral_filter",
           "spectral_filter_paper")
  points = [(cfg.breakdown_dim, c, f) for c in cfg.breakdown_radii
            for f in cfg.breakdown_byzantine]
  rows = aggregation_sweep(points, seeds=cfg.seeds, key=key,
                           names=AGGREGATORS, part="c")
  eps = [f / R_AGG for f in cfg.breakdown_byzantine]
  curves = {}
  for name in names:
    m = _mean_over_seeds(rows, ("radius", "num_byzantine"), f"{name}/excess")
    curves[name] = {c: [m[(c, f)] for f in cfg.breakdown_byzantine]
                    for c in cfg.breakdown_radii}
  # Broken at eps: the excess grows with the attack's radius (the output is
  # not bounded independently of what the attackers send). Compare the two
  # largest radii: bounded -> ratio ~ 1; broken -> ratio ~ their ratio.
  c_lo, c_hi = sorted(cfg.breakdown_radii)[-2:]
  breakdown = {}
  for name in names:
    lo, hi = curves[name][c_lo], curves[name][c_hi]
    ratios = [h / max(l, 1e-30) for l, h in zip(lo, hi)]
    broken = [e for e, q, l in zip(eps, ratios, lo)
              if e > 0 and q > np.sqrt(c_hi / c_lo)]
    breakdown[name] = {"ratios": ratios,
                       "first_broken_eps": min(broken) if broken else None,
                       "last_bounded_eps": max(
                           [e for e, q in zip(eps, ratios)
                            if q <= np.sqrt(c_hi / c_lo)
                            and (not broken or e < min(broken))] or [0.0])}
  kept = _mean_over_seeds(rows, ("radius", "num_byzantine"),
                          "spectral_filter/byz_kept")
  dropped = _mean_over_seeds(rows, ("radius", "num_byzantine"),
                             "spectral_filter/honest_dropped")
  summary = {"eps": eps, "curves": curves, "breakdown": breakdown,
             "dim": cfg.breakdown_dim,
             "radius_pair": (c_lo, c_hi),
             "filter_byz_kept": {c: [kept[(c, f)] for f in
                                     cfg.breakdown_byzantine]
                                 for c in cfg.breakdown_radii},
             "filter_honest_dropped": {c: [dropped[(c, f)] for f in
                                           cfg.breakdown_byzantine]
                                       for c in cfg.breakdown_radii}}
  return rows, summary


# ---------------------------------------------------------------------------
# (b), (d), (e): simulated SGD on linear regression.


class RegressionTask(NamedTuple):
  """Per-worker linear regression with a per-worker linear tilt.

  Worker i minimises :math:`f_i(w) = \\frac{1}{n}\\sum_j (x_j^\\top w -
  y_j)^2 + s\\,\\langle \\delta_i, w\\rangle` with
  :math:`\\|\\delta_i\\| \\approx 1` (centred over the honest workers when
  the loss is built, see :func:`_honest_stats`): its local optimum moves by
  about :math:`-s\\,\\delta_i / 2`, and :math:`\\nabla f_i - \\nabla f_H`
  is :math:`s(\\delta_i - \\bar\\delta_H)` plus the finite-sample part of
  the regression (the tilt's part is the same at every ``w``), while the
  stochastic gradients' noise does not depend on ``s``. The heterogeneity
  ``s`` is traced, so it can be swept with ``vmap``; ``data.y`` carries
  ``(y, delta_i)`` in each row.
  """
  data: partition.WorkerData  # y: [R, n, 1 + d] = (y, delta_i)
  hess: jax.Array   # [R, d, d]: X_i^T X_i / n_i
  rhs: jax.Array    # [R, d]: X_i^T y_i / n_i
  delta: jax.Array  # [R, d]
  sigma2: float     # per-sample gradient variance (trace) at the optimum
  mu: float         # strong convexity of F = (1/R) sum_r f_r: 2 lam_min(H)
  smooth: float     # smoothness L of F: 2 lam_max(H), H = mean_r X_r'X_r/n


def regression_task(key: jax.Array, *, num_workers: int, samples: int,
                    dim: int, noise_std: float = 1.0) -> RegressionTask:
  """Builds the data (i.i.d. split) and the per-worker normal equations."""
  k_data, k_part, k_delta = jax.random.split(key, 3)
  dataset, _ = synthetic.linear_regression(
      k_data, num_workers * samples, dim, noise_std=noise_std)
  data = partition.iid_partition(k_part, dataset, num_workers)
  hess, rhs, delta, y, sigma2 = _task_arrays(data.x, data.y, data.size,
                                             k_delta)
  eig = np.linalg.eigvalsh(np.asarray(jnp.mean(hess, 0), np.float64))
  return RegressionTask(data._replace(y=y), hess, rhs, delta, float(sigma2),
                        mu=float(2 * eig[0]), smooth=float(2 * eig[-1]))


# The step size used before the theorems' was read (kept for comparison).
FIXED_LR = 0.05


def theorem_step(task: RegressionTask) -> float:
  """eta = mu / L^2, the step of Theorems 1 and 5 (strongly convex part).

  Data & Diggavi (arXiv:2005.07866v3), Theorem 1: "If F is also
  mu-strongly convex and we take eta = mu / L^2"; Theorem 5 (Algorithm 2)
  prescribes the same. F is the global objective (1/R) sum_r f_r, whose
  Hessian is 2 mean_r X_r' X_r / n_r (the tilt of part (d) is linear and
  does not change it).
  """
  return task.mu / task.smooth ** 2


@jax.jit
def _task_arrays(x, y, size, key):
  """Normal equations, tilts and the gradient variance (one compiled call)."""
  num_workers, _, dim = x.shape
  delta = jax.random.normal(key, (num_workers, dim)) / np.sqrt(dim)
  n = size.astype(jnp.float32)
  hess = jnp.einsum("rni,rnj->rij", x, x, precision=HIGHEST) / n[:, None, None]
  rhs = jnp.einsum("rni,rn->ri", x, y, precision=HIGHEST) / n[:, None]
  # sigma^2 = E ||grad l(w; x) - grad f_i(w)||^2 at the global optimum.
  w_opt = jnp.linalg.solve(jnp.mean(hess, 0), jnp.mean(rhs, 0))
  resid = jnp.einsum("rnd,d->rn", x, w_opt, precision=HIGHEST) - y
  per_sample = 2 * x * resid[..., None]
  local = jnp.mean(per_sample, 1, keepdims=True)
  sigma2 = jnp.mean(jnp.sum(jnp.square(per_sample - local), -1))
  tilt = jnp.broadcast_to(delta[:, None, :], x.shape)
  return hess, rhs, delta, jnp.concatenate([y[..., None], tilt], -1), sigma2


def _honest_stats(task: RegressionTask, byzantine: jax.Array, shift):
  """Honest optimum, mean tilt and gradient dissimilarity (traced ``shift``).

  The tilts are centred over the honest workers (worker i's tilt is
  :math:`s(\\delta_i - \\bar\\delta_H)`), so that the honest objective
  :math:`f_H` is the plain regression whatever ``s``: its optimum
  :math:`\\hat w_H`, and with it the stochastic gradients' variance there,
  do not depend on ``s``; only the dissimilarity does.

  ``kappa_sup`` = :math:`\\max_{i \\in H} \\|\\nabla f_i(\\hat w_H) -
  \\nabla f_H(\\hat w_H)\\|`, ``kappa_rms`` the root mean square over the
  honest workers, ``kappa_sup_init`` the max at ``w = 0``.

  Returns:
    ``(w_hat [d], mean_tilt [d], stats)``.
  """
  h = (~byzantine).astype(jnp.float32)
  h = h / jnp.maximum(jnp.sum(h), 1.0)
  mean_hess = jnp.tensordot(h, task.hess, 1)
  mean_rhs = jnp.tensordot(h, task.rhs, 1)
  mean_tilt = jnp.tensordot(h, task.delta, 1)
  # grad f_H(w) = 2 (H w - r) + s (delta_bar_H - delta_bar_H) = 0.
  w_hat = jnp.linalg.solve(mean_hess, mean_rhs)

  def dissimilarity(w):
    grads = 2 * (jnp.einsum("rij,j->ri", task.hess, w, precision=HIGHEST)
                 - task.rhs) + shift * (task.delta - mean_tilt)
    dev = grads - jnp.tensordot(h, grads, 1)
    norms = jnp.sqrt(jnp.sum(jnp.square(dev), -1))
    return (jnp.max(jnp.where(h > 0, norms, 0.0)),
            jnp.sqrt(jnp.sum(h * jnp.square(norms))))

  sup_opt, rms_opt = dissimilarity(w_hat)
  sup_0, _ = dissimilarity(jnp.zeros_like(w_hat))
  return w_hat, mean_tilt, {"kappa_sup": sup_opt, "kappa_rms": rms_opt,
                            "kappa_sup_init": sup_0}


def _regression_loss(batch_size, shift, mean_tilt, max_batch: int):
  """Tilted mean squared error over the first ``batch_size`` (traced) rows.

  The tilt is :math:`s \\langle \\delta_i - \\bar\\delta_H, w\\rangle`
  (``mean_tilt`` = :math:`\\bar\\delta_H`, see :func:`_honest_stats`).

  The simulator samples ``max_batch`` rows without replacement in random
  order, so the first ``batch_size`` are a uniform sample of that size; this
  lets ``b`` be swept with ``vmap`` instead of one compile per size.
  """
  def loss(params, batch):
    x, y = batch
    w = params["w"]
    r = jnp.matmul(x, w, precision=HIGHEST) - y[:, 0]
    m = (jnp.arange(max_batch) < batch_size).astype(r.dtype)
    tilt = jnp.dot(y[0, 1:] - mean_tilt, w, precision=HIGHEST)
    return jnp.sum(m * jnp.square(r)) / batch_size + shift * tilt
  return loss


def scaled_annulus_attack(direction, radius
                          ) -> optax.GradientTransformationExtraArgs:
  """The annulus attack at radius ``c`` (traced): :math:`\\mu + c\\rho u`.

  Uses the library's :func:`~byzjax.attacks.gradient.annulus` at radius 1
  and moves the corrupt point along its ray, so the radius can be swept
  with ``vmap``.
  """
  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, byzantine=None, **extra):
    del params, extra
    att = annulus(updates, byzantine, direction=direction, radius_scale=1.0)
    honest = (~byzantine).astype(jnp.float32)
    w = honest / jnp.maximum(jnp.sum(honest), 1.0)

    def leaf(x, a):
      mu = jnp.tensordot(w.astype(x.dtype), x, 1)
      rows = jnp.reshape(byzantine, (-1,) + (1,) * (x.ndim - 1))
      return jnp.where(rows, mu + radius * (a - mu), x)

    return jax.tree.map(leaf, updates, att), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class SharedRandKState(NamedTuple):
  key: jax.Array                # typed PRNG key, split every step
  filter: AggregateState        # the filter's info at the last step


def shared_rand_k_filter(k: int, key: jax.Array, *, num_workers: int
                         ) -> optax.GradientTransformationExtraArgs:
  """Data & Diggavi's Algorithm 2 at the server, as an optax transform.

  Every step the server draws ``k`` coordinates (shared by all workers,
  :func:`~byzjax.compression.draw_coordinates`); each worker's message is
  its gradient at those coordinates scaled by ``d / k`` (line 7 of the
  algorithm; the ``[R, k]`` values come from
  :func:`~byzjax.compression.gather_coordinates`); the server filters the
  ``k``-dimensional messages and updates only those coordinates
  (:func:`~byzjax.compression.scatter_coordinates`, whose default scale is
  the paper's ``d / k``: the filter with ``sigma=None`` is
  scale-equivariant, so filtering the raw values and scaling the result is
  filtering the scaled messages). The filter's
  info is kept in an :class:`~byzjax.transforms.aggregate.AggregateState`,
  where the simulator's diagnostics (Byzantine kept, honest dropped) find
  it.
  """
  def filtered(messages):
    out, info = spectral_filter({"m": messages}, return_info=True)
    return out["m"], info

  def init_fn(params):
    del params
    shapes = jax.eval_shape(
        filtered, jax.ShapeDtypeStruct((num_workers, k), jnp.float32))[1]
    info = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    return SharedRandKState(key, AggregateState(last=None, info=info))

  def update_fn(updates, state, params=None, **extra):
    del extra
    next_key, sub = jax.random.split(state.key)
    coords = draw_coordinates(sub, params, k)
    messages = gather_coordinates(updates, coords)  # [R, k]
    agg, info = filtered(messages)
    return (scatter_coordinates(agg, coords, params),
            SharedRandKState(next_key, AggregateState(last=None, info=info)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


AGG_FNS = {"mean": mean, "spectral_filter": spectral_filter,
           "geometric_median": geometric_median}


def _build_for(task: RegressionTask, *, aggregator: str, num_workers: int,
               max_batch: int, lr: float, eval_every: int,
               settings: list[tuple[float, float]],
               compress_k: int | None = None):
  """``build(hp, key)`` for :func:`byzjax.simulation.vmapped_runs`.

  Numeric hyperparameters (traced): ``b`` (batch size, default
  ``max_batch``), ``shift`` (heterogeneity, default 0) and ``setting``, an
  index into ``settings``, the list of (Byzantine workers f, attack radius
  c) pairs (so that f = 0 is not repeated for every radius).
  """
  dim = task.hess.shape[-1]
  f_of = jnp.asarray([s[0] for s in settings], jnp.int32)
  c_of = jnp.asarray([s[1] for s in settings], jnp.float32)

  def build(hp, key):
    b = hp.get("b", max_batch)
    step = hp.get("lr", lr)
    shift = hp.get("shift", 0.0)
    index = jnp.asarray(hp["setting"]).astype(jnp.int32)
    f, radius = f_of[index], c_of[index]
    k_init, k_dir, k_tx = jax.random.split(key, 3)
    params = {"w": jnp.zeros(dim)}
    direction = {"w": jax.random.normal(k_dir, (dim,))}
    if compress_k is None:
      server = optax.chain(
          byzjax.aggregate(AGG_FNS[aggregator], num_workers=num_workers)
          if aggregator == "spectral_filter"
          else byzjax.aggregate(AGG_FNS[aggregator]),
          optax.sgd(step))
    else:
      server = optax.chain(
          shared_rand_k_filter(compress_k, k_tx, num_workers=num_workers),
          optax.sgd(step))
    # The loss needs the honest workers' mean tilt, hence the Byzantine set
    # that init draws: init first (it does not use the loss), loss after.
    sim = simulation.Simulation(
        loss_fn=None, server_tx=server,
        num_workers=num_workers, batch_size=max_batch,
        attack=scaled_annulus_attack(direction, radius), num_byzantine=f,
        eval_every=eval_every)
    state = simulation.init(sim, params, k_init)
    w_hat, mean_tilt, stats = _honest_stats(task, state.byzantine, shift)

    def eval_fn(p):
      return {"error": _norm(p["w"] - w_hat), **stats}

    loss = _regression_loss(b, shift, mean_tilt, max_batch)
    return dataclasses.replace(sim, loss_fn=loss, eval_fn=eval_fn), state

  return build


def _run_sim(task, *, label, numeric, seeds, num_evals, key, settings,
             **build_kw):
  """One compiled, vmapped call over ``numeric`` x settings x seeds."""
  start = time.perf_counter()
  numeric = dict(numeric, setting=list(range(len(settings))))
  points, metrics = simulation.vmapped_runs(
      _build_for(task, settings=settings, **build_kw), task.data,
      num_evals=num_evals, seeds=seeds, numeric=numeric, key=key)
  seconds = time.perf_counter() - start
  seed_list = list(range(seeds))
  rows = simulation.tidy_rows({"config": label}, points, seed_list, metrics)
  for r in rows:
    r["f"], r["c"] = (float(v) for v in settings[int(r.pop("setting"))])
    r["seconds"] = seconds
  num_points = len(next(iter(points.values()))) if points else 1
  _log(f"{label}: {num_points} points x {seeds} seeds x "
       f"{num_evals * build_kw['eval_every']} steps in {seconds:.1f}s "
       "(compile included)")
  return rows


def _final(rows, keys, metric="error", tail=1 / 3):
  """Mean over seeds of ``metric`` averaged over the last ``tail`` of rounds."""
  last = max(r["round"] for r in rows)
  first = int(np.floor((1 - tail) * (last + 1)))
  per_run: dict[tuple, list] = {}
  for r in rows:
    if r["round"] >= first:
      per_run.setdefault(tuple(r[k] for k in keys) + (r["seed"],),
                         []).append(r[metric])
  per_key: dict[tuple, list] = {}
  for k, v in per_run.items():
    per_key.setdefault(k[:-1], []).append(np.mean(v))
  return ({k: float(np.mean(v)) for k, v in per_key.items()},
          {k: float(np.std(v)) for k, v in per_key.items()})


def _settings(num_byzantine: int, radii) -> list[tuple[float, float]]:
  """(f, c) pairs worth reporting: no attackers once, then every radius."""
  return [(0.0, float(max(radii)))] + [(float(num_byzantine), float(c))
                                       for c in radii]


def _setting_label(agg: str, f: float, c: float) -> str:
  return f"{LABELS[agg]}, f={int(f)}" + (f", c={c:g}" if f else "")


def _label_lr(rows, lrs: dict[str, float]) -> None:
  """Adds ``lr_rule`` (the name of the step size) to simulation rows."""
  for r in rows:
    r["lr_rule"] = next(name for name, v in lrs.items()
                        if np.isclose(r["lr"], v, rtol=1e-5))


def _two_steps(task: RegressionTask) -> dict[str, float]:
  """The theorems' eta = mu / L^2 and the fixed step used before."""
  return {"theorem": theorem_step(task), "fixed": FIXED_LR}


def part_b(cfg: Config, key: jax.Array) -> tuple[list, dict]:
  """Distance to the honest optimum vs the mini-batch size, at two steps."""
  task = regression_task(jax.random.fold_in(key, 0),
                         num_workers=cfg.num_workers,
                         samples=cfg.samples_per_worker, dim=cfg.dim)
  max_batch = max(cfg.batch_sizes)
  lrs = _two_steps(task)
  common = dict(seeds=cfg.sim_seeds, num_evals=cfg.steps // 10,
                key=jax.random.fold_in(key, 1), num_workers=cfg.num_workers,
                max_batch=max_batch, lr=FIXED_LR, eval_every=10)
  settings = _settings(cfg.num_byzantine, cfg.batch_radii)
  numeric = {"b": cfg.batch_sizes, "lr": list(lrs.values())}
  rows = _run_sim(task, label="spectral_filter", numeric=numeric,
                  aggregator="spectral_filter", settings=settings, **common)
  rows += _run_sim(task, label="mean", numeric=numeric, aggregator="mean",
                   settings=settings, **common)
  _label_lr(rows, lrs)
  summary = _summarize_b(cfg, task, settings,
                         [r for r in rows if r["lr_rule"] == "theorem"])
  summary["fixed_lr"] = _summarize_b(
      cfg, task, settings, [r for r in rows if r["lr_rule"] == "fixed"])
  summary.update(lrs=lrs, mu=task.mu, smooth=task.smooth)
  return rows, summary


def _summarize_b(cfg, task, settings, rows) -> dict[str, Any]:
  """Part (b)'s curves and slopes for the rows of one step size."""
  keys = ("config", "f", "c", "b")
  means, sds = _final(rows, keys)
  fil = [r for r in rows if r["config"] == "spectral_filter"]
  kept, _ = _final(fil, keys, "byz_kept")
  dropped, _ = _final(fil, keys, "honest_dropped")
  # Batches are drawn without replacement from n local samples: the batch
  # mean's variance is sigma^2 / b_eff with 1/b_eff = (1/b - 1/n) n/(n-1).
  n = cfg.samples_per_worker
  b_eff = [1.0 / ((1.0 / b - 1.0 / n) * n / (n - 1)) for b in cfg.batch_sizes]
  curves, slopes, slopes_eff, slopes_4, spread, diag = {}, {}, {}, {}, {}, {}
  big = [i for i, b in enumerate(cfg.batch_sizes) if b >= 4]
  for agg in ("spectral_filter", "mean"):
    for f, c in settings:
      ys = [means[(agg, f, c, float(b))] for b in cfg.batch_sizes]
      curves[(agg, f, c)] = ys
      spread[(agg, f, c)] = [sds[(agg, f, c, float(b))]
                             for b in cfg.batch_sizes]
      slopes[(agg, f, c)] = fit_slope(cfg.batch_sizes, ys)
      slopes_eff[(agg, f, c)] = fit_slope(b_eff, ys)
      slopes_4[(agg, f, c)] = fit_slope([b_eff[i] for i in big],
                                        [ys[i] for i in big])
      if agg == "spectral_filter":
        diag[(f, c)] = [(kept[(agg, f, c, float(b))],
                         dropped[(agg, f, c, float(b))])
                        for b in cfg.batch_sizes]
  summary = {"batch_sizes": list(cfg.batch_sizes), "curves": curves,
             "sd": spread, "slopes": slopes, "slopes_eff": slopes_eff,
             "slopes_eff_b4": slopes_4,
             "b_eff": b_eff, "samples": n, "sigma2": task.sigma2,
             "filter_diag": diag}
  return summary


def part_d(cfg: Config, key: jax.Array) -> tuple[list, dict]:
  """Distance to the honest optimum vs the gradient dissimilarity kappa."""
  task = regression_task(jax.random.fold_in(key, 0),
                         num_workers=cfg.num_workers,
                         samples=cfg.samples_per_worker, dim=cfg.dim)
  lrs = _two_steps(task)
  common = dict(seeds=cfg.sim_seeds, num_evals=cfg.steps // 10,
                key=jax.random.fold_in(key, 1), num_workers=cfg.num_workers,
                max_batch=cfg.het_batch, lr=FIXED_LR, eval_every=10)
  settings = _settings(cfg.num_byzantine, cfg.het_radii)
  numeric = {"shift": cfg.shifts, "lr": list(lrs.values())}
  rows = _run_sim(task, label="spectral_filter", numeric=numeric,
                  aggregator="spectral_filter", settings=settings, **common)
  rows += _run_sim(task, label="mean", numeric=numeric, aggregator="mean",
                   settings=settings, **common)
  _label_lr(rows, lrs)
  summary = _summarize_d(cfg, task, settings,
                         [r for r in rows if r["lr_rule"] == "theorem"])
  summary["fixed_lr"] = _summarize_d(
      cfg, task, settings, [r for r in rows if r["lr_rule"] == "fixed"])
  summary.update(lrs=lrs, mu=task.mu, smooth=task.smooth)
  return rows, summary


def _summarize_d(cfg, task, settings, rows) -> dict[str, Any]:
  """Part (d)'s curves and slopes for the rows of one step size."""
  keys = ("config", "f", "c", "shift")
  err, sd = _final(rows, keys)
  stats = {m: _final(rows, keys, m)[0]
           for m in ("kappa_sup", "kappa_rms", "kappa_sup_init")}
  fil = [r for r in rows if r["config"] == "spectral_filter"]
  kept, _ = _final(fil, keys, "byz_kept")
  dropped, _ = _final(fil, keys, "honest_dropped")
  curves, slopes = {}, {}
  for agg in ("spectral_filter", "mean"):
    for f, c in settings:
      xs = [stats["kappa_sup"][(agg, f, c, float(sh))] for sh in cfg.shifts]
      ys = [err[(agg, f, c, float(sh))] for sh in cfg.shifts]
      curves[(agg, f, c)] = (xs, ys)
      big = [(x, y) for x, y in zip(xs, ys) if x >= np.median(xs)]
      slopes[(agg, f, c)] = fit_slope([p[0] for p in big],
                                      [p[1] for p in big])
  summary = {"shifts": list(cfg.shifts), "settings": settings,
             "error": err, "sd": sd, **stats, "curves": curves,
             "slopes": slopes, "byz_kept": kept, "honest_dropped": dropped,
             "sigma2": task.sigma2, "batch": cfg.het_batch}
  return summary


def _time_call(fn, arg, repeats):
  jax.block_until_ready(fn(arg))  # compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(arg))
    times.append(time.perf_counter() - t)
  return float(np.median(times)), float(np.min(times))


def filter_timing(dim: int, fractions, repeats: int, key: jax.Array
                  ) -> list[dict[str, Any]]:
  """The filter's time on the ``[R, k]`` messages vs the ``[R, d]`` ones."""
  x, _, _ = attacked_gradients(key, dim, 1.0, F_AGG, num_workers=R_AGG,
                               max_dim=dim)
  coords_key = jax.random.fold_in(key, 1)
  rows = []
  filt = jax.jit(lambda m: spectral_filter({"m": m}, return_info=True))
  avg = jax.jit(lambda m: mean({"m": m})["m"])
  for frac in fractions:
    k = max(1, int(round(frac * dim)))
    coords = draw_coordinates(coords_key, {"w": x[0]}, k)
    msg = jax.block_until_ready(gather_coordinates({"w": x}, coords))
    med, best = _time_call(lambda m: filt(m)[0]["m"], msg, repeats)
    med_mean, _ = _time_call(avg, msg, repeats)
    info = filt(msg)[1]
    rows.append({"part": "e_timing", "dim": dim, "k": k, "d_over_k": dim / k,
                 "filter_median_s": med, "filter_min_s": best,
                 "mean_median_s": med_mean,
                 "filter_rounds": int(info.num_rounds),
                 "byz_kept": int(jnp.sum(info.active[:F_AGG]))})
    _log(f"(e) filter on [{R_AGG}, {k}]: median {med * 1e3:.2f} ms "
         f"(min {best * 1e3:.2f} ms, {int(info.num_rounds)} rounds)")
  return rows


def _convergence_step(steps, errs, plateau, factor=1.5):
  """First evaluation step whose error is within ``factor`` x ``plateau``."""
  hit = [st for st, e in zip(steps, errs) if e <= factor * plateau]
  return min(hit) if hit else None


def _diverged(errs) -> bool:
  """A run diverged if its last error is non-finite or 10x its smallest."""
  errs = np.asarray(errs, float)
  return bool(not np.isfinite(errs[-1]) or
              errs[-1] > 10 * np.nanmin(np.where(np.isfinite(errs), errs,
                                                 np.nan)))


def part_e(cfg: Config, key: jax.Array) -> tuple[list, dict]:
  """Shared-coordinate rand-k (Algorithm 2, scaled): convergence and time.

  Every worker's message is (d/k) select_K(p_r) (Algorithm 2, line 7), on
  the server's coordinates K. Two step sizes: Theorem 5's eta = mu / L^2,
  and eta k / d, which makes the scaled algorithm's expected step per
  coordinate that of the uncompressed one at eta (and is exactly the
  unscaled variant, scatter_coordinates(scale=1.0), at eta). k runs inside
  Theorem 5's condition k >= (1 - eps - eps') R and outside it.
  """
  task = regression_task(jax.random.fold_in(key, 0),
                         num_workers=cfg.num_workers,
                         samples=cfg.samples_per_worker, dim=cfg.comp_dim)
  d = cfg.comp_dim
  steps = cfg.steps * cfg.comp_steps_factor
  eval_every = 20
  settings = [(0.0, 1.0), (float(cfg.num_byzantine), 1.0)]
  ks = [max(1, int(round(frac * d))) for frac in cfg.comp_fractions]
  eps = cfg.num_byzantine / cfg.num_workers
  k_min = (1 - eps - (0.25 - eps)) * cfg.num_workers  # eps' = 1/4 - eps
  eta = theorem_step(task)
  rules = ("theorem", "theorem_k_over_d")
  rows = []
  for k in ks:
    lrs = {"theorem": eta}
    if k < d:
      lrs["theorem_k_over_d"] = eta * k / d
    cell = _run_sim(task, label=f"k={k}", numeric={"lr": list(lrs.values())},
                    settings=settings,
                    seeds=cfg.sim_seeds, num_evals=steps // eval_every,
                    key=jax.random.fold_in(key, 1),
                    num_workers=cfg.num_workers, max_batch=cfg.het_batch,
                    lr=eta, eval_every=eval_every,
                    aggregator="spectral_filter", compress_k=k)
    _label_lr(cell, lrs)
    if k == d:  # eta k / d = eta: the same runs serve both rules
      cell += [dict(r, lr_rule="theorem_k_over_d") for r in cell]
    for r in cell:
      r["k"] = k
      r["coords_sent"] = r["step"] * k
    rows += cell
  keys = ("f", "k", "lr_rule")
  curves, conv, diverged = {}, {}, {}
  final, sd = _final(rows, keys)
  kept, _ = _final(rows, keys, "byz_kept")
  dropped, _ = _final(rows, keys, "honest_dropped")
  for f, _ in settings:
    for k in ks:
      for rule in rules:
        sel = [r for r in rows if r["k"] == k and r["f"] == f
               and r["lr_rule"] == rule]
        m = _mean_over_seeds(sel, ("step",), "error")
        steps_k = sorted(st for (st,) in m)
        errs = [m[(st,)] for st in steps_k]
        curves[(f, k, rule)] = (steps_k, errs)
        per_seed = {}
        for r in sorted(sel, key=lambda r: r["step"]):
          per_seed.setdefault(r["seed"], []).append(r["error"])
        diverged[(f, k, rule)] = float(np.mean(
            [_diverged(v) for v in per_seed.values()]))
        conv[(f, k, rule)] = (None if diverged[(f, k, rule)] else
                              _convergence_step(steps_k, errs,
                                                final[(f, k, rule)]))
  timing = filter_timing(cfg.time_dim, cfg.time_fractions, cfg.time_repeats,
                         jax.random.fold_in(key, 2))
  summary = {"dim": d, "ks": ks, "settings": settings, "rules": rules,
             "eta": eta, "mu": task.mu, "smooth": task.smooth,
             "k_min": k_min, "curves": curves, "final": final, "sd": sd,
             "converged_at": conv, "diverged": diverged, "byz_kept": kept,
             "honest_dropped": dropped, "timing": timing, "steps": steps}
  return rows + timing, summary


# ---------------------------------------------------------------------------
# Reports.


def _fmt(v, spec=".3g"):
  if v is None:
    return "–"
  if isinstance(v, float) and not np.isfinite(v):
    return "nan"
  return format(v, spec)


def _log_xticks(ax, values) -> None:
  """Log x axis labelled at ``values`` (plain numbers, no minor labels)."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  ax.set_xscale("log")
  ax.xaxis.set_major_locator(ticker.FixedLocator(list(values)))
  ax.xaxis.set_major_formatter(ticker.FixedFormatter(
      [f"{v:g}" for v in values]))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())


COLORS = {"mean": "C0", "coordinate_median": "C1", "krum": "C2",
          "geometric_median": "C3", "spectral_filter": "C4",
          "spectral_filter_paper": "C5"}
# Excess errors below this (units of sigma) are plotted at it: the filter's
# excess is exactly the rounding of two means when it keeps the honest set.
PLOT_FLOOR = 1e-4


def report_a(s, names, path_png) -> str:
  plt = _figures.pyplot()
  fig, axes = plt.subplots(1, 3 if "rule" in s else 2,
                           figsize=(15.5 if "rule" in s else 10.5, 3.9))
  dims = s["dims"]
  eps = F_AGG / R_AGG
  for name in names:
    ys = np.asarray(s["excess"][name])
    slope = (f"{s['slopes'][name]:+.2f}" if np.all(ys > PLOT_FLOOR)
             else "→ 0")
    axes[0].plot(dims, np.maximum(ys, PLOT_FLOOR), "o-", ms=3,
                 color=COLORS[name], label=f"{LABELS[name]} ({slope})")
  if "filter_worst" in s:
    fw = s["filter_worst"]
    axes[0].plot(fw["dims"], fw["values"], "s--", ms=4,
                 color=COLORS["spectral_filter"], mfc="none",
                 label=f"filter, worst radius ({fw['slope']:+.2f})")
  axes[0].plot(dims, np.sqrt(eps) * np.asarray(s["sigma_emp"]), "k:",
               label=r"$\sqrt{\varepsilon}\,\sigma_{emp}$")
  axes[0].plot(dims, s["oracle"], "k--", lw=1,
               label=r"oracle $\|\bar g_H - g\|$")
  axes[0].set_xscale("log")
  axes[0].set_yscale("log")
  axes[0].set_xlabel("dimension d")
  axes[0].set_ylabel(r"excess error $\|\hat g - \bar g_H\| / \sigma$")
  axes[0].set_title(f"annulus attack (radius 1), eps={eps:g}, R={R_AGG}",
                    fontsize=10)
  axes[0].legend(fontsize=6.5)
  axes[0].grid(alpha=0.3)
  styles = ["-", "--", ":"]
  for i, (d, w) in enumerate(sorted(s["radius_sweep"].items())):
    for name in ("mean", "geometric_median", "spectral_filter"):
      if name in w["curves"]:
        axes[1].plot(w["radii"], np.maximum(
            np.asarray(w["curves"][name]) / np.sqrt(d), PLOT_FLOOR),
                     marker="o", ms=3, ls=styles[i % 3], color=COLORS[name],
                     label=f"{LABELS[name]}, d={d}")
  radii = sorted({c for w in s["radius_sweep"].values() for c in w["radii"]})
  _log_xticks(axes[1], radii)
  axes[1].tick_params(axis="x", labelsize=7)
  axes[1].set_yscale("log")
  axes[1].set_xlabel(r"attack radius c (corrupt point $\mu + c\rho u$)")
  axes[1].set_ylabel(r"excess error / ($\sigma\sqrt{d}$)")
  axes[1].set_title("excess error vs the attack's radius", fontsize=10)
  axes[1].legend(fontsize=6, ncol=2)
  axes[1].grid(alpha=0.3)
  if "rule" in s:
    rule = s["rule"]
    for i, row in enumerate(rule["table"]):
      r = row["R"]
      cur = rule["curves"][r]
      axes[2].plot(rule["radii"], cur["paper"], "o-", ms=2.5, color=f"C{i}",
                   label=f"paper's filter, R={r}")
      axes[2].plot(rule["radii"], cur["mean"], ":", color=f"C{i}", lw=1)
      if row["c_star"]:
        axes[2].axvline(row["c_star"], color=f"C{i}", lw=0.8, ls="--")
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("attack radius c")
    axes[2].set_ylabel(r"excess error / $\sigma$")
    axes[2].set_title(f"paper's rule (Thm 1 σ₀), d={rule['dim']}, "
                      "eps=0.2; dotted: mean; dashed: c*", fontsize=9)
    axes[2].legend(fontsize=6)
    axes[2].grid(alpha=0.3)
  _figures.save(fig, path_png, dpi=90)

  lines = ["## (a) Aggregation error vs dimension", "",
           f"R = {R_AGG} workers, f = {F_AGG} Byzantine (eps = {eps:g}), "
           "honest g_i = g + σ N(0, I_d), annulus attack at radius 1 (corrupt "
           "point μ + ρu, ρ = median honest distance to the honest mean μ); "
           "mean over seeds, in units of σ. Excess = ||agg − honest mean||; "
           "σ_emp = √(top eigenvalue of the honest empirical covariance).",
           "", "| d | oracle ‖ḡ_H − g‖ | σ_emp | " +
           " | ".join(f"{LABELS[n]}" for n in names) + " |",
           "|---|---|---|" + "---|" * len(names)]
  for i, d in enumerate(dims):
    lines.append(f"| {d} | {_fmt(s['oracle'][i])} | "
                 f"{_fmt(s['sigma_emp'][i])} | " + " | ".join(
                     _fmt(s["excess"][n][i]) for n in names) + " |")
  lines += ["", "Total error ‖agg − g‖ / σ:", "",
            "| d | " + " | ".join(LABELS[n] for n in names) + " |",
            "|---|" + "---|" * len(names)]
  for i, d in enumerate(dims):
    lines.append(f"| {d} | " + " | ".join(
        _fmt(s["error"][n][i]) for n in names) + " |")
  lines += ["", "Fitted slopes of log(error) vs log(d), d >= 100:", "",
            "| aggregator | excess slope | total-error slope |",
            "|---|---|---|"]
  for n in names:
    lines.append(f"| {LABELS[n]} | {s['slopes'][n]:+.3f} | "
                 f"{s['error_slopes'][n]:+.3f} |")
  lines.append(f"| (oracle honest mean) | – | {s['oracle_slope']:+.3f} |")
  if "filter_byz_kept" in s:
    lines += ["", "Filter, byzjax σ̂ (mean over seeds), Byzantine kept / "
              "honest dropped: " + ", ".join(
                  f"d={d}: {k:.2g}/{h:.2g}" for d, k, h in zip(
                      dims, s["filter_byz_kept"], s["filter_honest_dropped"]))]
  if "paper_filter_byz_kept" in s:
    lines += ["", "Filter, paper's σ₀ (Theorem 1, σ² = d per sample, b = 1, "
              f"ε' = {EPS_PRIME}), Byzantine kept / honest dropped, and σ₀: "
              + ", ".join(
                  f"d={d}: {k:.2g}/{h:.2g}, σ₀={s0:.4g}" for d, k, h, s0 in
                  zip(dims, s["paper_filter_byz_kept"],
                      s["paper_filter_honest_dropped"], s["paper_sigma0"]))]
  lines += ["", "Radius sweep, excess / (σ√d):", "",
            "| d | radius c | " + " | ".join(LABELS[n] for n in names) + " |",
            "|---|---|" + "---|" * len(names)]
  for d, w in sorted(s["radius_sweep"].items()):
    for j, c in enumerate(w["radii"]):
      lines.append(f"| {d} | {c:g} | " + " | ".join(
          _fmt(w["curves"][n][j] / np.sqrt(d), ".3g") for n in names) + " |")
  if "filter_worst" in s:
    fw = s["filter_worst"]
    lines += ["", "Filter's worst case over the radius:", "",
              "| d | worst excess / σ | at radius | σ_emp | worst / "
              "(√ε σ_emp) | mean at radius 1 |", "|---|---|---|---|---|---|"]
    for d, v, c, se in zip(fw["dims"], fw["values"], fw["argmax_radius"],
                           fw["sigma_emp"]):
      mean_c1 = s["radius_sweep"][d]["curves"]["mean"][
          s["radius_sweep"][d]["radii"].index(1.0)]
      lines.append(f"| {d} | {_fmt(v)} | {c:g} | {_fmt(se)} | "
                   f"{_fmt(v / (np.sqrt(eps) * se), '.2f')} | "
                   f"{_fmt(mean_c1)} |")
    lines.append(f"\nSlope of the filter's worst case vs d: "
                 f"{fw['slope']:+.3f}.")
  if "rule" in s:
    rule = s["rule"]
    lines += ["", f"Where the paper's rule starts to work (d = {rule['dim']}, "
              "ε = 0.2, ε' = 0.05, σ₀ from Theorem 1): c* = smallest radius "
              "from which the filter removes every attacker in every seed; "
              "b* = c*² is the batch size at which it removes a cluster "
              "placed at the b = 1 honest radius (the filter is "
              "scale-equivariant and σ₀ ∝ 1/√b).", "",
              "c× = the radius at which the round-0 statistic reaches the "
              "threshold 4Rσ₀² (c/√(stat/threshold) from the largest kept "
              "radius; finer than the grid).", "",
              "| R | f | σ₀/σ | σ₀√(ε+ε')/σ | 1 + d/((1−ε−ε')R) | c* (grid) | "
              "c× | c×/√(1+d/…) | b* = c*² | mean's excess at c* | paper "
              "filter at c=1: excess / Byz. kept | mean at c=1 | paper "
              "filter's worst excess (at c) |", "|---|" * 1 + "---|" * 12]
    for t in rule["table"]:
      lines.append(
          f"| {t['R']} | {t['f']} | {_fmt(t['sigma0'], '.4g')} | "
          f"{_fmt(t['bound'], '.4g')} | {_fmt(t['factor'], '.3g')} | "
          f"{_fmt(t['c_star'], '.3g')} | {_fmt(t['c_cross'], '.3g')} | "
          f"{_fmt(t['c_cross_over_sqrt_factor'], '.3g')} | "
          f"{_fmt(t['b_star'], '.3g')} | "
          f"{_fmt(t['mean_excess_at_c_star'], '.4g')} | "
          f"{_fmt(t['paper_excess_c1'])} / {_fmt(t['kept_c1'], '.0f')} | "
          f"{_fmt(t['mean_excess_c1'])} | "
          f"{_fmt(t['paper_worst_excess'], '.4g')} "
          f"({t['paper_worst_radius']:.3g}) |")
  return "\n".join(lines) + "\n"


def _step_note(s) -> str:
  return (f"Steps: Theorem 1's η = µ/L² = {s['lrs']['theorem']:.4g} (µ = "
          f"{s['mu']:.4g}, L = {s['smooth']:.4g} of the global objective) "
          "in the figure and the first table; the fixed η = "
          f"{s['lrs']['fixed']:g} used before in the second.")


def report_b(s, path_png) -> str:
  head = f"## (b) Error vs mini-batch size\n\n{_step_note(s)}\n\n"
  return (head + _report_b(s, path_png, "η = µ/L² (Theorem 1)") + "\n" +
          _report_b(s["fixed_lr"], None, f"η = {s['lrs']['fixed']:g}"))


def _figure_b(s, path_png, step) -> None:
  plt = _figures.pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.9))
  bs = s["batch_sizes"]
  for key, ys in s["curves"].items():
    ax.errorbar(bs, ys, yerr=s["sd"][key], ms=3, capsize=2,
                fmt="o-" if key[0] == "spectral_filter" else ".--",
                label=f"{_setting_label(*key)} (slope vs b_eff "
                f"{s['slopes_eff'][key]:+.2f})")
  ref = np.asarray(bs, float) ** -0.5
  anchor = s["curves"][next(iter(s["curves"]))][-1] * np.sqrt(bs[-1])
  ax.plot(bs, anchor * ref, "k:", label=r"$\propto b^{-1/2}$")
  _log_xticks(ax, bs)
  ax.set_yscale("log")
  ax.set_xlabel("mini-batch size b")
  ax.set_ylabel(r"$\|w - \hat w_H\|$ (last third of training)")
  ax.set_title(f"linear regression, annulus attack at radius c; {step}",
               fontsize=9)
  ax.legend(fontsize=6)
  ax.grid(alpha=0.3)
  _figures.save(fig, path_png, dpi=90)


def _report_b(s, path_png, step) -> str:
  bs = s["batch_sizes"]
  if path_png is not None:
    _figure_b(s, path_png, step)
  lines = [f"### Step {step}", "",
           f"Per-sample gradient variance at the optimum σ² = "
           f"{s['sigma2']:.4g} (trace), so a worker's stochastic gradient has "
           f"variance σ²/b_eff, 1/b_eff = (1/b − 1/n)·n/(n−1) (batches are "
           f"drawn without replacement from n = {s['samples']} local samples). "
           "Error = ||w − ŵ_H|| averaged over the last third of training, "
           "mean over seeds.", "",
           "| setting | " + " | ".join(f"b={b}" for b in bs) +
           " | slope vs b | slope vs b_eff | slope vs b_eff, b ≥ 4 |",
           "|---|" + "---|" * len(bs) + "---|---|---|"]
  for key, ys in s["curves"].items():
    lines.append(f"| {_setting_label(*key)} | " + " | ".join(
        _fmt(v) for v in ys) + f" | {s['slopes'][key]:+.3f} | "
                 f"{s['slopes_eff'][key]:+.3f} | "
                 f"{s['slopes_eff_b4'][key]:+.3f} |")
  lines += ["", "Filter at the last evaluation, Byzantine kept / honest "
            "dropped (mean over seeds):", ""]
  for (f, c), vals in s["filter_diag"].items():
    lines.append(f"- f={int(f)}" + (f", c={c:g}" if f else "") + ": " +
                 ", ".join(f"b={b}: {k:.2g}/{h:.2g}"
                           for b, (k, h) in zip(bs, vals)))
  return "\n".join(lines) + "\n"


def report_c(s, path_png) -> str:
  plt = _figures.pyplot()
  radii = sorted(next(iter(s["curves"].values())).keys())
  fig, axes = plt.subplots(1, len(radii), figsize=(4.2 * len(radii), 3.6),
                           squeeze=False)
  for ax, c in zip(axes[0], radii):
    for name, by_c in s["curves"].items():
      ax.plot(s["eps"], np.maximum(by_c[c], 1e-9), "o-", ms=3,
              label=LABELS[name])
    ax.axvline(0.25, color="gray", ls=":", lw=1)
    ax.axvline(0.5, color="gray", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("corruption fraction eps")
    ax.set_ylabel(r"excess error / $\sigma$")
    ax.set_title(f"radius c = {c:g}")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  _figures.save(fig, path_png, dpi=90)
  lo, hi = s["radius_pair"]
  lines = ["## (c) Breakdown: excess error vs eps", "",
           f"d = {s['dim']}, R = {R_AGG}, annulus attack at radius c; excess "
           "= ||agg − honest mean|| / σ, mean over seeds. "
           "Broken at eps when the excess grows with "
           f"the attack's radius: ratio excess(c={hi:g}) / excess(c={lo:g}) "
           f"above √({hi:g}/{lo:g}).", "",
           "| aggregator | last bounded eps | first broken eps | ratio per "
           "eps |", "|---|---|---|---|"]
  for name, b in s["breakdown"].items():
    lines.append(f"| {LABELS[name]} | {_fmt(b['last_bounded_eps'])} | "
                 f"{_fmt(b['first_broken_eps'])} | " + ", ".join(
                     f"{e:g}:{q:.3g}" for e, q in zip(s["eps"], b["ratios"]))
                 + " |")
  for c in radii:
    lines += ["", f"Excess error / σ at radius {c:g}:", "",
              "| eps | " + " | ".join(LABELS[n] for n in s["curves"]) +
              " | filter: Byz. kept / honest dropped |",
              "|---|" + "---|" * (len(s["curves"]) + 1)]
    for i, e in enumerate(s["eps"]):
      lines.append(f"| {e:g} | " + " | ".join(
          _fmt(by_c[c][i]) for by_c in s["curves"].values()) +
                   f" | {s['filter_byz_kept'][c][i]:.3g} / "
                   f"{s['filter_honest_dropped'][c][i]:.3g} |")
  return "\n".join(lines) + "\n"


def report_d(s, path_png) -> str:
  head = f"## (d) Error vs heterogeneity\n\n{_step_note(s)}\n\n"
  return (head + _report_d(s, path_png, "η = µ/L² (Theorem 1)") + "\n" +
          _report_d(s["fixed_lr"], None, f"η = {s['lrs']['fixed']:g}"))


def _figure_d(s, path_png, step) -> None:
  plt = _figures.pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.9))
  for key, (xs, ys) in s["curves"].items():
    ax.plot(np.maximum(xs, 1e-3), ys,
            "o-" if key[0] == "spectral_filter" else ".--", ms=3,
            label=f"{_setting_label(*key)} ({s['slopes'][key]:+.2f})")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel(r"measured $\kappa = \max_{i \in H} \|\nabla f_i - "
                r"\nabla f_H\|$ at $\hat w_H$")
  ax.set_ylabel(r"$\|w - \hat w_H\|$")
  ax.set_title(f"heterogeneous linear regression, b={s['batch']}; {step}",
               fontsize=9)
  ax.legend(fontsize=6)
  ax.grid(alpha=0.3)
  _figures.save(fig, path_png, dpi=90)


def _report_d(s, path_png, step) -> str:
  if path_png is not None:
    _figure_d(s, path_png, step)
  settings = [(a, f, c) for a in ("spectral_filter", "mean")
              for f, c in s["settings"]]
  ref = settings[0]
  lines = [f"### Step {step}", "",
           f"b = {s['batch']}, σ² = {s['sigma2']:.4g}. Measured: κ_sup = max "
           "over honest workers of ||∇f_i − ∇f_H|| at the honest optimum, "
           "κ_rms its root mean square, κ_sup(w=0) the max at the initial "
           "point. Error = ||w − ŵ_H|| (last third of training).", "",
           "| shift s | κ_sup | κ_rms | κ_sup(w=0) | " +
           " | ".join(_setting_label(*k) for k in settings) +
           " | filter f=0: honest dropped |",
           "|---|---|---|---|" + "---|" * len(settings) + "---|"]
  for sh in s["shifts"]:
    sh = float(sh)
    r = ref + (sh,)
    lines.append(
        f"| {sh:g} | {_fmt(s['kappa_sup'][r])} | {_fmt(s['kappa_rms'][r])} | "
        f"{_fmt(s['kappa_sup_init'][r])} | " + " | ".join(
            _fmt(s["error"][k + (sh,)]) for k in settings) +
        f" | {_fmt(s['honest_dropped'][r], '.2g')} |")
  lines += ["", "Slope of log(error) vs log(κ_sup) over the upper half of "
            "the κ range: " + ", ".join(
                f"{_setting_label(*k)}: {s['slopes'][k]:+.2f}"
                for k in settings)]
  att = [k for k in s["settings"] if k[0] > 0]
  def kept_dropped(f, c, sh):
    k = ("spectral_filter", f, c, float(sh))
    return f"{s['byz_kept'][k]:.2g}/{s['honest_dropped'][k]:.2g}"

  lines += ["", "Filter under attack, Byzantine kept / honest dropped at the "
            "last evaluation: " + "; ".join(
                f"c={c:g}: " + ", ".join(
                    f"s={sh:g}: {kept_dropped(f, c, sh)}"
                    for sh in s["shifts"]) for f, c in att)]
  return "\n".join(lines) + "\n"


def report_e(s, path_png) -> str:
  plt = _figures.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  rule_ax = {"theorem_k_over_d": axes[0], "theorem": axes[1]}
  for (f, k, rule), (steps, errs) in sorted(
      s["curves"].items(), key=lambda kv: (kv[0][0], -kv[0][1])):
    ls = "-" if f else "--"
    color = f"C{s['ks'].index(k)}"
    errs = np.asarray(errs, float)
    errs = np.where(np.isfinite(errs), errs, 1e30)
    inside = "in" if k >= s["k_min"] else "out"
    rule_ax[rule].plot(steps, np.minimum(errs, 1e30), ls=ls, color=color,
                       label=f"k={k} ({inside}), f={int(f)}")
  titles = {"theorem_k_over_d": f"scaled, η = (k/d)·µ/L² "
                                f"(d={s['dim']})",
            "theorem": f"scaled, η = µ/L² = {s['eta']:.3g} (Theorem 5)"}
  for rule, ax in rule_ax.items():
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(r"$\|w - \hat w_H\|$")
    ax.set_title(titles[rule], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
  axes[1].set_ylim(top=1e6)
  t = s["timing"]
  ks = [r["k"] for r in t]
  axes[2].plot(ks, [r["filter_median_s"] * 1e3 for r in t], "o-",
               label="spectral filter on [R, k] (median)")
  axes[2].plot(ks, [r["filter_min_s"] * 1e3 for r in t], "s:", mfc="none",
               label="spectral filter (min)")
  axes[2].plot(ks, [r["mean_median_s"] * 1e3 for r in t], ".--",
               label="mean on [R, k] (median)")
  full = max(t, key=lambda r: r["k"])
  axes[2].plot(ks, [full["filter_min_s"] * 1e3 * k / full["k"] for k in ks],
               "k:", label="∝ k")
  _log_xticks(axes[2], ks)
  axes[2].set_yscale("log")
  axes[2].set_xlabel("k")
  axes[2].set_ylabel("time (ms)")
  axes[2].set_title(f"decoding time, R={R_AGG}, d={full['dim']}", fontsize=10)
  axes[2].legend(fontsize=6)
  axes[2].grid(alpha=0.3)
  _figures.save(fig, path_png, dpi=90)
  lines = ["## (e) Compressed variant (shared rand-k, Algorithm 2, scaled)",
           "", f"d = {s['dim']}, {s['steps']} steps, R = {R_AGG}, messages "
           "(d/k)·select_K(p_r) on server-drawn coordinates K shared by all "
           "workers, filtered with byzjax σ̂ (extension) in k dimensions; "
           "annulus attack at radius 1 (applied to the full gradients; the "
           "server sees their k coordinates). Theorem 5's condition k ≥ "
           f"(1 − ε − ε')R = {s['k_min']:.3g} (ε = 0.2, ε' = 0.05). Steps: "
           f"Theorem 5's η = µ/L² = {s['eta']:.4g} (µ = {s['mu']:.4g}, L = "
           f"{s['smooth']:.4g}) and η·k/d. Plateau = error averaged over "
           "the last third; converged at = first evaluation within 1.5× the "
           "plateau; diverged = share of seeds whose last error is non-finite "
           "or above 10× their smallest.", "",
           "| step | f | k | in condition | plateau ‖w − ŵ_H‖ | diverged | "
           "converged at step | × steps of k=d | coordinates sent by then | "
           "filter: Byz. kept / honest dropped |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  kmax = max(s["ks"])
  for rule in s["rules"]:
    for f, _ in s["settings"]:
      for k in sorted(s["ks"], reverse=True):
        key = (f, k, rule)
        st = s["converged_at"][key]
        ref = s["converged_at"][(f, kmax, rule)]
        ratio = st / ref if st and ref else None
        step = ("µ/L²" if rule == "theorem" else "(k/d)·µ/L²")
        lines.append(
            f"| {step} | {int(f)} | {k} | "
            f"{'yes' if k >= s['k_min'] else 'no'} | "
            f"{_fmt(s['final'][key])} ± {_fmt(s['sd'][key], '.2g')} | "
            f"{s['diverged'][key]:.2g} | "
            f"{_fmt(st, 'd')} | {_fmt(ratio, '.3g')} | "
            f"{_fmt(st * k if st else None, 'd')} | "
            f"{_fmt(s['byz_kept'][key], '.2g')} / "
            f"{_fmt(s['honest_dropped'][key], '.2g')} |")
  lines += ["", f"Filter time on [R, k] vs [R, d], d = {full['dim']}, "
            f"R = {R_AGG}, f = {F_AGG} annulus rows (jitted, after warm-up):",
            "", "| k | d/k | filter median (ms) | filter min (ms) | speed-up "
            "vs k=d (min) | speed-up (median) | mean median (ms) | filter "
            "rounds | Byzantine kept |",
            "|---|---|---|---|---|---|---|---|---|"]
  for r in sorted(t, key=lambda r: -r["k"]):
    lines.append(f"| {r['k']} | {r['d_over_k']:.3g} | "
                 f"{r['filter_median_s'] * 1e3:.3g} | "
                 f"{r['filter_min_s'] * 1e3:.3g} | "
                 f"{full['filter_min_s'] / r['filter_min_s']:.3g} | "
                 f"{full['filter_median_s'] / r['filter_median_s']:.3g} | "
                 f"{r['mean_median_s'] * 1e3:.3g} | {r['filter_rounds']} | "
                 f"{r['byz_kept']} |")
  return "\n".join(lines) + "\n"


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (np.floating, np.integer)):
    return obj.item()
  return obj


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="results/data_diggavi",
                      help="results folder (created)")
  parser.add_argument("--seeds", type=int, default=None,
                      help="seeds per point (default: 8 for a/c, 5 for the "
                      "simulations; 4/3 with --quick)")
  parser.add_argument("--steps", type=int, default=None,
                      help="SGD steps in (b), (d); (e) runs a multiple")
  parser.add_argument("--quick", action="store_true",
                      help="small sizes (about two minutes)")
  parser.add_argument("--part", default=",".join(PARTS),
                      help="comma-separated subset of a,b,c,d,e")
  parser.add_argument("--seed", type=int, default=0, help="base PRNG seed")
  args = parser.parse_args(argv)
  parts = [p.strip() for p in args.part.split(",") if p.strip()]
  bad = sorted(set(parts) - set(PARTS))
  if bad:
    parser.error(f"--part: unknown part(s) {bad}; choose from {PARTS}")
  cfg = QUICK if args.quick else FULL
  if args.seeds is not None:
    cfg = dataclasses.replace(cfg, seeds=args.seeds, sim_seeds=args.seeds)
  if args.steps is not None:
    if args.steps < 10 or args.steps % 10:
      parser.error("--steps must be a positive multiple of 10")
    cfg = dataclasses.replace(cfg, steps=args.steps)

  os.makedirs(args.out, exist_ok=True)
  key = jax.random.key(args.seed)
  total = time.perf_counter()
  summaries, sections, seconds = {}, [], {}
  for part in parts:
    start = time.perf_counter()
    name = NAMES[part]
    pkey = jax.random.fold_in(key, PARTS.index(part))
    _log(f"part ({part}): {name}")
    png = os.path.join(args.out, f"{name}.png")
    if part == "a":
      rows, s = part_a(cfg, pkey)
      md = report_a(s, AGGREGATORS, png)
    elif part == "b":
      rows, s = part_b(cfg, pkey)
      md = report_b(s, png)
    elif part == "c":
      rows, s = part_c(cfg, pkey)
      md = report_c(s, png)
    elif part == "d":
      rows, s = part_d(cfg, pkey)
      md = report_d(s, png)
    else:
      rows, s = part_e(cfg, pkey)
      md = report_e(s, png)
    seconds[part] = time.perf_counter() - start
    md += f"\nWall-clock time of this part: {seconds[part]:.0f} s.\n"
    simulation.write_csv(rows, os.path.join(args.out, f"{name}.csv"))
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
      f.write(md)
    summaries[part] = s
    sections.append(md)
    _log(f"part ({part}) done in {seconds[part]:.1f}s")
  total = time.perf_counter() - total
  summary_md = ("# Data & Diggavi: claims tested with byzjax\n\n" +
                "\n".join(sections) + f"\nTotal wall-clock time: {total:.0f} "
                "s.\n")
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write(summary_md)
  with open(os.path.join(args.out, "config.json"), "w") as f:
    json.dump({"args": vars(args), "config": _jsonable(dataclasses.asdict(cfg)),
               "seconds": seconds, "total_seconds": total,
               "jax": jax.__version__, "backend": jax.default_backend(),
               "summaries": _jsonable(summaries)}, f, indent=1, default=str)
  print(summary_md)
  _log(f"wrote {', '.join(NAMES[p] for p in parts)} (.csv/.png/.md), "
       f"summary.md, config.json to {args.out}")
  return summaries


if __name__ == "__main__":
  main(sys.argv[1:])
