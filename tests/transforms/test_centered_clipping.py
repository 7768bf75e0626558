"""Tests for centered clipping against a NumPy transcription of eq. (CC)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byzjax.transforms.centered_clipping import centered_clip
from byzjax.transforms.centered_clipping import centered_clipping
from tests import helpers

R, D = 7, 12


def _np_centered_clip(x, center, radius, num_iters):
  """Float64 (CC): v <- v + (1/n) sum_i (x_i - v) min(1, tau/||x_i - v||).

  Erased rows (non-finite) are dropped; n counts the live rows.
  """
  x = np.asarray(x, np.float64)
  x = x[np.all(np.isfinite(x), axis=1)]
  v = np.asarray(center, np.float64).copy()
  for _ in range(num_iters):
    step = np.zeros_like(v)
    for xi in x:  # loops allowed: this is the oracle
      diff = xi - v
      norm = np.linalg.norm(diff)
      step += diff * (min(1.0, radius / norm) if norm > 0 else 1.0)
    v = v + step / max(len(x), 1)
  return v


def _data(seed, r=R, d=D):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(r, d)) * 2.0 + 1.0).astype(np.float32)


def _cc(x, jit=False, **kw):
  fn = functools.partial(centered_clip, **kw)
  if jit:
    fn = jax.jit(fn)
  return fn(x)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("radius,num_iters", [(0.5, 1), (3.0, 1), (3.0, 4),
                                              (1e6, 2)])
def test_matches_numpy_oracle(jit, radius, num_iters):
  x = _data(0)
  center = np.random.default_rng(1).normal(size=D).astype(np.float32)
  got = _cc(helpers.split_leaves(x), jit, radius=radius, num_iters=num_iters,
            center=jax.tree.map(lambda l: l[0],
                                helpers.split_leaves(center[None])))
  np.testing.assert_allclose(helpers.join_leaves(got),
                             _np_centered_clip(x, center, radius, num_iters),
                             rtol=1e-5, atol=1e-5)


def test_info_reports_distances_and_clipping():
  x = _data(2)
  _, info = centered_clip({"w": x}, radius=4.0, return_info=True)
  dist = np.linalg.norm(x.astype(np.float64), axis=1)
  np.testing.assert_allclose(info.dist, dist, rtol=1e-5)
  np.testing.assert_array_equal(info.clipped, dist > 4.0)
  assert np.asarray(info.live).all()


def test_infinite_radius_is_the_mean_from_any_center():
  x = _data(3)
  # (Not from a centre far beyond the data: v + mean(x - v) then cancels.)
  for center in [np.zeros(D), np.full(D, 100.0), np.full(D, -30.0)]:
    got = centered_clip({"w": x}, center={"w": center.astype(np.float32)},
                        radius=float("inf"))["w"]
    np.testing.assert_allclose(got, x.mean(axis=0), rtol=1e-5, atol=1e-5)


def test_huge_radius_is_one_step_to_the_mean():
  x = _data(4)
  got = centered_clip({"w": x}, center={"w": np.full(D, 3.0, np.float32)},
                      radius=1e6)["w"]
  np.testing.assert_allclose(got, x.mean(axis=0), rtol=1e-5, atol=1e-5)


def test_each_iteration_moves_at_most_the_radius():
  x = _data(5) * 100.0
  v = np.zeros(D, np.float32)
  for _ in range(3):
    new = np.asarray(centered_clip({"w": x}, center={"w": v}, radius=0.7)["w"])
    assert np.linalg.norm(new - v) <= 0.7 * (1 + 1e-6)
    v = new


def test_permutation_invariant_and_pytree_equals_flat():
  x = _data(6)
  flat = centered_clip({"w": x}, radius=2.0, num_iters=3)["w"]
  perm = centered_clip({"w": x[::-1].copy()}, radius=2.0, num_iters=3)["w"]
  tree = centered_clip(helpers.split_leaves(x), radius=2.0, num_iters=3)
  np.testing.assert_allclose(perm, flat, atol=1e-6)
  np.testing.assert_allclose(helpers.join_leaves(tree), flat, atol=1e-6)


def test_identical_workers_give_that_worker():
  row = _data(7, r=1)
  got = centered_clip({"w": np.tile(row, (R, 1))}, radius=1.0, num_iters=50)
  np.testing.assert_allclose(got["w"], row[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_erasures_contribute_nothing(bad):
  x = _data(8)
  x[1, 3] = bad
  x[4] = bad
  got = _cc({"w": x}, jit=True, radius=1.5, num_iters=2)["w"]
  np.testing.assert_allclose(got, _np_centered_clip(x, np.zeros(D), 1.5, 2),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("big", [1e30, -1e30, 3e38, -3e38])
def test_huge_rows_are_clipped_to_the_radius(big):
  x = _data(9)
  x[[0, 5]] = big          # 2 of 7 Byzantine
  x[3, ::2] = -big
  center = x[[1, 2, 4, 6]].mean(axis=0)  # a good centre, as CC assumes
  got, info = centered_clip({"w": x}, center={"w": center}, radius=1.0,
                            num_iters=3, return_info=True)
  got = np.asarray(got["w"])
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, _np_centered_clip(x, center, 1.0, 3),
                             rtol=1e-4, atol=1e-4)
  # Each Byzantine row moves the centre by at most tau / n per iteration.
  assert np.linalg.norm(got - center) <= 3 * 1.0 * (1 + 1e-5)
  assert np.asarray(info.clipped)[[0, 3, 5]].all()
  assert np.isinf(np.asarray(info.dist)[[0, 5]]).all() == (abs(big) > 1e38)


def test_huge_centre_and_opposite_rows_do_not_overflow():
  """x_i - v is beyond float's range; the clipped step must stay finite."""
  x = np.full((3, 4), -3e38, np.float32)
  center = np.full(4, 3e38, np.float32)
  got = centered_clip({"w": x}, center={"w": center}, radius=2e38)["w"]
  # Every row pulls by tau along (-1, -1, -1, -1)/2: -1e38 per coordinate.
  np.testing.assert_allclose(got, np.full(4, 2e38), rtol=1e-5)


# --- the transform ----------------------------------------------------------


def _params():
  return jax.tree.map(lambda l: jnp.asarray(l[0]),
                      helpers.split_leaves(np.zeros((1, D), np.float32)))


def test_transform_keeps_the_last_aggregate_as_centre():
  tx = centered_clipping(radius=1.5, num_iters=2)
  state = jax.jit(tx.init)(_params())
  update = jax.jit(tx.update)
  v = np.zeros(D)
  for seed in range(4):
    x = _data(10 + seed)
    x[2] = 1e30 if seed % 2 else np.nan
    out, state = update(helpers.split_leaves(x), state)
    v = _np_centered_clip(x, v, 1.5, 2)
    np.testing.assert_allclose(helpers.join_leaves(out), v, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(helpers.join_leaves(state.center), v,
                               rtol=1e-5, atol=1e-5)
    assert 0 < int(state.num_clipped) <= R
    chex.assert_tree_all_finite(state)


def test_transform_in_a_chain_with_sgd():
  tx = optax.chain(centered_clipping(radius=100.0), optax.sgd(0.5))
  params = _params()
  state = jax.jit(tx.init)(params)
  x = _data(20)
  updates, new_state = jax.jit(tx.update)(helpers.split_leaves(x), state,
                                          params)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  np.testing.assert_allclose(helpers.join_leaves(updates),
                             -0.5 * x.mean(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,name", [
    (dict(radius=0.0), "radius"),
    (dict(radius=-1.0), "radius"),
    (dict(radius="big"), "radius"),
    (dict(radius=1.0, num_iters=0), "num_iters"),
    (dict(radius=1.0, num_iters=1.5), "num_iters"),
])
def test_bad_hyperparameters(kwargs, name):
  with pytest.raises(ValueError, match=name):
    centered_clipping(**kwargs)
  with pytest.raises(ValueError, match=name):
    centered_clip({"w": jnp.ones((3, 2))}, **kwargs)


@pytest.mark.parametrize("center", [
    {"w": np.zeros(D + 1, np.float32)},          # wrong shape
    {"v": np.zeros(D, np.float32)},              # wrong structure
    {"w": np.zeros((R, D), np.float32)}])        # stacked by mistake
def test_wrongly_shaped_center_raises_naming_it(center):
  x = np.random.default_rng(20).normal(size=(R, D)).astype(np.float32)
  with pytest.raises(ValueError, match="center"):
    centered_clip({"w": x}, center=center, radius=1.0)


def _np_adaptive_cc(x, center, num_iters):
  """Oracle of ``radius=None``: each iteration clips at the lower median of
  the live rows' distances to the centre."""
  x = np.asarray(x, np.float64)
  x = x[np.all(np.isfinite(x), axis=1)]
  v = np.asarray(center, np.float64).copy()
  for _ in range(num_iters):
    dist = sorted(np.linalg.norm(xi - v) for xi in x)
    v = _np_centered_clip(x, v, dist[(len(x) - 1) // 2], 1)
  return v


@pytest.mark.parametrize("num_iters", [1, 3])
def test_default_radius_is_the_median_distance(num_iters):
  x = _data(5)
  x[1] = 1e30
  x[4, 2] = np.nan
  center = np.zeros(D, np.float32)
  got, info = jax.jit(functools.partial(
      centered_clip, num_iters=num_iters, return_info=True))(
          {"w": x}, center={"w": center})
  np.testing.assert_allclose(got["w"], _np_adaptive_cc(x, center, num_iters),
                             rtol=1e-5, atol=1e-5)
  # The huge row moved the centre by at most the radius / n.
  assert info.clipped[1] and not info.live[4]
  # weights_i = min(1, tau / ||x_i - v||) / n: about half the live rows are
  # clipped at the median, the huge row's weight is ~tau / 1e30.
  n = int(np.sum(info.live))
  assert np.all(np.asarray(info.weights)[~np.asarray(info.clipped)
                                         & np.asarray(info.live)]
                == pytest.approx(1 / n))
  assert float(info.weights[1]) < 1e-25 and float(info.weights[4]) == 0


def test_transform_keeps_info_with_num_workers():
  tx = centered_clipping(num_workers=R)
  state = tx.init({"w": jnp.zeros(D)})
  assert state.info.weights.shape == (R,)
  x = _data(6)
  _, state = jax.jit(tx.update)({"w": jnp.asarray(x)}, state)
  _, info = centered_clip({"w": x}, center={"w": jnp.zeros(D)},
                          return_info=True)
  np.testing.assert_allclose(state.info.weights, info.weights, rtol=1e-6)
  assert centered_clipping().init({"w": jnp.zeros(D)}).info is None
