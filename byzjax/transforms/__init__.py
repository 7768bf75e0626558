"""optax gradient transformations: aggregation, worker-side and server-side.

Each concept lives in its own module; this package re-exports them.
"""

from byzjax.transforms.aggregate import aggregate
from byzjax.transforms.aggregate import AggregateState
from byzjax.transforms.block_memory import block_geometric_median_descent
from byzjax.transforms.block_memory import BlockMemoryState
from byzjax.transforms.bucketing import bucket_means
from byzjax.transforms.bucketing import bucketing
from byzjax.transforms.bucketing import BucketingState
from byzjax.transforms.centered_clipping import centered_clip
from byzjax.transforms.centered_clipping import centered_clipping
from byzjax.transforms.centered_clipping import CenteredClippingState
from byzjax.transforms.clipping import adaptive_robust_clip
from byzjax.transforms.clipping import arc
from byzjax.transforms.clipping import clip
from byzjax.transforms.clipping import ClipInfo
from byzjax.transforms.clipping import clipping
from byzjax.transforms.compress import compress
from byzjax.transforms.compress import CompressState
from byzjax.transforms.compress import NormMessage
from byzjax.transforms.compress import using_sent_norms
from byzjax.transforms.compress import with_norm
from byzjax.transforms.error_feedback import error_feedback
from byzjax.transforms.error_feedback import ErrorFeedbackState
from byzjax.transforms.foolsgold import foolsgold
from byzjax.transforms.foolsgold import foolsgold_weights
from byzjax.transforms.foolsgold import FoolsGoldState
from byzjax.transforms.nnm import nearest_neighbor_mixing
from byzjax.transforms.nnm import nnm
from byzjax.transforms.nnm import NNMInfo
from byzjax.transforms.per_worker import fold_in_worker_index
from byzjax.transforms.per_worker import per_worker
from byzjax.transforms.per_worker import PerWorkerState
