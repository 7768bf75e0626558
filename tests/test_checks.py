"""NaN and infinite hyperparameters are rejected, naming them (issue 13, 2)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import byzjax
from byzjax import _checks
from byzjax import aggregators as agg
from byzjax import compression
from byzjax.attacks import data as data_attacks
from byzjax.attacks import gradient as attacks
from byzjax.transforms import block_memory
from byzjax.transforms.centered_clipping import centered_clip
from byzjax.transforms.centered_clipping import centered_clipping
from byzjax.transforms.error_feedback import error_feedback

NAN, INF = float("nan"), float("inf")
X = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)),
                      jnp.float32)}
MASK = jnp.arange(8) < 2
KEY = jax.random.key(0)

# (id, kwarg, call(value)); each call passes `value` as that hyperparameter.
CASES = [
    ("trimmed_mean", "trim_fraction",
     lambda v: agg.trimmed_mean(X, trim_fraction=v)),
    ("norm_threshold", "trim_fraction",
     lambda v: agg.norm_threshold(X, trim_fraction=v)),
    ("geometric_median", "tol", lambda v: agg.geometric_median(X, tol=v)),
    ("geometric_median", "nu", lambda v: agg.geometric_median(X, nu=v)),
    ("gmom", "tol",
     lambda v: agg.geometric_median_of_means(X, num_groups=2, tol=v)),
    ("gmom", "trim_threshold",
     lambda v: agg.geometric_median_of_means(X, num_groups=2,
                                             trim_threshold=v)),
    ("spectral_filter", "sigma", lambda v: agg.spectral_filter(X, sigma=v)),
    ("spectral_filter", "power_tol",
     lambda v: agg.spectral_filter(X, power_tol=v)),
    ("block_gm", "block_fraction",
     lambda v: agg.block_geometric_median(X, block_fraction=v)),
    ("block_gm", "tol",
     lambda v: agg.block_geometric_median(X, num_coords=2, tol=v)),
    ("centered_clip", "radius",
     lambda v: centered_clip(X, radius=v)),
    ("centered_clipping", "radius",
     lambda v: centered_clipping(radius=v)),
    ("bgmd", "learning_rate",
     lambda v: block_memory.block_geometric_median_descent(
         num_coords=1, learning_rate=v)),
    ("bgmd", "memory_clip",
     lambda v: block_memory.block_geometric_median_descent(
         num_coords=1, memory_clip=v)),
    ("bgmd", "tol",
     lambda v: block_memory.block_geometric_median_descent(num_coords=1,
                                                           tol=v)),
    ("aggregate", "tol",
     lambda v: byzjax.aggregate(agg.geometric_median, tol=v)),
    ("error_feedback", "scale",
     lambda v: error_feedback(optax_identity(), scale=v)),
    ("scatter_coordinates", "scale",
     lambda v: compression.scatter_coordinates(
         jnp.ones((1,)), jnp.zeros((1,), jnp.int32), {"w": jnp.zeros(3)},
         scale=v)),
    ("gaussian_noise", "variance",
     lambda v: attacks.gaussian_noise(X, MASK, key=KEY, variance=v)),
    ("bit_flip", "scale", lambda v: attacks.bit_flip(X, MASK, scale=v)),
    ("random_gaussian", "mean",
     lambda v: attacks.random_gaussian(X, MASK, key=KEY, mean=v)),
    ("random_gaussian", "variance",
     lambda v: attacks.random_gaussian(X, MASK, key=KEY, variance=v)),
    ("alie", "z", lambda v: attacks.alie(X, MASK, z=v)),
    ("ipm", "epsilon", lambda v: attacks.ipm(X, MASK, epsilon=v)),
    ("annulus", "radius_scale",
     lambda v: attacks.annulus(X, MASK, key=KEY, radius_scale=v)),
    ("ipm_attack", "epsilon", lambda v: attacks.ipm_attack(epsilon=v)),
    ("bit_flip_attack", "scale", lambda v: attacks.bit_flip_attack(scale=v)),
    ("feature_noise", "variance",
     lambda v: data_attacks.feature_noise(variance=v)),
    ("impulse_noise", "low", lambda v: data_attacks.impulse_noise(low=v)),
    ("impulse_noise", "fraction",
     lambda v: data_attacks.impulse_noise(fraction=v)),
]

# Where inf means "no bound" and is accepted.
INF_ALLOWED = {("centered_clip", "radius"), ("centered_clipping", "radius"),
               ("gmom", "trim_threshold"), ("bgmd", "memory_clip")}


def optax_identity():
  import optax
  return optax.identity()


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf",
                                                         "-inf"])
@pytest.mark.parametrize("name,kwarg,call", CASES,
                         ids=[f"{n}-{k}" for n, k, _ in CASES])
def test_non_finite_hyperparameter_raises_naming_it(name, kwarg, call, value):
  if (name, kwarg) in INF_ALLOWED and value == INF:
    out = call(value)  # accepted: no bound
    for leaf in jax.tree.leaves(out):
      if hasattr(leaf, "dtype"):  # an aggregate (transforms are functions)
        assert np.all(np.isfinite(leaf))
    return
  with pytest.raises(ValueError, match=kwarg):
    call(value)


def test_check_functions_reject_nan_and_inf():
  for fn in (lambda v: _checks.check_positive("p", v),
             lambda v: _checks.check_positive("p", v, allow_zero=True),
             lambda v: _checks.check_fraction("p", v),
             lambda v: _checks.check_finite("p", v)):
    for v in (NAN, INF):
      with pytest.raises(ValueError, match="p must"):
        fn(v)
  assert _checks.check_positive("p", INF, allow_inf=True) == INF
  with pytest.raises(ValueError, match="NaN"):
    _checks.check_positive("p", NAN, allow_inf=True)
  assert _checks.check_finite("p", -2) == -2.0
  assert math.isclose(_checks.check_fraction("p", 0.25), 0.25)


@pytest.mark.parametrize("call,name", [
    (lambda f: agg.krum(X, num_byzantine=f), "num_byzantine"),
    (lambda t: agg.trimmed_mean(X, trim_fraction=t), "trim_fraction"),
])
def test_traced_hyperparameter_says_how_to_sweep_it(call, name):
  # As in a vmapped_runs sweep over a shape-fixing hyperparameter (issue 12).
  values = jnp.array([1, 2]) if name == "num_byzantine" else jnp.array(
      [0.1, 0.2])
  with pytest.raises(ValueError, match=name) as err:
    jax.vmap(call)(values)
  msg = str(err.value)
  assert "traced" in msg and "byzjax.simulation.grid" in msg
  assert "num_byzantine the swept" in msg
