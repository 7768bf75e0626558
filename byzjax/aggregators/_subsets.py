"""Exact enumeration of the ``R - f`` subsets of the workers (MDA, SMEA).

Minimum-diameter averaging and smallest-maximum-eigenvalue averaging choose,
among all :math:`\\binom{R}{f}` subsets of ``R - f`` workers, the one that
minimises a score. The score of every subset is computed from one ``R x R``
matrix of pairwise squared distances (one Gram matrix of the updates), so the
updates themselves are read only twice (the Gram matrix and the final mean).

The table of subsets is built with NumPy at trace time (its shape is static)
and the scores are computed as array operations over chunks of it
(:func:`jax.lax.map`), never by a Python loop over workers or subsets inside
the compiled program. Its size is bounded: beyond ``max_subsets`` the
aggregator raises :class:`TooManySubsetsError` at trace time.
"""

import functools
import itertools
import math

import numpy as np

from byzjax import _checks

# Default bound on C(R, f), the number of subsets enumerated.
MAX_SUBSETS = 2**16


class TooManySubsetsError(ValueError):
  """``C(R, f)`` exceeds the enumeration bound (depends on ``R`` itself).

  :func:`byzjax.aggregate` validates hyperparameters on a probe of 4096
  workers when ``num_workers`` is not given; this error is then deferred to
  the first update, where the real ``R`` is known.
  """


def check_enumeration(name: str, r: int, f: int, max_subsets: int,
                      instead: str) -> int:
  """Checks ``C(R, f) <= max_subsets`` and returns ``C(R, f)``."""
  _checks.check_int("max_subsets", max_subsets, low=1)
  count = math.comb(r, f)
  if count > max_subsets:
    raise TooManySubsetsError(
        f"{name} enumerates all C(R, f) = C({r}, {f}) = {count} subsets of "
        f"R - f = {r - f} workers, more than max_subsets={max_subsets}. "
        f"Raise max_subsets (the work grows as C(R, f) times R^2), lower "
        f"num_byzantine, or use {instead}, which costs polynomial time.")
  return count


@functools.lru_cache(maxsize=64)
def removed_table(r: int, f: int, chunk: int) -> np.ndarray:
  """The removed sets ``T`` (``|T| = f``), ``[num_chunks, chunk, f]`` int32.

  Lexicographic order; the last chunk is padded with copies of the first
  set (a duplicate never wins an ``argmin`` that takes the first minimum).
  """
  if f == 0:
    return np.zeros((1, 1, 0), np.int32)
  combos = np.fromiter(itertools.chain.from_iterable(
      itertools.combinations(range(r), f)), dtype=np.int32,
                       count=math.comb(r, f) * f).reshape(-1, f)
  count = combos.shape[0]
  pad = (-count) % chunk
  if pad:
    combos = np.concatenate([combos, np.repeat(combos[:1], pad, axis=0)])
  combos.setflags(write=False)
  return combos.reshape(-1, chunk, f)


@functools.lru_cache(maxsize=64)
def kept_table(r: int, f: int, chunk: int) -> np.ndarray:
  """The kept sets (complements of :func:`removed_table`, ascending),
  ``[num_chunks, chunk, R - f]`` int32, in the same order."""
  removed = removed_table(r, f, chunk)
  removed = removed.reshape(removed.shape[0] * removed.shape[1], f)
  mask = np.ones((removed.shape[0], r), bool)
  np.put_along_axis(mask, removed.astype(np.int64), False, axis=1)
  kept = np.nonzero(mask)[1].astype(np.int32).reshape(-1, chunk, r - f)
  kept.setflags(write=False)
  return kept


def chunk_size(count: int, per_subset: int, budget: int = 2**22) -> int:
  """Subsets per chunk so that a chunk's work array has ~``budget`` entries."""
  return max(1, min(count, budget // max(per_subset, 1)))
