"""Tests for the jitted simulation loop, sweeps, sharding and checkpoints."""

import csv
import functools
import os
import pathlib
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import byzjax
from byzjax import simulation
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.attacks.gradient import bit_flip_attack
from byzjax.data.partition import WorkerData

R, N, D = 8, 32, 6
W_STAR = jnp.linspace(-1.0, 1.0, D)


def _data(key=jax.random.key(0)):
  a = jax.random.normal(key, (R, N, D))
  return WorkerData(a, a @ W_STAR, jnp.full((R,), N, jnp.int32))


def _loss(params, batch):
  x, y = batch
  return 0.5 * jnp.mean((x @ params["w"] - y) ** 2)


def _mean(updates):
  return jax.tree.map(lambda x: jnp.mean(x, axis=0), updates)


def _sim(aggregator=geometric_median, lr=0.1, num_byzantine=2, **kw):
  kw.setdefault("attack", bit_flip_attack())
  return simulation.Simulation(
      loss_fn=_loss,
      server_tx=optax.chain(byzjax.aggregate(aggregator), optax.sgd(lr)),
      num_workers=R, batch_size=kw.pop("batch_size", 8),
      num_byzantine=num_byzantine,
      eval_fn=lambda p: {"err": jnp.linalg.norm(p["w"] - W_STAR)},
      eval_every=10, **kw)


def _params():
  return {"w": jnp.zeros(D)}


def _run(sim, key, num_evals=4, data=None):
  state = simulation.init(sim, _params(), key)
  return jax.jit(functools.partial(simulation.run, sim, num_evals=num_evals))(
      state, _data() if data is None else data)


def test_geometric_median_converges_where_the_mean_diverges():
  _, robust = _run(_sim(geometric_median), jax.random.key(1), num_evals=6)
  _, plain = _run(_sim(_mean), jax.random.key(1), num_evals=6)
  # Noise-free regression: the robust run converges geometrically.
  assert float(robust["err"][-1]) < 0.1 * float(robust["err"][0])
  assert float(robust["err"][-1]) < 0.1
  assert not float(plain["err"][-1]) < 1.0  # diverged (large, inf or nan)
  np.testing.assert_array_equal(robust["step"], [10, 20, 30, 40, 50, 60])


def test_step_traces_once():
  sim = _sim()
  state = simulation.init(sim, _params(), jax.random.key(2))
  data = _data()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, data):
    return simulation.step(sim, state, data)

  for _ in range(3):
    state, loss = step(state, data)
  assert int(state.step) == 3 and np.isfinite(float(loss))


def test_same_key_same_run_bit_for_bit():
  _, a = _run(_sim(), jax.random.key(3))
  _, b = _run(_sim(), jax.random.key(3))
  _, c = _run(_sim(), jax.random.key(4))
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(np.asarray(a["train_loss"]),
                            np.asarray(c["train_loss"]))


@pytest.mark.slow  # end-to-end or many compilations; run with -m slow
@pytest.mark.parametrize("unroll", [True, 3])
def test_unrolled_rounds_follow_the_same_trajectory(unroll):
  # Two rounds as one scan, and as two single-round calls (no outer loop)
  # of a fully or partly unrolled step loop: the same run up to rounding.
  key = jax.random.key(5)
  final, metrics = _run(_sim(), key, num_evals=2)
  sim = _sim(unroll=unroll)
  one_round = jax.jit(functools.partial(simulation.run, sim, num_evals=1))
  state = simulation.init(sim, _params(), key)
  errs = []
  for _ in range(2):
    state, m = one_round(state, _data())
    assert m["err"].shape == (1,)
    errs.append(m["err"][0])
  np.testing.assert_array_equal(state.step, final.step)
  np.testing.assert_array_equal(jax.random.key_data(state.key),
                                jax.random.key_data(final.key))
  np.testing.assert_allclose(errs, metrics["err"], rtol=1e-4)
  chex.assert_trees_all_close(state.params, final.params, rtol=1e-4,
                              atol=1e-6)


def test_resume_continues_identically(tmp_path):
  sim = _sim()
  data = _data()
  run2 = jax.jit(functools.partial(simulation.run, sim, num_evals=2))
  run4 = jax.jit(functools.partial(simulation.run, sim, num_evals=4))
  state0 = simulation.init(sim, _params(), jax.random.key(5))
  full_state, full = run4(state0, data)
  half_state, first = run2(state0, data)
  path = str(tmp_path / "ckpt.npz")
  simulation.checkpoint.save(path, half_state)
  restored = simulation.checkpoint.restore(
      path, simulation.init(sim, _params(), jax.random.key(99)))
  end_state, second = run2(restored, data)
  np.testing.assert_array_equal(
      np.concatenate([first["train_loss"], second["train_loss"]]),
      full["train_loss"])
  chex.assert_trees_all_equal(end_state.params, full_state.params)
  assert int(end_state.step) == 40


def test_checkpoint_rejects_wrong_template(tmp_path):
  path = str(tmp_path / "c.npz")
  simulation.checkpoint.save(path, {"a": jnp.ones(3)})
  with pytest.raises(ValueError, match="shape"):
    simulation.checkpoint.restore(path, {"a": jnp.ones(4)})
  with pytest.raises(ValueError, match="no array"):
    simulation.checkpoint.restore(path, {"b": jnp.ones(3)})


@pytest.mark.slow  # several compilations; keeps the default suite under 5 min
def test_byzantine_sets():
  fixed = simulation.init(_sim(num_byzantine=3), _params(), jax.random.key(6))
  assert int(fixed.byzantine.sum()) == 3
  sim = _sim(num_byzantine=3, redraw_byzantine=True)
  state = simulation.init(sim, _params(), jax.random.key(6))
  seen = []
  for _ in range(5):
    state, _ = jax.jit(functools.partial(simulation.step, sim))(state, _data())
    assert int(state.byzantine.sum()) == 3
    seen.append(np.asarray(state.byzantine))
  assert len({m.tobytes() for m in seen}) > 1


def test_data_attack_changes_only_byzantine_batches():
  """A data attack that zeroes targets, applied at the optimum w*."""
  def zero_targets(key, x, y):
    del key
    return x, jnp.zeros_like(y)

  def moved(num_byzantine):
    sim = _sim(_mean, num_byzantine=num_byzantine, attack=None,
               data_attack=zero_targets)
    state = simulation.init(sim, {"w": W_STAR}, jax.random.key(7))
    state, honest_loss = simulation.step(sim, state, _data())
    return float(honest_loss), float(jnp.linalg.norm(state.params["w"] - W_STAR))

  honest_loss, shift = moved(2)
  assert honest_loss < 1e-10  # honest batches untouched
  assert shift > 1e-2         # the two attacked workers' gradients moved w
  honest_loss, shift = moved(0)
  assert honest_loss < 1e-10 and shift < 1e-5


def test_diagnostics_count_kept_byzantine_workers():
  sim = simulation.Simulation(
      loss_fn=_loss,
      server_tx=optax.chain(byzjax.aggregate(geometric_median, num_workers=R),
                            optax.sgd(0.1)),
      num_workers=R, batch_size=8, attack=bit_flip_attack(), num_byzantine=2,
      eval_every=5)
  _, metrics = _run(sim, jax.random.key(8), num_evals=2)
  assert "byz_weight" in metrics
  # Bit-flipped rows are far away: the GM gives them little weight.
  assert float(metrics["byz_weight"][-1]) < 2 / R


@pytest.mark.parametrize("defense", ["trimmed_mean", "centered_clipping",
                                     "bucketing_krum"])
def test_diagnostics_by_default_for_more_defenses(defense):
  # Coordinate-wise rules report each worker's share of the coordinates,
  # centered clipping its clipping weights, and after bucketing the bucket
  # masks are mapped back to workers.
  from byzjax.aggregators import krum, trimmed_mean
  from byzjax.transforms.bucketing import bucketing
  from byzjax.transforms.centered_clipping import centered_clipping
  if defense == "trimmed_mean":
    head = [byzjax.aggregate(trimmed_mean, num_workers=R, trim_fraction=0.25)]
  elif defense == "centered_clipping":
    head = [centered_clipping(num_workers=R)]
  else:
    head = [bucketing(2, key=jax.random.key(1)),
            byzjax.aggregate(krum, num_workers=R // 2, num_byzantine=0)]
  sim = simulation.Simulation(
      loss_fn=_loss, server_tx=optax.chain(*head, optax.sgd(0.1)),
      num_workers=R, batch_size=8, attack=bit_flip_attack(), num_byzantine=2,
      eval_every=5)
  _, metrics = _run(sim, jax.random.key(8), num_evals=2)
  assert "byz_weight" in metrics or "byz_kept" in metrics
  if "byz_weight" in metrics:
    # Bit-flipped rows are far away: little of the aggregate comes from them.
    assert float(metrics["byz_weight"][-1]) < 0.5 * 2 / R
  if defense == "bucketing_krum":
    # Krum keeps one bucket of two workers; the two bit-flippers' buckets
    # (far away) are never the one kept.
    assert int(metrics["byz_kept"][-1]) == 0
    assert int(metrics["honest_dropped"][-1]) == R - 2 - 2


def test_worker_momentum_is_what_the_attack_sees_and_what_is_aggregated():
  # Karimireddy, He & Jaggi (ICML 2021): each worker sends its momentum
  # m_i <- beta m_i + (1 - beta) g_i, i.e. worker_tx=optax.ema(beta,
  # debias=False); the attack must see the honest momenta, not raw gradients.
  beta, lr, steps = 0.5, 0.1, 3

  def record(updates, state, params=None, **_):
    del state, params
    return updates, updates  # the attack's state: what it saw

  recorder = optax.GradientTransformationExtraArgs(
      lambda p: jax.tree.map(lambda x: jnp.zeros((R,) + x.shape), p), record)
  sim = simulation.Simulation(
      loss_fn=_loss, server_tx=optax.chain(byzjax.aggregate(_mean),
                                           optax.sgd(lr)),
      num_workers=R, batch_size=N, full_batch=True, num_byzantine=0,
      worker_tx=optax.ema(beta, debias=False), attack=recorder)
  state = simulation.init(sim, _params(), jax.random.key(0))
  data = _data()
  a, y = np.asarray(data.x, np.float64), np.asarray(data.y, np.float64)
  w, m = np.zeros(D), np.zeros((R, D))
  for _ in range(steps):
    state, _ = jax.jit(functools.partial(simulation.step, sim))(state, data)
    g = np.stack([a[i].T @ (a[i] @ w - y[i]) / N for i in range(R)])
    m = beta * m + (1 - beta) * g
    w = w - lr * m.mean(axis=0)
  np.testing.assert_allclose(state.attack_state["w"], m, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(state.params["w"], w, rtol=1e-4, atol=1e-6)


def test_local_steps_send_the_sum_of_local_gradients():
  # H local SGD steps from the shared parameters on full shards, then the
  # server averages the sums of local gradients (FedAvg when the server step
  # equals the local one): a NumPy transcription.
  h, local_lr, lr, rounds = 3, 0.05, 0.05, 2
  sim = simulation.Simulation(
      loss_fn=_loss, server_tx=optax.chain(byzjax.aggregate(_mean),
                                           optax.sgd(lr)),
      num_workers=R, batch_size=N, full_batch=True, local_steps=h,
      local_lr=local_lr)
  state = simulation.init(sim, _params(), jax.random.key(0))
  data = _data()
  a, y = np.asarray(data.x, np.float64), np.asarray(data.y, np.float64)
  w = np.zeros(D)
  for _ in range(rounds):
    state, loss = jax.jit(functools.partial(simulation.step, sim))(state, data)
    sums, first_losses = np.zeros((R, D)), []
    for i in range(R):
      wi = w.copy()
      first_losses.append(0.5 * np.mean((a[i] @ w - y[i]) ** 2))
      for _ in range(h):
        g = a[i].T @ (a[i] @ wi - y[i]) / N
        sums[i] += g
        wi = wi - local_lr * g
    w = w - lr * sums.mean(axis=0)
    np.testing.assert_allclose(loss, np.mean(first_losses), rtol=1e-5)
  np.testing.assert_allclose(state.params["w"], w, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="local_lr"):
    _sim(local_steps=2)
  with pytest.raises(ValueError, match="local_steps"):
    _sim(local_steps=0)


def test_vmapped_sweep_matches_single_runs():
  def build(hp, key):
    sim = _sim(lr=hp["lr"])
    return sim, simulation.init(sim, _params(), key)

  key = jax.random.key(9)
  points, metrics = simulation.vmapped_runs(
      build, _data(), num_evals=2, seeds=2, numeric={"lr": [0.05, 0.1]},
      key=key)
  assert metrics["err"].shape == (2, 2, 2)
  np.testing.assert_allclose(points["lr"], [0.05, 0.1])
  _, single = _run(_sim(lr=0.1), jax.random.fold_in(key, 1), num_evals=2)
  np.testing.assert_allclose(metrics["err"][1, 1], single["err"], rtol=1e-5)


@pytest.mark.slow  # several compilations; the default suite keeps a sibling
def test_chunked_sweep_matches_unchunked_and_logs_progress():
  def build(hp, key):
    sim = _sim(lr=hp["lr"])
    return sim, simulation.init(sim, _params(), key)

  key = jax.random.key(9)
  kw = dict(num_evals=2, seeds=3, numeric={"lr": [0.05, 0.1]}, key=key)
  _, whole = simulation.vmapped_runs(build, _data(), progress=False, **kw)
  lines = []
  # 6 runs in chunks of 4: the second chunk is padded.
  _, chunked = simulation.vmapped_runs(build, _data(), chunk_size=4,
                                       log=lines.append, **kw)
  assert chunked["err"].shape == whole["err"].shape == (2, 3, 2)
  for name in whole:
    np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-5,
                               atol=1e-6, err_msg=name)
  assert "compiling" in lines[0] and "compiled" in lines[1]
  assert any("chunk 2/2" in l for l in lines)
  with pytest.raises(ValueError, match="chunk_size"):
    simulation.vmapped_runs(build, _data(), chunk_size=0, **kw)


def test_full_batch_equals_sampling_the_whole_shard():
  """batch = shard: sampled rows are a permutation; the mean loss gradient is
  the same up to float rounding."""
  key = jax.random.key(12)
  n = 32  # = N, the shard length of _data()
  sampled = _run(_sim(batch_size=n), key, num_evals=2)[1]
  full = _run(_sim(batch_size=n, full_batch=True), key, num_evals=2)[1]
  np.testing.assert_allclose(full["err"], sampled["err"], rtol=1e-4)
  with pytest.raises(ValueError, match="full_batch"):
    _run(_sim(full_batch=True), key)  # batch_size 8 != 32
  short = _data()._replace(size=jnp.full((R,), N - 1, jnp.int32))
  sim = _sim(batch_size=n, full_batch=True)
  with pytest.raises(ValueError, match="full_batch"):  # concrete sizes
    simulation.step(sim, simulation.init(sim, _params(), key), short)


def test_compilation_cache_hit_in_a_new_process(tmp_path):
  """A rerun of the same program in a fresh process loads it from the cache."""
  script = tmp_path / "prog.py"
  script.write_text(textwrap.dedent(f"""
      import jax, jax.numpy as jnp
      from byzjax import simulation
      hits = []
      jax.monitoring.register_event_listener(
          lambda name, **kw: hits.append(name)
          if name == "/jax/compilation_cache/cache_hits" else None)
      simulation.enable_compilation_cache({str(tmp_path / "cache")!r},
                                          min_compile_time_secs=0)
      jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((3, 3))).block_until_ready()
      print("HITS", len(hits))
      """))
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[2]))
  outs = [subprocess.run([sys.executable, str(script)], capture_output=True,
                         text=True, env=env, check=True, timeout=120).stdout
          for _ in range(2)]
  hits = [int(o.split("HITS")[1]) for o in outs]
  assert hits[0] == 0 and hits[1] >= 1, outs  # run 2 loads, run 1 compiled
  with pytest.raises(ValueError, match="path"):
    simulation.enable_compilation_cache("")


def test_grid_writes_tidy_csv(tmp_path):
  def build_for(aggregator):
    def build(hp, key):
      del hp
      sim = _sim(aggregator)
      return sim, simulation.init(sim, _params(), key)
    return build

  rows = simulation.grid(
      build_for, _data(), choices={"aggregator": [geometric_median, _mean]},
      num_evals=2, seeds=2, key=jax.random.key(10), progress=False,
      log=lambda s: None)
  assert len(rows) == 2 * 2 * 2
  path = str(tmp_path / "grid.csv")
  simulation.write_csv(rows, path)
  with open(path) as f:
    table = list(csv.DictReader(f))
  assert {"aggregator", "seed", "round", "step", "err", "train_loss",
          "seconds"} <= set(table[0])
  assert {r["seed"] for r in table} == {"0", "1"}


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (emulated) devices")
def test_sharded_worker_axis_gives_the_same_numbers():
  # The step rule to a tight tolerance: the default (relative objective
  # change) pins the median only to ~sqrt(tol) of the spread, so another
  # summation order on 8 devices could stop at another nearby point.
  sim = _sim(aggregator=functools.partial(geometric_median, criterion="step",
                                          tol=1e-7))
  state = simulation.init(sim, _params(), jax.random.key(11))
  run = jax.jit(functools.partial(simulation.run, sim, num_evals=2))
  _, single = run(state, _data())
  mesh = simulation.worker_mesh(8)
  data = simulation.shard_workers(_data(), mesh)
  assert len(data.x.sharding.device_set) == 8
  state = simulation.replicate(state, mesh)
  _, sharded = run(state, data)
  np.testing.assert_allclose(sharded["err"], single["err"], rtol=1e-5)
  np.testing.assert_allclose(sharded["train_loss"], single["train_loss"],
                             rtol=1e-5)


def test_bad_configuration():
  with pytest.raises(ValueError, match="num_byzantine"):
    _sim(num_byzantine=R + 1)
  with pytest.raises(ValueError, match="batch_size"):
    simulation.Simulation(loss_fn=_loss, server_tx=optax.sgd(0.1),
                          num_workers=R, batch_size=0)
  with pytest.raises(ValueError, match="num_workers"):
    simulation.shard_workers(_data(), simulation.worker_mesh(3))
  with pytest.raises(ValueError, match="unroll"):
    _sim(unroll=0)


def test_mistakes_get_messages_that_say_what_to_do():
  # Issue 12: data split for another number of workers.
  sim = _sim()
  state = simulation.init(sim, _params(), jax.random.key(0))
  a = jnp.zeros((R + 2, 4, D))
  wrong = WorkerData(a, a[..., 0], jnp.full((R + 2,), 4, jnp.int32))
  msg = rf"data is split for {R + 2} workers.*num_workers={R}"
  with pytest.raises(ValueError, match=msg):
    jax.eval_shape(functools.partial(simulation.step, sim), state, wrong)
  with pytest.raises(ValueError, match=msg):
    jax.eval_shape(functools.partial(simulation.run, sim, num_evals=1),
                   state, wrong)
  # server_tx without an aggregator: refused at init, with the fix.
  no_agg = simulation.Simulation(loss_fn=_loss, server_tx=optax.sgd(0.1),
                                 num_workers=R, batch_size=4)
  with pytest.raises(ValueError, match=r"server_tx must start with an "
                     r"aggregator.*optax\.chain\(byzjax\.aggregate\("
                     r"byzjax\.aggregators\.geometric_median\), "
                     r"optax\.sgd\(lr\)\)"):
    simulation.init(no_agg, _params(), jax.random.key(0))
  # The pure attack function instead of its transform.
  with pytest.raises(ValueError, match=r"byzjax\.attacks\.alie_attack\("):
    _sim(attack=byzjax.attacks.alie)
  with pytest.raises(ValueError, match="worker_tx must be an optax"):
    _sim(worker_tx=optax.sgd)
  with pytest.raises(ValueError, match="server_tx must be an optax"):
    simulation.Simulation(loss_fn=_loss, server_tx=_mean, num_workers=R,
                          batch_size=4)


def test_all_workers_byzantine():
  # Issue 12: an int is refused; a traced count reports a NaN honest loss.
  with pytest.raises(ValueError, match="every one of the 8 workers "
                     "Byzantine.*num_byzantine < num_workers"):
    _sim(num_byzantine=R)

  def one_step(f):
    sim = _sim(num_byzantine=f)
    state = simulation.init(sim, _params(), jax.random.key(0))
    return simulation.step(sim, state, _data())[1]

  losses = jax.jit(jax.vmap(one_step))(jnp.array([R - 1, R]))
  assert np.isfinite(float(losses[0])) and float(losses[0]) > 0
  assert np.isnan(float(losses[1]))


def test_package_docstrings_name_the_entry_points():
  # Issue 12: help(byzjax.simulation) / help(byzjax.data) list them.
  for name in ("Simulation", "init", "run", "step", "grid", "vmapped_runs",
               "enable_compilation_cache", "worker_mesh", "shard_workers",
               "replicate", "checkpoint"):
    assert f"`{name}`" in simulation.__doc__, name
    assert hasattr(simulation, name), name
  for name in ("load_fashion_mnist", "linear_regression", "gaussian_mixture",
               "iid_partition", "class_sharded_partition",
               "dirichlet_partition", "unequal_partition", "shard",
               "sample_batches", "WorkerData", "Dataset"):
    assert f"`{name}`" in byzjax.data.__doc__, name
    assert hasattr(byzjax.data, name), name
