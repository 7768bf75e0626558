"""Trace-time validation of hyperparameters, with messages that name them.

Library code raises ``ValueError`` (optax's convention) instead of chex
assertions. All checks here run on Python values while tracing, so a bad
hyperparameter fails before anything is compiled.

A hyperparameter that arrives as a JAX tracer (swept with ``vmap``, e.g. in
:func:`byzjax.simulation.vmapped_runs`, or passed as a ``jit`` argument) is
refused with a message that says what to do instead: such hyperparameters
fix shapes or Python control flow (a count of selected workers, a number of
trimmed rows), so they must be Python numbers.
"""

import math
import numbers

import jax


def _reject_tracer(name: str, value, kind: str) -> None:
  """Refuses a traced hyperparameter, saying how to sweep it instead."""
  if isinstance(value, jax.core.Tracer):
    raise ValueError(
        f"{name} must be a concrete Python {kind}, but it arrived as a traced "
        f"JAX value ({type(value).__name__}), typically because it is swept "
        "with vmap (e.g. an axis of byzjax.simulation.vmapped_runs) or "
        f"passed as a jit argument. {name} fixes shapes or control flow, so "
        "it cannot be traced. Instead, sweep it with "
        f"byzjax.simulation.grid (pass its values in choices={{'{name}': "
        "[...]}: one compiled run per value, closed over as a Python "
        "number), or, to study more or fewer "
        "attackers, keep it fixed and make Simulation.num_byzantine the "
        "swept (vmapped) axis.")


def check_fraction(name: str, value, *, low: float = 0.0, high: float = 0.5,
                   high_inclusive: bool = False) -> float:
  """Checks ``low <= value < high`` (or ``<= high``) and returns it.

  NaN and infinite values are rejected.
  """
  _reject_tracer(name, value, "float")
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name} must be a Python float, got {value!r}.")
  _check_not_nan(name, value)
  ok = low <= value <= high if high_inclusive else low <= value < high
  if not ok:
    bracket = "]" if high_inclusive else ")"
    raise ValueError(
        f"{name} must lie in [{low}, {high}{bracket}, got {value!r}.")
  return float(value)


def check_int(name: str, value, *, low: int | None = None,
              high: int | None = None) -> int:
  """Checks that ``value`` is a Python int in ``[low, high]``; returns it."""
  _reject_tracer(name, value, "int")
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be a Python int, got {value!r}.")
  if (low is not None and value < low) or (high is not None and value > high):
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value!r}.")
  return int(value)


def check_positive(name: str, value, *, allow_zero: bool = False,
                   allow_inf: bool = False) -> float:
  """Checks that ``value`` is a positive (or non-negative) Python number.

  NaN is always rejected; ``inf`` only passes with ``allow_inf`` (for
  hyperparameters where it means "no bound", e.g. a clipping radius).
  """
  _reject_tracer(name, value, "number")
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name} must be a Python number, got {value!r}.")
  _check_not_nan(name, value)
  if value < 0 or (value == 0 and not allow_zero):
    kind = "non-negative" if allow_zero else "positive"
    raise ValueError(f"{name} must be {kind}, got {value!r}.")
  if math.isinf(value) and not allow_inf:
    raise ValueError(f"{name} must be finite, got {value!r}.")
  return float(value)


def check_finite(name: str, value) -> float:
  """Checks that ``value`` is a finite Python number (any sign)."""
  _reject_tracer(name, value, "number")
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name} must be a Python number, got {value!r}.")
  _check_not_nan(name, value)
  if math.isinf(value):
    raise ValueError(f"{name} must be finite, got {value!r}.")
  return float(value)


def _check_not_nan(name: str, value) -> None:
  if math.isnan(value):
    raise ValueError(f"{name} must be a number, got NaN.")


def check_worker_vector(name: str, value, num_workers: int):
  """Checks that an optional per-worker array has shape ``[num_workers]``."""
  if value is None:
    return None
  shape = getattr(value, "shape", None)
  if shape is None or tuple(shape) != (num_workers,):
    raise ValueError(
        f"{name} must have shape ({num_workers},) (one entry per worker), "
        f"got shape {shape}.")
  return value
