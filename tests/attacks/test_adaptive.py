"""Tests for the adaptive gradient attacks (byzjax.attacks.adaptive).

NumPy oracles (brute force: fine grids, explicit loops), the defining
properties (MinMax's constraint holds with equality; mimic's rows are an
honest row), honest rows untouched, and behaviour against the aggregators
each attack targets.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byzjax import aggregators as agg
from byzjax.attacks import adaptive as A
from byzjax.attacks import gradient as G
from tests import helpers

R, D = 10, 12
MASK = np.array([1, 0, 0, 1, 0, 0, 1, 0, 0, 0], bool)  # f = 3


def _x(seed=0, r=R, d=D, loc=1.0):
  return (np.random.default_rng(seed).normal(size=(r, d)) + loc).astype(
      np.float32)


def _flat(stacked):
  r = jax.tree.leaves(stacked)[0].shape[0]
  return np.concatenate([np.asarray(a).reshape(r, -1)
                         for a in (stacked["a"], stacked["b"]["c"],
                                   stacked["d"])], axis=1)


# --------------------------------------------------------------------------
# NumPy oracles.


def _np_perturbation(honest, kind):
  mu = honest.mean(0)
  if kind == "unit_vec":
    return -mu / np.linalg.norm(mu)
  if kind == "std":
    return -honest.std(0)
  return -np.sign(mu)


def _np_gamma_on_grid(honest, kind, objective, num=200_001):
  """Largest feasible gamma on a fine grid, by brute force (float64)."""
  mu = honest.mean(0)
  p = _np_perturbation(honest, kind)
  pair = ((honest[:, None] - honest[None]) ** 2).sum(-1)
  threshold = pair.max() if objective == "max" else pair.sum(1).max()
  hi = 2 * (np.sqrt(threshold) + np.linalg.norm(honest - mu, axis=1).max()
            ) / np.linalg.norm(p)
  gammas = np.linspace(0.0, hi, num)
  feasible = []
  for chunk in np.array_split(gammas, 50):
    m = mu[None] + chunk[:, None] * p[None]                   # [G, d]
    d2 = ((m[:, None, :] - honest[None]) ** 2).sum(-1)        # [G, n]
    val = d2.max(1) if objective == "max" else d2.sum(1)
    feasible.append(val <= threshold)
  feasible = np.concatenate(feasible)
  return gammas[np.nonzero(feasible)[0].max()], gammas[1] - gammas[0], (
      threshold, mu, p)


def _np_krum_selected(rows, f):
  """Index Krum selects (R - f - 2 neighbours, ties to the lowest index)."""
  n = len(rows)
  d2 = ((rows[:, None] - rows[None]) ** 2).sum(-1)
  k = n - f - 2
  scores = [np.sort(np.delete(d2[i], i))[:k].sum() for i in range(n)]
  return int(np.argmin(scores))


# --------------------------------------------------------------------------
# Default suite: one compilation each, small shapes.


def test_min_max_matches_grid_oracle_and_constraint_is_tight():
  x = _x(1)
  out, info = A.min_max({"w": x}, MASK, return_info=True)
  out = np.asarray(out["w"])
  np.testing.assert_array_equal(out[~MASK], x[~MASK])  # bit for bit
  honest = x[~MASK].astype(np.float64)
  gamma, step, (threshold, mu, p) = _np_gamma_on_grid(honest, "unit_vec",
                                                      "max")
  assert abs(float(info.gamma) - gamma) <= step + 1e-4 * gamma
  byz = out[MASK].astype(np.float64)
  np.testing.assert_allclose(byz, np.tile(mu + float(info.gamma) * p, (3, 1)),
                             rtol=1e-5, atol=1e-5)
  # MinMax's defining property: max distance == honest diameter (tight).
  max_d2 = ((byz[0][None] - honest) ** 2).sum(1).max()
  np.testing.assert_allclose(max_d2, threshold, rtol=1e-4)


def test_mimic_sends_an_honest_row_chosen_by_the_top_direction():
  x = _x(2)
  x[~MASK] += np.outer(np.arange(7) - 3.0, np.linspace(1, 2, D)) * 0.7
  out = _flat(A.mimic(helpers.split_leaves(x), MASK))
  np.testing.assert_array_equal(out[~MASK], x[~MASK])
  honest_idx = np.nonzero(~MASK)[0]
  h = x[~MASK].astype(np.float64)
  c = h - h.mean(0)
  z = np.linalg.eigh(c.T @ c)[1][:, -1]
  want = honest_idx[np.argmax(np.abs(c @ z))]
  # Every Byzantine row is, bit for bit, the row of that honest worker.
  np.testing.assert_array_equal(out[MASK], np.tile(x[want], (3, 1)))


@pytest.mark.parametrize("make, name", [
    (lambda: A.optimized_alie_attack(), "aggregator"),
    (lambda: A.optimized_alie_attack(aggregator=3), "aggregator"),
    (lambda: A.optimized_ipm_attack(aggregator=agg.mean,
                                    scale_range=(2.0, 1.0)), "scale_range"),
    (lambda: A.optimized_ipm_attack(aggregator=agg.mean, num_candidates=1),
     "num_candidates"),
    (lambda: A.optimized_ipm_attack(aggregator=agg.mean, batch_size=0),
     "batch_size"),
    (lambda: A.min_max_attack(perturbation="unit"), "perturbation"),
    (lambda: A.min_sum_attack(tol=0.0), "tol"),
    (lambda: A.min_max_attack(return_info=True), "return_info"),
    (lambda: A.fang_trimmed_mean_attack(), "key"),
    (lambda: A.fang_trimmed_mean_attack(key=jax.random.key(0), factor=1.0),
     "factor"),
    (lambda: A.fang_krum_attack(threshold=-1.0), "threshold"),
    (lambda: A.mimic_attack(warmup=0), "warmup"),
    (lambda: A.mimic_attack(target=-1), "target"),
])
def test_bad_hyperparameters_raise(make, name):
  with pytest.raises(ValueError, match=name):
    make()


# --------------------------------------------------------------------------
# Slow: more compilations.


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["max", "sum"])
@pytest.mark.parametrize("kind", ["unit_vec", "std", "sign"])
def test_min_max_min_sum_all_perturbations_match_grid(objective, kind):
  x = _x(3)
  fn = A.min_max if objective == "max" else A.min_sum
  out, info = jax.jit(functools.partial(fn, perturbation=kind,
                                        return_info=True))({"w": x}, MASK)
  honest = x[~MASK].astype(np.float64)
  gamma, step, (threshold, mu, p) = _np_gamma_on_grid(honest, kind, objective)
  assert abs(float(info.gamma) - gamma) <= step + 1e-4 * gamma
  byz = np.asarray(out["w"])[MASK].astype(np.float64)
  d2 = ((byz[0][None] - honest) ** 2).sum(1)
  val = d2.max() if objective == "max" else d2.sum()
  np.testing.assert_allclose(val, threshold, rtol=1e-4)  # tight
  np.testing.assert_array_equal(np.asarray(out["w"])[~MASK], x[~MASK])


@pytest.mark.slow
def test_min_max_scale_equivariant_and_safe_on_huge_rows():
  x = _x(4)
  base = np.asarray(A.min_max({"w": x}, MASK, perturbation="std")["w"])
  for k in (100, 126):  # rows of ~1e30 and ~1e38
    scaled = (x.astype(np.float64) * 2.0**k)
    out = np.asarray(A.min_max({"w": scaled.astype(np.float32)}, MASK,
                               perturbation="std")["w"])
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[MASK] / 2.0**k, base[MASK], rtol=1e-4,
                               atol=1e-5)


@pytest.mark.slow
def test_min_max_beats_alie_against_krum_like_selection():
  # Behaviour: the MinMax point passes a distance filter (it is no farther
  # from any honest update than the honest diameter).
  x = _x(5)
  out = np.asarray(A.min_max({"w": x}, MASK)["w"])
  honest = x[~MASK].astype(np.float64)
  pair = ((honest[:, None] - honest[None]) ** 2).sum(-1)
  assert ((out[MASK][0][None] - honest) ** 2).sum(1).max() <= pair.max() * (
      1 + 1e-4)
  assert np.linalg.norm(out[MASK][0] - honest.mean(0)) > 0.5 * np.sqrt(
      pair.max())


def _alie_rows(honest, z):
  return honest.mean(0) - z * honest.std(0)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["trimmed_mean", "coordinate_median"])
def test_optimized_alie_matches_grid_oracle_and_beats_fixed_alie(rule):
  x = _x(6)
  aggregator = {"trimmed_mean": functools.partial(agg.trimmed_mean,
                                                  trim_fraction=0.3),
                "coordinate_median": agg.coordinate_median}[rule]
  s = {"w": x}
  out, info = A.optimized_alie(s, MASK, aggregator=aggregator,
                               num_candidates=8, num_refinements=1,
                               return_info=True)
  np.testing.assert_array_equal(np.asarray(out["w"])[~MASK], x[~MASK])
  honest = x[~MASK].astype(np.float64)
  mu = honest.mean(0)

  def damage(z):  # an independent evaluation, one aggregation per z
    rows = x.copy()
    rows[MASK] = _alie_rows(honest, z).astype(np.float32)
    return np.linalg.norm(np.asarray(aggregator({"w": rows})["w"]) - mu)

  got = damage(float(info.scale))
  np.testing.assert_allclose(float(info.damage), got, rtol=1e-4, atol=1e-6)
  # At least as damaging as every point of the first grid and as ALIE's
  # own z_max (Baruch et al.), each evaluated independently here.
  grid = np.linspace(0.0, 10.0, 8)
  assert got >= max(damage(z) for z in grid) - 1e-5
  fixed = np.asarray(G.alie(s, MASK)["w"])
  fixed_damage = np.linalg.norm(np.asarray(aggregator({"w": fixed})["w"]) - mu)
  assert got >= fixed_damage - 1e-5
  np.testing.assert_allclose(np.asarray(out["w"])[MASK][0],
                             _alie_rows(honest, float(info.scale)),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_optimized_ipm_beats_fixed_ipm_and_batches_agree():
  x = _x(7)
  s = {"w": x}
  aggregator = functools.partial(agg.krum, num_byzantine=3)
  out, info = A.optimized_ipm(s, MASK, aggregator=aggregator,
                              return_info=True)
  out2, info2 = A.optimized_ipm(s, MASK, aggregator=aggregator, batch_size=5,
                                return_info=True)
  chex.assert_trees_all_close(out, out2)
  np.testing.assert_allclose(info.scale, info2.scale)
  mu = x[~MASK].astype(np.float64).mean(0)
  fixed = np.asarray(G.ipm(s, MASK, epsilon=0.1)["w"])
  fixed_damage = np.linalg.norm(np.asarray(aggregator({"w": fixed})["w"]) - mu)
  got = np.linalg.norm(np.asarray(aggregator(out)["w"]) - mu)
  assert got >= fixed_damage - 1e-5
  np.testing.assert_allclose(float(info.default_damage), fixed_damage,
                             rtol=1e-4)
  np.testing.assert_allclose(np.asarray(out["w"])[MASK][0],
                             -float(info.scale) * mu, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_optimized_attack_transform_in_a_chain_under_jit():
  x = _x(8)
  tm = functools.partial(agg.trimmed_mean, trim_fraction=0.3)
  from byzjax.transforms.aggregate import aggregate  # pylint: disable=g-import-not-at-top
  tx = optax.chain(A.optimized_alie_attack(aggregator=tm, num_candidates=4,
                                           num_refinements=0),
                   aggregate(tm), optax.sgd(1.0))
  params = {"w": jnp.zeros(D)}
  out, _ = jax.jit(tx.update)({"w": x}, tx.init(params), byzantine=MASK)
  assert out["w"].shape == (D,)
  chex.assert_tree_all_finite(out)


@pytest.mark.slow
def test_fang_trimmed_mean_values_lie_in_the_paper_intervals():
  x = _x(9, loc=0.0)
  x[:, 0] = np.abs(x[:, 0]) + 0.5    # all positive, mean > 0
  x[:, 1] = -np.abs(x[:, 1]) - 0.5   # all negative, mean < 0
  out = np.asarray(A.fang_trimmed_mean({"w": x}, MASK,
                                       key=jax.random.key(0))["w"])
  np.testing.assert_array_equal(out[~MASK], x[~MASK])
  honest = x[~MASK].astype(np.float64)
  mu, w_max, w_min = honest.mean(0), honest.max(0), honest.min(0)
  b = 2.0
  for j in range(D):
    if mu[j] >= 0:
      lo, hi = (w_min[j] / b, w_min[j]) if w_min[j] > 0 else (
          b * w_min[j], w_min[j])
    else:
      lo, hi = (w_max[j], b * w_max[j]) if w_max[j] > 0 else (
          w_max[j], w_max[j] / b)
    v = out[MASK][:, j]
    assert np.all(v >= lo - 1e-6) and np.all(v <= hi + 1e-6), j
  assert not np.array_equal(out[0], out[3])  # independent draws per worker
  # Behaviour: the trimmed mean and the median move against the honest
  # direction on every coordinate.
  for rule in (functools.partial(agg.trimmed_mean, trim_fraction=0.3),
               agg.coordinate_median):
    clean = np.asarray(rule({"w": x})["w"])
    attacked = np.asarray(rule({"w": out})["w"])
    shift = attacked - clean
    assert np.all(np.sign(shift) == -np.where(mu >= 0, 1, -1))


@pytest.mark.slow
def test_fang_krum_matches_the_halving_oracle():
  x = _x(10)
  out, info = A.fang_krum({"w": x}, MASK, return_info=True)
  out = np.asarray(out["w"])
  np.testing.assert_array_equal(out[~MASK], x[~MASK])
  honest = x[~MASK].astype(np.float64)
  n_h, c = len(honest), MASK.sum()
  m = n_h + c
  d = D
  dist = np.sqrt(((honest[:, None] - honest[None]) ** 2).sum(-1))
  near = [np.sort(np.delete(dist[i], i))[:m - c - 2].sum() for i in range(n_h)]
  upper = (min(near) / ((m - 2 * c - 1) * np.sqrt(d))
           + np.linalg.norm(honest, axis=1).max() / np.sqrt(d))
  np.testing.assert_allclose(float(info.upper_bound), upper, rtol=1e-4)
  s = np.sign(honest.mean(0))
  lam = upper
  while lam >= 1e-5:
    rows = x.astype(np.float64).copy()
    rows[MASK] = -lam * s
    if MASK[_np_krum_selected(rows, c)]:
      break
    lam /= 2
  np.testing.assert_allclose(float(info.scale), lam, rtol=1e-4)
  assert bool(info.selected)
  np.testing.assert_allclose(out[MASK], np.tile(-lam * s, (3, 1)), rtol=1e-4)
  # Behaviour: the library's Krum selects the crafted update.
  _, kinfo = agg.krum({"w": out}, num_byzantine=3, return_info=True)
  assert np.all(MASK[np.nonzero(np.asarray(kinfo.selected))[0]])


def _np_top_direction(c):
  return np.linalg.eigh(c.T @ c)[1][:, -1]


@pytest.mark.slow
def test_mimic_attack_tracks_the_direction_then_fixes_the_target():
  rng = np.random.default_rng(11)
  steps = [(rng.normal(size=(R, D)) + 1).astype(np.float32) for _ in range(5)]
  warmup = 3
  tx = A.mimic_attack(warmup=warmup)
  state = tx.init({"w": jnp.zeros(D)})
  update = jax.jit(tx.update)
  honest_idx = np.nonzero(~MASK)[0]
  mean = z = target = None
  for t, x in enumerate(steps):
    out, state = update({"w": x}, state, byzantine=MASK)
    out = np.asarray(out["w"])
    h = x[~MASK].astype(np.float64)
    # NumPy oracle of the heuristic (running mean, one power step).
    if t == 0:
      mean = h.mean(0)
      z = _np_top_direction(h - mean)
    elif t < warmup:
      mean = t / (t + 1) * mean + h.mean(0) / (t + 1)
      c = h - mean
      cz = c.T @ (c @ z)
      z = t / (t + 1) * z + cz / np.linalg.norm(cz) / (t + 1)
      z /= np.linalg.norm(z)
    if t < warmup:
      target = honest_idx[np.argmax(np.abs((h - mean) @ z))]
    np.testing.assert_array_equal(out[MASK], np.tile(x[target], (3, 1)))
    np.testing.assert_array_equal(out[~MASK], x[~MASK])
    assert int(state.target) == target
    np.testing.assert_allclose(np.abs(np.asarray(state.direction["w"]) @ z),
                               1.0, rtol=1e-4)


@pytest.mark.slow
def test_mimic_fixed_target_and_given_direction():
  x = _x(12)
  out = _flat(A.mimic(helpers.split_leaves(x), MASK, target=5))
  np.testing.assert_array_equal(out[MASK], np.tile(x[5], (3, 1)))
  direction = np.zeros(D, np.float32)
  direction[2] = 1.0
  tree = jax.tree.map(lambda a: a[0], helpers.split_leaves(direction[None]))
  out = _flat(A.mimic(helpers.split_leaves(x), MASK, direction=tree))
  h = x[~MASK]
  want = np.nonzero(~MASK)[0][np.argmax(np.abs(h[:, 2] - h[:, 2].mean()))]
  np.testing.assert_array_equal(out[MASK], np.tile(x[want], (3, 1)))
  with pytest.raises(ValueError, match="target"):
    A.mimic(helpers.split_leaves(x), MASK, target=R)


@pytest.mark.slow
def test_mimic_attack_in_the_simulator():
  from byzjax import simulation  # pylint: disable=g-import-not-at-top
  from byzjax.data.partition import WorkerData  # pylint: disable=g-import-not-at-top
  from byzjax.transforms.aggregate import aggregate  # pylint: disable=g-import-not-at-top
  sim = simulation.Simulation(
      loss_fn=lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2),
      server_tx=optax.chain(aggregate(agg.coordinate_median), optax.sgd(0.1)),
      num_workers=6, batch_size=4, attack=A.mimic_attack(warmup=2),
      num_byzantine=2, eval_every=2)
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(6, 8, 3)).astype(np.float32)
  ys = xs @ np.ones(3, np.float32)
  data = WorkerData(x=jnp.asarray(xs), y=jnp.asarray(ys),
                    size=jnp.full(6, 8, jnp.int32))
  state = simulation.init(sim, {"w": jnp.zeros(3)}, jax.random.key(0))
  state, metrics = jax.jit(functools.partial(simulation.run, sim,
                                             num_evals=2))(state, data)
  assert int(state.attack_state.count) == 4
  assert np.all(np.isfinite(np.asarray(metrics["train_loss"])))


_ALL = {
    "mimic": A.mimic,
    "optimized_alie": functools.partial(A.optimized_alie,
                                        aggregator=agg.coordinate_median,
                                        num_candidates=4, num_refinements=1),
    "optimized_ipm": functools.partial(A.optimized_ipm,
                                       aggregator=agg.coordinate_median,
                                       num_candidates=4, num_refinements=1),
    "min_max": A.min_max,
    "min_sum": functools.partial(A.min_sum, perturbation="sign"),
    "fang_trimmed_mean": functools.partial(A.fang_trimmed_mean,
                                           key=jax.random.key(3)),
    "fang_krum": A.fang_krum,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_ALL))
def test_erased_and_huge_honest_rows(name):
  fn = _ALL[name]
  # An erased honest row is left out of the statistics and left as it is.
  x = _x(14)
  x[1, 0] = np.nan
  out = np.asarray(fn({"w": x}, MASK)["w"])
  np.testing.assert_array_equal(out[~MASK], x[~MASK])  # NaN == NaN here
  assert np.all(np.isfinite(out[MASK]))
  if name in ("mimic", "min_max", "min_sum", "fang_krum"):
    # Deterministic and aggregator-free: the same as without that row.
    without = np.asarray(fn({"w": np.delete(x, 1, axis=0)},
                            np.delete(MASK, 1))["w"])
    np.testing.assert_allclose(out[MASK], without[np.delete(MASK, 1)],
                               rtol=1e-5, atol=1e-6)
  # Honest rows of ~1e30 and ~3e38: no overflow into Inf or NaN, and the
  # attack on rows scaled by 2**100 is the attack on the rows, scaled
  # (except for the random draws and the argmax ties of mimic).
  x = _x(15)
  base = np.asarray(fn({"w": x}, MASK)["w"])
  big = np.asarray(fn({"w": (x.astype(np.float64) * 2.0**100).astype(
      np.float32)}, MASK)["w"])
  assert np.all(np.isfinite(big))
  np.testing.assert_allclose(big[MASK] / 2.0**100, base[MASK], rtol=1e-3,
                             atol=1e-4)
  huge = np.full((R, D), 3e38, np.float32)
  huge[::2] *= -1
  out = np.asarray(fn({"w": huge}, MASK)["w"])
  assert not np.any(np.isnan(out)), name
  np.testing.assert_array_equal(out[~MASK], huge[~MASK])


@pytest.mark.slow
def test_jit_and_vmap_over_inputs():
  xs = np.stack([_x(16), _x(17)])
  for fn in (A.min_max, A.fang_krum, A.mimic):
    batched = jax.jit(jax.vmap(lambda x, f=fn: f({"w": x}, MASK)["w"]))(xs)
    for i in range(2):
      np.testing.assert_allclose(batched[i], fn({"w": xs[i]}, MASK)["w"],
                                 rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# The study runner's names.

_STUDY = {
    "name": "adaptive",
    "task": {"dataset": "synthetic_classification", "model": "mlp",
             "model_args": {"hidden": [8]}, "num_features": 6,
             "num_classes": 3, "train_samples": 240, "test_samples": 60},
    "training": {"num_workers": 6, "num_byzantine": [1], "batch_size": 8,
                 "steps": 4, "eval_every": 2, "learning_rate": [0.1],
                 "seeds": 1},
    "grid": {"heterogeneity": ["iid"], "defenses": ["trimmed_mean"],
             "attacks": ["mimic",
                         {"name": "optimized_alie", "scale_range": [0, 5],
                          "num_candidates": 4, "num_refinements": 1}]},
}


@pytest.mark.slow
def test_config_accepts_the_new_attack_names_and_names_bad_arguments():
  from byzjax import study  # pylint: disable=g-import-not-at-top
  from byzjax.study.config import ConfigError  # pylint: disable=g-import-not-at-top
  cfg = study.load_config({**_STUDY, "grid": {
      **_STUDY["grid"], "attacks": _STUDY["grid"]["attacks"] + [
          {"name": "min_sum", "perturbation": "std"}, "optimized_ipm", "min_max", "fang_trimmed_mean", "fang_median",
          "fang_krum", {"name": "mimic", "warmup": 5}]}})
  assert [a.name for a in cfg.attacks][-1] == "mimic"
  for bad, word in [({"name": "min_max", "perturbation": "unit"},
                     "perturbation"),
                    ({"name": "optimized_alie", "aggregator": "mean"},
                     "aggregator"),
                    ({"name": "fang_krum", "lam": 1.0}, "lam"),
                    ({"name": "mimic", "warmup": 0}, "warmup")]:
    with pytest.raises(ConfigError, match=word):
      study.load_config({**_STUDY, "grid": {**_STUDY["grid"],
                                            "attacks": [bad]}})


@pytest.mark.slow
def test_study_runs_the_new_attacks_end_to_end(tmp_path):
  from byzjax import study  # pylint: disable=g-import-not-at-top
  from byzjax.study import registry  # pylint: disable=g-import-not-at-top
  rows = study.run(_STUDY, str(tmp_path / "results"), progress=False,
                   log=lambda _: None, as_dataframe=False)
  attacks = {r["attack"] for r in rows}
  assert len(attacks) == 2
  assert all(np.isfinite(r["train_loss"]) for r in rows)
  # The optimised attack is built against the cell's defense.
  target = registry.target_aggregator("trimmed_mean", {}, 6, 1,
                                      jax.random.key(0))
  x = _x(13, r=6, d=4)
  mask = np.array([1, 0, 0, 0, 0, 0], bool)
  np.testing.assert_allclose(
      np.asarray(target({"w": x})["w"]),
      np.asarray(agg.trimmed_mean({"w": x}, trim_fraction=1 / 6)["w"]))
  tx = registry.build_gradient_attack("optimized_alie", {}, jax.random.key(0),
                                      aggregator=target)
  out, _ = tx.update({"w": x}, tx.init({"w": jnp.zeros(4)}), byzantine=mask)
  want = A.optimized_alie({"w": x}, mask, aggregator=target)
  np.testing.assert_allclose(out["w"], want["w"])


@pytest.mark.slow
def test_mimic_attack_keeps_bfloat16_updates_and_state_dtypes():
  x = jnp.asarray(_x(18), jnp.bfloat16)
  tx = A.mimic_attack(warmup=2)
  state = tx.init({"w": jnp.zeros(D, jnp.bfloat16)})
  update = jax.jit(tx.update)
  for _ in range(3):
    out, state = update({"w": x}, state, byzantine=MASK)
    assert out["w"].dtype == jnp.bfloat16
    assert state.direction["w"].dtype == jnp.float32
    got = np.asarray(out["w"], np.float32)
    honest = np.asarray(x, np.float32)[~MASK]
    assert any(np.array_equal(got[MASK][0], h) for h in honest)
