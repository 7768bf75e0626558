"""Tests for BGMD's block selection and block geometric median."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import byzjax
from byzjax.aggregators import block_coordinate as bc
from byzjax.aggregators.block_coordinate import block_geometric_median
from byzjax.aggregators.block_coordinate import select_blocks
from byzjax.aggregators.geometric_median import geometric_median
from tests import helpers

# One shape and few block sizes throughout, so the jitted cores compile rarely.
R, D = 9, 30
# The NumPy oracle runs Weiszfeld to a tiny step: pin the step rule (the
# library default stops on the relative objective change, like the peers).
GM_KW = dict(tol=1e-8, max_iters=2000, method="direct", criterion="step")


def _np_live(x):
  return np.all(np.isfinite(x), axis=1)


def _np_top_columns(x, k):
  """Indices of the k largest float64 column norms over live rows (sorted)."""
  x = np.asarray(x, np.float64)[_np_live(x)]
  score = (x ** 2).sum(axis=0)
  order = np.argsort(-score, kind="stable")  # ties: lower index first
  return np.sort(order[:k])


def _np_block_gm(x, k):
  idx = _np_top_columns(x, k)
  out = np.zeros(x.shape[1])
  out[idx] = helpers.np_geometric_median(x[_np_live(x)][:, idx])
  return out, idx


def _mask_indices(mask_tree):
  return np.flatnonzero(helpers.join_leaves(mask_tree))


def _data(seed, r=R, d=D):
  rng = np.random.default_rng(seed)
  # Distinct column scales, so the top-k columns are well separated.
  scales = rng.uniform(0.2, 3.0, size=d)
  return (rng.normal(size=(r, d)) * scales + 1.0).astype(np.float32)


# --- select_blocks ----------------------------------------------------------


@pytest.mark.parametrize("jit,k", [(False, 1), (False, 7), (False, 30),
                                   (True, 7)])
def test_select_top_matches_numpy(jit, k):
  x = _data(0)
  fn = functools.partial(select_blocks, num_coords=k)
  mask = (jax.jit(fn) if jit else fn)(helpers.split_leaves(x))
  got = _mask_indices(mask)
  assert got.size == k
  np.testing.assert_array_equal(got, _np_top_columns(x, k))
  chex.assert_trees_all_equal_shapes(
      mask, jax.tree.map(lambda l: l[0], helpers.split_leaves(x)))


def test_selected_columns_dominate_the_rest():
  x = np.random.default_rng(1).standard_t(df=2, size=(R, D)).astype(np.float32)
  mask = helpers.join_leaves(select_blocks(helpers.split_leaves(x),
                                           num_coords=7))
  score = (x.astype(np.float64) ** 2).sum(axis=0)
  assert mask.sum() == 7
  assert score[mask].min() >= score[~mask].max()


def test_exactly_k_with_ties():
  x = np.zeros((R, D), np.float32)
  x[:, 13] = 1.0
  x[:, 28] = -1.0  # ties with column 13; everything else ties at zero
  for k in [1, 2, 7, 30]:
    got = _mask_indices(select_blocks(helpers.split_leaves(x), num_coords=k))
    assert got.size == k
    expected = {1: [13], 2: [13, 28], 7: [0, 1, 2, 3, 4, 13, 28],
                30: list(range(30))}[k]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("method", ["radix", "top_k"])
def test_top_k_indices_is_lax_top_k(method):
  rng = np.random.default_rng(2)
  keys = rng.integers(-3, 4, size=200).astype(np.float32)  # many ties
  keys[:5] = -np.inf
  keys[5:9] = [-0.0, 0.0, 1e38, -3e38]
  for k in [1, 50, 200]:
    got = np.asarray(jax.jit(
        lambda v, k=k: bc._top_k_indices(v, k, method))(keys))
    expected = np.sort(np.asarray(jax.lax.top_k(jnp.asarray(keys), k)[1]))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_erased_rows_are_ignored(bad):
  x = _data(3)
  x[2, 5] = bad
  x[2, :] *= 50.0  # would dominate every column if counted
  got = _mask_indices(select_blocks(helpers.split_leaves(x), num_coords=7))
  np.testing.assert_array_equal(got, _np_top_columns(x, 7))


@pytest.mark.parametrize("big", [1e30, -3e38, 3e38])
def test_selection_is_overflow_safe(big):
  x = _data(4)
  x[1, [4, 17]] = big      # two Byzantine columns
  x[:, 9] = 1e-30          # a tiny column must still rank above zeros
  x[:, 10] = 0.0
  for k in [2, 7, 29]:
    got = _mask_indices(select_blocks(helpers.split_leaves(x), num_coords=k))
    np.testing.assert_array_equal(got, _np_top_columns(x, k))
    assert 4 in got and 17 in got
  assert 9 in got and 10 not in got  # k = 29 drops only the zero column


@pytest.mark.parametrize("stream", [True, False])  # CPU row loop / reductions
@pytest.mark.parametrize("case", ["benign", "tiny", "1e30", "3e38", "erased"])
def test_column_scores_are_the_column_norms(case, stream, monkeypatch):
  """Fast and scaled paths: norm ∝ ||G_:j|| (one power of two), log_sq."""
  monkeypatch.setattr(bc, "_stream_rows", lambda: stream)
  x = _data(16)
  live = np.ones(R, bool)
  if case == "tiny":
    x[:, 9] = 1e-30
  elif case in ("1e30", "3e38"):
    x[1, [4, 17]] = float(case)
    x[:, 9] = 1e-30
  elif case == "erased":
    x[2, 3] = np.nan
    live[2] = False
  x[:, 10] = 0.0
  rows = [jnp.asarray(x[:, :13]), jnp.asarray(x[:, 13:])]
  norm, log_sq, got_live = jax.jit(lambda r: bc._column_scores(r))(rows)
  np.testing.assert_array_equal(got_live, live)
  ref = np.sqrt((x[live].astype(np.float64) ** 2).sum(axis=0))
  nz = ref > 0
  ratio = np.asarray(norm, np.float64)[nz] / ref[nz]
  power = np.round(np.log2(ratio[0]))
  np.testing.assert_allclose(ratio, 2.0 ** power, rtol=2e-6)  # one 2**-s
  assert np.asarray(norm)[10] == 0.0 and np.asarray(log_sq)[10] == -np.inf
  np.testing.assert_allclose(np.asarray(log_sq)[nz], 2 * np.log(ref[nz]),
                             rtol=1e-6, atol=1e-5)


def test_huge_rows_everywhere_keep_the_honest_order():
  # A 3e38 row in every column: columns are ranked by the Byzantine entries.
  x = _data(5)
  x[0] = 3e38 * np.linspace(0.5, 1.0, x.shape[1])
  got = _mask_indices(select_blocks(helpers.split_leaves(x), num_coords=7))
  np.testing.assert_array_equal(got, _np_top_columns(x, 7))


def test_norm_proportional_is_a_keyed_sample_without_replacement():
  x = _data(6)
  t = helpers.split_leaves(x)
  sel = functools.partial(select_blocks, num_coords=15,
                          sampling="norm_proportional")
  a = _mask_indices(sel(t, key=jax.random.key(0)))
  b = _mask_indices(sel(t, key=jax.random.key(0)))
  c = _mask_indices(sel(t, key=jax.random.key(1)))
  assert a.size == 15 and c.size == 15
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_norm_proportional_never_picks_zero_columns():
  x = _data(7)
  x[:, ::2] = 0.0  # 15 zero columns, 15 live ones
  for seed in range(5):
    got = _mask_indices(select_blocks(
        helpers.split_leaves(x), num_coords=15, sampling="norm_proportional",
        key=jax.random.key(seed)))
    np.testing.assert_array_equal(got, np.arange(1, 30, 2))


def test_norm_proportional_inclusion_probabilities():
  """k = 2 inclusion frequencies match successive sampling, p_j ∝ ||G_:j||²."""
  x = np.array([[1.0, 2.0, 3.0, 0.5], [1.0, -2.0, 1.0, 0.5]], np.float32)
  p = (x.astype(np.float64) ** 2).sum(0)
  p /= p.sum()
  exact = np.array([p[j] + sum(p[i] * p[j] / (1 - p[i])
                               for i in range(4) if i != j) for j in range(4)])
  n = 4000
  keys = jax.random.split(jax.random.key(3), n)
  masks = jax.jit(jax.vmap(lambda key: select_blocks(
      {"w": x}, num_coords=2, sampling="norm_proportional", key=key)["w"]))(
          keys)
  freq = np.asarray(masks).mean(axis=0)
  np.testing.assert_allclose(freq, exact, atol=4 * np.sqrt(0.25 / n))
  assert np.all(np.asarray(masks).sum(axis=1) == 2)


# --- block_geometric_median -------------------------------------------------


# 3 leaves: k = 2 gathers leaf by leaf, k >= 12 from one concatenation.
@pytest.mark.parametrize("jit,k", [(False, 2), (False, 12), (False, 30),
                                   (True, 12)])
def test_block_gm_matches_numpy(jit, k):
  x = _data(8)
  fn = functools.partial(block_geometric_median, num_coords=k, **GM_KW)
  got, info = (jax.jit(fn, static_argnames="return_info") if jit else fn)(
      helpers.split_leaves(x), return_info=True)
  expected, idx = _np_block_gm(x, k)
  np.testing.assert_allclose(helpers.join_leaves(got), expected, atol=3e-5)
  np.testing.assert_array_equal(np.asarray(info.indices), idx)
  score = (x.astype(np.float64) ** 2).sum(0)
  np.testing.assert_allclose(float(info.mass), score[idx].sum() / score.sum(),
                             rtol=1e-5)


@pytest.mark.slow  # end-to-end or many compilations; run with -m slow
def test_full_block_is_the_geometric_median():
  x = _data(9)
  t = helpers.split_leaves(x)
  full = jax.jit(functools.partial(geometric_median, **GM_KW))(t)
  chex.assert_trees_all_close(
      block_geometric_median(t, num_coords=D, **GM_KW), full, atol=1e-5)
  chex.assert_trees_all_close(
      block_geometric_median(t, block_fraction=1.0, **GM_KW), full, atol=1e-5)


def test_block_fraction_rounds_up():
  assert bc._resolve_num_coords(100, None, 0.29) == 29
  assert bc._resolve_num_coords(100, None, 0.001) == 1
  assert bc._resolve_num_coords(100, None, 0.255) == 26
  assert bc._resolve_num_coords(100, None, 1.0) == 100
  assert bc._resolve_num_coords(100, 7, None) == 7
  _, info = block_geometric_median(helpers.split_leaves(_data(10)),
                                   block_fraction=0.4, return_info=True,
                                   **GM_KW)
  assert info.indices.shape == (12,)


@pytest.mark.slow  # several compilations; the default suite keeps a sibling
def test_pytree_equals_flat():
  x = _data(11)
  flat = block_geometric_median({"w": x}, num_coords=12, **GM_KW)["w"]
  tree = block_geometric_median(helpers.split_leaves(x), num_coords=12, **GM_KW)
  np.testing.assert_allclose(helpers.join_leaves(tree), flat, atol=1e-6)


def test_permutation_invariant_and_scale_equivariant():
  x = _data(12)
  t = helpers.split_leaves(x)
  ref = helpers.join_leaves(block_geometric_median(t, num_coords=12, **GM_KW))
  perm = helpers.split_leaves(x[::-1].copy())
  np.testing.assert_allclose(
      helpers.join_leaves(block_geometric_median(perm, num_coords=12, **GM_KW)),
      ref, atol=1e-5)
  scaled = helpers.split_leaves(x * np.float32(8.0))
  np.testing.assert_allclose(
      helpers.join_leaves(block_geometric_median(scaled, num_coords=12,
                                                 **GM_KW)), 8.0 * ref,
      atol=1e-4)


def test_identical_workers_give_that_worker_on_the_block():
  row = _data(13, r=1)[0]
  x = np.tile(row, (R, 1))
  got = helpers.join_leaves(block_geometric_median(
      helpers.split_leaves(x), num_coords=12, **GM_KW))
  idx = _np_top_columns(x, 12)
  expected = np.zeros_like(row)
  expected[idx] = row[idx]
  np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38,
                                 -3e38])
def test_byzantine_rows_within_breakdown(bad):
  x = _data(14)
  byz = [0, 4, 7, 8]  # 4 of 9
  x[byz[:2]] = bad
  x[byz[2], ::3] = bad  # partially corrupted rows
  x[byz[3], 1] = bad
  got, info = block_geometric_median(helpers.split_leaves(x), num_coords=12,
                                     return_info=True, **GM_KW)
  got = helpers.join_leaves(got)
  assert np.all(np.isfinite(got))
  idx = np.asarray(info.indices)
  honest = np.delete(x, byz, axis=0)[:, idx].astype(np.float64)
  ref = helpers.np_geometric_median(honest)
  spread = np.max(np.linalg.norm(honest - ref, axis=1))
  assert np.linalg.norm(got[idx] - ref) <= 2.0 * spread
  assert np.all(np.delete(got, idx) == 0.0)
  if not np.isfinite(bad):  # erasures: exactly the GM of the live rows
    live = _np_live(x)
    np.testing.assert_allclose(
        got[idx], helpers.np_geometric_median(x[live][:, idx]), atol=3e-5)


def test_weights_are_forwarded():
  x = _data(15)
  w = np.array([1.0] * 5 + [0.0] * 4, np.float32)
  got = block_geometric_median({"w": x}, num_coords=12, weights=w, **GM_KW)["w"]
  idx = _np_top_columns(x, 12)
  np.testing.assert_allclose(np.asarray(got)[idx],
                             helpers.np_geometric_median(x[:5][:, idx]), atol=3e-5)


# --- hyperparameters --------------------------------------------------------


@pytest.mark.parametrize("k", [0, 31, 2.5, True, None])
def test_bad_num_coords(k):
  x = {"w": jnp.ones((3, 30))}
  with pytest.raises(ValueError, match="num_coords"):
    select_blocks(x, num_coords=k)
  with pytest.raises(ValueError, match="num_coords"):
    block_geometric_median(x, num_coords=k)


@pytest.mark.parametrize("frac", [0.0, -0.1, 1.5, "half"])
def test_bad_block_fraction(frac):
  with pytest.raises(ValueError, match="block_fraction"):
    block_geometric_median({"w": jnp.ones((3, 5))}, block_fraction=frac)


def test_num_coords_xor_block_fraction():
  x = {"w": jnp.ones((3, 5))}
  with pytest.raises(ValueError, match="num_coords"):
    block_geometric_median(x)
  with pytest.raises(ValueError, match="block_fraction"):
    block_geometric_median(x, num_coords=2, block_fraction=0.5)


def test_bad_sampling_and_missing_key():
  x = {"w": jnp.ones((3, 5))}
  with pytest.raises(ValueError, match="sampling"):
    select_blocks(x, num_coords=2, sampling="random")
  with pytest.raises(ValueError, match="key"):
    select_blocks(x, num_coords=2, sampling="norm_proportional")
  with pytest.raises(ValueError, match="key"):
    block_geometric_median(x, num_coords=2, sampling="norm_proportional")


def test_bad_gm_kwargs():
  x = {"w": jnp.ones((3, 5))}
  with pytest.raises(ValueError, match="max_iters"):
    block_geometric_median(x, num_coords=2, max_iters=0)
  with pytest.raises(ValueError, match="init"):
    block_geometric_median(x, num_coords=2, init={"w": jnp.zeros(5)})


def test_works_through_the_aggregate_wrapper():
  x = _data(17)
  params = jax.tree.map(lambda l: jnp.zeros(l.shape[1:]),
                        helpers.split_leaves(x))
  tx = optax.chain(
      byzjax.aggregate(block_geometric_median, num_coords=12, **GM_KW),
      optax.sgd(0.5))
  out, _ = tx.update(helpers.split_leaves(x), tx.init(params), params)
  expected, _ = _np_block_gm(x, 12)
  np.testing.assert_allclose(helpers.join_leaves(out), -0.5 * expected,
                             atol=3e-5)
  # The sampling key is a per-step extra argument of the wrapper.
  tx = byzjax.aggregate(block_geometric_median, num_coords=15,
                        sampling="norm_proportional", **GM_KW)
  a, _ = tx.update(helpers.split_leaves(x), tx.init(params),
                   key=jax.random.key(0))
  b = block_geometric_median(helpers.split_leaves(x), num_coords=15,
                             sampling="norm_proportional",
                             key=jax.random.key(0), **GM_KW)
  chex.assert_trees_all_close(a, b)
