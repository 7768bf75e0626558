"""The shared entry point of byzjax's public pure functions.

:func:`public` wraps an aggregator (or a pre-aggregation function, or an
attack) so that

* **eager calls compile once.** Calling a function that builds
  :func:`jax.lax.while_loop`/:func:`jax.lax.cond` bodies as closures outside
  :func:`jax.jit` traces and compiles those loops again on every call (each
  call creates new closure objects, so JAX's caches miss): 0.5-1.5 s and
  ~11 MB of leaked executables per call. The wrapper routes every call
  through one :func:`jax.jit` per function, with the hashable keyword
  arguments (hyperparameters: ints, floats, strings, ``None``, schedules)
  static and the array-valued ones (``weights``, ``init``, ``key``, ...)
  traced, so repeated eager calls with the same shapes and hyperparameters
  reuse one executable. Inside an outer ``jit``/``vmap`` it is a nested
  ``jit``, which JAX inlines.
* **keyword errors are ValueErrors.** An unknown or missing keyword raises a
  ``ValueError`` naming it (not Python's ``TypeError``), like every other
  bad hyperparameter.
* **dtypes** (``upcast=True``): half-precision leaves (float16, bfloat16)
  are computed in float32 and the result is cast back to the input dtype;
  integer and boolean leaves are computed in, and returned as, float32
  (:func:`byzjax.tree.compute_dtype`, :func:`byzjax.tree.result_dtype`).
* **zero-size leaves** (e.g. a ``(R, 0)`` parameter of a Flax model) are
  set aside before the call and come back as zero-size outputs: they hold
  no coordinates, so they contribute nothing.
* arguments shaped like one worker's update (``init``, ``center``) are
  checked against the updates' structure and shapes (``ValueError`` naming
  the argument).

Validation still happens at trace time, inside the wrapped function: a bad
hyperparameter raises before anything is compiled, on every call (failed
traces are not cached).
"""

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from byzjax import tree as btree

PyTree = Any


def _has_array(value) -> bool:
  return any(isinstance(leaf, (jax.Array, np.ndarray))
             for leaf in jax.tree.leaves(value))


def _is_static(value) -> bool:
  """Hyperparameters (hashable, no arrays) are static; the rest is traced."""
  if _has_array(value):
    return False
  try:
    hash(value)
  except TypeError:
    return False
  return True


def _check_like_update(name: str, value: PyTree, updates: PyTree) -> None:
  """``value`` must have the structure of ``updates`` and its row shapes."""
  want = jax.tree.structure(updates)
  got = jax.tree.structure(value)
  if got != want:
    raise ValueError(
        f"{name} must be shaped like one worker's update (the updates' tree "
        f"without the worker axis), got tree structure {got} instead of "
        f"{want}.")
  for path, (x, v) in zip(
      [p for p, _ in jax.tree_util.tree_flatten_with_path(updates)[0]],
      zip(jax.tree.leaves(updates), jax.tree.leaves(value))):
    if tuple(jnp.shape(v)) != tuple(jnp.shape(x)[1:]):
      raise ValueError(
          f"{name}{jax.tree_util.keystr(path)} must have shape "
          f"{tuple(jnp.shape(x)[1:])} (one worker's update), got "
          f"{tuple(jnp.shape(v))}.")


def _call(fn: Callable, args: tuple, kwargs: dict, *, upcast: bool,
          stacked_output: bool, like_update: tuple) -> Any:
  """Trace-time body: dtypes, zero-size leaves, then ``fn``."""
  updates = args[0]
  btree.num_workers(updates)  # the worker axis of the full tree, first
  for name in like_update:
    if kwargs.get(name) is not None:
      _check_like_update(name, kwargs[name], updates)
  leaves, treedef = jax.tree.flatten(updates)
  leaves = [jnp.asarray(x) for x in leaves]
  in_dtypes = [x.dtype for x in leaves]
  if upcast:
    leaves = [x.astype(btree.compute_dtype(x.dtype)) for x in leaves]
  keep = [x.size > 0 for x in leaves]
  drop = any(keep) and not all(keep)
  if drop:
    # A list of the non-empty leaves; the outputs are put back in order.
    inner = [x for x, k in zip(leaves, keep) if k]
    kwargs = dict(kwargs)
    for name in like_update:
      if kwargs.get(name) is not None:
        vals = jax.tree.leaves(kwargs[name])
        kwargs[name] = [v for v, k in zip(vals, keep) if k]
  else:
    inner = jax.tree.unflatten(treedef, leaves)
  out = fn(inner, *args[1:], **kwargs)
  with_info = isinstance(out, tuple) and kwargs.get("return_info", False)
  agg, info = out if with_info else (out, None)
  out_leaves = jax.tree.leaves(agg)
  if drop:
    kept_out = iter(out_leaves)
    lead = (out_leaves[0].shape[0],) if stacked_output else ()
    is_bool = out_leaves[0].dtype == jnp.bool_
    full = []
    for x, k in zip(leaves, keep):
      if k:
        full.append(next(kept_out))
      else:
        dtype = jnp.bool_ if is_bool else x.dtype
        full.append(jnp.zeros(lead + x.shape[1:], dtype))
    out_leaves = full
  if upcast:
    out_leaves = [
        o.astype(btree.result_dtype(dt))
        if jnp.issubdtype(o.dtype, jnp.floating) else o
        for o, dt in zip(out_leaves, in_dtypes)]
  agg = jax.tree.unflatten(treedef, out_leaves)
  return (agg, info) if with_info else agg


def public(fn: Callable | None = None, *, upcast: bool = True,
           stacked_output: bool = False,
           like_update: tuple = ()) -> Callable:
  """Decorates a public function ``fn(updates, [positional...], *, kw...)``.

  Args:
    fn: the function; its first argument is the stacked updates.
    upcast: compute half-precision and integer leaves in float32 and cast
      the result back (see the module docstring). Attacks, which must return
      honest rows bit for bit, use ``False``.
    stacked_output: the result keeps a (possibly different) leading axis
      (bucket means, attacks) instead of being shaped like one update.
    like_update: names of keyword arguments shaped like one worker's update.

  Returns:
    The wrapped function, with ``fn``'s name, docstring and signature.
  """
  if fn is None:
    return functools.partial(public, upcast=upcast,
                             stacked_output=stacked_output,
                             like_update=like_update)
  signature = inspect.signature(fn)
  body = functools.partial(_call, fn, upcast=upcast,
                           stacked_output=stacked_output,
                           like_update=tuple(like_update))

  @functools.partial(jax.jit, static_argnames=("static",))
  def compiled(args, dynamic, static):
    return body(args, {**{k: v for k, _, v in static}, **dynamic})

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    try:
      bound = signature.bind(*args, **kwargs)
    except TypeError as e:
      raise ValueError(f"{fn.__name__}: {e}.") from None
    args, kwargs = bound.args, bound.kwargs
    static = {k: v for k, v in kwargs.items() if _is_static(v)}
    dynamic = {k: v for k, v in kwargs.items() if k not in static}
    # The type is part of the cache key: 1, 1.0 and True are equal and hash
    # alike, but only some of them pass validation (num_byzantine=1.0 must
    # raise even after num_byzantine=1 was compiled).
    key = tuple((k, type(v), static[k]) for k, v in sorted(static.items()))
    return compiled(args, dynamic, key)

  return wrapper
