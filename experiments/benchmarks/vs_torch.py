"""byzjax's simulator against the PyTorch loops users would write instead.

Usage::

  python experiments/benchmarks/vs_torch.py --out DIR [--quick]
      [--workloads small,small_sweep,mlp_mean,mlp_gm,lenet] [--repeats N]

The same training step, three ways, in one process, timed in interleaved
repeats after a warm-up call (the best repeat is reported, the median too):

* ``byzjax``: :func:`byzjax.simulation.run` of ``steps`` steps, compiled
  ahead of time (compile time reported separately);
* ``torch loop``: a Python loop over the workers, each sampling its batch,
  forward, backward, copying its flat gradient into row ``r`` of an
  ``[R, d]`` tensor; then the aggregator and the SGD step (how ByzFL and
  blades simulate);
* ``torch vmap``: ``torch.func.vmap(torch.func.grad(loss))`` over the
  workers' batches, the gradients flattened to ``[R, d]``, same aggregator.

Workloads (same model, initial parameters, aggregator and batch sizes on both
sides; synthetic data, since speed does not depend on the values):

* ``small``: Ghosh et al. §7, linear regression, ``R = 200`` workers x 20
  samples, ``d = 1000``, full local gradients (``Simulation(full_batch=
  True)``; the torch loops take the whole shard), norm thresholding
  dropping ``beta m = 12`` workers (their §7 setting for ``alpha m = 10``);
  roofline: the design matrix (16 MB) read twice at the bandwidth of a
  plain ``jnp.dot`` matrix-vector product on a 256 MB matrix measured in the
  same run.
* ``small_sweep``: 20 seeds of ``small`` in one vmapped call (data shared)
  against one run (byzjax only).
* ``mlp_mean`` / ``mlp_gm``: MLP 784-1000-10, ``R = 32`` x batch 64 drawn
  without replacement from shards of 256, mean / geometric median
  (Weiszfeld, relative objective decrease <= 1e-6, at most 100 iterations;
  the torch Weiszfeld below starts at the mean and uses the same rule);
  roofline: the step's matrix-multiply FLOPs at the rate of a plain
  ``jnp.dot`` of the first layer's shape measured in the same run.
* ``lenet``: :class:`byzjax.models.LeNet` (BGMD's CNN), ``R = 32`` x 64,
  mean; one more byzjax row uses XLA's native convolution weight gradient
  instead of :mod:`byzjax.conv`'s im2col one (not in ``--quick``).

Writes ``DIR/vs_torch.{csv,json,md,png}`` and prints the table with the load
average and versions. ``--quick``: tiny shapes, for the smoke test.
"""

import argparse
import csv
import dataclasses
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
import optax
import torch

import byzjax
from byzjax import conv
from byzjax import models
from byzjax import simulation
from byzjax.aggregators.coordinatewise import mean as bz_mean
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.aggregators.norm_threshold import norm_threshold
from byzjax.data.partition import WorkerData

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import machine_info  # pylint: disable=g-import-not-at-top,wrong-import-position

GM_TOL, GM_MAX_ITERS = 1e-6, 100


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  model: str           # "linear", "mlp", "lenet"
  aggregator: str      # "norm_threshold", "mean", "gm"
  workers: int
  batch: int
  shard: int
  dim: int = 1000      # linear: features
  side: int = 28       # image side (mlp, lenet)
  hidden: int = 1000   # mlp hidden width
  channels: tuple = (64, 64)  # lenet
  lenet_hidden: int = 1024
  steps: int = 5
  lr: float = 0.01
  trim_fraction: float = 0.06

  @property
  def full_batch(self):
    return self.batch == self.shard


FULL = {
    "small": Workload("small", "linear", "norm_threshold", 200, 20, 20,
                      steps=50),
    "mlp_mean": Workload("mlp_mean", "mlp", "mean", 32, 64, 256, steps=5),
    "mlp_gm": Workload("mlp_gm", "mlp", "gm", 32, 64, 256, steps=3),
    "lenet": Workload("lenet", "lenet", "mean", 32, 64, 256, steps=1),
}
QUICK = {
    "small": Workload("small", "linear", "norm_threshold", 20, 5, 5, dim=50,
                      steps=3),
    "mlp_mean": Workload("mlp_mean", "mlp", "mean", 4, 8, 16, side=8,
                         hidden=16, steps=2),
    "mlp_gm": Workload("mlp_gm", "mlp", "gm", 4, 8, 16, side=8, hidden=16,
                       steps=2),
    "lenet": Workload("lenet", "lenet", "mean", 2, 4, 8, channels=(4, 4),
                      lenet_hidden=16, steps=1),
}


# ------------------------------------------------------------------ data, models
def make_data(wl: Workload, seed=0):
  rng = np.random.default_rng(seed)
  r, n = wl.workers, wl.shard
  if wl.model == "linear":
    x = rng.standard_normal((r, n, wl.dim), dtype=np.float32)
    w_star = rng.standard_normal(wl.dim).astype(np.float32)
    y = (x @ w_star).astype(np.float32)
  else:
    x = rng.random((r, n, wl.side, wl.side, 1), dtype=np.float32)
    y = rng.integers(0, 10, (r, n)).astype(np.int32)
  return x, y


def byzjax_fns(wl: Workload):
  if wl.model == "linear":
    return models.make_regressor(models.Linear(1, use_bias=False))
  if wl.model == "mlp":
    return models.make_classifier(models.MLP(10, (wl.hidden,)))
  return models.make_classifier(models.LeNet(10, wl.channels,
                                             wl.lenet_hidden))


class TorchLeNet(torch.nn.Module):
  """byzjax.models.LeNet in PyTorch (NHWC flatten order kept)."""

  def __init__(self, channels, hidden, side):
    super().__init__()
    c1, c2 = channels
    self.conv1 = torch.nn.Conv2d(1, c1, 5)
    self.conv2 = torch.nn.Conv2d(c1, c2, 5)
    s = ((side - 4) // 2 - 4) // 2
    self.fc1 = torch.nn.Linear(s * s * c2, hidden)
    self.fc2 = torch.nn.Linear(hidden, 10)

  def forward(self, x):  # x: [B, H, W, 1]
    x = x.permute(0, 3, 1, 2)
    x = torch.relu(torch.nn.functional.max_pool2d(self.conv1(x), 2))
    x = torch.relu(torch.nn.functional.max_pool2d(self.conv2(x), 2))
    x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    return self.fc2(torch.relu(self.fc1(x)))


class TorchMLP(torch.nn.Module):

  def __init__(self, inputs, hidden):
    super().__init__()
    self.fc1 = torch.nn.Linear(inputs, hidden)
    self.fc2 = torch.nn.Linear(hidden, 10)

  def forward(self, x):
    return self.fc2(torch.relu(self.fc1(x.reshape(x.shape[0], -1))))


class TorchLinear(torch.nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.fc = torch.nn.Linear(dim, 1, bias=False)

  def forward(self, x):
    return self.fc(x)[:, 0]


def torch_model(wl: Workload, params) -> torch.nn.Module:
  """The torch twin of the byzjax model, with byzjax's initial parameters."""
  t = lambda a: torch.from_numpy(np.array(a, np.float32))
  if wl.model == "linear":
    m = TorchLinear(wl.dim)
    m.fc.weight.data = t(params["Dense_0"]["kernel"]).T.contiguous()
    return m
  if wl.model == "mlp":
    m = TorchMLP(wl.side * wl.side, wl.hidden)
    layers = [m.fc1, m.fc2]
    for i, layer in enumerate(layers):
      layer.weight.data = t(params[f"Dense_{i}"]["kernel"]).T.contiguous()
      layer.bias.data = t(params[f"Dense_{i}"]["bias"])
    return m
  m = TorchLeNet(wl.channels, wl.lenet_hidden, wl.side)
  for i, layer in enumerate([m.conv1, m.conv2]):
    layer.weight.data = t(params[f"Conv_{i}"]["kernel"]).permute(
        3, 2, 0, 1).contiguous()
    layer.bias.data = t(params[f"Conv_{i}"]["bias"])
  for i, layer in enumerate([m.fc1, m.fc2]):
    layer.weight.data = t(params[f"Dense_{i}"]["kernel"]).T.contiguous()
    layer.bias.data = t(params[f"Dense_{i}"]["bias"])
  return m


def torch_loss(wl: Workload):
  if wl.model == "linear":
    return lambda out, y: torch.mean((out - y) ** 2)
  return torch.nn.functional.cross_entropy


# ------------------------------------------------------------ torch aggregators
def torch_mean(g):
  return g.mean(0)


def torch_norm_threshold(g, trim_fraction):
  """Mean of the rows left after dropping ceil(beta R) largest norms."""
  r = g.shape[0]
  keep = r - math.ceil(trim_fraction * r)
  idx = torch.argsort(torch.linalg.vector_norm(g, dim=1), stable=True)[:keep]
  return g[idx].mean(0)


def torch_weiszfeld(g, tol=GM_TOL, max_iters=GM_MAX_ITERS):
  """Smoothed Weiszfeld from the mean; stops when the relative objective
  decrease (f_t - f_{t+1}) / f_{t+1} <= tol. Returns (median, iterations)."""
  z = g.mean(0)
  dist = torch.linalg.vector_norm(g - z, dim=1)
  nu = 1e-7 * torch.median(dist).clamp_min(1e-30)
  obj = dist.sum()
  it = 0
  while it < max_iters:
    beta = 1.0 / torch.clamp(dist, min=nu)
    z = (beta / beta.sum()) @ g
    dist = torch.linalg.vector_norm(g - z, dim=1)
    new = dist.sum()
    it += 1
    done = float((obj - new).clamp_min(0) / new.clamp_min(1e-30)) <= tol
    obj = new
    if done:
      break
  return z, it


def torch_aggregate(wl: Workload, g):
  if wl.aggregator == "mean":
    return torch_mean(g), 0
  if wl.aggregator == "norm_threshold":
    return torch_norm_threshold(g, wl.trim_fraction), 0
  return torch_weiszfeld(g)


def byzjax_aggregator(wl: Workload):
  if wl.aggregator == "mean":
    return byzjax.aggregate(bz_mean)
  if wl.aggregator == "norm_threshold":
    return byzjax.aggregate(norm_threshold, trim_fraction=wl.trim_fraction)
  return byzjax.aggregate(geometric_median, num_workers=wl.workers,
                          criterion="objective", tol=GM_TOL,
                          max_iters=GM_MAX_ITERS)


# ---------------------------------------------------------------- the runners
class ByzjaxRunner:
  """``steps`` steps of simulation.run, compiled ahead of time."""

  def __init__(self, wl, fns, params, x, y, key, seeds=None):
    self.wl = wl
    self.sim = simulation.Simulation(
        loss_fn=fns.loss,
        server_tx=optax.chain(byzjax_aggregator(wl), optax.sgd(wl.lr)),
        num_workers=wl.workers, batch_size=wl.batch, eval_every=wl.steps,
        unroll=wl.model == "lenet" or wl.steps == 1,
        full_batch=wl.full_batch)
    self.data = WorkerData(jnp.asarray(x), jnp.asarray(y),
                           jnp.full((wl.workers,), wl.shard, jnp.int32))
    run = functools.partial(simulation.run, self.sim, num_evals=1)
    if seeds is None:
      self.state = simulation.init(self.sim, params, key)
      fn = jax.jit(run)
    else:
      keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(
          jnp.arange(seeds))
      self.state = jax.vmap(lambda k: simulation.init(self.sim, params, k))(
          keys)
      fn = jax.jit(jax.vmap(run, in_axes=(0, None)))
    t0 = time.perf_counter()
    self.fn = fn.lower(self.state, self.data).compile()
    self.compile_s = time.perf_counter() - t0

  def __call__(self):
    self.state, _ = self.fn(self.state, self.data)
    jax.block_until_ready(self.state)

  def gm_iters(self):
    infos = simulation.loop.aggregator_infos(self.state.server_state)
    return int(infos[0].num_iters) if infos else 0


class TorchRunner:
  """The PyTorch loop over workers, or torch.func.vmap(grad)."""

  def __init__(self, wl, params, x, y, seed, vmapped):
    self.wl, self.vmapped = wl, vmapped
    self.model = torch_model(wl, params)
    self.loss = torch_loss(wl)
    self.x = torch.from_numpy(x)
    self.y = torch.from_numpy(y if wl.model == "linear" else
                              y.astype(np.int64))
    self.gen = torch.Generator().manual_seed(seed)
    self.names = [n for n, _ in self.model.named_parameters()]
    self.iters = 0

  def batches(self):
    wl = self.wl
    if wl.full_batch:
      return self.x, self.y
    idx = torch.rand(wl.workers, wl.shard, generator=self.gen).topk(
        wl.batch, dim=1).indices
    xs = torch.gather(self.x, 1, idx.reshape(idx.shape + (1,) * (
        self.x.ndim - 2)).expand((-1, -1) + self.x.shape[2:]))
    return xs, torch.gather(self.y, 1, idx)

  def grads_loop(self):
    wl, model = self.wl, self.model
    params = list(model.parameters())
    d = sum(p.numel() for p in params)
    g = torch.empty(wl.workers, d)
    for r in range(wl.workers):
      if wl.full_batch:
        xb, yb = self.x[r], self.y[r]
      else:
        idx = torch.randperm(wl.shard, generator=self.gen)[:wl.batch]
        xb, yb = self.x[r, idx], self.y[r, idx]
      model.zero_grad(set_to_none=False)
      self.loss(model(xb), yb).backward()
      torch.cat([p.grad.reshape(-1) for p in params], out=g[r])
    return g

  def grads_vmap(self):
    xs, ys = self.batches()
    params = {n: p.detach() for n, p in self.model.named_parameters()}

    def loss_fn(p, xb, yb):
      out = torch.func.functional_call(self.model, p, (xb,))
      return self.loss(out, yb)

    grads = torch.func.vmap(torch.func.grad(loss_fn), in_dims=(None, 0, 0))(
        params, xs, ys)
    return torch.cat([grads[n].reshape(self.wl.workers, -1)
                      for n in self.names], dim=1)

  def per_worker_grads(self, xs, ys):
    """Stacked [R, d] gradients of given batches (for the equivalence check)."""
    params = {n: p.detach() for n, p in self.model.named_parameters()}

    def loss_fn(p, xb, yb):
      return self.loss(torch.func.functional_call(self.model, p, (xb,)), yb)

    grads = torch.func.vmap(torch.func.grad(loss_fn), in_dims=(None, 0, 0))(
        params, xs, ys)
    return {n: grads[n] for n in self.names}

  def step(self):
    g = self.grads_vmap() if self.vmapped else self.grads_loop()
    agg, self.iters = torch_aggregate(self.wl, g)
    with torch.no_grad():
      offset = 0
      for p in self.model.parameters():
        p -= self.wl.lr * agg[offset:offset + p.numel()].reshape(p.shape)
        offset += p.numel()

  threads = None

  def __call__(self):
    if self.threads:
      torch.set_num_threads(self.threads)
    for _ in range(self.wl.steps):
      self.step()

  def calibrate_threads(self):
    """Picks torch's thread count, default or 1, by timing one call of each
    (on an oversubscribed CPU, multithreaded torch can be many times slower,
    which would flatter byzjax)."""
    default = torch.get_num_threads()
    best = None
    for n in dict.fromkeys((default, 1)):
      self.threads = n
      self()
      t0 = time.perf_counter()
      self()
      t = time.perf_counter() - t0
      if best is None or t < best[0]:
        best = (t, n)
    self.threads = best[1]
    torch.set_num_threads(default)


# ------------------------------------------------------------------- rooflines
def _best_time(fn, repeats=5):
  fn()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def measured_bandwidth(quick) -> float:
  """Bytes/s of a jitted matrix-vector product streaming a large matrix."""
  rows = 1024 if quick else 65536
  a = jnp.ones((rows, 1024), jnp.float32)
  v = jnp.ones((1024,), jnp.float32)
  f = jax.jit(jnp.dot)
  t = _best_time(lambda: jax.block_until_ready(f(a, v)))
  return a.size * 4 / t


def measured_flops(wl: Workload) -> float:
  """FLOP/s of a jitted jnp.dot shaped like the MLP's first layer."""
  m, k, n = wl.workers * wl.batch, wl.side * wl.side, wl.hidden
  a = jnp.ones((m, k), jnp.float32)
  b = jnp.ones((k, n), jnp.float32)
  f = jax.jit(jnp.dot)
  t = _best_time(lambda: jax.block_until_ready(f(a, b)))
  return 2 * m * k * n / t


def mlp_step_flops(wl: Workload) -> float:
  """Forward + backward matmul FLOPs of one step (no input grad of layer 1)."""
  m = wl.workers * wl.batch
  l1, l2 = wl.side * wl.side * wl.hidden, wl.hidden * 10
  return 2 * m * (l1 + l2) * 2 + 2 * m * l2


# ----------------------------------------------------------------- the checks
def gradient_check(wl: Workload, fns, params, x, y) -> float:
  """Relative difference of byzjax's and torch's per-worker gradients on the
  same batches (the first ``batch`` rows of every shard)."""
  xb, yb = x[:, :wl.batch], y[:, :wl.batch]
  _, g_bz = jax.jit(lambda p, b: simulation.loop.per_worker_value_and_grad(
      fns.loss, p, b))(params, (jnp.asarray(xb), jnp.asarray(yb)))
  runner = TorchRunner(wl, params, x, y, 0, vmapped=True)
  g_t = runner.per_worker_grads(
      torch.from_numpy(xb),
      torch.from_numpy(yb if wl.model == "linear" else yb.astype(np.int64)))
  pairs = []
  model = runner.model
  if wl.model == "linear":
    pairs.append((g_bz["Dense_0"]["kernel"][..., 0], g_t["fc.weight"][:, 0]))
  else:
    convs = ["conv1", "conv2"] if wl.model == "lenet" else []
    for i, c in enumerate(convs):
      pairs.append((g_bz[f"Conv_{i}"]["kernel"],
                    g_t[f"{c}.weight"].permute(0, 3, 4, 2, 1)))
      pairs.append((g_bz[f"Conv_{i}"]["bias"], g_t[f"{c}.bias"]))
    for i, fc in enumerate(["fc1", "fc2"]):
      pairs.append((g_bz[f"Dense_{i}"]["kernel"],
                    g_t[f"{fc}.weight"].transpose(1, 2)))
      pairs.append((g_bz[f"Dense_{i}"]["bias"], g_t[f"{fc}.bias"]))
  del model
  # Relative norm error per leaf, worst leaf. (Not the max entry: at 32 x 64
  # images a few ReLU/max-pool inputs within rounding of a kink flip between
  # implementations; torch.func.vmap and torch's own loop differ by 6e-3 in
  # their largest conv-gradient entry there.)
  worst = 0.0
  for a, b in pairs:
    a, b = np.asarray(a, np.float64), b.numpy().astype(np.float64)
    worst = max(worst, float(np.linalg.norm(a - b) /
                             max(np.linalg.norm(b), 1e-30)))
  return worst


# --------------------------------------------------------------------- driver
def time_interleaved(runners: dict, repeats: int) -> dict:
  for fn in runners.values():  # warm-up
    fn()
  times = {k: [] for k in runners}
  for _ in range(repeats):
    for k, fn in runners.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  return times


def measure(wl: Workload, repeats: int, quick: bool, log,
            native_conv_row: bool = True) -> list[dict]:
  key = jax.random.key(0)
  x, y = make_data(wl)
  fns = byzjax_fns(wl)
  params = fns.init(jax.random.key(1), jnp.asarray(x[0, :1]))
  check = gradient_check(wl, fns, params, x, y)
  log(f"[{wl.name}] per-worker gradients byzjax vs torch: rel diff "
      f"{check:.2e}")
  bz = ByzjaxRunner(wl, fns, params, x, y, key)
  log(f"[{wl.name}] byzjax compiled in {bz.compile_s:.1f} s")
  runners = {"byzjax": bz}
  if wl.model == "lenet" and native_conv_row:
    # The same program with XLA's own convolution weight gradient (a grouped
    # convolution under vmap) instead of byzjax.conv's im2col one.
    conv.CPU_WEIGHT_GRAD = "native"
    try:
      runners["byzjax, native conv grad"] = ByzjaxRunner(wl, fns, params, x,
                                                         y, key)
    finally:
      conv.CPU_WEIGHT_GRAD = "im2col"
  runners["torch loop"] = TorchRunner(wl, params, x, y, 0, vmapped=False)
  runners["torch vmap"] = TorchRunner(wl, params, x, y, 0, vmapped=True)
  for k, fn in runners.items():
    if isinstance(fn, TorchRunner):
      fn.calibrate_threads()
      log(f"[{wl.name}] {k}: torch threads {fn.threads}")
  times = time_interleaved(runners, repeats)
  roof_ms, roof_what = None, ""
  if wl.model == "linear":
    bw = measured_bandwidth(quick)
    roof_ms = 1e3 * 2 * x.nbytes / bw
    roof_what = f"2 x {x.nbytes / 1e6:.3g} MB at {bw / 1e9:.1f} GB/s"
  elif wl.model == "mlp" and wl.aggregator == "mean":
    rate = measured_flops(wl)
    roof_ms = 1e3 * mlp_step_flops(wl) / rate
    roof_what = (f"{mlp_step_flops(wl) / 1e9:.2f} GFLOP at "
                 f"{rate / 1e9:.1f} GFLOP/s")
  rows = []
  best_torch = min(min(times["torch loop"]), min(times["torch vmap"]))
  for k, ts in times.items():
    fn = runners[k]
    best = min(ts) / wl.steps
    rows.append(dict(
        workload=wl.name, method=k, workers=wl.workers, batch=wl.batch,
        steps_per_call=wl.steps, ms_per_step=1e3 * best,
        median_ms_per_step=1e3 * statistics.median(ts) / wl.steps,
        worker_steps_per_s=wl.workers / best,
        speedup_vs_best_torch=(best_torch / wl.steps) / best,
        compile_s=(fn.compile_s if isinstance(fn, ByzjaxRunner) else None),
        roofline_ms=roof_ms, vs_roofline=(1e3 * best / roof_ms
                                          if roof_ms else None),
        roofline=roof_what,
        gm_iters=(fn.gm_iters() if isinstance(fn, ByzjaxRunner) else fn.iters)
        if wl.aggregator == "gm" else None,
        grad_check=check, load=os.getloadavg()[0],
        torch_threads=getattr(fn, "threads", None)))
    log(f"[{wl.name}] {k}: {1e3 * best:.1f} ms/step")
  return rows


def measure_sweep(wl: Workload, seeds: int, repeats: int, log) -> list[dict]:
  """One byzjax run vs ``seeds`` runs vmapped over seeds, data shared."""
  key = jax.random.key(0)
  x, y = make_data(wl)
  fns = byzjax_fns(wl)
  params = fns.init(jax.random.key(1), jnp.asarray(x[0, :1]))
  one = ByzjaxRunner(wl, fns, params, x, y, key)
  many = ByzjaxRunner(wl, fns, params, x, y, key, seeds=seeds)
  times = time_interleaved({"one run": one, f"{seeds} seeds": many}, repeats)
  t_one, t_many = min(times["one run"]), min(times[f"{seeds} seeds"])
  log(f"[{wl.name}_sweep] one run {1e3 * t_one / wl.steps:.1f} ms/step, "
      f"{seeds} seeds {1e3 * t_many / wl.steps:.1f} ms/step "
      f"({t_many / t_one:.2f}x one run)")
  rows = []
  for k, t, c, n in (("byzjax one run", t_one, one.compile_s, 1),
                     (f"byzjax vmap {seeds} seeds", t_many, many.compile_s,
                      seeds)):
    rows.append(dict(
        workload=f"{wl.name}_sweep", method=k, workers=wl.workers,
        batch=wl.batch, steps_per_call=wl.steps,
        ms_per_step=1e3 * t / wl.steps,
        median_ms_per_step=1e3 * statistics.median(
            times["one run" if n == 1 else f"{seeds} seeds"]) / wl.steps,
        worker_steps_per_s=n * wl.workers * wl.steps / t,
        speedup_vs_best_torch=None, compile_s=c, roofline_ms=None,
        vs_roofline=t_many / t_one if n > 1 else None,
        roofline="time / one run" if n > 1 else "", gm_iters=None,
        grad_check=None, load=os.getloadavg()[0], torch_threads=None))
  return rows


def _fmt(v, spec):
  return "" if v is None else format(v, spec)


def markdown(rows, info) -> str:
  lines = [
      f"load average {info['load_average_start']} (start) / "
      f"{info['load_average_end']} (end); jax {info['jax_version']}, torch "
      f"{info['torch_version']}, {info['cpus_usable']} CPUs "
      f"({info['cpu_model']}), backend {info['backend']}", "",
      "| workload | method | ms/step (best) | median | worker-steps/s | "
      "vs best torch | compile (s) | roofline ms | x roofline | GM iters |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['workload']} | {r['method']} | {r['ms_per_step']:.1f} | "
        f"{r['median_ms_per_step']:.1f} | {r['worker_steps_per_s']:.0f} | "
        f"{_fmt(r['speedup_vs_best_torch'], '.2f')} | "
        f"{_fmt(r['compile_s'], '.1f')} | {_fmt(r['roofline_ms'], '.2f')} | "
        f"{_fmt(r['vs_roofline'], '.2f')} | {_fmt(r['gm_iters'], 'd')} |")
  roofs = {r["workload"]: r["roofline"] for r in rows if r["roofline"]}
  lines += [""] + [f"- roofline of {k}: {v}" for k, v in roofs.items()]
  return "\n".join(lines) + "\n"


def plot(rows, path):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  import _figures  # pylint: disable=g-import-not-at-top
  plt = _figures.pyplot()
  names = [r for r in dict.fromkeys(r["workload"] for r in rows)]
  fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3))
  axes = np.atleast_1d(axes)
  for ax, name in zip(axes, names):
    sel = [r for r in rows if r["workload"] == name]
    ax.bar([r["method"] for r in sel], [r["ms_per_step"] for r in sel])
    ax.set_title(name)
    ax.set_ylabel("ms / step")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
  fig.tight_layout()
  _figures.save(fig, path, dpi=100)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--workloads",
                      default="small,small_sweep,mlp_mean,mlp_gm,lenet")
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--seeds", type=int, default=20)
  args = parser.parse_args(argv)
  table = QUICK if args.quick else FULL
  repeats = args.repeats or (1 if args.quick else 3)
  seeds = 3 if args.quick else args.seeds
  os.makedirs(args.out, exist_ok=True)
  info = machine_info()
  info["torch_version"] = torch.__version__
  info["torch_threads"] = torch.get_num_threads()
  log = lambda m: print(f"{m} (load {os.getloadavg()[0]:.1f})", flush=True)
  rows = []
  for name in args.workloads.split(","):
    if name == "small_sweep":
      rows += measure_sweep(table["small"], seeds, repeats, log)
    elif name in table:
      rows += measure(table[name], repeats, args.quick, log,
                      native_conv_row=not args.quick)
    else:
      raise ValueError(f"unknown workload {name!r}; choose from "
                       f"{sorted(table) + ['small_sweep']}.")
  info["load_average_end"] = os.getloadavg()
  text = markdown(rows, info)
  with open(os.path.join(args.out, "vs_torch.md"), "w") as f:
    f.write(text)
  with open(os.path.join(args.out, "vs_torch.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  with open(os.path.join(args.out, "vs_torch.json"), "w") as f:
    json.dump({"rows": rows, "config": vars(args), "machine": info}, f,
              indent=2, default=str)
  plot(rows, os.path.join(args.out, "vs_torch.png"))
  print(text)
  return rows


if __name__ == "__main__":
  main()
