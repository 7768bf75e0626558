"""The simulator: jitted training loop, sweeps, sharding, checkpoints.

A simulated Byzantine-robust distributed SGD run is one compiled call:

.. code-block:: python

  sim = byzjax.simulation.Simulation(
      loss_fn=loss, num_workers=20, batch_size=32, num_byzantine=4,
      attack=byzjax.attacks.alie_attack(),
      server_tx=optax.chain(
          byzjax.aggregate(byzjax.aggregators.geometric_median),
          optax.sgd(0.1)))
  state = byzjax.simulation.init(sim, params, key)
  state, metrics = jax.jit(functools.partial(
      byzjax.simulation.run, sim, num_evals=10))(state, worker_data)

Main entry points:

* :class:`Simulation`: what to simulate (loss, worker/server transforms,
  attack, number of workers and of Byzantine workers, evaluation).
* :func:`init`: the :class:`TrainState` before step 0.
* :func:`run`: ``num_evals * eval_every`` steps as one ``lax.scan``; returns
  the final state and per-round metrics (``train_loss``, ``eval_fn``
  outputs, Byzantine diagnostics).
* :func:`step`: a single training step (for your own loop).
* :func:`vmapped_runs`: seeds x numeric hyperparameters (learning rate,
  ``num_byzantine``, attack strength) vmapped in one compiled call.
* :func:`grid`: a grid over discrete choices (aggregator, attack), each cell
  a :func:`vmapped_runs` call; :func:`tidy_rows` and :func:`write_csv` turn
  results into a table.
* :func:`enable_compilation_cache`: a persistent XLA compilation cache, so
  reruns skip compilation.
* Sharding the worker axis over devices: :func:`worker_mesh`,
  :func:`shard_workers` (the worker data), :func:`replicate` (the state).
* :mod:`checkpoint`: ``checkpoint.save`` / ``checkpoint.restore`` of a
  :class:`TrainState`, to stop and resume to the identical result.
* Lower level: :func:`per_worker_value_and_grad`, :func:`draw_byzantine`,
  :func:`byzantine_diagnostics`.
"""

from byzjax.simulation import checkpoint
from byzjax.simulation.loop import byzantine_diagnostics
from byzjax.simulation.loop import draw_byzantine
from byzjax.simulation.loop import init
from byzjax.simulation.loop import per_worker_value_and_grad
from byzjax.simulation.loop import run
from byzjax.simulation.loop import Simulation
from byzjax.simulation.loop import step
from byzjax.simulation.loop import TrainState
from byzjax.simulation.sharding import replicate
from byzjax.simulation.sharding import shard_workers
from byzjax.simulation.sharding import worker_mesh
from byzjax.simulation.sweep import enable_compilation_cache
from byzjax.simulation.sweep import grid
from byzjax.simulation.sweep import tidy_rows
from byzjax.simulation.sweep import vmapped_runs
from byzjax.simulation.sweep import write_csv
