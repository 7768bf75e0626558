"""The learning task of a study: data, model, loss and evaluation metric.

Built once per study from :class:`~byzjax.study.config.TaskConfig`; the worker
partitions are built once per (heterogeneity, R) and shared by every cell and
seed that uses them (seeds change the model's initialisation, the batches
and the Byzantine set, not the split), which is what lets the runs of a cell
share their data under ``vmap``.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from byzjax import models
from byzjax.data import fashion_mnist
from byzjax.data import partition
from byzjax.data import synthetic
from byzjax.study import registry
from byzjax.study.config import TaskConfig

PyTree = Any

# Conv models take images; the synthetic datasets are flat vectors.
_IMAGE_MODELS = ("lenet", "resnet")


@dataclasses.dataclass
class Task:
  """A resolved task: everything a cell needs besides its own settings."""
  dataset: str                    # the dataset actually used
  train: partition.Dataset        # NumPy arrays
  fns: models.ModelFns
  params: PyTree                  # initial parameters (seed 0); see init_params
  eval_fn: Callable[[PyTree], dict]
  metric: str                     # "accuracy" or "error"
  higher_is_better: bool
  num_classes: int
  note: str = ""                  # e.g. which dataset replaced a missing one
  _partitions: dict = dataclasses.field(default_factory=dict)
  _shards: dict = dataclasses.field(default_factory=dict)  # the last one

  def indices(self, heterogeneity: str, num_workers: int,
              data_seed: int, min_size: int = 1) -> partition.Partition:
    """Which samples each worker holds under one setting (cached).

    Dirichlet draws are repeated until every worker holds ``min_size``
    samples (the batch size), as :func:`byzjax.data.dirichlet_indices` does.
    """
    cache_key = (heterogeneity, num_workers, data_seed, min_size)
    if cache_key not in self._partitions:
      kind, value = registry.parse_heterogeneity(heterogeneity, ValueError)
      key = jax.random.fold_in(jax.random.key(data_seed), 1)
      n = int(np.shape(self.train.x)[0])
      if kind == "iid":
        part = partition.iid_indices(key, n, num_workers)
      elif kind == "dirichlet":
        part = partition.dirichlet_indices(key, self.train.y, num_workers,
                                           alpha=value, min_size=min_size)
      elif kind == "shards":
        part = partition.class_sharded_indices(
            key, self.train.y, num_workers, shards_per_worker=int(value))
      else:
        part = partition.gamma_similarity_indices(key, self.train.y,
                                                  num_workers, gamma=value)
      self._partitions[cache_key] = part
    return self._partitions[cache_key]

  def partition(self, heterogeneity: str, num_workers: int, data_seed: int,
                *, pad_like: tuple[str, ...] = (),
                min_size: int = 1) -> partition.WorkerData:
    """The worker data for one setting.

    Padded to the longest shard over the settings ``pad_like`` (the study's
    heterogeneity settings), so that every setting has the same shapes and
    compiles to the same program: the persistent compilation cache then
    serves all settings from one compilation.
    """
    def part(h):
      return self.indices(h, num_workers, data_seed, min_size)
    n_max = max(int(np.max(part(h).size))
                for h in (heterogeneity,) + tuple(pad_like))
    sizes = part(heterogeneity).size
    if int(np.min(sizes)) < min_size:
      raise ValueError(
          f"heterogeneity {heterogeneity!r} with R = {num_workers} gives a "
          f"worker {int(np.min(sizes))} samples, fewer than the batch size "
          f"{min_size}; lower batch_size or raise train_samples.")
    cache_key = (heterogeneity, num_workers, data_seed, min_size, n_max)
    if cache_key not in self._shards:
      # One device copy per setting, shared by all the cells that use it.
      self._shards.clear()
      self._shards[cache_key] = partition.shard(
          self.train, part(heterogeneity), n_max=n_max)
    return self._shards[cache_key]


def _subsample(dataset, n, seed):
  if n is None or n >= np.shape(dataset.x)[0]:
    return dataset
  idx = np.random.default_rng(seed).permutation(np.shape(dataset.x)[0])[:n]
  return partition.Dataset(np.asarray(dataset.x)[idx],
                           np.asarray(dataset.y)[idx])


def _load(cfg: TaskConfig, dataset: str, key):
  """``(train, test, w_star)`` of NumPy arrays for one dataset name."""
  n_train = cfg.train_samples
  if dataset == "fashion_mnist":
    path = cfg.path or fashion_mnist.DEFAULT_PATH
    train = fashion_mnist.load_fashion_mnist(path, split="train")
    test = fashion_mnist.load_fashion_mnist(path, split="test")
    return _subsample(train, n_train, 0), _subsample(test, cfg.test_samples,
                                                     1), None
  if dataset == "synthetic_classification":
    n_train = n_train or 10_000
    data = synthetic.gaussian_mixture(key, n_train + cfg.test_samples,
                                      cfg.num_features, cfg.num_classes)
    x, y = np.asarray(data.x), np.asarray(data.y)
    return (partition.Dataset(x[:n_train], y[:n_train]),
            partition.Dataset(x[n_train:], y[n_train:]), None)
  n_train = n_train or 4000
  data, w_star = synthetic.linear_regression(key, n_train, cfg.num_features,
                                             noise_std=cfg.noise_std)
  return (partition.Dataset(np.asarray(data.x), np.asarray(data.y)), None,
          w_star)


def build_task(cfg: TaskConfig, *, data_seed: int = 0, log=print) -> Task:
  """Loads the data (or the fallback), builds the model and its metric."""
  key = jax.random.key(data_seed)
  dataset, note = cfg.dataset, ""
  try:
    train, test, w_star = _load(cfg, dataset, key)
  except FileNotFoundError as e:
    if cfg.fallback is None:
      raise
    note = (f"{cfg.dataset} is not installed ({e}); using the fallback "
            f"dataset {cfg.fallback!r} instead.")
    log(f"[byzjax] {note}")
    dataset = cfg.fallback
    train, test, w_star = _load(cfg, dataset, key)
  regression = registry.DATASETS[dataset].regression
  if cfg.model in _IMAGE_MODELS and np.ndim(train.x) != 4:
    raise ValueError(
        f"model {cfg.model!r} needs images; dataset {dataset!r} has flat "
        "feature vectors. Use model = \"mlp\" or \"linear\".")
  num_classes = 1 if regression else int(np.max(train.y)) + 1
  module = registry.build_model(cfg.model, dict(cfg.model_args),
                                1 if regression else num_classes)
  if regression:
    module = models.Linear(1, use_bias=False)
    fns = models.make_regressor(module)
  else:
    fns = models.make_classifier(module)
  params = fns.init(jax.random.key(0), jnp.asarray(train.x[:1]))

  if regression:
    w_star = jnp.asarray(w_star)

    def eval_fn(p):
      w = p["Dense_0"]["kernel"][:, 0]
      return {"error": jnp.linalg.norm(w - w_star)}
    metric, higher = "error", False
  else:
    test_x, test_y = jnp.asarray(test.x), jnp.asarray(test.y)

    def eval_fn(p):
      return {"accuracy": fns.accuracy(p, (test_x, test_y))}
    metric, higher = "accuracy", True
  return Task(dataset=dataset, train=train, fns=fns, params=params,
              eval_fn=eval_fn, metric=metric, higher_is_better=higher,
              num_classes=max(num_classes, 2), note=note)


def init_params(task: Task, key: jax.Array) -> PyTree:
  """Fresh parameters for one run (inside a vmap over seeds)."""
  return task.fns.init(key, jnp.asarray(task.train.x[:1]))

