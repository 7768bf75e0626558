"""Sharding the worker axis over devices with :mod:`jax.sharding`.

The simulator's per-worker arrays (data shards, stacked gradients, worker
states) carry a leading worker axis ``R``. Placing that axis on a ``Mesh``
axis named ``"workers"`` lets XLA's SPMD partitioner run each device's workers
locally; the aggregator's reductions over the worker axis become collectives
(for Gram-based aggregators only an ``R x R`` all-reduce). The same program
runs on one CPU, one GPU, or many devices and hosts: after
``jax.distributed.initialize()`` on every host, :func:`worker_mesh` spans all
global devices.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from byzjax import _checks

PyTree = Any
WORKERS = "workers"


def worker_mesh(num_devices: int | None = None, axis_name: str = WORKERS) -> Mesh:
  """A 1-D mesh over the first ``num_devices`` devices (default: all)."""
  devices = jax.devices()
  if num_devices is not None:
    _checks.check_int("num_devices", num_devices, low=1, high=len(devices))
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (axis_name,))


def shard_workers(stacked: PyTree, mesh: Mesh, axis_name: str = WORKERS) -> PyTree:
  """Places every leaf's leading (worker) axis on the mesh's worker axis.

  Raises:
    ValueError: if a leaf's leading axis is not divisible by the number of
      devices on the worker axis.
  """
  size = mesh.shape[axis_name]

  def place(x):
    if x.ndim == 0 or x.shape[0] % size:
      raise ValueError(
          f"shard_workers: a leaf with leading axis {x.shape[:1]} cannot be "
          f"split over {size} devices; num_workers must be divisible by the "
          "number of devices.")
    spec = PartitionSpec(axis_name, *([None] * (x.ndim - 1)))
    return _place(x, NamedSharding(mesh, spec))

  return jax.tree.map(place, stacked)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Replicates every leaf on all devices of the mesh."""
  return jax.tree.map(
      lambda x: _place(x, NamedSharding(mesh, PartitionSpec())), tree)


def _place(x, sharding: NamedSharding):
  """``jax.device_put(x, sharding)``, also for a mesh spanning processes.

  Under ``jax.distributed`` the mesh has devices of other processes, which
  ``device_put`` cannot address: every process then builds its own shards
  from its copy of ``x`` (which must hold the same values on every process,
  as it does when each computes it from the same key and data).
  """
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  if jax.dtypes.issubdtype(jax.numpy.result_type(x), jax.dtypes.prng_key):
    impl = jax.random.key_impl(x)
    return jax.random.wrap_key_data(_place(jax.random.key_data(x), sharding),
                                    impl=impl)
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding,
                                      lambda index: host[index])
