"""Chen, Su & Xu (2017): Byzantine gradient descent on linear regression.

Reproduces the linear-regression application (§4, Corollary 1) of Chen, Su &
Xu's Byzantine gradient descent (Algorithm 2): full-batch distributed gradient
descent whose server aggregates the ``m`` worker gradients by the geometric
median of the means of ``k`` groups (GMoM, :func:`~byzjax.aggregators.
geometric_median_of_means.geometric_median_of_means`). Corollary 1 (with
:math:`L = M = 1`, :math:`\\eta = 1/2`) states

.. math::
  \\|\\theta_t - \\theta^\\star\\| \\le \\Bigl(\\frac12 + \\frac{\\sqrt3}{4}\\Bigr)^t
  \\|\\theta_0 - \\theta^\\star\\| + c_2 C_\\alpha \\sqrt{dk/N},

a contraction by at most :math:`\\tfrac12 + \\sqrt3/4 \\approx 0.933` per
step down to a plateau of order :math:`\\sqrt{dk/N}`, i.e.
:math:`\\max(\\sqrt{dq/N}, \\sqrt{d/N})` for :math:`k = 2(1+\\epsilon)q`
(the abstract). :math:`c_2` is an unspecified universal constant, so only
the exponents of the plateau are compared, not its constant. Remark 2 adds
the trimming of group means longer than :math:`\\tau = \\Theta(d)` before an
approximate geometric median: the variant ``gmom_trim`` runs it with
:math:`\\tau = ` ``--trim-factor`` :math:`\\times d` (our constant).

Setup (stated in ``experiments/results_fragments/chen_su_xu.md``):

* data: :math:`x_i \\sim N(0, I_d)`, :math:`y_i = \\langle x_i, \\theta^\\star
  \\rangle + \\zeta_i`, :math:`\\zeta_i \\sim N(0, 1)`, :math:`\\theta^\\star
  \\sim N(0, I_d)`, a fresh draw per seed; ``m`` workers with ``N/m``
  samples each;
* loss :math:`\\tfrac12 (\\langle x, \\theta\\rangle - y)^2`, so the
  population risk is :math:`\\tfrac12\\|\\theta - \\theta^\\star\\|^2 +
  \\tfrac12` with :math:`L = M = 1`, and the paper's step size
  :math:`\\eta = L / (2M^2) = 1/2`;
* every worker's gradient is on its whole local sample (full-batch GD). The
  simulator samples mini-batches, so each worker's shard is stored as ONE
  "super-sample" of shape ``[N/m, d]`` and ``batch_size=1`` picks it: the
  gradient is exactly the local full-batch gradient;
* attack: the ``q`` Byzantine workers all send :math:`\\mu + c\\,\\rho\\, u`
  (:func:`~byzjax.attacks.gradient.annulus` with a fixed direction
  :math:`u = \\mathbf 1/\\sqrt d` and ``radius_scale`` :math:`c = 100`):
  :math:`\\mu` is the honest mean gradient, :math:`\\rho` the honest spread.
  A far point in one fixed direction is what biases a geometric median most
  (its pull is a unit vector whatever the distance), and keeping the
  direction fixed over steps turns that pull into a bias of the fixed point;
* Byzantine set: fixed (``redraw_byzantine=False``) and adversarially placed
  for GMoM, one Byzantine worker in each of ``q`` different groups (GMoM's
  groups are contiguous), the worst case of the theorem; the placement does
  not matter for the mean or the plain geometric median. The variant
  ``gmom_redraw`` (with ``--redraw``) instead draws q uniformly random
  Byzantine workers every step (``redraw_byzantine=True``, which the paper
  allows).

Sweeps: ``q`` at fixed ``N`` with GMoM (``k = 2(1+eps) q``), GMoM with
Remark 2's trimming (``gmom_trim``), the mean (``k = 1``) and the plain
geometric median (``k = m``); ``N`` at fixed ``q`` with GMoM and the mean. Both geometric medians stop on the step criterion
(``criterion="step"``, pinned: the library's default is the objective rule). Seeds are vmapped (one jitted call per cell; the mean and the
plain GM also vmap over ``q``). The data differ per seed, so the runs are
vmapped here directly over :func:`byzjax.simulation.init` /
:func:`byzjax.simulation.run` rather than with
:func:`byzjax.simulation.vmapped_runs`, which shares one dataset across
seeds.

Writes ``results.csv`` (tidy: one row per aggregator, q, N, seed and step),
``plateaus.csv``, ``curves.png``, ``scaling.png``, ``summary.md`` and
``config.json`` into ``--out``.

Usage::

  python experiments/chen_su_xu.py --out results/chen_su_xu
  python experiments/chen_su_xu.py --quick --out /tmp/csx
"""

import argparse
import collections
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import byzjax
from byzjax import simulation
from byzjax.aggregators.coordinatewise import mean
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.aggregators.geometric_median_of_means import (
    geometric_median_of_means)
from byzjax.attacks.gradient import annulus_attack
from byzjax.data.partition import WorkerData

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _figures  # pylint: disable=g-import-not-at-top,wrong-import-position

AGGREGATORS = ("gmom", "mean", "gm")
LABELS = {"gmom": "GMoM, k = 2(1+ε)q", "mean": "mean (k = 1)",
          "gmom_redraw": "GMoM, Byzantine set redrawn every step",
          "gmom_trim": "GMoM, long group means trimmed (Remark 2)",
          "gm": "geometric median (k = m)"}
COLORS = {"gmom": "C0", "mean": "C3", "gm": "C2", "gmom_redraw": "C1",
          "gmom_trim": "C4"}
# Corollary 1's contraction factor per step, L = M = 1, eta = 1/2.
COROLLARY_RATE = 0.5 + math.sqrt(3) / 4
PLATEAU_STEPS = 10  # plateau = mean error over the last steps

# The N sweep runs GMoM and the mean; the plain GM (k = m) only in the q
# sweep (each cell is one compilation, a few minutes on the shared CPU).
N_SWEEP = ("gmom", "mean")
FULL = dict(num_workers=128, dim=20, qs=(1, 4, 16),
            samples_per_worker=(16, 64, 256, 1024),
            q_for_n_sweep=4, n_for_q_sweep=64, steps=40, seeds=20)
QUICK = dict(num_workers=32, dim=10, qs=(1, 2),
             samples_per_worker=(16, 64, 256), q_for_n_sweep=2,
             n_for_q_sweep=64, steps=25, seeds=3)


def make_data(key, num_workers, samples_per_worker, dim, noise_std):
  """Linear-regression data split over workers, one super-sample each.

  Returns:
    ``(WorkerData(x [m, 1, n, d], y [m, 1, n], size [m]), theta_star [d],
    theta_ls [d])`` where ``theta_ls`` is the centralized, failure-free
    least-squares estimate on all ``N = m n`` samples (the oracle).
  """
  k_theta, k_x, k_noise = jax.random.split(key, 3)
  n_total = num_workers * samples_per_worker
  theta_star = jax.random.normal(k_theta, (dim,))
  x = jax.random.normal(k_x, (n_total, dim))
  y = x @ theta_star + noise_std * jax.random.normal(k_noise, (n_total,))
  theta_ls = jnp.linalg.solve(x.T @ x, x.T @ y)
  data = WorkerData(
      x=x.reshape(num_workers, 1, samples_per_worker, dim),
      y=y.reshape(num_workers, 1, samples_per_worker),
      size=jnp.ones(num_workers, jnp.int32))
  return data, theta_star, theta_ls


def loss_fn(params, batch):
  """Half squared error on one worker's whole shard (the super-sample)."""
  x, y = batch  # [1, n, d], [1, n]
  return 0.5 * jnp.mean(jnp.square(x[0] @ params["w"] - y[0]))


def byzantine_mask(num_workers, num_byzantine, stride):
  """Workers ``0, stride, 2 stride, ...`` (the first ``q`` such) are Byzantine.

  With ``stride = m / k`` every Byzantine worker sits in its own contiguous
  GMoM group; ``stride = 1`` is the first ``q`` workers.
  """
  i = jnp.arange(num_workers)
  return (i % stride == 0) & (i // stride < num_byzantine)


def aggregator_tx(name, num_groups, num_workers, trim_threshold=None):
  del num_workers
  if name in ("gmom", "gmom_redraw"):
    return byzjax.aggregate(geometric_median_of_means, num_groups=num_groups)
  if name == "gmom_trim":
    return byzjax.aggregate(geometric_median_of_means, num_groups=num_groups,
                            trim_threshold=trim_threshold)
  if name == "gm":
    return byzjax.aggregate(geometric_median, criterion="step")
  if name == "mean":
    return byzjax.aggregate(mean)
  raise ValueError(f"unknown aggregator {name!r}")


def run_cell(name, qs, samples_per_worker, cfg, *, key, eps, radius_scale,
             lr, noise_std, trim_factor):
  """All seeds (and, for mean/GM, all q) of one aggregator at one N.

  Returns:
    ``(errors [Q, S, T], to_last [Q, S, T], theta_ls_errors [S],
    initial_errors [S])``: the error after every step, the distance of every
    iterate to the last one, the error of the centralized least-squares
    oracle and :math:`\\|\\theta_0 - \\theta^\\star\\|`.
  """
  m, d, steps, seeds = (cfg["num_workers"], cfg["dim"], cfg["steps"],
                        cfg["seeds"])
  redraw = name == "gmom_redraw"
  if name in ("gmom", "gmom_redraw", "gmom_trim"):
    (q,) = qs
    num_groups = int(round(2 * (1 + eps) * q))
    if m % num_groups:
      raise ValueError(f"k = {num_groups} groups must divide m = {m}")
    stride = m // num_groups
  else:
    num_groups = 1 if name == "mean" else m
    stride = 1
  direction = {"w": jnp.ones(d) / math.sqrt(d)}

  def one(q, seed_key):
    k_data, k_run = jax.random.split(seed_key)
    data, theta_star, theta_ls = make_data(k_data, m, samples_per_worker, d,
                                           noise_std)
    sim = simulation.Simulation(
        loss_fn=loss_fn,
        server_tx=optax.chain(
            aggregator_tx(name, num_groups, m, trim_factor * d),
            optax.sgd(lr)),
        num_workers=m, batch_size=1,
        attack=annulus_attack(direction=direction, radius_scale=radius_scale),
        num_byzantine=q, redraw_byzantine=redraw,
        eval_fn=lambda p: {"error": jnp.linalg.norm(p["w"] - theta_star),
                           "w": p["w"]},
        eval_every=1)
    state = simulation.init(sim, {"w": jnp.zeros(d)}, k_run)
    if not redraw:  # redrawn sets are uniformly random every step
      state = state._replace(byzantine=byzantine_mask(m, q, stride))
    _, metrics = simulation.run(sim, state, data, steps)
    # Distance to the last iterate: its decay shows the linear rate all the
    # way down, not only while the error is far above the plateau.
    to_last = jnp.linalg.norm(metrics["w"] - metrics["w"][-1], axis=-1)
    return (metrics["error"], to_last,
            jnp.linalg.norm(theta_ls - theta_star),
            jnp.linalg.norm(theta_star))  # theta_0 = 0

  keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(seeds))
  fn = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
  errors, to_last, ls, e0 = fn(jnp.asarray(qs, jnp.int32), keys)
  return (np.asarray(errors), np.asarray(to_last), np.asarray(ls[0]),
          np.asarray(e0[0]))


def loglog_slope(x, y):
  """Least-squares slope of log y against log x (``nan`` if any y is inf)."""
  if not np.all(np.isfinite(y)):
    return float("nan")
  return float(np.polyfit(np.log(np.asarray(x, float)),
                          np.log(np.asarray(y, float)), 1)[0])


def convergence_rate(to_last):
  """Per-step contraction factor of the iterates towards their limit.

  Fitted by least squares on the seed mean of :math:`\\log\\|\\theta_t -
  \\theta_T\\|` (``to_last [S, T]``) over the steps where every seed is
  still above float32 round-off (``1e-4`` of the first distance) and before
  the last five steps; ``nan`` if fewer than two steps qualify.
  """
  floor = 1e-4 * np.max(to_last[:, 0])
  t = np.arange(1, to_last.shape[1] + 1)
  sel = np.all(to_last > floor, axis=0) & (t < to_last.shape[1] - 5)
  if sel.sum() < 2:
    return float("nan")
  logs = np.log(to_last[:, sel]).mean(axis=0)
  return float(np.exp(np.polyfit(t[sel], logs, 1)[0]))


def transient_contraction(initial, errors, plateau_steps=PLATEAU_STEPS):
  """The smallest :math:`\\rho` with :math:`e_t \\le \\rho^t e_0` in the transient.

  Corollary 1 bounds :math:`e_t = \\|\\theta_t - \\theta^\\star\\|` by
  :math:`\\rho^t e_0` plus a constant, with :math:`\\rho = \\tfrac12 +
  \\sqrt3/4`. Measured: :math:`\\max (e_t / e_0)^{1/t}` over the seeds and
  the steps :math:`t \\ge 1` where :math:`e_t` is above three times the seed's
  plateau (mean of the last ``plateau_steps`` errors), i.e. where the first
  term dominates. ``nan`` if no step qualifies or a run is not finite.

  Args:
    initial: :math:`e_0` per seed, shape ``[S]``.
    errors: :math:`e_1, \\dots, e_T` per seed, shape ``[S, T]``.
    plateau_steps: steps averaged for the plateau.
  """
  errors = np.asarray(errors, float)
  if not np.all(np.isfinite(errors)):
    return float("nan")
  plateau = errors[:, -plateau_steps:].mean(axis=1, keepdims=True)
  t = np.arange(1, errors.shape[1] + 1)
  sel = errors > 3 * plateau
  if not np.any(sel):
    return float("nan")
  ratio = (errors / np.asarray(initial, float)[:, None]) ** (1.0 / t)
  return float(np.max(ratio[sel]))


def predicted_plateau(q, k, n_total, dim, noise_std, oracle):
  """Heuristic plateau of a GM of ``k`` group means with ``q`` far outliers.

  A group mean of ``N/k`` samples lies at distance about :math:`r =
  \\sigma\\sqrt{dk/N}` from the true gradient (for i.i.d. :math:`N(0, I)`
  features, the gradient noise at :math:`\\theta^\\star` has covariance
  :math:`\\sigma^2 I` per sample). ``q`` outliers far away in one direction
  pull the geometric median with a unit force each, the ``k - q`` honest
  points pull back with about :math:`\\delta / r` each when it has moved
  by :math:`\\delta`, so :math:`\\delta \\approx q r / (k - q)`; with
  :math:`L = 1` the fixed point moves by the same :math:`\\delta`, roughly
  orthogonal to the estimation error ``oracle``. For ``k = 2(1+eps) q`` this
  is :math:`\\propto \\sqrt{q}`; for ``k = m`` it is linear in ``q``.
  """
  delta = q / (k - q) * noise_std * math.sqrt(dim * k / n_total)
  return math.sqrt(oracle ** 2 + delta ** 2)


def _plot_curves(curves, cfg, path):
  plt = _figures.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  steps = np.arange(1, cfg["steps"] + 1)
  n = cfg["n_for_q_sweep"]
  for i, q in enumerate(cfg["qs"]):
    e = curves[("gmom", q, n)].mean(axis=0)
    axes[0].semilogy(steps, e, color=f"C{i}", label=f"q = {q}")
  axes[0].set_title(f"GMoM, m = {cfg['num_workers']}, N = "
                    f"{cfg['num_workers'] * n}, k = 2(1+ε)q")
  q = cfg["q_for_n_sweep"]
  for name in AGGREGATORS:
    e = curves[(name, q, n)].mean(axis=0)
    axes[1].semilogy(steps, e, color=COLORS[name], label=LABELS[name])
  axes[1].set_title(f"q = {q} Byzantine of m = {cfg['num_workers']}")
  for ax in axes:
    ax.set_xlabel("step t")
    ax.set_ylabel("‖θ_t − θ*‖ (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  _figures.save(fig, path, dpi=90)


def _groups(name, q, m, eps):
  return {"gmom": int(round(2 * (1 + eps) * q)),
          "gmom_redraw": int(round(2 * (1 + eps) * q)),
          "gmom_trim": int(round(2 * (1 + eps) * q)), "mean": 1,
          "gm": m}[name]


def _plot_scaling(plateau, cfg, path, *, eps, noise_std):
  plt = _figures.pyplot()
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top,unused-import
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  m, d = cfg["num_workers"], cfg["dim"]
  n = cfg["n_for_q_sweep"]
  qs = np.asarray(cfg["qs"])
  robust = ("gmom", "gm")  # the mean diverges: see the table
  oracle = plateau[("oracle", 0, n)][0]
  for name in ("gmom_redraw", "gmom_trim"):
    if (name, qs[0], n) not in plateau:
      continue
    axes[0].loglog(qs, [plateau[(name, q, n)][0] for q in qs], "s-",
                   color=COLORS[name], label=LABELS[name], alpha=0.8)
  for name in robust:
    y = [plateau[(name, q, n)][0] for q in qs]
    axes[0].loglog(qs, y, "o-", color=COLORS[name], label=LABELS[name])
    pred = [predicted_plateau(q, _groups(name, q, m, eps), m * n, d,
                              noise_std, oracle) for q in qs]
    axes[0].loglog(qs, pred, ":", color=COLORS[name], alpha=0.7,
                   label=f"{name}: bias heuristic")
  axes[0].loglog(qs, [plateau[("oracle", 0, n)][0]] * len(qs), "k:",
                 label="centralized LS, no attack")
  axes[0].set_xticks(qs)
  axes[0].set_xlabel("Byzantine workers q")
  axes[0].set_title(f"plateau error, N = {m * n}")
  q = cfg["q_for_n_sweep"]
  ns = np.asarray(cfg["samples_per_worker"])
  big_n = m * ns
  for name in robust:
    if (name, q, ns[0]) not in plateau:
      continue
    y = [plateau[(name, q, s)][0] for s in ns]
    axes[1].loglog(big_n, y, "o-", color=COLORS[name], label=LABELS[name])
    pred = [predicted_plateau(q, _groups(name, q, m, eps), m * s, d,
                              noise_std, plateau[("oracle", 0, s)][0])
            for s in ns]
    axes[1].loglog(big_n, pred, ":", color=COLORS[name], alpha=0.7,
                   label=f"{name}: bias heuristic")
  axes[1].loglog(big_n, [plateau[("oracle", 0, s)][0] for s in ns], "k:",
                 label="centralized LS, no attack")
  axes[1].set_xlabel("total samples N")
  axes[1].set_title(f"plateau error, q = {q}")
  for ax in axes:
    ax.set_ylabel("‖θ_T − θ*‖ (mean diverges, not shown)")
    ax.grid(alpha=0.3, which="both")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7)
  _figures.save(fig, path, dpi=90)


def _fmt(stat):
  if np.isnan(stat[0]):
    return "not run"
  if not np.isfinite(stat[0]):
    return "diverged (inf)"
  return f"{stat[0]:.4g} ± {stat[1]:.2g}"


def summarize(plateau, rates, contraction, cfg, *, eps, lr, noise_std,
              trim_factor, seconds):
  """The Markdown summary: plateaus, slopes, contraction factors."""
  m, d = cfg["num_workers"], cfg["dim"]
  n = cfg["n_for_q_sweep"]
  q_fix = cfg["q_for_n_sweep"]
  lines = [
      "# Chen, Su & Xu — Byzantine gradient descent, linear regression", "",
      f"m = {m} workers, d = {d}, noise σ = 1, η = {lr}, "
      f"{cfg['steps']} full-batch steps, {cfg['seeds']} seeds (fresh data "
      f"each); GMoM with k = 2(1+ε)q groups, ε = {eps}; Remark 2's "
      f"trimming at τ = {trim_factor:g}·d = {trim_factor * d:g}. Plateau = "
      f"‖θ_t − θ*‖ averaged over the last {PLATEAU_STEPS} steps, mean ± sd "
      "over seeds (the mean's runs that diverge are still growing: their "
      "value is not a plateau).", "",
      f"## Plateau vs q (N = {m * n}, {n} samples per worker)", "",
      "| q | k (GMoM) | GMoM | GMoM heuristic | GMoM, trimmed (Remark 2) | "
      "GMoM, set redrawn every step | mean (k = 1) | GM (k = m) | "
      "GM heuristic |",
      "|---|---|---|---|---|---|---|---|---|"]
  oracle = plateau[("oracle", 0, n)][0]
  for q in cfg["qs"]:
    k = _groups("gmom", q, m, eps)
    pg = predicted_plateau(q, k, m * n, d, noise_std, oracle)
    pm = predicted_plateau(q, m, m * n, d, noise_std, oracle)
    lines.append(
        f"| {q} | {k} | {_fmt(plateau[('gmom', q, n)])} | {pg:.4g} | "
        f"{_fmt(plateau[('gmom_trim', q, n)])} | "
        f"{_fmt(plateau[('gmom_redraw', q, n)])} | "
        f"{_fmt(plateau[('mean', q, n)])} | {_fmt(plateau[('gm', q, n)])} | "
        f"{pm:.4g} |")
  lines += ["", f"Centralized least squares without attack (oracle): "
            f"{_fmt(plateau[('oracle', 0, n)])}; √(d/N) = "
            f"{math.sqrt(d / (m * n)):.4g}.", "",
            f"## Plateau vs N (q = {q_fix})", "",
            "| N | GMoM | GMoM / √(dk/N) | mean (k = 1) | GM (k = m) | "
            "oracle LS |", "|---|---|---|---|---|---|"]
  k_fix = _groups("gmom", q_fix, m, eps)
  for s in cfg["samples_per_worker"]:
    ratio = plateau[("gmom", q_fix, s)][0] / math.sqrt(d * k_fix / (m * s))
    lines.append(
        f"| {m * s} | {_fmt(plateau[('gmom', q_fix, s)])} | {ratio:.3f} | "
        f"{_fmt(plateau[('mean', q_fix, s)])} | "
        f"{_fmt(plateau[('gm', q_fix, s)])} | "
        f"{_fmt(plateau[('oracle', 0, s)])} |")
  qs = list(cfg["qs"])
  big_n = [m * s for s in cfg["samples_per_worker"]]
  ls_n = {s: plateau[("oracle", 0, s)][0] for s in cfg["samples_per_worker"]}

  def excess(name, q, s):
    # Attack-induced part: the bias is roughly orthogonal to the estimation
    # noise, so subtract the oracle's error in quadrature.
    return math.sqrt(max(plateau[(name, q, s)][0] ** 2 - ls_n[s] ** 2,
                         1e-30))

  lines += ["", "GMoM / √(dk/N) is the constant the plateau implies for "
            "Corollary 1's c₂C_α (which the paper leaves unspecified); the "
            "corollary's claim is that it does not grow with N.", "",
            "Heuristic = √(oracle² + δ²) with the GM bias δ = q/(k−q)·"
            "σ√(dk/N) (see `predicted_plateau`).", "",
            "## Log-log slopes (least squares over the whole sweep)", "",
            "`excess` = √(plateau² − oracle²), the part due to the attack. "
            "— : diverged (the mean) or not run (the plain GM is not run in "
            "the N sweep).", "", "| aggregator | slope in q (paper: 0.5) | same, excess | "
            "slope in N (paper: −0.5) | same, excess |",
            "|---|---|---|---|---|"]
  for name in AGGREGATORS:
    sq = loglog_slope(qs, [plateau[(name, q, n)][0] for q in qs])
    sqx = loglog_slope(qs, [excess(name, q, n) for q in qs])
    sn = loglog_slope(big_n, [plateau[(name, q_fix, s)][0]
                              for s in cfg["samples_per_worker"]])
    snx = loglog_slope(big_n, [excess(name, q_fix, s)
                               for s in cfg["samples_per_worker"]])
    lines.append(f"| {LABELS[name]} | " + " | ".join(
        "—" if not np.isfinite(v) else f"{v:.3f}"
        for v in (sq, sqx, sn, snx)) + " |")
  sn = loglog_slope(big_n, [ls_n[s] for s in cfg["samples_per_worker"]])
  lines.append(f"| centralized LS, no attack | — | — | {sn:.3f} | — |")
  names = [a for a in ("gmom", "gmom_trim", "gmom_redraw", "gm", "mean")
           if (a, cfg["qs"][0], n) in contraction]
  lines += ["", "## Contraction per step (Corollary 1: ≤ ½ + √3/4 = "
            f"{COROLLARY_RATE:.3f})", "",
            "First number: the smallest ρ with e_t ≤ ρ^t e_0 over all seeds "
            "and the steps where e_t = ‖θ_t − θ*‖ is above 3× the seed's "
            "plateau (`transient_contraction`), the quantity the "
            "corollary's first term bounds. Second: the per-step factor of "
            "‖θ_t − θ_T‖ fitted until float32 round-off (fixed Byzantine "
            "sets only; with a redrawn set the iterates keep moving). "
            f"Exact noiseless GD contracts by 1 − η = {1 - lr:.2f}. For the "
            "mean, a factor > 1 is the growth per step of a diverging run.",
            "", "| q | " + " | ".join(LABELS[a] for a in names) + " |",
            "|---|" + "---|" * len(names)]
  for q in cfg["qs"]:
    cells = []
    for a in names:
      c = contraction.get((a, q, n), float("nan"))
      r = rates.get((a, q, n), float("nan"))
      cells.append("—" if not np.isfinite(c) and not np.isfinite(r) else
                   f"{c:.3f} / {r:.3f}")
    lines.append(f"| {q} | " + " | ".join(cells) + " |")
  lines += ["", f"Total wall-clock time: {seconds:.0f} s."]
  return "\n".join(lines) + "\n"


def check_claims(plateau, rates, contraction, cfg):
  """The claims of Corollary 1 that ``--quick`` asserts.

  * GMoM (with or without Remark 2's trimming, fixed Byzantine set)
    contracts by at most :math:`\\tfrac12 + \\sqrt3/4` per step, on both
    measures of :func:`summarize`;
  * its plateau scales like :math:`N^{-1/2}` (log-log slope in
    ``(-0.75, -0.3)``) while the mean (k = 1) is driven at least 50x
    further away.

  Returns:
    The checked numbers. Raises AssertionError naming a failed claim.
  """
  m, n = cfg["num_workers"], cfg["n_for_q_sweep"]
  out = {}
  for q in cfg["qs"]:
    for name in ("gmom", "gmom_trim"):
      c, r = contraction[(name, q, n)], rates[(name, q, n)]
      out[f"contraction {name} q={q}"] = c
      assert c <= COROLLARY_RATE and r <= COROLLARY_RATE, (
          f"{name}, q = {q}: contraction {c:.3f} / {r:.3f} exceeds "
          f"Corollary 1's {COROLLARY_RATE:.3f}")
    gmom = plateau[("gmom", q, n)][0]
    assert plateau[("mean", q, n)][0] > 50 * gmom, (
        f"q = {q}: the mean is not destroyed by the attack")
  q = cfg["q_for_n_sweep"]
  sizes = cfg["samples_per_worker"]
  slope = loglog_slope([m * s for s in sizes],
                       [plateau[("gmom", q, s)][0] for s in sizes])
  out["plateau slope in N"] = slope
  assert -0.75 < slope < -0.3, f"plateau slope in N {slope:.3f}, not -1/2"
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="results/chen_su_xu")
  parser.add_argument("--quick", action="store_true",
                      help="small sweep; asserts Corollary 1's claims")
  parser.add_argument("--seeds", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--eps", type=float, default=1.0,
                      help="k = 2(1+eps) q groups")
  parser.add_argument("--radius-scale", type=float, default=100.0,
                      help="attack distance in honest spreads")
  parser.add_argument("--lr", type=float, default=0.5,
                      help="step size (paper: L/(2M^2) = 1/2)")
  parser.add_argument("--noise-std", type=float, default=1.0)
  parser.add_argument("--redraw", action="store_true",
                      help="also GMoM with the Byzantine set redrawn every "
                      "step")
  parser.add_argument("--trim-factor", type=float, default=1.0,
                      help="Remark 2's threshold tau = trim_factor * d")
  parser.add_argument("--seed", type=int, default=0, help="base PRNG seed")
  args = parser.parse_args(argv)

  cfg = dict(QUICK if args.quick else FULL)
  if args.seeds is not None:
    cfg["seeds"] = args.seeds
  if args.steps is not None:
    cfg["steps"] = args.steps
  os.makedirs(args.out, exist_ok=True)
  key = jax.random.key(args.seed)
  m = cfg["num_workers"]
  opts = dict(key=key, eps=args.eps, radius_scale=args.radius_scale,
              lr=args.lr, noise_std=args.noise_std,
              trim_factor=args.trim_factor)

  # Cells: (aggregator, tuple of q, samples per worker).
  n_q = cfg["n_for_q_sweep"]
  q_n = cfg["q_for_n_sweep"]
  cells = [("gmom", (q,), n_q) for q in cfg["qs"]]
  if args.redraw:
    cells += [("gmom_redraw", (q,), n_q) for q in cfg["qs"]]
  cells += [("gmom_trim", (q,), n_q) for q in cfg["qs"]]
  cells += [(a, tuple(cfg["qs"]), n_q) for a in ("mean", "gm")]
  for s in cfg["samples_per_worker"]:
    if s == n_q and q_n in cfg["qs"]:
      continue
    cells += [(a, (q_n,), s) for a in N_SWEEP]

  start = time.perf_counter()
  curves, approach, plateau, rows, initial = {}, {}, {}, [], {}
  try:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(cells, desc="chen_su_xu", unit="cell")
  except ImportError:
    bar = cells
  for i, (name, qs, s) in enumerate(bar):
    t0 = time.perf_counter()
    errors, to_last, ls, e0 = run_cell(name, qs, s, cfg, **opts)
    sec = time.perf_counter() - t0
    if bar is cells:
      print(f"[{i + 1}/{len(cells)}] {name} q={qs} N={m * s}: {sec:.1f}s",
            flush=True)
    plateau[("oracle", 0, s)] = (float(ls.mean()), float(ls.std()))
    for j, q in enumerate(qs):
      curves[(name, q, s)] = errors[j]
      approach[(name, q, s)] = to_last[j]
      initial[(name, q, s)] = e0
      final = errors[j][:, -PLATEAU_STEPS:].mean(axis=1)
      plateau[(name, q, s)] = (float(final.mean()), float(final.std()))
      for seed in range(cfg["seeds"]):
        for t in range(cfg["steps"]):
          rows.append(dict(aggregator=name, q=q, N=m * s,
                           samples_per_worker=s, seed=seed, step=t + 1,
                           error=float(errors[j][seed, t]),
                           ls_error=float(ls[seed]), seconds=sec))
  seconds = time.perf_counter() - start

  rates, contraction = {}, {}
  for key_, v in approach.items():
    contraction[key_] = transient_contraction(initial[key_], curves[key_])
    if key_[0] == "gmom_redraw":
      continue  # the iterates keep moving: no limit to contract towards
    e = curves[key_].mean(axis=0)
    if e[-1] > e[0]:  # diverging: report the growth factor per step instead
      t = np.arange(len(e))
      sel = (t >= len(e) // 2) & np.isfinite(e)
      rates[key_] = (float(np.exp(np.polyfit(t[sel], np.log(e[sel]), 1)[0]))
                     if sel.sum() >= 2 else float("nan"))
    else:
      rates[key_] = convergence_rate(v)
  simulation.write_csv(rows, os.path.join(args.out, "results.csv"))
  simulation.write_csv(
      [dict(aggregator=a, q=q, N=m * s, plateau_mean=v[0], plateau_sd=v[1])
       for (a, q, s), v in sorted(plateau.items())],
      os.path.join(args.out, "plateaus.csv"))
  # Cells not run (the GM in the N sweep, the redrawn set without
  # --redraw) read as NaN in the report.
  plateau = collections.defaultdict(lambda: (math.nan, math.nan), plateau)
  _plot_curves(curves, cfg, os.path.join(args.out, "curves.png"))
  _plot_scaling(plateau, cfg, os.path.join(args.out, "scaling.png"),
                eps=args.eps, noise_std=args.noise_std)
  summary = summarize(plateau, rates, contraction, cfg, eps=args.eps,
                      lr=args.lr, noise_std=args.noise_std,
                      trim_factor=args.trim_factor, seconds=seconds)
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write(summary)
  with open(os.path.join(args.out, "config.json"), "w") as f:
    json.dump({**vars(args), **cfg, "seconds": seconds,
               "load": os.getloadavg(),
               "jax": jax.__version__, "backend": jax.default_backend()},
              f, indent=2)
  print(summary)
  print(f"[chen_su_xu] wrote results.csv, plateaus.csv, curves.png, "
        f"scaling.png, summary.md to {args.out}")
  claims = (check_claims(plateau, rates, contraction, cfg) if args.quick
            else {})
  if claims:
    print("[chen_su_xu] --quick claims hold: " + ", ".join(
        f"{k} = {v:.3g}" for k, v in claims.items()))
  return dict(plateau=plateau, rates=rates, contraction=contraction,
              cfg=cfg, seconds=seconds, claims=claims)


if __name__ == "__main__":
  main()
