"""Tests for FoolsGold (Fung, Yoon & Beschastnikh, RAID 2020)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byzjax.transforms.foolsgold import foolsgold
from byzjax.transforms.foolsgold import foolsgold_weights

R, D = 8, 5


def _np_weights(h, kappa=1.0):
  """Algorithm 1, lines 4-18, with loops, in float64."""
  h = np.asarray(h, np.float64)
  r = len(h)
  norms = np.linalg.norm(h, axis=1)
  cs = np.zeros((r, r))
  for i in range(r):
    for j in range(r):
      if i != j and norms[i] > 0 and norms[j] > 0:
        cs[i, j] = h[i] @ h[j] / (norms[i] * norms[j])
  v = np.array([max(cs[i, j] for j in range(r) if j != i) for i in range(r)])
  for i in range(r):
    for j in range(r):
      if i != j and v[j] > v[i]:
        cs[i, j] *= v[i] / v[j]
  alpha = np.array([1 - max(cs[i, j] for j in range(r) if j != i)
                    for i in range(r)])
  alpha = np.clip(alpha, 0, 1)
  alpha = alpha / alpha.max()
  alpha[alpha == 1] = 0.99
  out = np.zeros(r)
  for i in range(r):
    if alpha[i] > 0:
      out[i] = np.clip(kappa * (np.log(alpha[i] / (1 - alpha[i])) + 0.5), 0, 1)
  return out


def _steps(seed, num_steps=3):
  """Honest rows: independent noise around a shared drift; rows 0-2 are
  sybils sending (nearly) the same poisoned direction every step."""
  rng = np.random.default_rng(seed)
  target = rng.normal(size=D)
  out = []
  for _ in range(num_steps):
    x = 0.3 + rng.normal(size=(R, D))
    x[:3] = target + 0.01 * rng.normal(size=(3, D))
    out.append(x.astype(np.float32))
  return out


@pytest.mark.slow  # one compilation (default-suite budget)
def test_transform_matches_oracle_and_downweights_sybils():
  steps = _steps(0)
  steps[1][5] = np.nan           # an erasure at step 2
  steps[2][6] = 3e38             # a huge row at step 3
  tx = foolsgold(R)
  params = {"w": jnp.zeros(D)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  history = np.zeros((R, D))
  for t, x in enumerate(steps):
    out, state = update({"w": jnp.asarray(x)}, state)
    live = np.all(np.isfinite(x), axis=1)
    history += np.where(live[:, None], x, 0.0)
    alpha = np.where(live, _np_weights(np.clip(history, -3.4e38, 3.4e38)), 0)
    np.testing.assert_allclose(state.weights, alpha, atol=1e-5)
    assert np.all(np.isfinite(out["w"]))
    if alpha.sum() > 0:
      clean = np.where(live[:, None], x.astype(np.float64), 0.0)
      want = (alpha[:, None] * clean).sum(0) / alpha.sum()
      np.testing.assert_allclose(out["w"], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(state.weights)[:3], 0.0)
  # Honest histories point in diverse directions: most keep a weight (one
  # may still reach 0 after the rescaling and logit, as in the paper).
  assert np.sum(np.asarray(state.weights)[[3, 4, 7]] > 0) >= 2


@pytest.mark.slow
def test_weights_permutation_equivariant_and_in_a_chain():
  h = _steps(1, 1)[0]
  perm = np.random.default_rng(0).permutation(R)
  a = foolsgold_weights({"w": jnp.asarray(h)})
  b = foolsgold_weights({"w": jnp.asarray(h[perm])})
  np.testing.assert_allclose(b, np.asarray(a)[perm], atol=1e-6)
  np.testing.assert_allclose(a, _np_weights(h), atol=1e-5)
  tx = optax.chain(foolsgold(R), optax.sgd(1.0))
  params = {"w": jnp.zeros(D)}
  upd, _ = tx.update({"w": jnp.asarray(h)}, tx.init(params), params)
  assert upd["w"].shape == (D,) and np.all(np.isfinite(upd["w"]))


@pytest.mark.parametrize("kwargs,match", [
    ({"num_workers": 1}, "num_workers"), ({"num_workers": 4.0}, "num_workers"),
    ({"num_workers": 4, "kappa": 0.0}, "kappa")])
def test_bad_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    foolsgold(**kwargs)
