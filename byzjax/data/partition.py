"""Splitting a dataset across workers: i.i.d., class-sharded, Dirichlet, unequal.

Workers are an array axis (DESIGN.md, "The one idea"), so a partitioned dataset
is one :class:`WorkerData` whose leaves carry a leading worker axis ``R``:
worker ``r`` owns the rows ``x[r, :size[r]]``; the rows after ``size[r]`` are
zero padding up to the common length ``n_max``. Per-worker mini-batches are
drawn from it with :func:`byzjax.data.sampling.sample_batches`, which never
picks a padding row.

Each scheme first computes a :class:`Partition` (for every worker, the indices
of its samples in the dataset) and :func:`shard` gathers the rows. The index
computation is set-up code, run once on the host with NumPy; its generator is
seeded from the JAX ``key``, so a partition is a deterministic function of the
key and the arguments.

Schemes (:math:`N` samples, :math:`R` workers):

* :func:`iid_indices`: a random permutation cut into :math:`R` contiguous
  pieces whose sizes differ by at most one.
* :func:`class_sharded_indices`: the heterogeneous split of Acharya et al.
  (BGMD), after McMahan et al.: sort by label, cut into :math:`sR` shards
  (:math:`s = 4` by default), give each worker :math:`s` shards drawn at random
  without replacement, so that it sees at most :math:`s` classes.
* :func:`dirichlet_indices`: label skew of Hsu et al.: the samples of every
  class :math:`c` are split across workers in proportions
  :math:`p_c \\sim \\mathrm{Dir}(\\alpha \\mathbf{1}_R)`; a small :math:`\\alpha`
  gives each worker few classes, a large one approaches the i.i.d. split.
* :func:`gamma_similarity_indices`: a fraction :math:`\\gamma` of the data
  i.i.d., the rest sorted by label and cut into contiguous pieces.
* :func:`unequal_indices`: i.i.d. samples, unequal shard sizes (given, or
  log-normal proportions).

References:
  Acharya et al., `Robust Training in High Dimensions via Block Coordinate
  Geometric Median Descent <https://arxiv.org/abs/2106.08882>`_, AISTATS 2022

  McMahan et al., `Communication-Efficient Learning of Deep Networks from
  Decentralized Data <https://arxiv.org/abs/1602.05629>`_, AISTATS 2017

  Hsu, Qi & Brown, `Measuring the Effects of Non-Identical Data Distribution
  for Federated Visual Classification <https://arxiv.org/abs/1909.06335>`_,
  2019
"""

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from byzjax import _checks

ArrayLike = Any

# Dirichlet draws are repeated until every worker holds `min_size` samples;
# give up (ValueError) after this many draws.
_DIRICHLET_MAX_TRIES = 1000


class Dataset(NamedTuple):
  """Features and targets of a dataset (NumPy or JAX arrays)."""
  x: ArrayLike  # [N, ...] features
  y: ArrayLike  # [N] int labels, or [N, ...] regression targets


class WorkerData(NamedTuple):
  """A dataset split across ``R`` workers, padded to a common length."""
  x: jax.Array     # [R, n_max, ...] features; rows >= size[r] are zeros
  y: jax.Array     # [R, n_max, ...] targets; rows >= size[r] are zeros
  size: jax.Array  # int32 [R]: number of real rows of each worker


class Partition(NamedTuple):
  """Which samples each worker owns (host-side NumPy arrays)."""
  index: np.ndarray  # int32 [R, n_max]: index[r, :size[r]]; padding is -1
  size: np.ndarray   # int32 [R]: number of samples of each worker


def _numpy_rng(key) -> np.random.Generator:
  """A NumPy generator seeded deterministically from a JAX PRNG key."""
  try:
    data = np.asarray(jax.random.key_data(key))
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"key must be a JAX PRNG key (jax.random.key(...)), got {key!r}.") from e
  return np.random.default_rng(data.astype(np.uint32).ravel().tolist())


def _labels(labels, name: str = "labels") -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(
        f"{name} must be a non-empty 1-D array of class labels, got shape "
        f"{labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"{name} must hold integer class labels, got dtype {labels.dtype}.")
  if labels.min() < 0:
    raise ValueError(f"{name} must be non-negative, got {labels.min()}.")
  return labels


def _from_owner(samples: np.ndarray, owner: np.ndarray,
                num_workers: int) -> Partition:
  """Builds a Partition from sample ids and the worker that owns each one.

  The order of the samples of one worker follows their order in ``samples``.
  """
  order = np.argsort(owner, kind="stable")
  samples, owner = samples[order], owner[order]
  size = np.bincount(owner, minlength=num_workers).astype(np.int32)
  start = np.cumsum(size) - size
  column = np.arange(len(samples)) - start[owner]
  index = np.full((num_workers, max(int(size.max()), 1)), -1, np.int32)
  index[owner, column] = samples
  return Partition(index=index, size=size)


def _split_owner(sizes: np.ndarray) -> np.ndarray:
  """Owner of each position when consecutive pieces have the given sizes."""
  return np.repeat(np.arange(len(sizes)), sizes)


def _largest_remainder(total: int, proportions: np.ndarray) -> np.ndarray:
  """Non-negative ints proportional to ``proportions`` that sum to ``total``."""
  quota = total * proportions / proportions.sum()
  counts = np.floor(quota).astype(np.int64)
  remainder = total - counts.sum()
  counts[np.argsort(-(quota - counts), kind="stable")[:remainder]] += 1
  return counts


def iid_indices(key, num_samples: int, num_workers: int) -> Partition:
  """Equal i.i.d. shards: a random permutation cut into ``num_workers`` pieces.

  The piece sizes differ by at most one (the first ``N mod R`` workers get
  one more sample); every sample is used exactly once.

  Args:
    key: a JAX PRNG key.
    num_samples: number of samples :math:`N` in the dataset.
    num_workers: number of workers :math:`R`, at most :math:`N`.

  Returns:
    A :class:`Partition`.

  Examples:
    >>> import jax
    >>> part = iid_indices(jax.random.key(0), 10, 3)
    >>> part.size.tolist()
    [4, 3, 3]
  """
  num_samples = _checks.check_int("num_samples", num_samples, low=1)
  num_workers = _checks.check_int("num_workers", num_workers, low=1,
                                  high=num_samples)
  perm = _numpy_rng(key).permutation(num_samples)
  sizes = np.array([len(p) for p in np.array_split(perm, num_workers)])
  return _from_owner(perm, _split_owner(sizes), num_workers)


def _pure_shard_counts(class_counts: np.ndarray, num_shards: int) -> np.ndarray:
  """Shards per class, summing to ``num_shards``, sizes as equal as possible.

  Every present class gets at least one shard; shards are added to the class
  whose shards are largest and removed from the one whose shards are smallest.
  """
  present = class_counts > 0
  k = np.where(present, np.maximum(
      1, np.floor(num_shards * class_counts / class_counts.sum())), 0)
  k = np.minimum(k, class_counts).astype(np.int64)
  while k.sum() < num_shards:
    shard_size = np.where(k < class_counts, class_counts / np.maximum(k, 1), -1)
    k[np.argmax(shard_size)] += 1
  while k.sum() > num_shards:
    shard_size = np.where(k > 1, class_counts / np.maximum(k, 1), np.inf)
    k[np.argmin(shard_size)] -= 1
  return k


def class_sharded_indices(key, labels: ArrayLike, num_workers: int, *,
                          shards_per_worker: int = 4,
                          class_pure: bool = False) -> Partition:
  """Class-sharded heterogeneous split (Acharya et al., BGMD, §6).

  The samples are sorted by label (in random order within a class), cut into
  :math:`S = sR` contiguous shards of (almost) equal size, and each worker
  receives :math:`s` shards drawn uniformly without replacement. Every sample
  is used exactly once.

  With the paper's default cutting (``class_pure=False``) a shard can straddle
  a class boundary, unless each class is a whole number of shards (e.g.
  Fashion-MNIST, 6000 samples per class, with :math:`S` a divisor of 60000
  that is a multiple of 10); then every worker sees between 1 and :math:`s`
  classes. ``class_pure=True`` instead cuts every class separately into a
  whole number of shards (at least one per class, shard sizes as equal as
  possible), which guarantees at most :math:`s` classes per worker for any
  :math:`R`, at the price of slightly unequal shard sizes.

  Args:
    key: a JAX PRNG key.
    labels: ``[N]`` non-negative integer class labels.
    num_workers: number of workers :math:`R`.
    shards_per_worker: shards :math:`s` per worker (4 in BGMD);
      :math:`sR \\le N`.
    class_pure: cut shards within classes (see above); needs :math:`sR` at
      least the number of classes present.

  Returns:
    A :class:`Partition`.

  Raises:
    ValueError: on bad labels or hyperparameters (the message names them).

  Examples:
    >>> import jax, numpy as np
    >>> labels = np.repeat(np.arange(10), 40)        # 10 classes x 40
    >>> part = class_sharded_indices(jax.random.key(0), labels, 10)
    >>> part.size.tolist() == [40] * 10              # 4 shards of 10 each
    True
  """
  labels = _labels(labels)
  num_samples = labels.shape[0]
  num_workers = _checks.check_int("num_workers", num_workers, low=1)
  shards_per_worker = _checks.check_int("shards_per_worker", shards_per_worker,
                                        low=1)
  num_shards = num_workers * shards_per_worker
  if num_shards > num_samples:
    raise ValueError(
        f"num_workers * shards_per_worker = {num_shards} shards exceed the "
        f"{num_samples} samples; lower num_workers or shards_per_worker.")
  rng = _numpy_rng(key)
  perm = rng.permutation(num_samples)
  order = perm[np.argsort(labels[perm], kind="stable")]
  if class_pure:
    class_counts = np.bincount(labels)
    present = int((class_counts > 0).sum())
    if num_shards < present:
      raise ValueError(
          f"class_pure=True needs num_workers * shards_per_worker = "
          f"{num_shards} >= the {present} classes present.")
    shards_per_class = _pure_shard_counts(class_counts, num_shards)
    shard_sizes = np.concatenate([
        [len(p) for p in np.array_split(np.arange(n), k)]
        for n, k in zip(class_counts, shards_per_class) if k > 0
    ]).astype(np.int64)
  else:
    shard_sizes = np.array(
        [len(p) for p in np.array_split(order, num_shards)], np.int64)
  # Shard j goes to worker owner_of_shard[j]: a random assignment of exactly
  # shards_per_worker shards to each worker.
  owner_of_shard = np.empty(num_shards, np.int64)
  owner_of_shard[rng.permutation(num_shards)] = np.repeat(
      np.arange(num_workers), shards_per_worker)
  owner = owner_of_shard[_split_owner(shard_sizes)]
  return _from_owner(order, owner, num_workers)


def gamma_similarity_indices(key, labels: ArrayLike, num_workers: int, *,
                             gamma: float) -> Partition:
  """The gamma-similarity split: a fraction gamma i.i.d., the rest sorted.

  A random fraction :math:`\\gamma` of the samples is dealt out i.i.d. (a
  random permutation cut into :math:`R` near-equal pieces); the remaining
  :math:`1 - \\gamma` are sorted by label and cut into :math:`R` contiguous
  pieces, worker :math:`r` taking the :math:`r`-th piece of each part.
  :math:`\\gamma = 1` is the i.i.d. split and :math:`\\gamma = 0` the
  extreme (label-sorted) split in which each worker sees about
  :math:`C / R` classes. This is the heterogeneity model of the robust
  federated-learning benchmarks of Allouah et al. (the "gamma similarity"
  of ByzFL).

  Args:
    key: a JAX PRNG key.
    labels: ``[N]`` non-negative integer class labels.
    num_workers: number of workers :math:`R \\le N`.
    gamma: the i.i.d. fraction, in ``[0, 1]``.

  Returns:
    A :class:`Partition` in which every sample is used exactly once.

  References:
    Allouah et al., `Fixing by Mixing: A Recipe for Optimal Byzantine ML
    under Heterogeneity <https://arxiv.org/abs/2302.01772>`_, AISTATS 2023
  """
  labels = _labels(labels)
  num_samples = labels.shape[0]
  num_workers = _checks.check_int("num_workers", num_workers, low=1,
                                  high=num_samples)
  gamma = _checks.check_fraction("gamma", gamma, low=0.0, high=1.0,
                                 high_inclusive=True)
  rng = _numpy_rng(key)
  perm = rng.permutation(num_samples)
  num_iid = int(round(gamma * num_samples))
  iid, rest = perm[:num_iid], perm[num_iid:]
  rest = rest[np.argsort(labels[rest], kind="stable")]
  pieces = [np.array_split(iid, num_workers), np.array_split(rest, num_workers)]
  samples = np.concatenate([np.concatenate(p) for p in pieces])
  owner = np.concatenate([
      _split_owner(np.array([len(x) for x in p])) for p in pieces])
  return _from_owner(samples.astype(np.int64), owner, num_workers)


def dirichlet_indices(key, labels: ArrayLike, num_workers: int, *,
                      alpha: float, min_size: int = 1) -> Partition:
  """Dirichlet label skew (Hsu et al., 2019).

  For every class :math:`c` with :math:`n_c` samples (in random order),
  proportions :math:`p_c \\sim \\mathrm{Dir}(\\alpha \\mathbf{1}_R)` are drawn
  and worker :math:`r` receives the samples between positions
  :math:`\\lfloor n_c \\sum_{j<r} p_{c,j} \\rfloor` and
  :math:`\\lfloor n_c \\sum_{j \\le r} p_{c,j} \\rfloor`. Every sample is used
  exactly once. Draws are repeated until every worker holds at least
  ``min_size`` samples.

  Args:
    key: a JAX PRNG key.
    labels: ``[N]`` non-negative integer class labels.
    num_workers: number of workers :math:`R`.
    alpha: concentration :math:`\\alpha > 0`; smaller is more skewed.
    min_size: the least number of samples per worker (at least the batch
      size you will sample); at most :math:`N / R`.

  Returns:
    A :class:`Partition`.

  Raises:
    ValueError: on bad hyperparameters, or if no draw out of 1000 gives every
      worker ``min_size`` samples (the message names ``min_size`` and
      ``alpha``).

  Examples:
    >>> import jax, numpy as np
    >>> labels = np.repeat(np.arange(10), 100)
    >>> part = dirichlet_indices(jax.random.key(0), labels, 5, alpha=0.5)
    >>> int(part.size.sum())
    1000
  """
  labels = _labels(labels)
  num_samples = labels.shape[0]
  num_workers = _checks.check_int("num_workers", num_workers, low=1,
                                  high=num_samples)
  alpha = _checks.check_positive("alpha", alpha)
  min_size = _checks.check_int("min_size", min_size, low=0,
                               high=num_samples // num_workers)
  rng = _numpy_rng(key)
  classes = np.unique(labels)
  members = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
  samples = np.concatenate(members)
  for _ in range(_DIRICHLET_MAX_TRIES):
    owner = []
    for m in members:
      p = rng.dirichlet(np.full(num_workers, alpha))
      cuts = np.floor(len(m) * np.cumsum(p)).astype(np.int64)
      cuts[-1] = len(m)  # guard against round-off in the cumulative sum
      owner.append(_split_owner(np.diff(cuts, prepend=0)))
    owner = np.concatenate(owner)
    if np.bincount(owner, minlength=num_workers).min() >= min_size:
      return _from_owner(samples, owner, num_workers)
  raise ValueError(
      f"dirichlet_indices: no Dirichlet(alpha={alpha}) draw out of "
      f"{_DIRICHLET_MAX_TRIES} gave every one of the {num_workers} workers "
      f"min_size={min_size} samples; lower min_size or raise alpha.")


def unequal_indices(key, num_samples: int, num_workers: int, *,
                    sizes: Sequence[int] | None = None, sigma: float = 1.0,
                    min_size: int = 1) -> Partition:
  """I.i.d. samples in shards of unequal size.

  With ``sizes`` given, worker :math:`r` receives ``sizes[r]`` samples of a
  random permutation (samples beyond ``sum(sizes)`` are left unused).
  Otherwise shard proportions :math:`q_r = e^{\\sigma z_r}`,
  :math:`z_r \\sim N(0, 1)` are drawn, and the sizes are ``min_size`` plus a
  largest-remainder rounding of :math:`(N - R \\cdot \\text{min\\_size})
  q_r / \\sum_j q_j`, so that they sum to :math:`N`.

  Args:
    key: a JAX PRNG key.
    num_samples: number of samples :math:`N`.
    num_workers: number of workers :math:`R`.
    sizes: optional ``R`` positive ints with ``sum(sizes) <= N``.
    sigma: log-normal spread of the drawn sizes (ignored with ``sizes``);
      ``0`` gives (almost) equal sizes.
    min_size: the least drawn size (ignored with ``sizes``).

  Returns:
    A :class:`Partition`.

  Examples:
    >>> import jax
    >>> part = unequal_indices(jax.random.key(0), 100, 3, sizes=[50, 30, 20])
    >>> part.size.tolist()
    [50, 30, 20]
  """
  num_samples = _checks.check_int("num_samples", num_samples, low=1)
  num_workers = _checks.check_int("num_workers", num_workers, low=1,
                                  high=num_samples)
  rng = _numpy_rng(key)
  if sizes is not None:
    sizes_arr = np.asarray(sizes)
    if (sizes_arr.shape != (num_workers,)
        or not np.issubdtype(sizes_arr.dtype, np.integer)):
      raise ValueError(
          f"sizes must be {num_workers} ints (one per worker), got {sizes!r}.")
    if sizes_arr.min() < 1 or sizes_arr.sum() > num_samples:
      raise ValueError(
          f"sizes must be positive and sum to at most num_samples="
          f"{num_samples}, got {sizes!r}.")
    sizes_arr = sizes_arr.astype(np.int64)
  else:
    sigma = _checks.check_positive("sigma", sigma, allow_zero=True)
    min_size = _checks.check_int("min_size", min_size, low=0,
                                 high=num_samples // num_workers)
    proportions = np.exp(sigma * rng.standard_normal(num_workers))
    sizes_arr = min_size + _largest_remainder(
        num_samples - num_workers * min_size, proportions)
  perm = rng.permutation(num_samples)[:int(sizes_arr.sum())]
  return _from_owner(perm, _split_owner(sizes_arr), num_workers)


def shard(dataset: Dataset, partition: Partition, *,
          n_max: int | None = None) -> WorkerData:
  """Gathers each worker's rows into a padded :class:`WorkerData`.

  Args:
    dataset: the :class:`Dataset` the partition indexes.
    partition: a :class:`Partition` of it.
    n_max: pad every worker to this length (default: the largest shard), e.g.
      to give partitions drawn from different keys the same shapes so that
      they can be stacked for a sweep.

  Returns:
    A :class:`WorkerData` of JAX arrays; ``x[r, i] = dataset.x[index[r, i]]``
    for ``i < size[r]`` and zeros after.

  Raises:
    ValueError: if ``n_max`` is smaller than the largest shard, or the
      partition indexes outside the dataset.
  """
  x, y = np.asarray(dataset.x), np.asarray(dataset.y)
  if x.shape[0] != y.shape[0]:
    raise ValueError(
        f"dataset: x has {x.shape[0]} rows but y has {y.shape[0]}.")
  index = np.asarray(partition.index)
  size = np.asarray(partition.size, np.int32)
  if index.size and index.max() >= x.shape[0]:
    raise ValueError(
        f"partition indexes sample {index.max()} of a dataset of "
        f"{x.shape[0]} samples.")
  largest = max(int(size.max()), 1)
  if n_max is None:
    n_max = largest
  n_max = _checks.check_int("n_max", n_max, low=largest)
  pad = n_max - index.shape[1]
  if pad > 0:
    index = np.pad(index, ((0, 0), (0, pad)), constant_values=-1)
  index = index[:, :n_max]
  real = np.arange(n_max)[None, :] < size[:, None]  # [R, n_max]
  safe = np.where(real, index, 0)

  def gather(a):
    rows = a[safe]
    return jnp.asarray(np.where(real.reshape(real.shape + (1,) * (a.ndim - 1)),
                                rows, np.zeros((), a.dtype)))

  return WorkerData(x=gather(x), y=gather(y), size=jnp.asarray(size))


def iid_partition(key, dataset: Dataset, num_workers: int, *,
                  n_max: int | None = None) -> WorkerData:
  """:func:`iid_indices` followed by :func:`shard`."""
  part = iid_indices(key, int(np.shape(dataset.x)[0]), num_workers)
  return shard(dataset, part, n_max=n_max)


def class_sharded_partition(key, dataset: Dataset, num_workers: int, *,
                            shards_per_worker: int = 4,
                            class_pure: bool = False,
                            n_max: int | None = None) -> WorkerData:
  """:func:`class_sharded_indices` on ``dataset.y``, then :func:`shard`."""
  part = class_sharded_indices(key, dataset.y, num_workers,
                               shards_per_worker=shards_per_worker,
                               class_pure=class_pure)
  return shard(dataset, part, n_max=n_max)


def dirichlet_partition(key, dataset: Dataset, num_workers: int, *,
                        alpha: float, min_size: int = 1,
                        n_max: int | None = None) -> WorkerData:
  """:func:`dirichlet_indices` on ``dataset.y``, then :func:`shard`."""
  part = dirichlet_indices(key, dataset.y, num_workers, alpha=alpha,
                           min_size=min_size)
  return shard(dataset, part, n_max=n_max)


def gamma_similarity_partition(key, dataset: Dataset, num_workers: int, *,
                               gamma: float,
                               n_max: int | None = None) -> WorkerData:
  """:func:`gamma_similarity_indices` on ``dataset.y``, then :func:`shard`."""
  part = gamma_similarity_indices(key, dataset.y, num_workers, gamma=gamma)
  return shard(dataset, part, n_max=n_max)


def unequal_partition(key, dataset: Dataset, num_workers: int, *,
                      sizes: Sequence[int] | None = None, sigma: float = 1.0,
                      min_size: int = 1,
                      n_max: int | None = None) -> WorkerData:
  """:func:`unequal_indices` followed by :func:`shard`."""
  part = unequal_indices(key, int(np.shape(dataset.x)[0]), num_workers,
                         sizes=sizes, sigma=sigma, min_size=min_size)
  return shard(dataset, part, n_max=n_max)
