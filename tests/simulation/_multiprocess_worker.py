"""One process of the two-process ``jax.distributed`` test (not a test).

Run as ``python _multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT``
(``PROCESS_ID = -1``: a single process without ``jax.distributed``, the
reference). Each process has 2 emulated CPU devices; the worker axis of a
short simulation is sharded over the global mesh of all processes' devices,
and process 0 writes the final parameters and metrics to ``OUT`` (``.npz``).
"""

import functools
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

R, N, D = 8, 16, 6


def main(process_id: int, num_processes: int, port: int, out: str) -> None:
  if process_id >= 0:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                               num_processes=num_processes,
                               process_id=process_id)
  import byzjax  # noqa: E402  (after initialize, as users must)
  from byzjax import simulation
  from byzjax.aggregators import trimmed_mean
  from byzjax.attacks.gradient import bit_flip_attack
  from byzjax.data.partition import WorkerData
  from jax.experimental import multihost_utils

  w_star = np.linspace(-1.0, 1.0, D, dtype=np.float32)
  a = np.random.default_rng(0).normal(size=(R, N, D)).astype(np.float32)
  data = WorkerData(a, a @ w_star, np.full((R,), N, np.int32))

  def loss(params, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ params["w"] - y) ** 2)

  sim = simulation.Simulation(
      loss_fn=loss,
      server_tx=optax.chain(byzjax.aggregate(trimmed_mean, trim_fraction=0.25),
                            optax.sgd(0.1)),
      num_workers=R, batch_size=8, num_byzantine=2, attack=bit_flip_attack(),
      eval_fn=lambda p: {"err": jnp.linalg.norm(p["w"] - w_star)},
      eval_every=5)
  state = simulation.init(sim, {"w": jnp.zeros(D)}, jax.random.key(3))
  if process_id >= 0:
    mesh = simulation.worker_mesh()  # every process's devices
    assert len(mesh.devices.flat) == 2 * num_processes, mesh
    data = simulation.shard_workers(data, mesh)
    state = simulation.replicate(state, mesh)
  run = jax.jit(functools.partial(simulation.run, sim, num_evals=3))
  state, metrics = run(state, data)
  params = state.params["w"]
  if process_id >= 0:
    params = multihost_utils.process_allgather(params, tiled=True)
    metrics = multihost_utils.process_allgather(metrics, tiled=True)
  if process_id <= 0:
    np.savez(out, w=np.asarray(params), devices=jax.device_count(),
             **{k: np.asarray(v) for k, v in metrics.items()})
  if process_id >= 0:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
