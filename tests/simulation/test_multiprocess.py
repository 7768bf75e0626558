"""Two processes under ``jax.distributed`` give the single-process run.

Starts two processes on localhost (a local coordinator, Gloo CPU
collectives, 2 emulated devices each), shards the worker axis of a short
simulation over the global mesh of their 4 devices, and compares the final
parameters and metrics with one process that runs it unsharded. The
parameters and the evaluation are equal bit for bit (the sharded aggregator,
a coordinate-wise trimmed mean, sorts each coordinate over the same values,
and each worker's gradient is computed by the same program on its shard);
the honest training loss, a mean over workers that becomes a cross-device
all-reduce, is equal to float rounding (its summation order differs; 1 ulp
was seen).
"""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

WORKER = pathlib.Path(__file__).with_name("_multiprocess_worker.py")
ROOT = pathlib.Path(__file__).parents[2]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(process_id, num_processes, port, out):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen(
      [sys.executable, str(WORKER), str(process_id), str(num_processes),
       str(port), str(out)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_match_one_bit_for_bit(tmp_path):
  port = _free_port()
  procs = [_start(-1, 1, 0, tmp_path / "single.npz")]
  procs += [_start(i, 2, port, tmp_path / "multi.npz") for i in range(2)]
  logs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    logs.append(out)
    assert p.returncode == 0, out[-3000:]
  single = np.load(tmp_path / "single.npz")
  multi = np.load(tmp_path / "multi.npz")
  assert int(multi["devices"]) == 4  # the global mesh spans both processes
  assert set(single.files) == set(multi.files)
  np.testing.assert_array_equal(multi["w"], single["w"])
  np.testing.assert_array_equal(multi["err"], single["err"])
  np.testing.assert_allclose(multi["train_loss"], single["train_loss"],
                             rtol=1e-6)
  assert np.all(np.isfinite(single["w"]))
