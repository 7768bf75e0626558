"""A stateless transform around a pure function of the stacked updates."""

from typing import Any, Callable

import optax


def stateless_map(fn: Callable[..., Any],
                  **hparams: Any) -> optax.GradientTransformationExtraArgs:
  """``update`` returns ``fn(updates, **hparams)``; the state is empty.

  For pre-aggregation rules (NNM, clipping, ARC) whose transform form only
  closes over hyperparameters; extra arguments of ``optax.chain`` are
  ignored.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return fn(updates, **hparams), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
