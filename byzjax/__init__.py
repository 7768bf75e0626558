"""byzjax: Byzantine-robust distributed SGD in JAX.

Workers are an array axis: per-worker quantities are pytrees whose leaves
carry a leading worker axis ``R``; robust aggregators reduce that axis and are
available as optax transforms through :func:`aggregate`.
"""

from byzjax import aggregators
from byzjax import attacks
from byzjax import compression
from byzjax import data
from byzjax import models
from byzjax import simulation
from byzjax import study
from byzjax import transforms
from byzjax import tree
from byzjax.transforms import aggregate
from byzjax.transforms import AggregateState
from byzjax.transforms import arc
from byzjax.transforms import block_geometric_median_descent
from byzjax.transforms import bucketing
from byzjax.transforms import centered_clipping
from byzjax.transforms import clipping
from byzjax.transforms import compress
from byzjax.transforms import error_feedback
from byzjax.transforms import foolsgold
from byzjax.transforms import nnm
from byzjax.transforms import per_worker
from byzjax.transforms import using_sent_norms
from byzjax.transforms import with_norm

__version__ = "0.1.0"
