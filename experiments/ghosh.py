"""Ghosh et al.: norm thresholding with gradient compression and error feedback.

Reproduces Section 7 of Ghosh, Maity, Kadhe, Mazumdar & Ramchandran,
"Communication-Efficient and Byzantine-Robust Distributed Learning with Error
Feedback" (arXiv 1911.09721).

**Linear regression** (their Figures 1-3). :math:`A \\in \\mathbb{R}^{4000
\\times 1000}` and :math:`w^\\star` with i.i.d. :math:`N(0, 1)` entries,
:math:`b = A w^\\star` (no noise), ``m = 200`` workers with 20 rows each,
loss :math:`\\frac{1}{2n}\\|A_i w - b_i\\|^2` per worker, full-batch gradient
descent from :math:`w_0 = 0`. ``f`` of the workers (:math:`\\alpha m \\in
\\{5, 10, 20\\}`) are Byzantine and add :math:`N(0, 10 I)` to their gradient
before compressing it; the server drops the :math:`\\beta m \\in \\{7, 12,
22\\}` workers with the largest norms. Compressor: scaled sign
:math:`C(x) = \\frac{\\|x\\|_1}{d}\\operatorname{sign}(x)`. Metric
:math:`\\|w_t - w^\\star\\|`, averaged over 20 runs (one vmapped call per
method and :math:`\\alpha`). Methods:

* ``threshold``: workers send :math:`C(g_i)` and :math:`\\|g_i\\|`; the
  server averages the messages of the workers whose sent norms are not among
  the :math:`\\beta m` largest (Algorithm 2 of the paper);
* ``mean``: plain average of the compressed gradients (Figure 1's baseline);
* ``signsgd_mv``: signSGD with majority vote, workers send
  :math:`\\operatorname{sign}(g_i)` (Figure 2's baseline);
* ``ef_threshold``: error feedback (:math:`p_i = \\gamma g_i + e_i`, send
  :math:`C(p_i)`, keep :math:`e_i \\leftarrow p_i - C(p_i)`) with the norm
  :math:`\\|p_i\\|` sent alongside and thresholded at the server
  (Algorithm 3);
* ``ef_mean``: distributed error feedback with a plain average (Figure 3's
  baseline).

**Neural network.** One hidden layer of 1000 ReLU units
(:class:`byzjax.models.MLP`), 200 workers, cross-entropy; the Byzantine
workers train on random labels or on labels :math:`y \\mapsto 9 - y`; the
workers send the scaled sign of their mini-batch gradient and its norm. On
Fashion-MNIST, since MNIST is not installed here.

Full-batch gradients (linear regression): the simulator samples mini-batches,
so each worker's shard is stored as ONE super-sample ``[20, 1000]`` and
``batch_size=1`` picks it; the sampling key is shared by the seeds (it can
only pick that one super-sample), so the seeds differ in the Byzantine noise.

Writes ``linreg.csv``, ``nn.csv`` (tidy rows), ``linreg.png``, ``nn.png``,
``summary.md`` and ``config.json`` into ``--out``.

Usage::

  python experiments/ghosh.py --out results/ghosh
  python experiments/ghosh.py --quick --out /tmp/ghosh
"""

import argparse
import json
import os
import sys
import time

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
from byzjax.attacks import data as data_attacks
from byzjax.attacks.gradient import gaussian_noise_attack
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

METHODS = ("threshold", "mean", "signsgd_mv", "ef_threshold", "ef_mean")
LABELS = {
    "threshold": "compressed + norm thresholding",
    "mean": "compressed + plain average",
    "signsgd_mv": "signSGD, majority vote",
    "ef_threshold": "error feedback + thresholding",
    "ef_mean": "distributed error feedback (average)",
}
# The paper's three linear-regression figures: (method, baseline).
FIGURES = {1: ("threshold", "mean"), 2: ("threshold", "signsgd_mv"),
           3: ("ef_threshold", "ef_mean")}
NN_ATTACKS = ("random_labels", "label_shift")
NN_METHODS = ("threshold", "mean")

FULL = dict(num_samples=4000, dim=1000, num_workers=200,
            byzantine=(5, 10, 20), extra_trim=2, steps=200, eval_every=5,
            seeds=20, sign_lrs=(0.005, 0.01, 0.02, 0.05), sign_lr_seeds=5,
            nn_workers=200, nn_hidden=1000, nn_byzantine=20,
            nn_steps=40, nn_eval_every=5, nn_batch=10)
QUICK = dict(num_samples=800, dim=200, num_workers=40, byzantine=(4,),
             extra_trim=2, steps=60, eval_every=5, seeds=3, sign_lrs=(),
             sign_lr_seeds=0, nn_workers=20,
             nn_hidden=64, nn_byzantine=4, nn_steps=30, nn_eval_every=5,
             nn_batch=10)


# ---------------------------------------------------------------------------
# Worker-side transforms.


def error_feedback_sending_norm(compressor, *, scale):
  """Error feedback whose message carries :math:`\\|p_i\\|` (Algorithm 3).

  Wraps :func:`byzjax.transforms.error_feedback.error_feedback`: with
  :math:`p = \\gamma g + e`, the transform sends :math:`C(p)` and keeps
  :math:`e' = p - C(p)`, so :math:`p = C(p) + e'` is recovered from the
  message and the new memory, and its norm is sent as side information.
  """
  inner = error_feedback(compress(compressor), scale=scale)

  def update_fn(updates, state, params=None, **extra):
    sent, new_state = inner.update(updates, state, params, **extra)
    p = jax.tree.map(jnp.add, sent, new_state.memory)
    return NormMessage(update=sent, norm=compression.l2_norm(p)), new_state

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def linreg_server_tx(method, *, num_workers, num_byzantine, num_trimmed, lr,
                     sign_lr, attack_key):
  """Byzantine noise, the workers' compression, aggregation and the step.

  The attack comes first so that Byzantine workers add :math:`N(0, 10 I)` to
  their gradient BEFORE compressing it (and report the norm of the noisy
  gradient); the Byzantine workers are the first ``num_byzantine``.
  """
  attack = gaussian_noise_attack(key=attack_key, num_byzantine=num_byzantine,
                                 variance=10.0)
  trim = num_trimmed / num_workers
  thresholded = byzjax.aggregate(using_sent_norms(norm_threshold),
                                 trim_fraction=trim, num_workers=num_workers)
  if method == "threshold":
    workers = with_norm(compress(compression.scaled_sign))
    agg, step = thresholded, optax.sgd(lr)
  elif method == "mean":
    workers = compress(compression.scaled_sign)
    agg, step = byzjax.aggregate(mean), optax.sgd(lr)
  elif method == "signsgd_mv":
    workers = compress(compression.sign)
    agg, step = byzjax.aggregate(sign_majority_vote), optax.sgd(sign_lr)
  elif method == "ef_threshold":
    workers = error_feedback_sending_norm(compression.scaled_sign, scale=lr)
    agg, step = thresholded, optax.sgd(1.0)
  elif method == "ef_mean":
    workers = error_feedback(compress(compression.scaled_sign), scale=lr)
    agg, step = byzjax.aggregate(mean), optax.sgd(1.0)
  else:
    raise ValueError(f"unknown method {method!r}")
  return optax.chain(attack, per_worker(workers, num_workers), agg, step)


# ---------------------------------------------------------------------------
# Linear regression (Figures 1-3).


def linreg_task(key, cfg):
  """The data of Section 7, one super-sample per worker, and ``w*``."""
  dataset, w_star = synthetic.linear_regression(key, cfg["num_samples"],
                                                cfg["dim"])
  data = partition.iid_partition(key, dataset, cfg["num_workers"])
  # Whole shard = one super-sample, so batch_size=1 is full-batch GD.
  data = partition.WorkerData(x=data.x[:, None], y=data.y[:, None],
                              size=jnp.ones(cfg["num_workers"], jnp.int32))
  return data, w_star


def linreg_loss(params, batch):
  x, y = batch  # [1, n, d], [1, n]
  return 0.5 * jnp.mean(jnp.square(x[0] @ params["w"] - y[0]))


def linreg_build_for(cfg, w_star, *, lr, sign_lr):
  r = cfg["num_workers"]

  def build_for(method, byzantine):
    def build(hp, key):
      sim = simulation.Simulation(
          loss_fn=linreg_loss,
          server_tx=linreg_server_tx(
              method, num_workers=r, num_byzantine=byzantine,
              num_trimmed=byzantine + cfg["extra_trim"], lr=lr,
              sign_lr=hp.get("sign_lr", sign_lr),
              attack_key=jax.random.fold_in(key, 1)),
          num_workers=r, batch_size=1, num_byzantine=byzantine,
          eval_fn=lambda p: {"error": jnp.linalg.norm(p["w"] - w_star)},
          eval_every=cfg["eval_every"])
      state = simulation.init(sim, {"w": jnp.zeros(cfg["dim"])}, key)
      # The attack's Byzantine workers (the first f) are also the ones the
      # honest-loss metric and the diagnostics leave out; the sampling key is
      # shared by all seeds (full batch: nothing to sample).
      return sim, state._replace(byzantine=jnp.arange(r) < byzantine,
                                 key=jax.random.key(0))
    return build
  return build_for


# ---------------------------------------------------------------------------
# Neural network on Fashion-MNIST.


def nn_task(key, cfg, path):
  train = fashion_mnist.load_fashion_mnist(path, split="train")
  test = fashion_mnist.load_fashion_mnist(path, split="test")
  data = partition.iid_partition(key, train, cfg["nn_workers"])
  fns = models.make_classifier(
      models.MLP(num_classes=10, hidden=(cfg["nn_hidden"],)))
  params = fns.init(key, jnp.asarray(train.x[:1]))
  # Fixed evaluation slices (clean labels): 2000 training, 2000 test images.
  sub = np.random.default_rng(0).choice(len(train.y), 2000, replace=False)
  train_x, train_y = jnp.asarray(train.x[sub]), jnp.asarray(train.y[sub])
  test_x, test_y = jnp.asarray(test.x[:2000]), jnp.asarray(test.y[:2000])

  def eval_fn(p):
    return {"train_ce": fns.loss(p, (train_x, train_y)),
            "test_accuracy": fns.accuracy(p, (test_x, test_y))}

  return data, fns, params, eval_fn


def nn_build_for(cfg, fns, params, eval_fn, *, lr):
  r = cfg["nn_workers"]

  def build_for(attack, method):
    data_attack = {"random_labels": data_attacks.label_flip(10),
                   "label_shift": data_attacks.label_shift(10)}[attack]
    if method == "threshold":
      worker_tx = with_norm(compress(compression.scaled_sign))
      agg = byzjax.aggregate(
          using_sent_norms(norm_threshold),
          trim_fraction=(cfg["nn_byzantine"] + cfg["extra_trim"]) / r,
          num_workers=r)
    else:
      worker_tx = compress(compression.scaled_sign)
      agg = byzjax.aggregate(mean)

    def build(hp, key):
      del hp
      sim = simulation.Simulation(
          loss_fn=fns.loss, server_tx=optax.chain(agg, optax.sgd(lr)),
          num_workers=r, batch_size=cfg["nn_batch"], worker_tx=worker_tx,
          data_attack=data_attack, num_byzantine=cfg["nn_byzantine"],
          eval_fn=eval_fn, eval_every=cfg["nn_eval_every"])
      return sim, simulation.init(sim, params, key)
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


def _plot_linreg(rows, cfg, path):
  plt = _figures.pyplot()
  byz = cfg["byzantine"]
  fig, axes = plt.subplots(len(FIGURES), len(byz), squeeze=False,
                           figsize=(3.6 * len(byz), 2.8 * len(FIGURES)))
  for i, (fig_no, methods) in enumerate(FIGURES.items()):
    for j, f in enumerate(byz):
      ax = axes[i][j]
      for c, method in enumerate(methods):
        steps, vals = curve(rows, "error", method=method, byzantine=f)
        with np.errstate(invalid="ignore"):
          mu, sd = np.nanmean(vals, 0), np.nanstd(vals, 0)
        ax.semilogy(steps, mu, color=f"C{c}", label=LABELS[method])
        ax.fill_between(steps, np.maximum(mu - sd, 1e-12), mu + sd,
                        color=f"C{c}", alpha=0.2)
      ax.set_title(f"Fig. {fig_no}: αm = {f}, βm = {f + cfg['extra_trim']}",
                   fontsize=9)
      ax.set_xlabel("iteration")
      ax.set_ylabel("‖w_t − w*‖")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  _figures.save(fig, path, dpi=70)


def _plot_nn(rows, path):
  plt = _figures.pyplot()
  fig, axes = plt.subplots(1, len(NN_ATTACKS), figsize=(5 * len(NN_ATTACKS),
                                                       3.4))
  for ax, attack in zip(axes, NN_ATTACKS):
    for c, method in enumerate(NN_METHODS):
      steps, vals = curve(rows, "train_loss", attack=attack, method=method)
      ax.plot(steps, np.nanmean(vals, 0), color=f"C{c}",
              label=f"{LABELS[method]}: honest batches")
      steps, vals = curve(rows, "train_ce", attack=attack, method=method)
      ax.plot(steps, np.nanmean(vals, 0), "--", color=f"C{c}",
              label=f"{LABELS[method]}: clean train subset")
    ax.set_title(f"Byzantine workers: {attack.replace('_', ' ')}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  _figures.save(fig, path, dpi=80)


def _final(rows, metric, **conds):
  _, vals = curve(rows, metric, **conds)
  v = vals[:, -1]
  v = np.where(np.isfinite(v), v, np.nan)
  return float(np.nanmean(v)), float(np.nanstd(v))


def summarize(linreg_rows, nn_rows, sign_rows, cfg, args, seconds):
  lines = ["# Ghosh et al. — norm thresholding, compression, error feedback",
           ""]
  if linreg_rows:
    byz = cfg["byzantine"]
    lines += [
        "## Linear regression (Figures 1–3)", "",
        f"A ∈ R^{cfg['num_samples']}×{cfg['dim']}, m = "
        f"{cfg['num_workers']} workers, {cfg['steps']} full-batch "
        f"iterations, step size {args.lr} (signSGD: {args.sign_lr}); "
        f"‖w_T − w*‖ (‖w_0 − w*‖ ≈ {np.sqrt(cfg['dim']):.0f}), mean ± sd "
        f"over {cfg['seeds']} runs. Byzantine kept = Byzantine workers among "
        "the averaged ones at the last step (thresholding only).", "",
        "| method | " + " | ".join(
            f"αm = {f}, βm = {f + cfg['extra_trim']}" for f in byz) + " |",
        "|---|" + "---|" * len(byz)]
    for method in METHODS:
      cells = []
      for f in byz:
        mu, sd = _final(linreg_rows, "error", method=method, byzantine=f)
        cell = f"{mu:.3g} ± {sd:.2g}"
        if method.endswith("threshold"):
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
        "## One-hidden-layer network on Fashion-MNIST", "",
        f"{cfg['nn_workers']} workers, {cfg['nn_byzantine']} Byzantine, "
        f"hidden width {cfg['nn_hidden']}, batch {cfg['nn_batch']} per "
        f"worker, {cfg['nn_steps']} iterations, step size {args.nn_lr}, "
        "scaled-sign compression; thresholding drops "
        f"{cfg['nn_byzantine'] + cfg['extra_trim']} workers.", "",
        "| Byzantine labels | method | honest batch CE (last round) | "
        "clean train CE | test accuracy | Byz. kept |",
        "|---|---|---|---|---|---|"]
    for attack in NN_ATTACKS:
      for method in NN_METHODS:
        tl, _ = _final(nn_rows, "train_loss", attack=attack, method=method)
        ce, _ = _final(nn_rows, "train_ce", attack=attack, method=method)
        acc, _ = _final(nn_rows, "test_accuracy", attack=attack,
                        method=method)
        kept = "—"
        if method == "threshold":
          kept = f"{_final(nn_rows, 'byz_kept', attack=attack, method=method)[0]:.0f}"
        lines.append(f"| {attack.replace('_', ' ')} | {LABELS[method]} | "
                     f"{tl:.3f} | {ce:.3f} | {acc:.3f} | {kept} |")
    lines.append("")
  lines.append(f"Total wall-clock time: {seconds:.0f} s.")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="results/ghosh")
  parser.add_argument("--quick", action="store_true",
                      help="small sizes that run in a couple of minutes")
  parser.add_argument("--part", default="all", choices=["all", "linreg", "nn"])
  parser.add_argument("--seeds", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None,
                      help="linear-regression iterations")
  parser.add_argument("--nn-steps", type=int, default=None)
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
  for name in ("seeds", "steps", "nn_steps"):
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
    timings["linreg_seconds"] = time.perf_counter() - t0
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
      timings["sign_lr_seconds"] = time.perf_counter() - t0
      simulation.write_csv(sign_rows,
                           os.path.join(args.out, "signsgd_step_sizes.csv"))
    _plot_linreg(linreg_rows, cfg, os.path.join(args.out, "linreg.png"))

  if args.part in ("all", "nn"):
    t0 = time.perf_counter()
    data, fns, params, eval_fn = nn_task(jax.random.fold_in(key, 2), cfg,
                                         args.fashion_mnist_path)
    print(f"[ghosh] MLP({cfg['nn_hidden']}) on Fashion-MNIST: "
          f"{len(NN_ATTACKS)} attacks x {len(NN_METHODS)} methods, "
          f"{cfg['nn_steps']} iterations, {cfg['nn_workers']} workers",
          flush=True)
    nn_rows = simulation.grid(
        nn_build_for(cfg, fns, params, eval_fn, lr=args.nn_lr), data,
        choices={"attack": list(NN_ATTACKS), "method": list(NN_METHODS)},
        num_evals=cfg["nn_steps"] // cfg["nn_eval_every"], seeds=1,
        key=jax.random.fold_in(key, 3))
    timings["nn_seconds"] = time.perf_counter() - t0
    simulation.write_csv(nn_rows, os.path.join(args.out, "nn.csv"))
    _plot_nn(nn_rows, os.path.join(args.out, "nn.png"))

  seconds = time.perf_counter() - start
  summary = summarize(linreg_rows, nn_rows, sign_rows, cfg, args, seconds)
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write(summary)
  with open(os.path.join(args.out, "config.json"), "w") as f:
    json.dump({**vars(args), **cfg, **timings, "seconds": seconds,
               "jax": jax.__version__, "backend": jax.default_backend()},
              f, indent=2)
  print(summary)
  print(f"[ghosh] wrote csv, png, summary.md to {args.out}")
  return dict(linreg=linreg_rows, nn=nn_rows, cfg=cfg, seconds=seconds)


if __name__ == "__main__":
  main()
