"""Tests for static clipping and ARC (Allouah et al., ICLR 2025)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import byzjax
from byzjax.aggregators import mean
from byzjax.transforms.clipping import adaptive_robust_clip
from byzjax.transforms.clipping import clip
from byzjax.transforms.clipping import num_clipped

R, D = 9, 6


def _np_clip(x, c):
  x = np.asarray(x, np.float64)
  out = np.full_like(x, np.nan)
  for i, row in enumerate(x):
    if np.all(np.isfinite(row)):
      norm = np.linalg.norm(row)
      out[i] = row * min(1.0, c / norm) if norm > 0 else row
  return out


def _np_arc(x, f):
  """ARC, Algorithm 1: k = floor(2 (f/R)(R - f)) largest rows clipped to the
  norm of the (k+1)-th largest; erased rows rank first (infinite norm)."""
  x = np.asarray(x, np.float64)
  r = len(x)
  k = int(np.floor(2 * (f / r) * (r - f) + 1e-9))
  norms = np.array([np.linalg.norm(row) if np.all(np.isfinite(row))
                    else np.inf for row in x])
  order = sorted(range(r), key=lambda i: (-norms[i], i))
  c = norms[order[k]]
  return _np_clip(x, c)


def _data(seed, r=R, d=D):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(r, d)) * rng.uniform(0.1, 5, size=(r, 1))).astype(
      np.float32)


def test_num_clipped_is_exact():
  for r in range(1, 40):
    for f in range(0, (r + 1) // 2):
      assert num_clipped(f, r) == int(np.floor(2 * f * (r - f) / r + 1e-12))


@pytest.mark.parametrize(
    "jit", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_clip_matches_numpy_oracle(jit):
  x = _data(0)
  fn = lambda t: clip(t, max_norm=2.0)
  got = (jax.jit(fn) if jit else fn)({"w": x})["w"]
  np.testing.assert_allclose(got, _np_clip(x, 2.0), rtol=1e-6, atol=1e-7)
  norms = np.linalg.norm(np.asarray(got, np.float64), axis=1)
  assert np.all(norms <= 2.0 * (1 + 1e-6))


@pytest.mark.parametrize("f,jit", [
    (4, True), (1, False), pytest.param(0, False, marks=pytest.mark.slow),
    pytest.param(4, False, marks=pytest.mark.slow)])
def test_arc_matches_numpy_oracle(f, jit):
  x = _data(f + 1)
  fn = lambda t: adaptive_robust_clip(t, num_byzantine=f)
  got = (jax.jit(fn) if jit else fn)({"a": x[:, :2], "b": x[:, 2:]})
  got = np.concatenate([got["a"], got["b"]], axis=1)
  np.testing.assert_allclose(got, _np_arc(x, f), rtol=1e-6, atol=1e-7)


def test_arc_info_and_unclipped_rows_are_bit_exact():
  x = _data(7)
  out, info = adaptive_robust_clip({"w": x}, num_byzantine=3,
                                   return_info=True)
  k = num_clipped(3, R)
  assert int(info.clipped.sum()) == k
  norms = np.linalg.norm(x.astype(np.float64), axis=1)
  np.testing.assert_allclose(info.threshold, np.sort(norms)[::-1][k],
                             rtol=1e-6)
  keep = ~np.asarray(info.clipped)
  np.testing.assert_array_equal(np.asarray(out["w"])[keep], x[keep])


@pytest.mark.parametrize("fn", ["clip", "arc"])
def test_permutation_equivariant(fn):
  x = _data(8)
  x[3] = x[5]  # a tie in norm: ARC breaks it by index, the output agrees
  call = {"clip": lambda t: clip(t, max_norm=1.5),
          "arc": lambda t: adaptive_robust_clip(t, num_byzantine=3)}[fn]
  perm = np.random.default_rng(1).permutation(R)
  a = np.asarray(call({"w": x})["w"])
  b = np.asarray(call({"w": x[perm]})["w"])
  np.testing.assert_allclose(b, a[perm], rtol=1e-6)


@pytest.mark.parametrize("bad", [
    np.nan, 3e38, pytest.param(np.inf, marks=pytest.mark.slow),
    pytest.param(1e30, marks=pytest.mark.slow),
    pytest.param(-3e38, marks=pytest.mark.slow)])
def test_byzantine_rows_up_to_breakdown(bad):
  x = _data(9)
  f = 4
  x[:f] = bad
  x[f - 1, 1:] = 1.0  # a partly huge (or partly erased) row
  for got, expected in [
      (adaptive_robust_clip({"w": x}, num_byzantine=f)["w"], _np_arc(x, f)),
      (clip({"w": x}, max_norm=1.0)["w"], _np_clip(x, 1.0))]:
    got = np.asarray(got)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if np.isfinite(bad):
      assert np.all(np.isfinite(got))
      # ARC's threshold is at most the largest honest norm (k >= f).
      assert np.all(np.linalg.norm(got.astype(np.float64), axis=1)
                    <= np.linalg.norm(x[f:].astype(np.float64), axis=1).max()
                    * (1 + 1e-5))
    else:
      assert np.all(np.isnan(got[:f]))


def test_huge_norm_beyond_float_range_is_clipped_exactly():
  x = np.full((5, 64), 3e38, np.float32)  # norm 2.4e39: beyond float32
  x[1:] = np.arange(4 * 64, dtype=np.float32).reshape(4, 64) / 100
  got = np.asarray(clip({"w": x}, max_norm=1.0)["w"])
  np.testing.assert_allclose(got[0], np.full(64, 1 / 8), rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"max_norm": 0.0}, "max_norm"), ({"max_norm": -1.0}, "max_norm"),
    ({"max_norm": float("nan")}, "max_norm")])
def test_clip_bad_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    clip({"w": _data(0)}, **kwargs)
  with pytest.raises(ValueError, match=match):
    byzjax.clipping(kwargs["max_norm"])


@pytest.mark.parametrize("f", [5, -1, 2.0])
def test_arc_bad_hyperparameters(f):
  with pytest.raises(ValueError, match="num_byzantine"):
    adaptive_robust_clip({"w": _data(0)}, num_byzantine=f)


def test_clip_infinite_bound_is_identity():
  x = _data(10)
  np.testing.assert_array_equal(clip({"w": x}, max_norm=float("inf"))["w"], x)


def test_vmap():
  xs = np.stack([_data(11), _data(12)])
  got = jax.vmap(lambda t: adaptive_robust_clip(t, num_byzantine=2))(
      {"w": xs})["w"]
  for b in range(2):
    np.testing.assert_allclose(got[b], _np_arc(xs[b], 2), rtol=1e-6,
                               atol=1e-7)


def test_chain_arc_nnm_mean():
  params = {"w": jnp.zeros(D)}
  tx = optax.chain(byzjax.arc(2), byzjax.nnm(2), byzjax.aggregate(mean),
                   optax.sgd(1.0))
  state = jax.jit(tx.init)(params)
  x = _data(13)
  x[0] = 1e30
  out, new_state = jax.jit(tx.update)({"w": x}, state, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(out, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  chex.assert_tree_all_finite(out)
  # mean after NNM and ARC: bounded by the largest honest norm.
  assert np.linalg.norm(out["w"]) <= np.linalg.norm(x[1:], axis=1).max()
  # clipping() transform equals the pure function.
  tx2 = byzjax.clipping(1.0)
  y, _ = tx2.update({"w": x}, tx2.init(params))
  np.testing.assert_array_equal(y["w"], clip({"w": x}, max_norm=1.0)["w"])
