"""Sharding the parameter axis: aggregators exchange only R x R statistics.

For a model too large to stack on one device, the stacked updates ``[R, d]``
are sharded along ``d`` and the aggregator is traced under
``jax.set_mesh(mesh)``. The compiled program's collectives must then be
all-reduces of Gram-sized (``R x R``) or per-worker (``[R]``) statistics,
never a gather of the updates (issue 11, section 4), and the result must
equal the unsharded one.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from byzjax.aggregators import geometric_median
from byzjax.aggregators import krum
from byzjax.aggregators import spectral_filter
from byzjax.aggregators import trimmed_mean

R = 8
# Above every column-block size of the CPU kernels (4096 and 16384), so that
# blocked loops, which would gather the updates, would be used if allowed.
D = 8 * 2560

RULES = {
    "krum": lambda u: krum(u, num_byzantine=2),
    "geometric_median": geometric_median,
    "trimmed_mean": lambda u: trimmed_mean(u, trim_fraction=0.25),
    "spectral_filter": spectral_filter,
}

_COLLECTIVE = re.compile(
    r"= (\w+)\[([\d,]*)\][^ ]* (all-reduce|all-gather|reduce-scatter|"
    r"collective-permute|all-to-all)(?:-start)?\(")


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (emulated) devices")
@pytest.mark.parametrize("rule", sorted(RULES))
def test_only_small_all_reduces_cross_devices(rule):
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("params",))
  x = np.random.default_rng(0).normal(size=(R, D)).astype(np.float32)
  x[1] *= 50.0  # an outlier, so that the rules have something to remove
  sharded = jax.device_put(jnp.asarray(x),
                           NamedSharding(mesh, PartitionSpec(None, "params")))
  fn = jax.jit(lambda u: RULES[rule]({"w": u})["w"],
               out_shardings=NamedSharding(mesh, PartitionSpec("params")))
  with jax.set_mesh(mesh):
    compiled = fn.lower(sharded).compile()
    got = compiled(sharded)
  collectives = _COLLECTIVE.findall(compiled.as_text())
  assert collectives, "expected the R x R statistics to be all-reduced"
  for dtype, dims, kind in collectives:
    size = int(np.prod([int(v) for v in dims.split(",") if v] or [1]))
    assert kind == "all-reduce" and size <= R * R, (dtype, dims, kind)
  want = jax.jit(lambda u: RULES[rule]({"w": u})["w"])(jnp.asarray(x))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
