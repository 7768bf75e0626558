"""Datasets, their partition across workers, and per-worker mini-batches."""

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
