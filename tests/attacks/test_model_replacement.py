"""Model replacement (Bagdasaryan et al. 2020): formula and, composed with
the backdoor data attack in the simulator, a higher attack success rate."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byzjax import aggregators as agg
from byzjax import simulation
from byzjax.attacks import data as data_attacks
from byzjax.attacks import gradient as G
from byzjax.data.partition import WorkerData
from byzjax.transforms.aggregate import aggregate

MASK = np.array([1, 0, 0, 1, 0, 0, 0, 0], bool)  # f = 2 of R = 8


def test_scales_byzantine_rows_and_the_mean_becomes_their_update():
  x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
  out = np.asarray(G.model_replacement({"w": x}, MASK)["w"])
  np.testing.assert_array_equal(out[~MASK], x[~MASK])
  np.testing.assert_allclose(out[MASK], 4.0 * x[MASK], rtol=1e-6)  # R/f = 4
  # Eq. (3)'s point: the mean is the attackers' mean update plus 1/R of the
  # honest sum (which vanishes near convergence).
  np.testing.assert_allclose(out.mean(0),
                             x[MASK].mean(0) + x[~MASK].sum(0) / 8,
                             rtol=1e-5, atol=1e-6)
  out = np.asarray(G.model_replacement({"w": x}, MASK, scale=3.0)["w"])
  np.testing.assert_allclose(out[MASK], 3.0 * x[MASK], rtol=1e-6)
  with pytest.raises(ValueError, match="scale"):
    G.model_replacement_attack(scale=0.0)


def _data(seed, n_per_worker=32, r=8, d=4, classes=3):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(classes, d)) * 3
  y = rng.integers(0, classes, size=(r, n_per_worker))
  x = centers[y] + rng.normal(size=(r, n_per_worker, d))
  x = np.concatenate([x, np.zeros((r, n_per_worker, 1))], -1)  # trigger slot
  return x.astype(np.float32), y.astype(np.int32), centers


@pytest.mark.slow
def test_with_the_backdoor_it_raises_the_attack_success_rate():
  x, y, centers = _data(0)
  target = 0
  trigger = np.zeros(5, bool)
  trigger[-1] = True
  backdoor = data_attacks.backdoor(target, trigger_mask=trigger,
                                   trigger_value=1.0)

  def loss_fn(p, batch):
    xb, yb = batch
    logits = xb @ p["w"] + p["b"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, yb))

  rng = np.random.default_rng(1)
  yt = rng.integers(1, 3, size=300)  # non-target test inputs
  xt = np.concatenate([centers[yt] + rng.normal(size=(300, 4)),
                       np.ones((300, 1))], -1).astype(np.float32)

  def success_rate(params):  # triggered non-target inputs sent to target
    pred = jnp.argmax(xt @ params["w"] + params["b"], -1)
    return jnp.mean(pred == target)

  def run(attack):
    sim = simulation.Simulation(
        loss_fn=loss_fn,
        server_tx=optax.chain(aggregate(agg.mean), optax.sgd(0.1)),
        num_workers=8, batch_size=16, data_attack=backdoor, attack=attack,
        num_byzantine=2, eval_every=10)
    data = WorkerData(jnp.asarray(x), jnp.asarray(y), jnp.full(8, 32))
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
    state = simulation.init(sim, params, jax.random.key(0))
    state, _ = simulation.run(sim, state, data, num_evals=2)
    return float(success_rate(state.params))

  plain = run(G.model_replacement_attack(scale=1.0))  # the backdoor alone
  replaced = run(G.model_replacement_attack())        # scaled by R/f = 4
  print("attack success rate: backdoor alone", plain, "with replacement",
        replaced)
  assert replaced > plain + 0.2, (plain, replaced)
