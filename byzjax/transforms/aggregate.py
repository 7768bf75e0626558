"""optax wrappers around the pure aggregators.

``aggregate(aggregator, **hparams)`` lifts any aggregator of
:mod:`byzjax.aggregators` into an :class:`optax.GradientTransformation` that
maps stacked updates ``(R, ...)`` to one update shaped like the parameters:

>>> import optax, byzjax
>>> tx = optax.chain(
...     byzjax.aggregate(byzjax.aggregators.geometric_median, max_iters=50),
...     optax.sgd(0.1))

.. warning::
  Like :func:`optax.contrib.differentially_private_aggregate`, the transform
  takes updates with a leading worker axis and returns updates without it, so
  it must come before any transform that expects parameter-shaped updates.
"""

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from byzjax import _checks
from byzjax.aggregators._subsets import TooManySubsetsError

PyTree = Any


class AggregateState(NamedTuple):
  """State of :func:`aggregate`."""
  last: PyTree | None   # last aggregate (params-shaped), for warm starts
  info: Any             # the aggregator's info NamedTuple from the last step
  key: jax.Array | None = None  # PRNG key split on every update
                                # (key_per_step=True only)


# The probe input on which `aggregate` validates its hyperparameters when the
# number of workers is not given: large enough that no sensible
# hyperparameter (a Byzantine count, a number of groups, a block size) is
# rejected for the probe's sake. Only shapes are traced, nothing is computed.
_PROBE_WORKERS = 4096
_PROBE_DIM = 2**24


def _validate(aggregator: Callable[..., Any], hparams: dict, params,
              accepts_any: bool, num_workers: int | None) -> None:
  """Traces ``aggregator(probe, **hparams)`` (shapes only) so that a bad
  hyperparameter raises its ``ValueError`` now, when the transform is built.
  """
  name = getattr(aggregator, "__name__", repr(aggregator))
  unknown = sorted(set(hparams) - set(params))
  if unknown and not accepts_any:
    raise ValueError(f"{name} has no hyperparameter(s) {unknown}.")
  for reserved in ("init", "return_info"):
    if reserved in hparams:
      raise ValueError(
          f"{reserved} is set by aggregate() itself (see warm_start and "
          "num_workers); do not pass it as a hyperparameter.")
  # Array-valued hyperparameters (per-worker weights, a key) have shapes
  # tied to the real input: they are checked at the first update.
  scalars = {k: v for k, v in hparams.items()
             if not any(hasattr(x, "shape") for x in jax.tree.leaves(v))}
  dim = _PROBE_DIM
  if isinstance(scalars.get("num_coords"), int):
    dim = max(dim, scalars["num_coords"])
  r = _PROBE_WORKERS if num_workers is None else num_workers
  probe = {"w": jax.ShapeDtypeStruct((r, dim), jnp.float32)}
  needs_key = "key" in params and "key" not in scalars
  key = jax.eval_shape(lambda: jax.random.key(0)) if needs_key else None

  def trace(stacked, k):
    kwargs = dict(scalars)
    if needs_key:
      kwargs["key"] = k
    return aggregator(stacked, **kwargs)

  try:
    jax.eval_shape(trace, probe, key)
  except TooManySubsetsError:
    # An exact enumeration rule (mda, smea) refuses the probe's 4096
    # workers, not the hyperparameters: the real R is checked at the first
    # update.
    if num_workers is not None:
      raise


def _stack_like(params: PyTree, num_workers: int) -> PyTree:
  return jax.tree.map(
      lambda p: jax.ShapeDtypeStruct((num_workers,) + jnp.shape(p),
                                     jnp.result_type(p)), params)


def _shapes_text(tree: PyTree) -> str:
  return str(jax.tree.map(lambda x: tuple(jnp.shape(x)), tree))


def _unstacked_error(expected: str, updates: PyTree) -> ValueError:
  return ValueError(
      "byzjax.aggregate expects the updates stacked per worker: every leaf "
      "shaped (R,) + param.shape, with the same number of workers R for all "
      f"leaves. Expected {expected}; got leaf shapes "
      f"{_shapes_text(updates)}. Stack the workers' gradients on a leading "
      "axis R (e.g. jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, "
      "batches)); a single, unstacked gradient cannot be aggregated.")


def _check_stacked(updates: PyTree, params: PyTree | None,
                   last: PyTree | None, num_workers: int | None) -> None:
  """Checks at trace time that ``updates`` are stacked per worker.

  Against ``params`` when ``update`` receives them (optax passes them
  through :func:`optax.chain`); otherwise against the params-shaped
  ``state.last`` (``warm_start``) and ``num_workers`` when the state has
  them; always that every leaf has one common leading axis ``R``. The
  per-leaf shapes are compared only when ``updates`` has the tree structure
  of the parameters (a message such as the ``NormMessage`` of
  :mod:`byzjax.transforms.compress`, whose ``norm`` leaf is ``[R]``, has
  not).
  """
  ref = params if params is not None else last
  if ref is not None and (jax.tree.structure(updates)
                          == jax.tree.structure(ref)):
    shapes = [tuple(jnp.shape(p)) for p in jax.tree.leaves(ref)]
    got = [tuple(jnp.shape(u)) for u in jax.tree.leaves(updates)]
    if any(len(g) != len(p) + 1 or g[1:] != p for g, p in zip(got, shapes)):
      raise _unstacked_error(
          "(R,) + param.shape for the parameter shapes "
          f"{_shapes_text(ref)}", updates)
  leaves = jax.tree.leaves(updates)
  if any(jnp.ndim(x) == 0 for x in leaves):
    raise _unstacked_error("a leading worker axis on every leaf", updates)
  lead = sorted({jnp.shape(x)[0] for x in leaves})
  if len(lead) > 1:
    raise _unstacked_error(
        f"one leading size R for all leaves, not {lead}", updates)
  if num_workers is not None and lead and lead[0] != num_workers:
    raise _unstacked_error(
        f"R = num_workers = {num_workers} (as given to aggregate), not "
        f"R = {lead[0]}", updates)


def aggregate(
    aggregator: Callable[..., Any],
    *,
    num_workers: int | None = None,
    warm_start: bool = False,
    key_per_step: bool = False,
    **hparams: Any,
) -> optax.GradientTransformationExtraArgs:
  """Lifts a robust aggregator into an optax gradient transformation.

  Args:
    aggregator: a pure function ``f(stacked, **hparams)`` from
      :mod:`byzjax.aggregators` (or any function with that contract).
    num_workers: the number of workers ``R``. When given, the state keeps the
      aggregator's diagnostics (its ``info`` NamedTuple, whose shapes depend
      on ``R``) from the last step for logging; otherwise the state keeps
      none.
    warm_start: pass last step's aggregate as ``init`` to the aggregator (for
      iterative aggregators such as
      :func:`~byzjax.aggregators.geometric_median`). The first step starts
      from zeros.
    key_per_step: for randomized aggregators (e.g.
      :func:`~byzjax.aggregators.dnc`): the ``key`` hyperparameter is kept
      in the state and split on every update, so each step draws fresh
      randomness (STYLE.md: "a key that persists lives in state"). Without
      it a ``key`` hyperparameter is closed over and every step reuses it.
    **hparams: keyword hyperparameters closed over and passed to
      ``aggregator`` on every call.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`. Its ``update`` takes
    stacked updates (leading axis ``R``) and returns the aggregate; extra
    keyword arguments that ``aggregator`` accepts (e.g. ``weights``, ``key``)
    are forwarded, others are ignored so the transform composes in
    :func:`optax.chain`.

  Raises:
    ValueError: if ``warm_start`` is set for an aggregator without ``init``,
      or ``return_info`` would be needed and the aggregator lacks it; and,
      when the transform is built, for an unknown or invalid hyperparameter
      (the aggregator is traced, shapes only, on a probe input). A
      hyperparameter whose validity depends on the number of workers (e.g.
      Krum's ``num_byzantine``) is checked against ``num_workers`` when it
      is given, otherwise at the first update. At every ``update`` (at
      trace time), if the updates are not stacked per worker: against
      ``params`` when ``update`` receives them (every leaf must be
      ``(R,) + param.shape``, one ``R`` for all leaves); without ``params``,
      every leaf must have the same leading axis ``R``, equal to
      ``num_workers`` when given, and with ``warm_start`` the rest of each
      shape must match the parameters seen at ``init`` (kept in
      ``state.last``). The transform keeps no other record of the shapes
      seen at ``init`` (no hidden Python state, no extra state fields), so
      pass ``params`` to ``update`` for the full check.
  """
  params = inspect.signature(aggregator).parameters
  accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
  if warm_start and "init" not in params and not accepts_any:
    raise ValueError(
        f"warm_start=True needs an aggregator with an `init` argument; "
        f"{getattr(aggregator, '__name__', aggregator)!r} has none.")
  if num_workers is not None:
    _checks.check_int("num_workers", num_workers, low=1)
    if "return_info" not in params and not accepts_any:
      raise ValueError(
          "num_workers was given to keep diagnostics, but "
          f"{getattr(aggregator, '__name__', aggregator)!r} has no "
          "`return_info` argument.")
  keep_info = num_workers is not None
  first_key = None
  if key_per_step:
    if "key" not in params and not accepts_any:
      raise ValueError(
          "key_per_step=True needs an aggregator with a `key` argument; "
          f"{getattr(aggregator, '__name__', aggregator)!r} has none.")
    first_key = hparams.pop("key", None)
    if first_key is None:
      raise ValueError("key_per_step=True needs key=jax.random.key(...).")
  _validate(aggregator, ({**hparams, "key": first_key} if key_per_step
                          else hparams), params, accepts_any, num_workers)

  def call(updates, init, extra):
    kwargs = dict(hparams)
    kwargs.update({k: v for k, v in extra.items()
                   if k in params or accepts_any})
    if init is not None:
      kwargs["init"] = init
    if keep_info:
      return aggregator(updates, return_info=True, **kwargs)
    return aggregator(updates, **kwargs), None

  def init_fn(params_):
    last = optax.tree.zeros_like(params_) if warm_start else None
    info = None
    if keep_info:
      probe_extra = {"key": first_key} if key_per_step else {}
      shapes = jax.eval_shape(lambda s: call(s, None, probe_extra)[1],
                              _stack_like(params_, num_workers))
      info = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return AggregateState(last=last, info=info, key=first_key)

  def update_fn(updates, state, params_=None, **extra):
    _check_stacked(updates, params_, state.last if warm_start else None,
                   num_workers)
    new_key = None
    if key_per_step:
      new_key, step_key = jax.random.split(state.key)
      extra = {**extra, "key": step_key}
    # Warm start: the first step starts from zeros, which Weiszfeld-type
    # aggregators converge from like from any other point.
    agg, info = call(updates, state.last if warm_start else None, extra)
    return agg, AggregateState(last=agg if warm_start else None, info=info,
                               key=new_key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
