"""Ghosh et al.: norm thresholding with compressed gradients and error feedback.

Reproduces Section 7 of Ghosh, Maity, Kadhe, Mazumdar & Ramchandran,
"Communication-efficient and Byzantine-robust distributed learning" (arXiv
preprint 1911.09721; the version in ``shared/papers/003_…``).

The compressor of every experiment (§7): a worker with vector :math:`x \\in
\\mathbb{R}^d` sends :math:`C(x) = \\{\\|x\\|_1/d, \\operatorname{sign}(x)\\}`,
the scaling factor and the signs, i.e. :math:`\\ell_1`-QSGD
:math:`Q(x) = \\frac{\\|x\\|_1}{d}\\operatorname{sign}(x)`
(:func:`byzjax.compression.scaled_sign`). "Robustness in our algorithm comes
from thresholding operation on the scaling factor": the server drops the
:math:`\\beta m` workers with the largest sent :math:`\\|x\\|_1/d` and averages
the :math:`Q(x)` of the others (Algorithm 1 with the norm :math:`\\|x\\|_1/d`;
``with_norm(compress(scaled_sign), norm="l1_scale")`` and
``using_sent_norms(norm_threshold)``). For this compressor
:math:`\\|Q(x)\\|_2 = \\frac{\\|x\\|_1}{d}\\sqrt{\\operatorname{nnz}(x)}`, so
Algorithm 2 (rank by the norm of the compressed message) ranks the same way
whenever no coordinate is exactly zero.

**Linear regression** (Figures 1-3). :math:`A \\in \\mathbb{R}^{4000\\times
1000}` and :math:`w^\\star` with i.i.d. :math:`N(0, 1)` entries, :math:`b =
A w^\\star`, ``m = 200`` workers with 20 rows each, local loss
:math:`\\frac{1}{2n}\\|A_i w - b_i\\|^2`, full local gradients
(``Simulation(full_batch=True)``) from :math:`w_0 = 0`. :math:`\\alpha m \\in
\\{5, 10, 20\\}` Byzantine workers add :math:`N(0, 10 I)` to their gradient
before compressing it; the server drops :math:`\\beta m \\in \\{7, 12, 22\\}`.
Metric :math:`\\|w_t - w^\\star\\|`, 20 runs (vmapped over seeds; the runs
share :math:`A, w^\\star` and differ in the Byzantine noise). Methods:

* ``alg1``: Algorithm 1 as §7 runs it, thresholding on the sent
  :math:`\\|g_i\\|_1/d`;
* ``alg1_l2``: ablation, the same with :math:`\\|g_i\\|_2` sent alongside;
* ``mean``: compressed gradient descent with a plain average (Figure 1);
* ``signsgd_mv``: signSGD with majority vote (Figure 2);
* ``ef_threshold``: error feedback (:math:`p_i = \\gamma g_i + e_i`, send
  :math:`C(p_i)`, keep :math:`e_i \\leftarrow p_i - Q(p_i)`) with the
  thresholding on the sent :math:`\\|p_i\\|_1/d` (Figure 3);
* ``ef_mean``: Algorithm 3, distributed error feedback with a plain average
  (Figure 3's baseline).

**Neural network** (Figure 4). One hidden layer of 1000 ReLU units, 200
workers, cross-entropy, full local gradients; the Byzantine workers' labels
are replaced once, in their data, by random labels (4a) or by :math:`9 - y`
(4b); 4(c) is error feedback with thresholding under :math:`9 - y`. On
Fashion-MNIST (MNIST is not installed here), and on ``nn_per_worker``
images per worker (the paper: all 60,000, i.e. 300) to fit the CPU budget.

Writes ``linreg.csv``, ``nn.csv`` (tidy rows), ``linreg.png``, ``nn.png``,
``summary.md`` and ``config.json`` into ``--out``. ``--quick`` runs small
sizes and asserts the qualitative claims (:func:`check_claims`).

Usage::

  python experiments/ghosh.py --out results/ghosh
  python experiments/ghosh.py --quick --out /tmp/ghosh
"""

import argparse
import json
import os
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import byzjax
from byzjax import compression
from byzjax import models
from byzjax import simulation
from byzjax.aggregators.coordinatewise import mean
from byzjax.aggregators.norm_threshold import norm_threshold
from byzjax.aggregators.sign_vote import sign_majority_vote
from byzjax.data import fashion_mnist
from byzjax.data import partition
from byzjax.data import synthetic
from byzjax.transforms.compress import compress
from byzjax.transforms.compress import NormMessage
from byzjax.transforms.compress import using_sent_norms
from byzjax.transforms.compress import with_norm
from byzjax.transforms.error_feedback import error_feedback
from byzjax.transforms.per_worker import per_worker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _figures  # pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = ("alg1", "alg1_l2", "mean", "signsgd_mv", "ef_threshold",
           "ef_mean")
LABELS = {
    "alg1": "Alg. 1: threshold on sent ‖g‖₁/d (§7)",
    "alg1_l2": "ablation: threshold on sent ‖g‖₂",
    "mean": "compressed GD, plain average",
    "signsgd_mv": "signSGD, majority vote",
    "ef_threshold": "error feedback + threshold on ‖p‖₁/d",
    "ef_mean": "Alg. 3: distributed error feedback (average)",
}
# The paper's linear-regression figures: the methods each one compares.
FIGURES = {1: ("alg1", "mean", "alg1_l2"), 2: ("alg1", "signsgd_mv"),
           3: ("ef_threshold", "ef_mean")}
# Figure 4: (panel, Byzantine labels, methods). The paper does not say what
# 4(c) is compared with; we show it next to (b)'s runs.
NN_PANELS = (("a", "random_labels", ("alg1", "mean")),
             ("b", "label_shift", ("alg1", "mean")),
             ("c", "label_shift", ("ef_threshold", "alg1", "mean")))
NN_ATTACKS = ("random_labels", "label_shift")
NN_METHODS = {"random_labels": ("alg1", "mean"),
              "label_shift": ("alg1", "mean", "ef_threshold")}

FULL = dict(num_samples=4000, dim=1000, num_workers=200,
            byzantine=(5, 10, 20), extra_trim=2, steps=200, eval_every=5,
            seeds=20, sign_lrs=(0.005, 0.01, 0.02, 0.05), sign_lr_seeds=5,
            nn_workers=200, nn_hidden=1000, nn_byzantine=20,
            nn_per_worker=30, nn_steps=30, nn_eval_every=5)
QUICK = dict(num_samples=800, dim=200, num_workers=40, byzantine=(4,),
             extra_trim=2, steps=150, eval_every=5, seeds=3, sign_lrs=(),
             sign_lr_seeds=0, nn_workers=20, nn_hidden=64, nn_byzantine=4,
             nn_per_worker=30, nn_steps=30, nn_eval_every=5)


# ---------------------------------------------------------------------------
# Worker-side transforms and the Byzantine noise.


def error_feedback_sending_norm(compressor, *, scale, norm="l1_scale"):
  """Error feedback whose message carries a norm of :math:`p_i`.

  Wraps :func:`byzjax.transforms.error_feedback.error_feedback`: with
  :math:`p = \\gamma g + e`, the transform sends :math:`Q(p)` and keeps
  :math:`e' = p - Q(p)`, so :math:`p = Q(p) + e'` is recovered from the
  message and the new memory. The scalar sent with it is
  :math:`\\|p\\|_1/d` (``norm="l1_scale"``, the scaling factor of
  :math:`C(p)` in §7) or :math:`\\|p\\|_2` (``"l2"``).
  """
  inner = error_feedback(compress(compressor), scale=scale)
  norm_fn = {"l1_scale": compression.l1_scale,
             "l2": compression.l2_norm}[norm]

  def update_fn(updates, state, params=None, **extra):
    sent, new_state = inner.update(updates, state, params, **extra)
    p = jax.tree.map(jnp.add, sent, new_state.memory)
    return NormMessage(update=sent, norm=norm_fn(p)), new_state

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


class NoiseState(NamedTuple):
  key: jax.Array


def byzantine_noise(*, num_byzantine, variance, key):
  """Adds :math:`N(0, \\sigma^2 I)` to the gradients of workers ``0..f-1``.

  §7: "we simulate the byzantine workers by adding i.i.d.
  :math:`\\mathcal N(0, 10 I_d)` to the gradient". The same attack as
  ``byzjax.attacks.gradient.gaussian_noise_attack`` on the first ``f``
  workers, but it draws noise for those ``f`` rows only (the library's draws
  all ``R`` and masks, 40% of a step here). Placed at the head of the server
  chain, before the per-worker compression, so the Byzantine workers
  compress (and report the scale of) their noisy gradient.
  """
  std = float(variance) ** 0.5

  def init_fn(params):
    del params
    return NoiseState(key)

  def update_fn(updates, state, params=None, **extra):
    del params, extra
    next_key, sub = jax.random.split(state.key)
    if num_byzantine == 0:
      return updates, NoiseState(next_key)
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(sub, len(leaves))
    noisy = [x.at[:num_byzantine].add(
        std * jax.random.normal(k, (num_byzantine,) + x.shape[1:], x.dtype))
             for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy), NoiseState(next_key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def worker_and_server(method, *, num_workers, num_trimmed, lr, sign_lr):
  """``(worker transform, aggregation, server step)`` of one method.

  Error feedback scales by :math:`\\gamma` on the worker (``p = γ g + e``),
  so its server step is 1.
  """
  thresholded = byzjax.aggregate(using_sent_norms(norm_threshold),
                                 trim_fraction=num_trimmed / num_workers,
                                 num_workers=num_workers)
  if method == "alg1":
    return (with_norm(compress(compression.scaled_sign), norm="l1_scale"),
            thresholded, optax.sgd(lr))
  if method == "alg1_l2":
    return (with_norm(compress(compression.scaled_sign), norm="l2"),
            thresholded, optax.sgd(lr))
  if method == "mean":
    return (compress(compression.scaled_sign), byzjax.aggregate(mean),
            optax.sgd(lr))
  if method == "signsgd_mv":
    return (compress(compression.sign), byzjax.aggregate(sign_majority_vote),
            optax.sgd(sign_lr))
  if method == "ef_threshold":
    return (error_feedback_sending_norm(compression.scaled_sign, scale=lr),
            thresholded, optax.sgd(1.0))
  if method == "ef_mean":
    return (error_feedback(compress(compression.scaled_sign), scale=lr),
            byzjax.aggregate(mean), optax.sgd(1.0))
  raise ValueError(f"unknown method {method!r}")


def linreg_server_tx(method, *, num_workers, num_byzantine, num_trimmed, lr,
                     sign_lr, attack_key):
  """Byzantine noise, the workers' compression, aggregation and the step.

  The noise comes first so that the Byzantine workers (the first
  ``num_byzantine``) compress their noisy gradient and report its scale.
  """
  workers, agg, step = worker_and_server(
      method, num_workers=num_workers, num_trimmed=num_trimmed, lr=lr,
      sign_lr=sign_lr)
  attack = byzantine_noise(num_byzantine=num_byzantine, variance=10.0,
                           key=attack_key)
  return optax.chain(attack, per_worker(workers, num_workers), agg, step)


# ---------------------------------------------------------------------------
# Linear regression (Figures 1-3).


def linreg_task(key, cfg):
  """The data of Section 7 split over the workers, and ``w*``."""
  dataset, w_star = synthetic.linear_regression(key, cfg["num_samples"],
                                                cfg["dim"])
  return partition.iid_partition(key, dataset, cfg["num_workers"]), w_star


def linreg_loss(params, batch):
  x, y = batch  # [n, d], [n]
  return 0.5 * jnp.mean(jnp.square(x @ params["w"] - y))


def linreg_build_for(cfg, w_star, *, lr, sign_lr):
  r = cfg["num_workers"]
  n = cfg["num_samples"] // r

  def build_for(method, byzantine):
    def build(hp, key):
      sim = simulation.Simulation(
          loss_fn=linreg_loss,
          server_tx=linreg_server_tx(
              method, num_workers=r, num_byzantine=byzantine,
              num_trimmed=byzantine + cfg["extra_trim"], lr=lr,
              sign_lr=hp.get("sign_lr", sign_lr),
              attack_key=jax.random.fold_in(key, 1)),
          num_workers=r, batch_size=n, full_batch=True,
          num_byzantine=byzantine,
          eval_fn=lambda p: {"error": jnp.linalg.norm(p["w"] - w_star)},
          eval_every=cfg["eval_every"])
      state = simulation.init(sim, {"w": jnp.zeros(cfg["dim"])}, key)
      # The noisy workers are the first f: the honest-loss metric and the
      # byz_kept diagnostics must use the same set.
      return sim, state._replace(byzantine=jnp.arange(r) < byzantine)
    return build
  return build_for


# ---------------------------------------------------------------------------
# Neural network (Figure 4).


def nn_task(key, cfg, path):
  """Workers' clean shards (full local gradients), the model, ``eval_fn``.

  The ``R * nn_per_worker`` training images are a fixed random subset of
  Fashion-MNIST's 60,000; the evaluation reports the cross-entropy on all of
  them with their true labels (the training loss of Figure 4) and the
  accuracy on 2000 test images.
  """
  train = fashion_mnist.load_fashion_mnist(path, split="train")
  test = fashion_mnist.load_fashion_mnist(path, split="test")
  r, n = cfg["nn_workers"], cfg["nn_per_worker"]
  sub = np.random.default_rng(0).permutation(len(train.y))[:r * n]
  subset = partition.Dataset(x=train.x[sub], y=train.y[sub])
  data = partition.iid_partition(key, subset, r)
  fns = models.make_classifier(
      models.MLP(num_classes=10, hidden=(cfg["nn_hidden"],)))
  params = fns.init(key, jnp.asarray(train.x[:1]))
  train_x = jnp.asarray(subset.x)
  train_y = jnp.asarray(subset.y)
  test_x, test_y = jnp.asarray(test.x[:2000]), jnp.asarray(test.y[:2000])

  def eval_fn(p):
    return {"train_ce": fns.loss(p, (train_x, train_y)),
            "test_accuracy": fns.accuracy(p, (test_x, test_y))}

  return data, fns, params, eval_fn


def poison(data, attack, num_byzantine, key):
  """Replaces the labels of workers ``0..f-1`` once, in their data (§7).

  ``random_labels``: i.i.d. uniform labels (drawn once, with ``key``);
  ``label_shift``: :math:`y \\mapsto 9 - y`.
  """
  y = np.asarray(data.y).copy()
  if attack == "random_labels":
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key))[-1])
    y[:num_byzantine] = rng.integers(0, 10, size=y[:num_byzantine].shape)
  elif attack == "label_shift":
    y[:num_byzantine] = 9 - y[:num_byzantine]
  else:
    raise ValueError(f"unknown attack {attack!r}")
  return data._replace(y=jnp.asarray(y, data.y.dtype))


def nn_build_for(cfg, fns, params, eval_fn, *, lr):
  r, f = cfg["nn_workers"], cfg["nn_byzantine"]

  def build_for(method):
    worker_tx, agg, step = worker_and_server(
        method, num_workers=r, num_trimmed=f + cfg["extra_trim"], lr=lr,
        sign_lr=lr)

    def build(hp, key):
      del hp
      sim = simulation.Simulation(
          loss_fn=fns.loss, server_tx=optax.chain(agg, step),
          num_workers=r, batch_size=cfg["nn_per_worker"], full_batch=True,
          worker_tx=worker_tx, num_byzantine=f, eval_fn=eval_fn,
          eval_every=cfg["nn_eval_every"])
      state = simulation.init(sim, params, key)
      return sim, state._replace(byzantine=jnp.arange(r) < f)
    return build
  return build_for


# ---------------------------------------------------------------------------
# Reports.


def _select(rows, **conds):
  return [r for r in rows if all(r[k] == v for k, v in conds.items())]


def curve(rows, metric, **conds):
  """``(steps [E], values [S, E])`` of a metric for one configuration."""
  sel = _select(rows, **conds)
  steps = sorted({r["step"] for r in sel})
  seeds = sorted({r["seed"] for r in sel})
  vals = np.full((len(seeds), len(steps)), np.nan)
  for r in sel:
    vals[seeds.index(r["seed"]), steps.index(r["step"])] = r[metric]
  return np.asarray(steps), vals


def _final(rows, metric, **conds):
  _, vals = curve(rows, metric, **conds)
  v = vals[:, -1]
  v = np.where(np.isfinite(v), v, np.nan)
  return float(np.nanmean(v)), float(np.nanstd(v))


def _plot_linreg(rows, cfg, path):
  plt = _figures.pyplot()
  byz = cfg["byzantine"]
  fig, axes = plt.subplots(len(FIGURES), len(byz), squeeze=False,
                           figsize=(3.8 * len(byz), 2.9 * len(FIGURES)))
  for i, (fig_no, methods) in enumerate(FIGURES.items()):
    for j, f in enumerate(byz):
      ax = axes[i][j]
      for method in methods:
        c = f"C{METHODS.index(method)}"
        steps, vals = curve(rows, "error", method=method, byzantine=f)
        with np.errstate(invalid="ignore"):
          mu, sd = np.nanmean(vals, 0), np.nanstd(vals, 0)
        ax.semilogy(steps, mu, color=c, label=LABELS[method],
                    ls="--" if method == "alg1_l2" else "-")
        ax.fill_between(steps, np.maximum(mu - sd, 1e-12), mu + sd,
                        color=c, alpha=0.2)
      ax.set_title(f"Fig. {fig_no}: αm = {f}, βm = {f + cfg['extra_trim']}",
                   fontsize=9)
      ax.set_xlabel("iteration")
      ax.set_ylabel("‖w_t − w*‖")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=6)
  _figures.save(fig, path, dpi=70)


def _plot_nn(rows, path):
  plt = _figures.pyplot()
  fig, axes = plt.subplots(1, len(NN_PANELS), figsize=(4.6 * len(NN_PANELS),
                                                       3.4))
  for ax, (panel, attack, methods) in zip(axes, NN_PANELS):
    for method in methods:
      c = f"C{METHODS.index(method)}"
      steps, vals = curve(rows, "train_ce", attack=attack, method=method)
      ax.plot(steps, np.nanmean(vals, 0), color=c, label=LABELS[method],
              ls="-" if method == methods[0] else ":")
    ax.set_title(f"Fig. 4({panel}): Byzantine labels "
                 f"{'random' if attack == 'random_labels' else '9 − y'}",
                 fontsize=9)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training cross-entropy (true labels)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  _figures.save(fig, path, dpi=80)


def summarize(linreg_rows, nn_rows, sign_rows, cfg, args, timings):
  lines = ["# Ghosh et al. — norm thresholding, compression, error feedback",
           ""]
  if linreg_rows:
    byz = cfg["byzantine"]
    lines += [
        "## Linear regression (Figures 1–3)", "",
        f"A ∈ R^{cfg['num_samples']}×{cfg['dim']}, m = "
        f"{cfg['num_workers']} workers, {cfg['steps']} full-gradient "
        f"iterations, step size {args.lr} (signSGD: {args.sign_lr}); "
        f"‖w_T − w*‖ (‖w_0 − w*‖ ≈ {np.sqrt(cfg['dim']):.0f}), mean ± sd "
        f"over {cfg['seeds']} runs. Byz. kept = Byzantine workers among "
        "the averaged ones at the last step (thresholding only).", "",
        "| method | " + " | ".join(
            f"αm = {f}, βm = {f + cfg['extra_trim']}" for f in byz) + " |",
        "|---|" + "---|" * len(byz)]
    for method in METHODS:
      cells = []
      for f in byz:
        mu, sd = _final(linreg_rows, "error", method=method, byzantine=f)
        cell = f"{mu:.3g} ± {sd:.2g}"
        if method in ("alg1", "alg1_l2", "ef_threshold"):
          kept, _ = _final(linreg_rows, "byz_kept", method=method,
                           byzantine=f)
          cell += f" (Byz. kept {kept:.1f})"
        cells.append(cell)
      lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    lines.append("")
  if sign_rows:
    f = sign_rows[0]["byzantine"]
    lines += [f"signSGD with majority vote at other step sizes (αm = {f}, "
              f"{cfg['sign_lr_seeds']} runs): ‖w_T − w*‖ =", ""]
    for lr in cfg["sign_lrs"]:
      mu, sd = _final(sign_rows, "error", sign_lr=float(lr))
      lines.append(f"- step size {lr}: {mu:.3g} ± {sd:.2g}")
    lines.append("")
  if nn_rows:
    lines += [
        "## One-hidden-layer network on Fashion-MNIST (Figure 4)", "",
        f"{cfg['nn_workers']} workers × {cfg['nn_per_worker']} images, "
        f"{cfg['nn_byzantine']} Byzantine, hidden width {cfg['nn_hidden']}, "
        f"full local gradients, {cfg['nn_steps']} iterations, step size "
        f"{args.nn_lr}; thresholding drops "
        f"{cfg['nn_byzantine'] + cfg['extra_trim']} workers. One run each.",
        "",
        "| Byzantine labels | method | training CE (true labels) | "
        "honest workers' loss | test accuracy | Byz. kept |",
        "|---|---|---|---|---|---|"]
    for attack in NN_ATTACKS:
      for method in NN_METHODS[attack]:
        ce, _ = _final(nn_rows, "train_ce", attack=attack, method=method)
        tl, _ = _final(nn_rows, "train_loss", attack=attack, method=method)
        acc, _ = _final(nn_rows, "test_accuracy", attack=attack,
                        method=method)
        kept = "—"
        if method != "mean":
          k = _final(nn_rows, "byz_kept", attack=attack, method=method)[0]
          kept = f"{k:.0f}"
        lines.append(f"| {attack.replace('_', ' ')} | {LABELS[method]} | "
                     f"{ce:.3f} | {tl:.3f} | {acc:.3f} | {kept} |")
    lines.append("")
  lines.append("Wall-clock: " + ", ".join(
      f"{k} {v:.0f} s" for k, v in timings.items()) + ".")
  return "\n".join(lines) + "\n"


def check_claims(linreg_rows, nn_rows, cfg):
  """The qualitative claims of §7 that ``--quick`` asserts.

  * Figure 1: Algorithm 1 ends at least 100× closer to :math:`w^\\star`
    than the plain average of the compressed gradients, having dropped every
    Byzantine worker;
  * Figure 2: Algorithm 1 ends closer than signSGD with majority vote;
  * Figure 3: error feedback with thresholding ends at least 10× closer
    than distributed error feedback with the plain average;
  * Figure 4: training with thresholding lowers the training loss under
    each label attack.

  Returns:
    The checked ratios, for the report.

  Raises:
    AssertionError: naming the claim that failed.
  """
  out = {}
  if linreg_rows:
    for f in cfg["byzantine"]:
      err = {m: _final(linreg_rows, "error", method=m, byzantine=f)[0]
             for m in METHODS}
      out[f"mean/alg1 (αm={f})"] = err["mean"] / err["alg1"]
      out[f"ef_mean/ef_threshold (αm={f})"] = (err["ef_mean"]
                                                / err["ef_threshold"])
      assert err["alg1"] * 100 <= err["mean"], (
          f"Fig. 1: thresholding only {err['mean'] / err['alg1']:.3g}x "
          "better than the plain average (claim: >= 100x)")
      kept = _final(linreg_rows, "byz_kept", method="alg1", byzantine=f)[0]
      assert kept == 0, f"Fig. 1: {kept} Byzantine workers kept at the end"
      assert err["alg1"] < err["signsgd_mv"], "Fig. 2: signSGD is ahead"
      assert err["ef_threshold"] * 10 <= err["ef_mean"], (
          "Fig. 3: error feedback with thresholding only "
          f"{err['ef_mean'] / err['ef_threshold']:.3g}x better (claim: "
          ">= 10x)")
  if nn_rows:
    for attack in NN_ATTACKS:
      for method in NN_METHODS[attack]:
        if method == "mean":
          continue
        _, ce = curve(nn_rows, "train_ce", attack=attack, method=method)
        out[f"train CE first/last ({attack}, {method})"] = (
            ce[0, 0] / ce[0, -1])
        assert ce[0, -1] < 0.9 * ce[0, 0], (
            f"Fig. 4: {method} under {attack} did not train "
            f"({ce[0, 0]:.3f} -> {ce[0, -1]:.3f})")
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="results/ghosh")
  parser.add_argument("--quick", action="store_true",
                      help="small sizes; asserts the paper's claims")
  parser.add_argument("--part", default="all", choices=["all", "linreg", "nn"])
  parser.add_argument("--seeds", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None,
                      help="linear-regression iterations")
  parser.add_argument("--nn-steps", type=int, default=None)
  parser.add_argument("--byzantine", type=int, nargs="+", default=None,
                      help="Byzantine counts alpha*m (paper: 5 10 20)")
  parser.add_argument("--sign-lrs", type=float, nargs="*", default=None,
                      help="signSGD step sizes to check (none: skip)")
  parser.add_argument("--nn-per-worker", type=int, default=None,
                      help="training images per worker (paper: 300)")
  parser.add_argument("--lr", type=float, default=0.5,
                      help="step size (also the error-feedback gamma)")
  parser.add_argument("--sign-lr", type=float, default=0.02,
                      help="signSGD step size")
  parser.add_argument("--nn-lr", type=float, default=0.5)
  parser.add_argument("--fashion-mnist-path",
                      default=fashion_mnist.DEFAULT_PATH)
  parser.add_argument("--seed", type=int, default=0, help="base PRNG seed")
  args = parser.parse_args(argv)

  cfg = dict(QUICK if args.quick else FULL)
  for name in ("seeds", "steps", "nn_steps", "nn_per_worker", "byzantine",
               "sign_lrs"):
    if getattr(args, name) is not None:
      cfg[name] = getattr(args, name)
  for steps, every in (("steps", "eval_every"), ("nn_steps", "nn_eval_every")):
    if cfg[steps] % cfg[every]:
      parser.error(f"--{steps.replace('_', '-')} must be a multiple of "
                   f"{cfg[every]}")
  os.makedirs(args.out, exist_ok=True)
  key = jax.random.key(args.seed)
  start = time.perf_counter()
  linreg_rows, nn_rows, sign_rows, timings = [], [], [], {}

  if args.part in ("all", "linreg"):
    t0 = time.perf_counter()
    data, w_star = linreg_task(jax.random.fold_in(key, 0), cfg)
    print(f"[ghosh] linear regression: {len(METHODS)} methods x "
          f"{len(cfg['byzantine'])} Byzantine levels x {cfg['seeds']} seeds, "
          f"{cfg['steps']} iterations", flush=True)
    linreg_rows = simulation.grid(
        linreg_build_for(cfg, w_star, lr=args.lr, sign_lr=args.sign_lr),
        data, choices={"method": list(METHODS),
                       "byzantine": list(cfg["byzantine"])},
        num_evals=cfg["steps"] // cfg["eval_every"], seeds=cfg["seeds"],
        key=jax.random.fold_in(key, 1))
    timings["linreg"] = time.perf_counter() - t0
    simulation.write_csv(linreg_rows, os.path.join(args.out, "linreg.csv"))
    if cfg["sign_lrs"]:
      # Is signSGD's step size to blame? Rerun it at several step sizes (one
      # vmapped call, fewer seeds) at the middle corruption level.
      t0 = time.perf_counter()
      f = cfg["byzantine"][len(cfg["byzantine"]) // 2]
      sign_rows = simulation.grid(
          linreg_build_for(cfg, w_star, lr=args.lr, sign_lr=args.sign_lr),
          data, choices={"method": ["signsgd_mv"], "byzantine": [f]},
          numeric={"sign_lr": list(cfg["sign_lrs"])},
          num_evals=cfg["steps"] // cfg["eval_every"],
          seeds=cfg["sign_lr_seeds"], key=jax.random.fold_in(key, 4))
      timings["signsgd_step_sizes"] = time.perf_counter() - t0
      simulation.write_csv(sign_rows,
                           os.path.join(args.out, "signsgd_step_sizes.csv"))
    _plot_linreg(linreg_rows, cfg, os.path.join(args.out, "linreg.png"))

  if args.part in ("all", "nn"):
    t0 = time.perf_counter()
    clean, fns, params, eval_fn = nn_task(jax.random.fold_in(key, 2), cfg,
                                          args.fashion_mnist_path)
    print(f"[ghosh] MLP({cfg['nn_hidden']}) on Fashion-MNIST: "
          f"{sum(map(len, NN_METHODS.values()))} runs, {cfg['nn_steps']} "
          f"iterations, {cfg['nn_workers']} workers x "
          f"{cfg['nn_per_worker']} images (full local gradients)",
          flush=True)
    for attack in NN_ATTACKS:
      data = poison(clean, attack, cfg["nn_byzantine"],
                    jax.random.fold_in(key, 5))
      rows = simulation.grid(
          nn_build_for(cfg, fns, params, eval_fn, lr=args.nn_lr), data,
          choices={"method": list(NN_METHODS[attack])},
          num_evals=cfg["nn_steps"] // cfg["nn_eval_every"], seeds=1,
          key=jax.random.fold_in(key, 3))
      nn_rows += [dict(r, attack=attack) for r in rows]
    timings["nn"] = time.perf_counter() - t0
    simulation.write_csv(nn_rows, os.path.join(args.out, "nn.csv"))
    _plot_nn(nn_rows, os.path.join(args.out, "nn.png"))

  timings["total"] = time.perf_counter() - start
  summary = summarize(linreg_rows, nn_rows, sign_rows, cfg, args, timings)
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write(summary)
  with open(os.path.join(args.out, "config.json"), "w") as f:
    json.dump({**vars(args), **cfg, "seconds": timings,
               "load": os.getloadavg(), "jax": jax.__version__,
               "backend": jax.default_backend()}, f, indent=2)
  print(summary)
  print(f"[ghosh] wrote csv, png, summary.md to {args.out}")
  ratios = check_claims(linreg_rows, nn_rows, cfg) if args.quick else {}
  if ratios:
    print("[ghosh] --quick claims hold: " + ", ".join(
        f"{k} = {v:.3g}" for k, v in ratios.items()))
  return dict(linreg=linreg_rows, nn=nn_rows, cfg=cfg, seconds=timings,
              claims=ratios)


if __name__ == "__main__":
  main()
