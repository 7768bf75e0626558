"""The simulator: jitted training loop, sweeps, sharding, checkpoints."""

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
