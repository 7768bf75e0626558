"""Tests for the compressor wrappers: compress, with_norm, using_sent_norms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byzjax import compression as C
from byzjax.transforms.aggregate import aggregate
from byzjax.transforms.compress import compress
from byzjax.transforms.compress import NormMessage
from byzjax.transforms.compress import using_sent_norms
from byzjax.transforms.compress import with_norm
from byzjax.transforms.per_worker import per_worker
from tests import helpers

R, D = 5, 9


def _tree(row):
  return jax.tree.map(lambda a: jnp.asarray(a[0]),
                      helpers.split_leaves(np.asarray(row, np.float32)[None]))


def _stacked(x):
  return helpers.split_leaves(np.asarray(x, np.float32))


def test_deterministic_compressor_equals_pure_function():
  g = _tree(np.random.default_rng(0).normal(size=D))
  tx = compress(C.top_k, k=3)
  state = tx.init(g)
  assert isinstance(state, optax.EmptyState)
  sent, _ = jax.jit(tx.update)(g, state)
  chex.assert_trees_all_equal(sent, C.top_k(g, k=3))


def test_keyed_compressor_splits_its_key_every_step():
  g = _tree(np.random.default_rng(1).normal(size=D))
  key = jax.random.key(3)
  tx = compress(C.rand_k, k=2, key=key)
  update = jax.jit(tx.update)
  state = tx.init(g)
  s1, state1 = update(g, state)
  s2, state2 = update(g, state1)
  # Step 1 uses the first subkey of `key`, as documented.
  _, sub = jax.random.split(key)
  chex.assert_trees_all_equal(s1, C.rand_k(g, k=2, key=sub))
  assert not np.array_equal(helpers.join_leaves(s1) != 0,
                            helpers.join_leaves(s2) != 0)
  # Same initial key: same sequence; a legacy key gives the same as typed.
  legacy = compress(C.rand_k, k=2, key=jax.random.key_data(key))
  l1, _ = legacy.update(g, legacy.init(g))
  chex.assert_trees_all_equal(l1, s1)
  assert not np.array_equal(jax.random.key_data(state1.key),
                            jax.random.key_data(state2.key))


def test_compressor_extra_args_are_forwarded_others_ignored():
  g = _tree(np.arange(1, D + 1))
  tx = compress(C.shared_rand_k)
  sent, _ = tx.update(g, tx.init(g), coords=jnp.array([2, 7]),
                      byzantine=jnp.ones(3, bool))
  want = np.zeros(D)
  want[[2, 7]] = [3, 8]
  want *= D / 2  # the paper's d/k scaling (Data & Diggavi, Algorithm 2)
  np.testing.assert_allclose(helpers.join_leaves(sent), want, rtol=1e-6)


def test_key_validation():
  with pytest.raises(ValueError, match="key"):
    compress(C.rand_k, k=2)
  with pytest.raises(ValueError, match="key"):
    compress(C.sign, key=jax.random.key(0))


def test_bad_hparams_fail_at_first_update():
  g = _tree(np.ones(D))
  tx = compress(C.top_k, k=D + 1)
  with pytest.raises(ValueError, match="k"):
    tx.update(g, tx.init(g))
  tx = compress(C.qsgd, levels=0, key=jax.random.key(0))
  with pytest.raises(ValueError, match="levels"):
    tx.update(g, tx.init(g))


def test_with_norm_sends_uncompressed_norm():
  x = np.random.default_rng(2).normal(size=D)
  tx = with_norm(compress(C.top_k, k=2))
  msg, _ = jax.jit(tx.update)(_tree(x), tx.init(_tree(x)))
  assert isinstance(msg, NormMessage)
  np.testing.assert_allclose(msg.norm, np.linalg.norm(x), rtol=1e-6)
  chex.assert_trees_all_equal(msg.update, C.top_k(_tree(x), k=2))
  # Without an inner transform the update itself is sent.
  tx = with_norm()
  msg, _ = tx.update(_tree(x), tx.init(_tree(x)))
  np.testing.assert_allclose(helpers.join_leaves(msg.update), x, rtol=1e-7)


def test_with_norm_of_huge_and_erased_updates():
  tx = with_norm(compress(C.scaled_sign))
  huge = np.full(D, 1e30)
  msg, _ = tx.update(_tree(huge), tx.init(_tree(huge)))
  np.testing.assert_allclose(msg.norm, 1e30 * np.sqrt(D), rtol=1e-6)
  bad = np.ones(D)
  bad[0] = np.nan
  msg, _ = tx.update(_tree(bad), tx.init(_tree(bad)))
  assert msg.norm == np.inf
  assert np.all(np.isnan(helpers.join_leaves(msg.update)))


def _fake_norm_threshold(updates, *, trim_fraction, norms=None,
                         return_info=False):
  """Mean of the workers with the smaller norms (sent norms if given)."""
  r = jax.tree.leaves(updates)[0].shape[0]
  if norms is None:
    norms = jax.vmap(C.l2_norm)(updates)
  keep = jnp.argsort(jnp.argsort(norms)) < r - int(trim_fraction * r)
  w = keep / jnp.sum(keep)
  out = jax.tree.map(lambda x: jnp.tensordot(w, x, axes=1), updates)
  return (out, keep) if return_info else out


def test_using_sent_norms_passes_the_sent_norms():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(R, D)).astype(np.float32)
  x[0] *= 100.0  # large gradient; its top-1 message is not the largest
  tx = optax.chain(
      per_worker(with_norm(compress(C.top_k, k=1)), R),
      aggregate(using_sent_norms(_fake_norm_threshold), trim_fraction=0.2))
  params = _tree(np.zeros(D))
  out, _ = jax.jit(tx.update)(_stacked(x), tx.init(params))
  sent = np.stack([helpers.join_leaves(C.top_k(_tree(row), k=1))
                   for row in x])
  # Worker 0 has the largest raw norm: it is the one dropped.
  np.testing.assert_allclose(helpers.join_leaves(out),
                             sent[1:].mean(axis=0), rtol=1e-6)
  # A plain stacked update passes through (norms computed by the aggregator).
  plain = using_sent_norms(_fake_norm_threshold)(_stacked(sent),
                                                 trim_fraction=0.2)
  keep = np.argsort(np.linalg.norm(sent, axis=1))[:4]
  np.testing.assert_allclose(helpers.join_leaves(plain),
                             sent[keep].mean(axis=0), rtol=1e-6)


def test_using_sent_norms_keeps_the_signature_for_aggregate():
  wrapped = using_sent_norms(_fake_norm_threshold)
  tx = aggregate(wrapped, num_workers=R, trim_fraction=0.2)
  state = tx.init(_tree(np.zeros(D)))
  assert state.info.shape == (R,)
  with pytest.raises(ValueError, match="norms"):
    using_sent_norms(lambda updates, *, return_info=False: updates)


def test_with_the_real_norm_threshold():
  mod = pytest.importorskip("byzjax.aggregators.norm_threshold")
  x = np.random.default_rng(4).normal(size=(R, D)).astype(np.float32)
  x[1] *= 1000.0
  tx = per_worker(with_norm(compress(C.sign)), R)
  msg, _ = tx.update(_stacked(x), tx.init(_tree(np.zeros(D))))
  out = using_sent_norms(mod.norm_threshold)(msg, trim_fraction=0.2)
  want = np.sign(np.delete(x, 1, axis=0)).mean(axis=0)
  np.testing.assert_allclose(helpers.join_leaves(out), want, atol=1e-6)


def test_l1_scale_message_and_thresholding_on_it():
  # Ghosh et al. (arXiv), §7: workers send C(x) = {||x||_1 / d, sign(x)}
  # and the server thresholds on the scaling factor ||x||_1 / d.
  mod = pytest.importorskip("byzjax.aggregators.norm_threshold")
  rng = np.random.default_rng(5)
  x = rng.normal(size=(R, D)).astype(np.float32)
  # Worker 0: a sparse spike, the largest l2 norm but the smallest l1 scale.
  x[0] = 0.0
  x[0, 3] = 4.0
  x[4] = 3e38  # huge rows keep their true scale
  # NumPy oracle of the sent scalars and messages.
  scale = np.abs(x.astype(np.float64)).sum(axis=1) / D
  assert np.argmax(np.linalg.norm(x[:4], axis=1)) == 0
  assert np.argmin(scale) == 0
  sent = scale[:, None] * np.sign(x)
  tx = per_worker(with_norm(compress(C.scaled_sign), norm="l1_scale"), R)

  @jax.jit
  def server(stacked):
    msg, _ = tx.update(stacked, tx.init(_tree(np.zeros(D))))
    # Drop the 2 largest scales: the spike is kept (l2 ranking drops it).
    out = using_sent_norms(mod.norm_threshold)(msg, trim_fraction=0.4)
    bad = jax.tree.map(lambda l: l[1].at[0].set(jnp.inf), stacked)
    return msg, out, C.l1_scale(bad)

  msg, out, bad_scale = server(_stacked(x))
  np.testing.assert_allclose(msg.norm, scale, rtol=1e-6)
  got = np.stack([helpers.join_leaves(jax.tree.map(lambda l: l[i],
                                                   msg.update))
                  for i in range(R)])
  np.testing.assert_allclose(got, sent, rtol=1e-6)
  keep = np.argsort(scale, kind="stable")[:R - 2]
  assert 0 in keep
  np.testing.assert_allclose(helpers.join_leaves(out), sent[keep].mean(0),
                             rtol=1e-5, atol=1e-7)
  assert bad_scale == np.inf  # an erased update sends inf
  with pytest.raises(ValueError, match="norm"):
    with_norm(norm="l1")
