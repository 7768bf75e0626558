"""The jitted training loop of a simulated Byzantine-robust distributed SGD.

One step (DESIGN.md, "The one idea")::

  sample per-worker batches -> [data attack on Byzantine workers]
  -> vmap(grad(loss)) -> [worker transforms, vmapped]
  -> [gradient attack on the Byzantine rows] -> server transforms
  (aggregator, optimizer) -> apply updates

All of it runs inside one :func:`jax.lax.scan` over steps, nested in a scan
over evaluation rounds, so a whole run is one compiled call; the same function
vmaps over seeds and numeric hyperparameters (see
:mod:`byzjax.simulation.sweep`).
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from byzjax import _checks
from byzjax.data.partition import WorkerData
from byzjax.data.sampling import sample_batches
from byzjax.transforms.aggregate import AggregateState
from byzjax.transforms.bucketing import BucketingState
from byzjax.transforms.bucketing import bucket_of_workers
from byzjax.transforms.centered_clipping import CenteredClippingState
from byzjax.transforms.foolsgold import FoolsGoldState

PyTree = Any
Batch = tuple[jax.Array, jax.Array]
LossFn = Callable[[PyTree, Batch], jax.Array]
DataAttack = Callable[[jax.Array, jax.Array, jax.Array],
                      tuple[jax.Array, jax.Array]]

# Names of per-worker boolean masks in aggregators' info NamedTuples that say
# which workers the aggregator kept; used to count kept Byzantine workers.
KEPT_MASK_FIELDS = ("kept", "selected", "active")

PER_WORKER_GRADS = ("auto", "vmap", "chunked")


class TrainState(NamedTuple):
  """Everything a run carries from step to step (and checkpoints)."""
  params: PyTree
  worker_state: optax.OptState  # leading worker axis R
  attack_state: optax.OptState
  server_state: optax.OptState
  byzantine: jax.Array          # bool [R]: this step's Byzantine workers
  key: jax.Array                # PRNG key, split every step
  step: jax.Array               # int32 ()


@dataclasses.dataclass(frozen=True)
class Simulation:
  """What to simulate. Build it inside the function you jit or vmap.

  Attributes:
    loss_fn: ``loss_fn(params, (x, y)) -> scalar`` on one worker's batch.
    server_tx: transforms applied at the server to the stacked updates
      ``(R, ...)``; must start with an aggregator (e.g.
      ``optax.chain(byzjax.aggregate(geometric_median), optax.sgd(lr))``).
    num_workers: ``R``.
    batch_size: per-worker mini-batch size ``b``.
    worker_tx: optional transform for ONE worker (compression, error
      feedback, local momentum); it is vmapped over the workers with its
      state stacked on a leading ``R`` axis.
    attack: optional gradient attack over the stacked updates; its ``update``
      receives the keyword extra args ``byzantine`` (bool ``[R]``) and
      ``key``; its ``init`` receives the parameters, like any optax
      transform (a stateful attack such as
      :func:`byzjax.attacks.mimic_attack` keeps trees shaped like them).
    data_attack: optional ``(key, x, y) -> (x, y)`` applied to the batch of
      each Byzantine worker before its gradient.
    num_byzantine: how many workers are Byzantine (int or traced scalar, so
      it can be swept with ``vmap``). An int must be below ``num_workers``
      (with every worker Byzantine there is nothing honest to train or
      measure); a traced value equal to ``num_workers`` runs, and reports
      the honest ``train_loss`` as NaN.
    redraw_byzantine: draw a new Byzantine set every step (Chen, Su & Xu allow
      this) instead of one fixed set drawn at :func:`init`.
    eval_fn: optional ``eval_fn(params) -> dict[str, scalar]`` run every
      ``eval_every`` steps.
    eval_every: steps between evaluations.
    unroll: forwarded to the ``lax.scan`` over the ``eval_every`` steps of a
      round (``True`` unrolls them all). On XLA:CPU, convolutions inside a
      loop body run several times slower than in straight-line code
      (jax-ml/jax#12868; a GroupNorm ResNet-8 step measured 4.7 s in the
      loop against 0.86 s unrolled): for CNNs on CPU set ``unroll=True``
      and call :func:`run` with ``num_evals=1`` (which has no outer loop)
      from a host loop. Keep ``eval_every`` small (1 for a large CNN):
      compile time grows with the unrolled length, and so does memory,
      because XLA:CPU's default concurrency-optimized scheduler keeps the
      temporaries of every unrolled step alive (LeNet, 8 workers x 64
      images: 0.74 GB for one step, 2.76 GB for five; 11.7 GB resident
      for five at 32 workers). ``XLA_FLAGS=
      --xla_cpu_enable_concurrency_optimized_scheduler=false`` (set
      before JAX starts; the per-``jit`` ``compiler_options`` does not
      reach it) brings five steps back to 0.71 GB.
    per_worker_grads: how the ``R`` per-worker gradients are computed:
      ``"vmap"``: ``vmap(value_and_grad(loss_fn))`` over all workers at once
      (one batched program); ``"chunked"``: a :func:`jax.lax.map` over
      chunks of ``worker_chunk`` workers, ``vmap`` inside a chunk (peak
      memory of ``worker_chunk`` workers instead of ``R``; slower on
      XLA:CPU, where a loop body runs convolutions several times slower);
      ``"auto"`` (default): ``"vmap"`` on every backend, the fastest
      measured (``experiments/benchmarks/vs_torch.py``). All give the same
      gradients up to float rounding. For convolutional models on CPU use
      :func:`byzjax.conv.conv_general_dilated` in the model (the models of
      :mod:`byzjax.models` do): ``vmap`` of a native convolution's weight
      gradient is a grouped convolution that XLA:CPU runs slowly.
    worker_chunk: workers per chunk for ``per_worker_grads="chunked"``.
    full_batch: every worker's batch is its whole shard, in stored order,
      without sampling (for full local gradients, e.g. Ghosh et al.'s
      regression). Requires ``batch_size`` equal to the padded shard length
      and every shard full (checked when the sizes are concrete). Sampling
      ``batch_size = n_max`` rows without replacement draws the same rows in
      a random order, so the gradient is the same up to float rounding, but
      the sampled path gathers a copy of the whole data every step.
    local_steps: ``H``, local steps per round (FedAvg-style, as ByzFL,
      blades and FLPoison offer). Each worker starts from the shared
      parameters, runs ``H`` plain SGD steps with ``local_lr`` on ``H``
      fresh batches of its own (each through ``data_attack`` for a Byzantine
      worker) and sends the sum of its ``H`` local gradients,
      :math:`\\sum_h g_i^h = (w - w_i^H) / \\eta_{local}`, i.e. its model
      difference in gradient units; ``worker_tx``, the attack and
      ``server_tx`` then act on it as on a gradient (FedAvg is
      ``server_tx = optax.chain(byzjax.aggregate(mean), optax.sgd(local_lr))``).
      ``H = 1`` (default) is the one-gradient step, the same program as
      before. ``train_loss`` is measured at the shared parameters (the first
      local step). The local gradients use ``vmap`` over workers
      (``per_worker_grads`` and ``full_batch`` still choose the batches).
    local_lr: :math:`\\eta_{local}`, the local SGD step size (required when
      ``local_steps > 1``).
  """
  loss_fn: LossFn
  server_tx: optax.GradientTransformation
  num_workers: int
  batch_size: int
  worker_tx: optax.GradientTransformation | None = None
  attack: optax.GradientTransformation | None = None
  data_attack: DataAttack | None = None
  num_byzantine: int | jax.Array = 0
  redraw_byzantine: bool = False
  eval_fn: Callable[[PyTree], dict[str, jax.Array]] | None = None
  eval_every: int = 10
  unroll: int | bool = 1
  per_worker_grads: str = "auto"
  worker_chunk: int = 8
  full_batch: bool = False
  local_steps: int = 1
  local_lr: float | None = None

  def __post_init__(self):
    _checks.check_int("num_workers", self.num_workers, low=1)
    _checks.check_int("batch_size", self.batch_size, low=1)
    _checks.check_int("eval_every", self.eval_every, low=1)
    if not isinstance(self.unroll, bool):
      _checks.check_int("unroll", self.unroll, low=1)
    if self.per_worker_grads not in PER_WORKER_GRADS:
      raise ValueError(
          f"per_worker_grads must be one of {PER_WORKER_GRADS}, got "
          f"{self.per_worker_grads!r}.")
    _checks.check_int("worker_chunk", self.worker_chunk, low=1)
    _checks.check_int("local_steps", self.local_steps, low=1)
    if self.local_steps > 1:
      if self.local_lr is None:
        raise ValueError(
            f"local_steps={self.local_steps} needs local_lr, the workers' "
            "local SGD step size (e.g. local_lr=0.05).")
      _checks.check_positive("local_lr", self.local_lr)
    _check_transform("server_tx", self.server_tx,
                     "optax.chain(byzjax.aggregate(byzjax.aggregators."
                     "geometric_median), optax.sgd(lr))")
    if self.worker_tx is not None:
      _check_transform("worker_tx", self.worker_tx,
                       "e.g. byzjax.transforms.compress(...) or optax.sgd(lr)")
    if self.attack is not None:
      _check_transform("attack", self.attack,
                       "e.g. byzjax.attacks.alie_attack()")
    if isinstance(self.num_byzantine, int):
      _checks.check_int("num_byzantine", self.num_byzantine, low=0,
                        high=self.num_workers)
      if self.num_byzantine == self.num_workers:
        raise ValueError(
            f"num_byzantine={self.num_byzantine} makes every one of the "
            f"{self.num_workers} workers Byzantine: no honest worker is left "
            "to train or to measure the honest loss on. Use num_byzantine < "
            f"num_workers (at most {self.num_workers - 1}).")


def _check_transform(name: str, tx, example: str) -> None:
  """Refuses a ``tx`` that is not an optax transform, saying what to pass."""
  if hasattr(tx, "init") and hasattr(tx, "update"):
    return
  fn = getattr(tx, "__name__", None)
  hint = f"pass {example}"
  from byzjax import attacks  # pylint: disable=g-import-not-at-top
  if (name == "attack" and callable(tx) and fn is not None
      and hasattr(attacks, f"{fn}_attack")):
    hint = (f"pass the transform byzjax.attacks.{fn}_attack() (with the "
            f"attack's hyperparameters as its arguments), not the pure "
            f"function byzjax.attacks.{fn}")
  elif callable(tx) and fn is not None:
    hint = (f"it is the function {fn!r}: if it builds a transform, call it; "
            f"otherwise {hint}")
  raise ValueError(
      f"{name} must be an optax.GradientTransformation (with init and "
      f"update), got {tx!r}; {hint}.")


def _check_data(sim: "Simulation", data: WorkerData) -> None:
  """At trace time: the data is split for ``sim.num_workers`` workers."""
  r = jnp.shape(data.y)[0] if jnp.ndim(data.y) else None
  if r != sim.num_workers:
    raise ValueError(
        f"The data is split for {r} workers (leading axis of data.x/data.y), "
        f"but the simulation has num_workers={sim.num_workers}. Partition "
        f"the data for {sim.num_workers} workers (e.g. "
        f"byzjax.data.iid_partition(..., num_workers={sim.num_workers})) or "
        f"set Simulation(num_workers={r}).")


def _check_server_tx(sim: "Simulation", params: PyTree) -> None:
  """At trace time: ``server_tx`` maps ``(R, ...)`` updates to params shapes.

  Evaluates only shapes (``jax.eval_shape``). An output that keeps the
  leading worker axis means the chain has no aggregator.
  """
  stacked = jax.tree.map(
      lambda p: jax.ShapeDtypeStruct((sim.num_workers,) + jnp.shape(p),
                                     jnp.result_type(p)), params)

  def server_out(u, p):
    return sim.server_tx.update(u, sim.server_tx.init(p), p)[0]

  out = jax.eval_shape(server_out, stacked, params)
  want = [tuple(jnp.shape(p)) for p in jax.tree.leaves(params)]
  got = [tuple(o.shape) for o in jax.tree.leaves(out)]
  if jax.tree.structure(out) != jax.tree.structure(params) or got != want:
    raise ValueError(
        "server_tx must start with an aggregator that maps the stacked "
        f"updates (leading worker axis R={sim.num_workers}) to one update "
        f"shaped like the parameters {want}; its output has shapes {got}. "
        "Put one first, e.g. server_tx=optax.chain(byzjax.aggregate("
        "byzjax.aggregators.geometric_median), optax.sgd(lr)).")


def draw_byzantine(key: jax.Array, num_workers: int,
                   num_byzantine: int | jax.Array) -> jax.Array:
  """A uniformly random set of ``num_byzantine`` workers, bool ``[R]``.

  ``num_byzantine`` may be traced (fixed shapes: the set is the workers whose
  random rank is below it).
  """
  rank = jnp.argsort(jax.random.uniform(key, (num_workers,)))
  return jnp.zeros(num_workers, bool).at[rank].set(
      jnp.arange(num_workers) < num_byzantine)


def init(sim: Simulation, params: PyTree, key: jax.Array) -> TrainState:
  """The state before step 0: optimizer states and the Byzantine set.

  Raises:
    ValueError: (at trace time) if ``sim.server_tx`` does not start with an
      aggregator, i.e. its output keeps the leading worker axis.
  """
  _check_server_tx(sim, params)
  key, byz_key = jax.random.split(key)
  worker_state = ()
  if sim.worker_tx is not None:
    worker_state = jax.vmap(lambda _: sim.worker_tx.init(params))(
        jnp.arange(sim.num_workers))
  # Like any optax transform, the attack is initialised with the parameters
  # (stateful attacks such as mimic_attack keep trees shaped like them).
  attack_state = () if sim.attack is None else sim.attack.init(params)
  return TrainState(
      params=params,
      worker_state=worker_state,
      attack_state=attack_state,
      server_state=sim.server_tx.init(params),
      byzantine=draw_byzantine(byz_key, sim.num_workers, sim.num_byzantine),
      key=key,
      step=jnp.zeros([], jnp.int32),
  )


def aggregator_infos(server_state: optax.OptState) -> list[Any]:
  """The diagnostics ``info`` of every aggregator inside a server state.

  From :class:`~byzjax.transforms.aggregate.AggregateState` (``aggregate``
  with ``num_workers``) and
  :class:`~byzjax.transforms.centered_clipping.CenteredClippingState`
  (``centered_clipping`` with ``num_workers``) and
  :class:`~byzjax.transforms.foolsgold.FoolsGoldState`, in chain order.
  """
  kinds = (AggregateState, CenteredClippingState, FoolsGoldState)
  found = [s for s in jax.tree.leaves(
      server_state, is_leaf=lambda s: isinstance(s, kinds))
           if isinstance(s, kinds) and getattr(s, "info", s) is not None]
  # FoolsGold's state is its own diagnostics (the last step's weights).
  return [getattr(s, "info", s) for s in found]


def _bucketing_state(server_state: optax.OptState) -> BucketingState | None:
  found = [s for s in jax.tree.leaves(
      server_state, is_leaf=lambda s: isinstance(s, BucketingState))
           if isinstance(s, BucketingState) and s.last_key is not None]
  return found[0] if found else None


def byzantine_diagnostics(server_state: optax.OptState,
                          byzantine: jax.Array) -> dict[str, jax.Array]:
  """How many Byzantine workers the aggregator kept, and their weight share.

  Read from the first aggregator info in the server state that has a
  per-worker kept mask (``kept``/``selected``/``active``: ``byz_kept``,
  ``honest_dropped``) or ``weights`` (``byz_weight``, the Byzantine workers'
  share of the total weight; for coordinate-wise rules the share of the
  aggregate's coordinates they supplied). After :func:`bucketing`, the
  aggregator's rows are buckets: a worker counts as kept when its bucket
  was, and gets an equal part of its bucket's weight. Empty when no
  aggregator keeps diagnostics (``aggregate`` without ``num_workers``).
  """
  r = byzantine.shape[0]
  buckets = _bucketing_state(server_state)
  bucket_of = size = None
  if buckets is not None:
    bucket_of = bucket_of_workers(buckets, r)
    size = jnp.zeros([r], jnp.float32).at[bucket_of].add(1.0)[bucket_of]

  out = {}
  for info in aggregator_infos(server_state):
    fields = getattr(info, "_fields", ())
    for name in KEPT_MASK_FIELDS:
      if name in fields and "byz_kept" not in out:
        mask = _to_workers(getattr(info, name), r, bucket_of, size, False)
        if mask is not None:
          mask = mask.astype(bool)
          out["byz_kept"] = jnp.sum(mask & byzantine)
          out["honest_dropped"] = jnp.sum(~mask & ~byzantine)
    if "weights" in fields and "byz_weight" not in out:
      w = _to_workers(info.weights, r, bucket_of, size, True)
      if w is not None:
        w = jnp.abs(w)
        out["byz_weight"] = jnp.sum(jnp.where(byzantine, w, 0.0)) / jnp.maximum(
            jnp.sum(w), jnp.finfo(w.dtype).tiny)
  return out


def _to_workers(values: jax.Array, r: int, bucket_of: jax.Array | None,
                size: jax.Array | None, is_weight: bool) -> jax.Array | None:
  """Per-worker values from an aggregator's per-row ones, or ``None``.

  Rows are workers without bucketing; after bucketing they are the
  ``ceil(R / s)`` buckets and are mapped back through ``bucket_of`` (a
  bucket's weight is split equally among its members). ``None`` when the
  shape fits neither.
  """
  if values.ndim != 1:
    return None
  if bucket_of is None:
    return values if values.shape[0] == r else None
  if values.shape[0] > r:
    return None
  # The aggregator after bucketing sees the ceil(R / s) bucket means (with
  # s = 1, R rows in permuted order: mapped back all the same).
  mapped = values[bucket_of]
  return mapped / size.astype(mapped.dtype) if is_weight else mapped


def _full_batches(data: WorkerData, batch_size: int):
  """Every worker's whole shard as its batch (``Simulation.full_batch``)."""
  n_max = int(jnp.shape(data.y)[1])
  if batch_size != n_max:
    raise ValueError(
        f"full_batch=True needs batch_size equal to the shard length {n_max}, "
        f"got batch_size={batch_size}; set batch_size={n_max} or "
        "full_batch=False.")
  try:
    smallest = int(jnp.min(jnp.asarray(data.size)))
  except (jax.errors.ConcretizationTypeError,
          jax.errors.TracerArrayConversionError):
    smallest = n_max  # traced sizes: documented requirement
  if smallest != n_max:
    raise ValueError(
        f"full_batch=True needs every shard full ({n_max} rows), but one has "
        f"{smallest}; repartition into equal shards or set full_batch=False.")
  return data.x, data.y


def per_worker_value_and_grad(loss_fn: LossFn, params: PyTree, batches: Batch,
                              *, strategy: str = "auto", chunk: int = 8
                              ) -> tuple[jax.Array, PyTree]:
  """Losses ``[R]`` and stacked gradients ``(R, ...)`` of every worker's batch.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` on one worker's batch.
    params: the shared parameters.
    batches: the workers' batches, every leaf with a leading axis ``R``.
    strategy: ``"vmap"``, ``"chunked"`` or ``"auto"`` (see
      :class:`Simulation`, ``per_worker_grads``).
    chunk: workers per chunk for ``"chunked"``.

  Returns:
    ``(losses, grads)``; ``grads`` has the structure of ``params`` with a
    leading worker axis.
  """
  if strategy not in PER_WORKER_GRADS:
    raise ValueError(f"strategy must be one of {PER_WORKER_GRADS}, got "
                     f"{strategy!r}.")
  value_and_grad = jax.value_and_grad(loss_fn)
  if strategy == "chunked":
    return jax.lax.map(lambda b: value_and_grad(params, b), batches,
                       batch_size=chunk)
  return jax.vmap(value_and_grad, in_axes=(None, 0))(params, batches)


def _worker_batches(sim: Simulation, data: WorkerData, byzantine: jax.Array,
                    k_batch: jax.Array, k_data_attack: jax.Array) -> Batch:
  """Every worker's batch, through ``data_attack`` for Byzantine workers."""
  if sim.full_batch:
    x, y = _full_batches(data, sim.batch_size)
  else:
    x, y = sample_batches(k_batch, data, sim.batch_size)
  if sim.data_attack is not None:
    def attack_one(k, xi, yi, is_byz):
      ax, ay = sim.data_attack(k, xi, yi)
      return (jnp.where(is_byz, ax, xi).astype(xi.dtype),
              jnp.where(is_byz, ay, yi).astype(yi.dtype))
    x, y = jax.vmap(attack_one)(
        jax.random.split(k_data_attack, sim.num_workers), x, y, byzantine)
  return x, y


def _local_gradient_sums(sim: Simulation, params: PyTree, data: WorkerData,
                         byzantine: jax.Array, k_batch: jax.Array,
                         k_data_attack: jax.Array):
  """``H`` local SGD steps per worker (``Simulation.local_steps``).

  Returns the losses at the shared parameters ``[R]`` and every worker's
  sum of its ``H`` local gradients (stacked), as one ``lax.scan``.
  """
  value_and_grad = jax.vmap(jax.value_and_grad(sim.loss_fn))
  stacked = jax.tree.map(
      lambda p: jnp.broadcast_to(p, (sim.num_workers,) + jnp.shape(p)), params)

  def local_step(carry, h):
    local, total = carry
    batch = _worker_batches(sim, data, byzantine,
                            jax.random.fold_in(k_batch, h),
                            jax.random.fold_in(k_data_attack, h))
    losses, grads = value_and_grad(local, batch)
    local = jax.tree.map(lambda w, g: w - sim.local_lr * g, local, grads)
    total = jax.tree.map(jnp.add, total, grads)
    return (local, total), losses

  zeros = jax.tree.map(jnp.zeros_like, stacked)
  (_, total), losses = jax.lax.scan(
      local_step, (stacked, zeros), jnp.arange(sim.local_steps))
  return losses[0], total


def step(sim: Simulation, state: TrainState, data: WorkerData) -> tuple[
    TrainState, jax.Array]:
  """One training step; returns the new state and the honest mean loss.

  The honest mean loss is NaN when no worker is honest (possible only with a
  traced ``num_byzantine`` equal to ``num_workers``; a Python int is refused
  by :class:`Simulation`).

  Raises:
    ValueError: (at trace time) if ``data`` is not split for
      ``sim.num_workers`` workers.
  """
  _check_data(sim, data)
  key, k_byz, k_batch, k_data_attack, k_attack = jax.random.split(state.key, 5)
  byzantine = state.byzantine
  if sim.redraw_byzantine:
    byzantine = draw_byzantine(k_byz, sim.num_workers, sim.num_byzantine)

  if sim.local_steps == 1:
    x, y = _worker_batches(sim, data, byzantine, k_batch, k_data_attack)
    losses, grads = per_worker_value_and_grad(
        sim.loss_fn, state.params, (x, y), strategy=sim.per_worker_grads,
        chunk=sim.worker_chunk)
  else:
    losses, grads = _local_gradient_sums(sim, state.params, data, byzantine,
                                         k_batch, k_data_attack)

  worker_state = state.worker_state
  updates = grads
  if sim.worker_tx is not None:
    updates, worker_state = jax.vmap(sim.worker_tx.update,
                                     in_axes=(0, 0, None))(
                                         grads, worker_state, state.params)

  attack_state = state.attack_state
  if sim.attack is not None:
    updates, attack_state = sim.attack.update(
        updates, attack_state, state.params, byzantine=byzantine, key=k_attack)

  updates, server_state = sim.server_tx.update(updates, state.server_state,
                                               state.params)
  params = optax.apply_updates(state.params, updates)

  honest = (~byzantine).astype(losses.dtype)
  num_honest = jnp.sum(honest)
  # No honest worker (traced num_byzantine = R): NaN, never a plausible 0.0.
  honest_loss = jnp.where(
      num_honest > 0,
      jnp.sum(losses * honest) / jnp.maximum(num_honest, 1.0), jnp.nan)
  new_state = TrainState(params, worker_state, attack_state, server_state,
                         byzantine, key, state.step + 1)
  return new_state, honest_loss


def run(sim: Simulation, state: TrainState, data: WorkerData,
        num_evals: int) -> tuple[TrainState, dict[str, jax.Array]]:
  """Runs ``num_evals * sim.eval_every`` steps as one nested ``lax.scan``.

  Jit it with ``sim`` and ``num_evals`` closed over (``jax.jit(
  functools.partial(run, sim, num_evals=n))``) or call it inside a jitted or
  vmapped function. Calling ``run`` again on the returned state continues the
  same trajectory bit for bit (the key and all states are in ``state``).

  Returns:
    ``(final_state, metrics)`` where every metric has shape ``[num_evals]``:
    ``step``, ``train_loss`` (honest workers' mean loss, averaged over the
    round; NaN if no worker is honest, see :func:`step`), the ``eval_fn`` outputs and, when the aggregator keeps
    diagnostics, ``byz_kept``/``honest_dropped``/``byz_weight`` at the
    round's last step.
  """
  _checks.check_int("num_evals", num_evals, low=1)
  _check_data(sim, data)

  def round_fn(state, _):
    state, losses = jax.lax.scan(lambda s, _: step(sim, s, data), state,
                                 length=sim.eval_every, unroll=sim.unroll)
    metrics = {"step": state.step, "train_loss": jnp.mean(losses)}
    if sim.eval_fn is not None:
      metrics.update(sim.eval_fn(state.params))
    metrics.update(byzantine_diagnostics(state.server_state, state.byzantine))
    return state, metrics

  if num_evals == 1:
    # No loop around a single round, so that ``unroll=True`` leaves no loop
    # at all (see ``Simulation.unroll``).
    state, metrics = round_fn(state, None)
    return state, jax.tree.map(lambda m: m[None], metrics)
  return jax.lax.scan(round_fn, state, length=num_evals)
