"""Datasets, their partition across workers, and per-worker mini-batches.

.. code-block:: python

  train = byzjax.data.load_fashion_mnist(split="train")
  worker_data = byzjax.data.dirichlet_partition(
      jax.random.key(0), train, num_workers=20, alpha=0.5)

Main entry points:

* Loaders, each returning a :class:`Dataset` ``(x, y)``:
  :func:`load_fashion_mnist` (from the Debian package
  ``dataset-fashion-mnist``; :func:`read_idx` / :func:`parse_idx` read the
  IDX files), :func:`linear_regression` and :func:`gaussian_mixture`
  (synthetic).
* Partitions across ``R`` workers, each returning a :class:`WorkerData`
  (leaves with a leading worker axis, padded shards plus their sizes), the
  input of :func:`byzjax.simulation.run`: :func:`iid_partition`,
  :func:`class_sharded_partition` (each worker a few classes),
  :func:`dirichlet_partition` (label skew), :func:`unequal_partition`
  (unequal shard sizes). The ``*_indices`` variants return only the
  :class:`Partition` (which samples each worker owns), and :func:`shard`
  gathers it into a :class:`WorkerData`.
* Per-worker mini-batches: :func:`sample_batches` (and
  :func:`sample_indices`), which never pick a padding row.
"""

from byzjax.data.fashion_mnist import load_fashion_mnist
from byzjax.data.fashion_mnist import parse_idx
from byzjax.data.fashion_mnist import read_idx
from byzjax.data.partition import class_sharded_indices
from byzjax.data.partition import class_sharded_partition
from byzjax.data.partition import Dataset
from byzjax.data.partition import dirichlet_indices
from byzjax.data.partition import dirichlet_partition
from byzjax.data.partition import gamma_similarity_indices
from byzjax.data.partition import gamma_similarity_partition
from byzjax.data.partition import iid_indices
from byzjax.data.partition import iid_partition
from byzjax.data.partition import Partition
from byzjax.data.partition import shard
from byzjax.data.partition import unequal_indices
from byzjax.data.partition import unequal_partition
from byzjax.data.partition import WorkerData
from byzjax.data.sampling import sample_batches
from byzjax.data.sampling import sample_indices
from byzjax.data.synthetic import gaussian_mixture
from byzjax.data.synthetic import linear_regression
