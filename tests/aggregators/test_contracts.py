"""Contracts shared by every aggregator (issue 13).

Non-finite per-worker weights are erasures; half-precision inputs are
computed in float32; integer inputs are aggregated as float32; zero-size
leaves contribute nothing; a single erased worker gives zeros; repeated
eager calls compile nothing.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byzjax import aggregators as agg
from byzjax.attacks import gradient as attacks
from byzjax.transforms.bucketing import bucket_means
from byzjax.transforms.centered_clipping import centered_clip

# name -> (function, hyperparameters); R = 17 workers, d = 8 in most tests.
AGGREGATORS = {
    "mean": (agg.mean, {}),
    "coordinate_median": (agg.coordinate_median, {}),
    "trimmed_mean": (agg.trimmed_mean, {"trim_fraction": 0.2}),
    "geometric_median": (agg.geometric_median, {}),
    "geometric_median_direct": (agg.geometric_median, {"method": "direct"}),
    "geometric_median_gram": (agg.geometric_median, {"method": "gram"}),
    "geometric_median_of_means": (agg.geometric_median_of_means,
                                  {"num_groups": 5}),
    "krum": (agg.krum, {"num_byzantine": 1}),
    "bulyan": (agg.bulyan, {"num_byzantine": 1}),
    "norm_threshold": (agg.norm_threshold, {"trim_fraction": 0.2}),
    "sign_majority_vote": (agg.sign_majority_vote, {}),
    "spectral_filter": (agg.spectral_filter, {}),
    "block_geometric_median": (agg.block_geometric_median,
                               {"num_coords": 4}),
    "centered_clip": (centered_clip, {"radius": 5.0}),
    "meamed": (agg.meamed, {"num_byzantine": 2}),
    "monna": (agg.monna, {"num_byzantine": 2}),
    "mda": (agg.mda, {"num_byzantine": 2}),
    "smea": (agg.smea, {"num_byzantine": 2}),
    "caf": (agg.caf, {"num_byzantine": 2}),
    "dnc": (agg.dnc, {"num_byzantine": 2, "key": jax.random.key(0),
                      "sub_dim": 5}),
    "signguard": (agg.signguard, {"key": jax.random.key(0)}),
}


def _params(names, fast):
  """``names`` as pytest params; those not in ``fast`` are marked slow (the
  mechanism is shared, so a few aggregators cover it in the default run)."""
  return [n if n in fast else pytest.param(n, marks=pytest.mark.slow)
          for n in sorted(names)]


def _call(name, tree, **extra):
  fn, hparams = AGGREGATORS[name]
  return fn(tree, **hparams, **extra)


def _outlier_input(dtype=np.float32, seed=0):
  """16 rows of 1 + N(0, 1) in d = 8 and one row at 1e3 (issue 13, 4-5)."""
  rng = np.random.default_rng(seed)
  x = 1.0 + rng.normal(size=(17, 8))
  x[16] = 1e3
  return jnp.asarray(x, dtype)


# --------------------------------------------------------------------------
# 3. Non-finite weights are erasures.


@pytest.mark.parametrize("name", _params(
    ["mean", "geometric_median", "block_geometric_median"],
    {"mean", "geometric_median"}))
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_weight_is_an_erasure(name, bad):
  x = {"w": _outlier_input()[:16]}
  weights = jnp.ones(16).at[1].set(bad)
  got = _call(name, x, weights=weights)["w"]
  as_zero = _call(name, x, weights=jnp.ones(16).at[1].set(0.0))["w"]
  assert np.all(np.isfinite(got))
  np.testing.assert_array_equal(got, as_zero)


def test_non_finite_weight_geometric_median_matches_oracle():
  from tests import helpers
  x = np.asarray(_outlier_input()[:16])
  # The oracle's rule (the step), not the default objective rule.
  got = agg.geometric_median({"w": x}, criterion="step",
                             weights=jnp.ones(16).at[1].set(np.inf))["w"]
  np.testing.assert_allclose(got, helpers.np_geometric_median(np.delete(x, 1, 0)),
                             rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------
# 4/5. Half precision is computed in float32.

# The same input rounded to half precision, aggregated in float32, then
# rounded once: the half-precision answer may differ from it by the final
# rounding only (one ulp of the half dtype, relative), plus float32 noise.
HALF = [(jnp.float16, 2.0**-10), (jnp.bfloat16, 2.0**-7)]


@pytest.mark.parametrize("dtype,eps", HALF, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", _params(AGGREGATORS, {"geometric_median"}))
def test_half_precision_matches_float32(name, dtype, eps):
  x = _outlier_input(dtype)
  got = _call(name, {"w": x})["w"]
  ref = _call(name, {"w": x.astype(jnp.float32)})["w"]
  assert got.dtype == dtype
  assert np.all(np.isfinite(np.asarray(got, np.float32)))
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref),
                             rtol=eps, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_spectral_filter_half_precision_drops_the_outlier(dtype):
  x = _outlier_input(dtype)
  out, info = agg.spectral_filter({"w": x}, return_info=True)
  assert not bool(info.active[16])
  assert np.all(np.abs(np.asarray(out["w"], np.float32) - 1.0) < 1.5)


# --------------------------------------------------------------------------
# 9. Integer leaves are aggregated as float32.


@pytest.mark.parametrize("name", _params(AGGREGATORS, {
    "trimmed_mean", "centered_clip"}))
def test_int32_leaves_are_aggregated_as_float32(name):
  x = jnp.asarray(np.random.default_rng(1).integers(-5, 6, size=(17, 8)),
                  jnp.int32)
  got = _call(name, {"w": x})["w"]
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, _call(name, {"w": x.astype(jnp.float32)})["w"])


# --------------------------------------------------------------------------
# 6. Zero-size leaves contribute nothing.


@pytest.mark.parametrize("name", _params(AGGREGATORS, {"krum"}))
def test_zero_size_leaf(name):
  a = jnp.asarray(np.random.default_rng(2).normal(size=(7, 5)), jnp.float32)
  got = _call(name, {"a": a, "e": jnp.zeros((7, 0)),
                     "f": jnp.zeros((7, 2, 0), jnp.int32)})
  alone = _call(name, {"a": a})
  np.testing.assert_array_equal(got["a"], alone["a"])
  assert got["e"].shape == (0,) and got["f"].shape == (2, 0)


@pytest.mark.slow
def test_zero_size_leaf_in_pre_aggregation_and_attacks():
  a = jnp.asarray(np.random.default_rng(3).normal(size=(6, 3)), jnp.float32)
  tree = {"a": a, "e": jnp.zeros((6, 0))}
  key = jax.random.key(0)
  means = bucket_means(tree, bucket_size=2, key=key)
  assert means["e"].shape == (3, 0)
  np.testing.assert_array_equal(
      means["a"], bucket_means({"a": a}, bucket_size=2, key=key)["a"])
  mask = jnp.arange(6) < 2
  for attack, kwargs in [(attacks.alie, {}), (attacks.ipm, {}),
                         (attacks.annulus, {"key": key}),
                         (attacks.sign_flip, {"reference": "honest_mean"})]:
    out = attack(tree, mask, **kwargs)
    assert out["e"].shape == (6, 0)
    np.testing.assert_array_equal(out["a"], attack({"a": a}, mask, **kwargs)["a"])


# --------------------------------------------------------------------------
# 7. A single erased worker gives zeros.

SINGLE_WORKER = ["mean", "coordinate_median", "geometric_median",
                 "geometric_median_direct", "geometric_median_gram",
                 "spectral_filter", "sign_majority_vote", "centered_clip"]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", _params(SINGLE_WORKER, {"geometric_median"}))
def test_single_erased_worker_gives_zeros(name, jit):
  fn = functools.partial(_call, name)
  if jit:
    fn = jax.jit(fn)
  got = fn({"w": jnp.full((1, 4), jnp.nan)})["w"]
  np.testing.assert_array_equal(got, np.zeros(4))


SINGLE_WORKER_SIBLINGS = {
    "block_geometric_median": functools.partial(agg.block_geometric_median,
                                                num_coords=2),
    "geometric_median_of_means": functools.partial(
        agg.geometric_median_of_means, num_groups=1),
    "trimmed_mean": functools.partial(agg.trimmed_mean, trim_fraction=0.0),
    "norm_threshold": functools.partial(agg.norm_threshold,
                                        trim_fraction=0.0)}


@pytest.mark.parametrize(
    "jit", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", _params(SINGLE_WORKER_SIBLINGS,
                                         {"block_geometric_median"}))
def test_single_erased_worker_siblings(name, jit):
  fn = SINGLE_WORKER_SIBLINGS[name]
  got = (jax.jit(fn) if jit else fn)({"w": jnp.full((1, 4), jnp.nan)})["w"]
  np.testing.assert_array_equal(got, np.zeros(4))


# --------------------------------------------------------------------------
# 8. Repeated eager calls compile nothing.


class _CompileCounter:
  """Counts XLA backend compilations (JAX's own monitoring event)."""

  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.count = 0

  def __call__(self, event, duration, **kwargs):
    del duration, kwargs
    if event == self.EVENT:
      self.count += 1

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self)


def _eager_calls():
  x = {"w": _outlier_input()}
  mask = jnp.arange(17) < 3
  key = jax.random.key(0)
  calls = {n: functools.partial(_call, n, x) for n in AGGREGATORS}
  calls["krum_info"] = functools.partial(_call, "krum", x, return_info=True)
  calls["geometric_median_weights"] = functools.partial(
      _call, "geometric_median", x, weights=jnp.ones(17))
  calls["block_gm_sampled"] = functools.partial(
      agg.block_geometric_median, x, num_coords=4,
      sampling="norm_proportional", key=key)
  calls["select_blocks"] = functools.partial(agg.select_blocks, x,
                                             num_coords=4)
  calls["bucket_means"] = functools.partial(bucket_means, x,
                                            bucket_size=2, key=key)
  calls["alie"] = functools.partial(attacks.alie, x, mask)
  calls["annulus"] = functools.partial(attacks.annulus, x, mask, key=key)
  calls["gaussian_noise"] = functools.partial(attacks.gaussian_noise, x, mask,
                                              key=key)
  return calls


def test_compile_counter_sees_compilations():
  with _CompileCounter() as counter:
    jax.jit(lambda t: t * 3.0 + 1.0)(jnp.ones(5))
  assert counter.count >= 1


EAGER_CALLS = sorted(AGGREGATORS) + [
    "krum_info", "geometric_median_weights", "block_gm_sampled",
    "select_blocks", "bucket_means", "alie", "annulus", "gaussian_noise"]


@pytest.mark.parametrize("name", _params(EAGER_CALLS, {
    "geometric_median", "krum", "spectral_filter"}))
def test_second_eager_call_compiles_nothing(name):
  # The first call may compile (or reuse what other tests compiled); the
  # second, with the same shapes and hyperparameters, must not.
  call = _eager_calls()[name]
  jax.block_until_ready(call())
  with _CompileCounter() as second:
    jax.block_until_ready(call())
  assert second.count == 0


@pytest.mark.slow
def test_eager_call_inside_jit_and_vmap():
  x = _outlier_input()
  eager = agg.geometric_median({"w": x})["w"]
  jitted = jax.jit(lambda t: agg.geometric_median(t))({"w": x})["w"]
  batched = jax.vmap(lambda t: agg.geometric_median(t))(
      {"w": jnp.stack([x, x + 1.0])})["w"]
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  np.testing.assert_allclose(batched[0], eager, rtol=1e-6)
  np.testing.assert_allclose(batched[1], eager + 1.0, rtol=1e-5)


def test_wrapped_functions_keep_signature_and_docstring():
  import inspect
  for fn, _ in AGGREGATORS.values():
    assert "updates" in inspect.signature(fn).parameters
    assert fn.__doc__ and fn.__name__ in repr(fn)


def test_unknown_keyword_is_a_value_error():
  x = {"w": _outlier_input()}
  with pytest.raises(ValueError, match="tolerance"):
    agg.krum(x, num_byzantine=1, tolerance=1e-3)
  with pytest.raises(ValueError, match="num_byzantine"):
    agg.krum(x)
  with pytest.raises(ValueError, match="max_iter"):
    agg.block_geometric_median(x, num_coords=2, max_iter=3)


@pytest.mark.slow
def test_zero_size_leaf_in_transforms():
  import optax
  import byzjax
  from byzjax.transforms.bucketing import bucketing
  from byzjax.transforms.centered_clipping import centered_clipping
  a = jnp.asarray(np.random.default_rng(4).normal(size=(7, 5)), jnp.float32)
  for make in [lambda: centered_clipping(radius=1.0),
               lambda: optax.chain(bucketing(2, key=jax.random.key(0)),
                                   byzjax.aggregate(agg.krum,
                                                    num_byzantine=0)),
               lambda: byzjax.aggregate(agg.geometric_median,
                                        warm_start=True, num_workers=7)]:
    outs = []
    for params, g in [({"a": jnp.zeros(5), "e": jnp.zeros((0,))},
                       {"a": a, "e": jnp.zeros((7, 0))}),
                      ({"a": jnp.zeros(5)}, {"a": a})]:
      tx = make()
      state = tx.init(params)
      out, state = tx.update(g, state)
      out, state = tx.update(g, state)
      outs.append(out)
    assert outs[0]["e"].shape == (0,)
    np.testing.assert_array_equal(outs[0]["a"], outs[1]["a"])


def test_int32_bucket_means_are_float32_means():
  x = jnp.asarray(np.arange(12).reshape(6, 2), jnp.int32)
  key = jax.random.key(5)
  got = bucket_means({"w": x}, bucket_size=3, key=key)["w"]
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(
      got, bucket_means({"w": x.astype(jnp.float32)}, bucket_size=3,
                        key=key)["w"])
  # Two buckets of three: their means average to the overall mean.
  np.testing.assert_allclose(np.asarray(got).mean(0), [5.0, 6.0], rtol=1e-6)


def test_cached_program_does_not_skip_validation():
  # 1 and 1.0 are equal and hash alike; the compiled program for
  # num_byzantine=1 must not accept num_byzantine=1.0 (or True).
  x = {"w": _outlier_input()}
  agg.krum(x, num_byzantine=1)
  for bad in (1.0, True):
    with pytest.raises(ValueError, match="num_byzantine"):
      agg.krum(x, num_byzantine=bad)
