"""Robust aggregators: pure, jittable reductions of the worker axis.

Every aggregator is ``f(updates, *, hparams..., return_info=False)`` where
``updates`` is a pytree whose leaves share a leading worker axis ``R``; the
result has that axis removed. Hyperparameters are keyword-only; those that fix
shapes or loop bounds are Python ints. ``return_info=True`` returns
``(aggregate, info)`` with an aggregator-specific ``NamedTuple`` of arrays
(per-worker weights or kept mask, iterations, converged flag, ...).

Rows with any NaN or Inf are erasures (zero weight); rows of huge finite
values (1e30, 3e38) never overflow an aggregator into NaN or Inf.

Contracts shared by every aggregator (one shared entry point,
``byzjax._public.public``, implements the last four):

* Per-worker ``weights``: a weight that is NaN, +-Inf, zero or negative makes
  that worker an erasure (weight zero), exactly like a non-finite row; an
  infinite weight does not mean "only this worker". All weighted rules
  (:func:`mean`, :func:`geometric_median`, :func:`block_geometric_median`)
  apply this through :func:`byzjax.tree.worker_weights`.
* dtypes: float16 and bfloat16 leaves are computed in float32 (distances,
  Gram matrices, norms, weights and noise floors would overflow or drown in
  rounding otherwise) and the aggregate is cast back to the input dtype;
  integer and boolean leaves are aggregated as float32 and the aggregate is
  float32. float32 and float64 are used as they are.
* Zero-size leaves (e.g. a ``(R, 0)`` parameter) hold no coordinates: they
  contribute nothing and come back as zero-size leaves.
* Eager calls: each aggregator is one :func:`jax.jit`-compiled program per
  input shape and hyperparameters (hyperparameters are static, array
  arguments such as ``weights`` or ``key`` are traced), so calling it
  eagerly in a loop compiles once. Under an outer ``jit`` or ``vmap`` it is
  inlined as usual. Unknown or missing keywords raise ``ValueError``.
"""

from byzjax.aggregators.block_coordinate import block_geometric_median
from byzjax.aggregators.block_coordinate import BlockGeometricMedianInfo
from byzjax.aggregators.block_coordinate import select_blocks
from byzjax.aggregators.bulyan import bulyan
from byzjax.aggregators.bulyan import BulyanInfo
from byzjax.aggregators._subsets import TooManySubsetsError
from byzjax.aggregators.caf import caf
from byzjax.aggregators.caf import CAFInfo
from byzjax.aggregators.coordinatewise import coordinate_median
from byzjax.aggregators.coordinatewise import CoordinateMedianInfo
from byzjax.aggregators.coordinatewise import mean
from byzjax.aggregators.coordinatewise import MeanInfo
from byzjax.aggregators.coordinatewise import trimmed_mean
from byzjax.aggregators.coordinatewise import TrimmedMeanInfo
from byzjax.aggregators.dnc import dnc
from byzjax.aggregators.dnc import DnCInfo
from byzjax.aggregators.geometric_median import geometric_median
from byzjax.aggregators.geometric_median import WeiszfeldInfo
from byzjax.aggregators.geometric_median_of_means import geometric_median_of_means
from byzjax.aggregators.geometric_median_of_means import GeometricMedianOfMeansInfo
from byzjax.aggregators.krum import krum
from byzjax.aggregators.krum import KrumInfo
from byzjax.aggregators.mda import mda
from byzjax.aggregators.mda import MDAInfo
from byzjax.aggregators.meamed import meamed
from byzjax.aggregators.meamed import MeamedInfo
from byzjax.aggregators.monna import monna
from byzjax.aggregators.monna import MoNNAInfo
from byzjax.aggregators.norm_threshold import norm_threshold
from byzjax.aggregators.norm_threshold import NormThresholdInfo
from byzjax.aggregators.sign_vote import sign_majority_vote
from byzjax.aggregators.signguard import signguard
from byzjax.aggregators.signguard import SignGuardInfo
from byzjax.aggregators.sign_vote import SignVoteInfo
from byzjax.aggregators.smea import smea
from byzjax.aggregators.smea import SMEAInfo
from byzjax.aggregators.spectral_filter import spectral_filter
from byzjax.aggregators.spectral_filter import SpectralFilterInfo
from byzjax.aggregators.spectral_filter import theorem_sigma0
