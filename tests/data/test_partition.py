"""Tests for the partition schemes and the padded WorkerData they produce."""

import jax
import numpy as np
import pytest

from byzjax.data import partition as P

KEY = jax.random.key(0)


def _workers(part):
  """Python list of each worker's sample indices (the padding dropped)."""
  return [part.index[r, :part.size[r]] for r in range(len(part.size))]


def _assert_valid(part, num_samples, *, exhaustive=True):
  """Indices in range, disjoint across workers, -1 padding, [R] sizes."""
  index, size = part.index, part.size
  assert index.dtype == np.int32 and size.dtype == np.int32
  assert index.shape == (len(size), max(size.max(), 1))
  for r, s in enumerate(size):
    assert np.all(index[r, s:] == -1)
  used = np.concatenate(_workers(part))
  assert used.min() >= 0 and used.max() < num_samples
  assert len(np.unique(used)) == len(used), "a sample is used twice"
  if exhaustive:
    np.testing.assert_array_equal(np.sort(used), np.arange(num_samples))


def _label_skew(part, labels, num_classes):
  """Size-weighted mean total-variation distance to the global label mix."""
  glob = np.bincount(labels, minlength=num_classes) / len(labels)
  tv = [0.5 * np.abs(np.bincount(labels[w], minlength=num_classes) / len(w)
                     - glob).sum() * len(w) for w in _workers(part)]
  return sum(tv) / part.size.sum()


# -- i.i.d. -----------------------------------------------------------------


def test_iid_equal_disjoint_and_complete():
  part = P.iid_indices(KEY, 60, 6)
  _assert_valid(part, 60)
  np.testing.assert_array_equal(part.size, [10] * 6)
  # A random permutation, not the identity cut into blocks.
  assert not np.array_equal(part.index.ravel(), np.arange(60))


def test_iid_remainder_sizes_differ_by_at_most_one():
  part = P.iid_indices(KEY, 23, 5)
  _assert_valid(part, 23)
  np.testing.assert_array_equal(part.size, [5, 5, 5, 4, 4])
  assert part.index.shape == (5, 5)


# -- class-sharded -------------------------------------------------------------


def test_class_sharded_aligned_shards_bgmd():
  """10 classes x 40 samples, R = 10, 4 shards of 10 samples per worker."""
  labels = np.repeat(np.arange(10), 40)
  part = P.class_sharded_indices(KEY, labels, 10)
  _assert_valid(part, 400)
  np.testing.assert_array_equal(part.size, [40] * 10)
  seen = []
  for w in _workers(part):
    counts = np.bincount(labels[w], minlength=10)
    # Every shard is 10 samples of one class, and the worker holds 4 shards.
    assert np.all(counts % 10 == 0) and counts.sum() // 10 == 4
    seen.append(np.count_nonzero(counts))
  assert all(1 <= s <= 4 for s in seen)
  assert len(set(seen)) > 1  # workers differ in how many classes they see


@pytest.mark.parametrize("shards_per_worker", [1, 2, 3])
def test_class_sharded_generalised_shard_count(shards_per_worker):
  labels = np.repeat(np.arange(6), 30)  # 180 samples
  num_workers = 6
  part = P.class_sharded_indices(KEY, labels, num_workers,
                                 shards_per_worker=shards_per_worker)
  _assert_valid(part, 180)
  shard = 180 // (num_workers * shards_per_worker)
  for w in _workers(part):
    assert len(w) == shards_per_worker * shard
    assert 1 <= len(np.unique(labels[w])) <= shards_per_worker


def test_class_sharded_unaligned_matches_paper_cut():
  """7 workers x 4 shards over 400 sorted samples: shards of 14 or 15."""
  labels = np.repeat(np.arange(10), 40)
  rng = np.random.default_rng(0)
  labels = labels[rng.permutation(400)]  # dataset order must not matter
  part = P.class_sharded_indices(KEY, labels, 7)
  _assert_valid(part, 400)
  assert np.all((part.size >= 4 * 14) & (part.size <= 4 * 15))
  for w in _workers(part):
    # A shard of 14-15 samples of sorted labels (40 per class) spans at most
    # two adjacent classes, so 4 shards give at most 4 runs of consecutive
    # classes and at most 8 classes.
    classes = np.unique(labels[w])
    runs = 1 + np.count_nonzero(np.diff(classes) > 1)
    assert runs <= 4 and len(classes) <= 8


def test_class_pure_at_most_s_classes_for_any_r():
  labels = np.repeat(np.arange(10), 40)
  part = P.class_sharded_indices(KEY, labels, 7, class_pure=True)
  _assert_valid(part, 400)
  for w in _workers(part):
    assert 1 <= len(np.unique(labels[w])) <= 4
  # 28 shards over 10 classes: shards hold 13 or 14 (or 20) samples.
  assert part.size.min() >= 4 * 13 and part.size.max() <= 4 * 20


def test_class_sharded_errors():
  labels = np.repeat(np.arange(3), 4)
  with pytest.raises(ValueError, match="shards_per_worker"):
    P.class_sharded_indices(KEY, labels, 4)  # 16 shards > 12 samples
  with pytest.raises(ValueError, match="shards_per_worker"):
    P.class_sharded_indices(KEY, labels, 2, shards_per_worker=0)
  with pytest.raises(ValueError, match="labels"):
    P.class_sharded_indices(KEY, labels.astype(np.float32), 2)
  with pytest.raises(ValueError, match="labels"):
    P.class_sharded_indices(KEY, labels.reshape(3, 4), 2)
  with pytest.raises(ValueError, match="class_pure"):
    P.class_sharded_indices(KEY, labels, 1, shards_per_worker=2,
                            class_pure=True)


# -- Dirichlet -----------------------------------------------------------------


def test_dirichlet_covers_every_sample_once():
  labels = np.repeat(np.arange(5), 60)
  part = P.dirichlet_indices(KEY, labels, 6, alpha=0.5, min_size=5)
  _assert_valid(part, 300)
  assert part.size.min() >= 5


def test_dirichlet_skew_grows_as_alpha_shrinks():
  labels = np.repeat(np.arange(10), 200)
  skew = {}
  for alpha in (0.05, 1.0, 100.0):
    skew[alpha] = np.mean([
        _label_skew(P.dirichlet_indices(jax.random.key(k), labels, 10,
                                        alpha=alpha), labels, 10)
        for k in range(3)])
  # Measured: about 0.71, 0.35 and 0.04.
  assert skew[0.05] > 0.55 > skew[1.0] > 0.2 > 0.08 > skew[100.0]


def test_dirichlet_errors():
  labels = np.repeat(np.arange(10), 20)
  with pytest.raises(ValueError, match="alpha"):
    P.dirichlet_indices(KEY, labels, 4, alpha=0.0)
  with pytest.raises(ValueError, match="min_size"):
    P.dirichlet_indices(KEY, labels, 4, alpha=1.0, min_size=51)
  with pytest.raises(ValueError, match="min_size"):  # no draw can satisfy it
    P.dirichlet_indices(KEY, labels, 20, alpha=0.001, min_size=10)


# -- unequal sizes -------------------------------------------------------------


def test_unequal_given_sizes():
  part = P.unequal_indices(KEY, 120, 3, sizes=[50, 30, 20])
  _assert_valid(part, 120, exhaustive=False)
  np.testing.assert_array_equal(part.size, [50, 30, 20])
  assert part.index.shape == (3, 50)


def test_unequal_drawn_sizes_sum_and_spread():
  spread = {}
  for sigma in (0.0, 0.5, 2.0):
    part = P.unequal_indices(KEY, 1000, 10, sigma=sigma, min_size=3)
    _assert_valid(part, 1000)
    assert part.size.min() >= 3
    spread[sigma] = part.size.std() / part.size.mean()
  assert spread[0.0] == 0.0 < spread[0.5] < spread[2.0]


@pytest.mark.parametrize("sizes", [[50, 30], [50, 30, 0], [100, 30, 20],
                                   [50.0, 30.0, 20.0]])
def test_unequal_bad_sizes(sizes):
  with pytest.raises(ValueError, match="sizes"):
    P.unequal_indices(KEY, 120, 3, sizes=sizes)


def test_unequal_bad_sigma():
  with pytest.raises(ValueError, match="sigma"):
    P.unequal_indices(KEY, 120, 3, sigma=-1.0)


# -- determinism ---------------------------------------------------------------

_LABELS = np.repeat(np.arange(4), 25)
SCHEMES = {
    "iid": lambda k: P.iid_indices(k, 100, 4),
    "class_sharded": lambda k: P.class_sharded_indices(k, _LABELS, 4),
    "class_pure": lambda k: P.class_sharded_indices(k, _LABELS, 3,
                                                    class_pure=True),
    "dirichlet": lambda k: P.dirichlet_indices(k, _LABELS, 4, alpha=1.0),
    "unequal": lambda k: P.unequal_indices(k, 100, 4),
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_deterministic_from_key(scheme):
  fn = SCHEMES[scheme]
  a, b = fn(jax.random.key(3)), fn(jax.random.key(3))
  np.testing.assert_array_equal(a.index, b.index)
  c = fn(jax.random.key(4))
  assert c.index.shape != a.index.shape or not np.array_equal(a.index, c.index)
  # Legacy uint32 keys work too.
  d = fn(jax.random.PRNGKey(3))
  assert d.index.shape == a.index.shape


def test_bad_key():
  with pytest.raises(ValueError, match="key"):
    P.iid_indices(0, 10, 2)


def test_num_workers_validated():
  with pytest.raises(ValueError, match="num_workers"):
    P.iid_indices(KEY, 10, 11)
  with pytest.raises(ValueError, match="num_workers"):
    P.iid_indices(KEY, 10, 0)


# -- shard / WorkerData --------------------------------------------------------


def _toy_dataset(n=30, classes=3):
  x = (np.arange(n * 2 * 2, dtype=np.float32).reshape(n, 2, 2) + 1.0)
  y = (np.arange(n) % classes).astype(np.int32)
  return P.Dataset(x, y)


def test_shard_gathers_rows_and_zero_pads():
  data = _toy_dataset()
  part = P.unequal_indices(KEY, 30, 3, sizes=[12, 5, 9])
  wd = P.shard(data, part)
  assert wd.x.shape == (3, 12, 2, 2) and wd.y.shape == (3, 12)
  assert wd.x.dtype == np.float32 and wd.y.dtype == np.int32
  np.testing.assert_array_equal(wd.size, [12, 5, 9])
  x, y = np.asarray(wd.x), np.asarray(wd.y)
  for r, s in enumerate(part.size):
    np.testing.assert_array_equal(x[r, :s], data.x[part.index[r, :s]])
    np.testing.assert_array_equal(y[r, :s], data.y[part.index[r, :s]])
    assert np.all(x[r, s:] == 0) and np.all(y[r, s:] == 0)


def test_shard_pads_to_requested_length():
  data = _toy_dataset()
  wd = P.shard(data, P.iid_indices(KEY, 30, 3), n_max=16)
  assert wd.x.shape == (3, 16, 2, 2)
  assert np.all(np.asarray(wd.x)[:, 10:] == 0)
  with pytest.raises(ValueError, match="n_max"):
    P.shard(data, P.iid_indices(KEY, 30, 3), n_max=9)


def test_shard_regression_targets():
  x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
  y = x.sum(axis=1)
  wd = P.iid_partition(KEY, P.Dataset(x, y), 4)
  np.testing.assert_allclose(np.asarray(wd.x).sum(-1), np.asarray(wd.y),
                             rtol=1e-6)


@pytest.mark.parametrize("name", ["iid", "class_sharded", "dirichlet",
                                  "unequal"])
def test_partition_wrappers_match_indices(name):
  data = _toy_dataset(40, 4)
  fns = {
      "iid": (P.iid_partition, P.iid_indices, {}, False),
      "class_sharded": (P.class_sharded_partition, P.class_sharded_indices,
                        {"shards_per_worker": 2}, True),
      "dirichlet": (P.dirichlet_partition, P.dirichlet_indices,
                    {"alpha": 1.0}, True),
      "unequal": (P.unequal_partition, P.unequal_indices, {"sigma": 1.0},
                  False),
  }
  wrapper, indices, kw, by_label = fns[name]
  wd = wrapper(KEY, data, 4, **kw)
  part = indices(KEY, data.y if by_label else 40, 4, **kw)
  np.testing.assert_array_equal(wd.size, part.size)
  for r, s in enumerate(part.size):
    np.testing.assert_array_equal(np.asarray(wd.x)[r, :s],
                                  data.x[part.index[r, :s]])


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_gamma_similarity_uses_every_sample_once(gamma):
  labels = np.repeat(np.arange(10), 37)
  part = P.gamma_similarity_indices(jax.random.key(3), labels, 7,
                                            gamma=gamma)
  used = np.concatenate([part.index[r, :part.size[r]] for r in range(7)])
  np.testing.assert_array_equal(np.sort(used), np.arange(labels.size))
  assert part.size.max() - part.size.min() <= 2


def test_gamma_similarity_interpolates_between_sorted_and_iid():
  labels = np.repeat(np.arange(10), 100)
  def classes(gamma):
    part = P.gamma_similarity_indices(jax.random.key(0), labels, 5,
                                              gamma=gamma)
    return [len(set(labels[part.index[r, :part.size[r]]])) for r in range(5)]
  # gamma = 0: the label-sorted split, 2 classes per worker (10 / 5).
  assert classes(0.0) == [2] * 5
  # gamma = 1: i.i.d., every worker sees every class.
  assert classes(1.0) == [10] * 5
  # In between, the i.i.d. part adds every class.
  assert min(classes(0.5)) == 10


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan")])
def test_gamma_similarity_rejects_a_bad_gamma(gamma):
  with pytest.raises(ValueError, match="gamma"):
    P.gamma_similarity_indices(jax.random.key(0), np.arange(10) % 2,
                                       2, gamma=gamma)
