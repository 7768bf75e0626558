"""optax wrappers around the compressors of :mod:`byzjax.compression`.

``compress(compressor, **hparams)`` lifts a pure compressor into a
single-worker transform; ``with_norm(tx)`` makes a worker's message carry the
norm of its uncompressed update as side information (Ghosh et al., arXiv
2019, Algorithm 1). Both are written for one worker; lift them to all workers with
:func:`~byzjax.transforms.per_worker.per_worker`.

**The message with side information.** ``with_norm`` returns a
:class:`NormMessage` ``(update, norm)`` instead of a bare update. Under
``per_worker`` its leaves are stacked: ``update`` has the worker axis on every
leaf and ``norm`` is a float32 vector ``[R]``: exactly the ``(updates,
norms)`` pair that :func:`byzjax.aggregators.norm_threshold.norm_threshold`
takes. :func:`using_sent_norms` adapts such an aggregator to receive the
message, so a chain reads

.. code-block:: python

  tx = optax.chain(
      per_worker(with_norm(compress(top_k, k=100)), num_workers),
      byzjax.aggregate(using_sent_norms(norm_threshold), trim_fraction=0.1),
      optax.sgd(lr))

Thresholding on the norms of the *compressed* messages instead (Ghosh et
al.'s Algorithm 2, for compressors that embed the norm) is plain
``aggregate(norm_threshold, ...)`` without ``with_norm``. The paper's
experiments (§7) send :math:`C(x) = \\{\\|x\\|_1/d,\\
\\operatorname{sign}(x)\\}` and threshold on the scaling factor
:math:`\\|x\\|_1/d`: ``with_norm(compress(scaled_sign), norm="l1_scale")``.
An attack placed between the two sees the whole message and can lie about
the norm as well (a :class:`NormMessage` is a pytree; the norm is one more
leaf with a worker axis).
"""

import functools
import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from byzjax import compression

PyTree = Any


class CompressState(NamedTuple):
  """State of :func:`compress` for a keyed compressor."""
  key: jax.Array  # typed PRNG key, shape (); split on every update


class NormMessage(NamedTuple):
  """A worker's message: a compressed update and the norm of the original.

  Under :func:`~byzjax.transforms.per_worker.per_worker` every leaf gains the
  worker axis: ``update`` leaves are ``[R, ...]`` and ``norm`` is ``[R]``.
  """
  update: PyTree    # the (compressed) update, shaped like the parameters
  norm: jax.Array   # float32, shape (): the scalar sent about the
                    # uncompressed input g (||g||_2, or ||g||_1/d)


def _as_typed_key(key: jax.Array) -> jax.Array:
  """Typed PRNG key from a typed or legacy ``uint32[2]`` key."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)


def compress(
    compressor: Callable[..., PyTree],
    *,
    key: jax.Array | None = None,
    **hparams: Any,
) -> optax.GradientTransformationExtraArgs:
  """Lifts a pure compressor into a single-worker optax transform.

  ``update(g) = compressor(g, **hparams)``. A keyed compressor (one with a
  ``key`` argument, such as :func:`~byzjax.compression.rand_k` or
  :func:`~byzjax.compression.qsgd`) needs ``key`` here: it is stored in the
  state as a typed key and split on every update, so consecutive steps draw
  fresh randomness. Under :func:`~byzjax.transforms.per_worker.per_worker`
  each worker's key is folded with its index.

  Extra keyword arguments of ``update`` that the compressor accepts are
  forwarded (e.g. ``coords`` for :func:`~byzjax.compression.shared_rand_k`,
  drawn by the server every step); the others are ignored, so the transform
  composes in :func:`optax.chain`.

  Args:
    compressor: a function ``compressor(updates, **hparams)`` from
      :mod:`byzjax.compression` (or any with that contract).
    key: PRNG key for a keyed compressor (typed or legacy); must be ``None``
      for a deterministic one.
    **hparams: hyperparameters closed over (``k``, ``levels``, ...).
      Shape-determining ones are validated on the first trace.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`; its state is
    :class:`CompressState` for a keyed compressor and
    :class:`optax.EmptyState` otherwise.

  Raises:
    ValueError: if ``key`` is missing for a keyed compressor or given for a
      deterministic one.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from byzjax.compression import qsgd, top_k
    >>> tx = compress(top_k, k=1)
    >>> sent, _ = tx.update({'w': jnp.array([1., -3., 2.])}, tx.init(None))
    >>> sent['w']
    Array([ 0., -3.,  0.], dtype=float32)
    >>> tx = compress(qsgd, levels=4, key=jax.random.key(0))
  """
  params_ = inspect.signature(compressor).parameters
  accepts_any = any(p.kind is p.VAR_KEYWORD for p in params_.values())
  keyed = "key" in params_
  name = getattr(compressor, "__name__", repr(compressor))
  if keyed and key is None:
    raise ValueError(f"key is required: compressor {name!r} is random.")
  if not keyed and key is not None:
    raise ValueError(
        f"key was given but compressor {name!r} takes no key.")
  if "key" in hparams:
    raise ValueError("key must be given as compress(..., key=...).")

  def init_fn(params):
    del params
    if keyed:
      return CompressState(_as_typed_key(jnp.asarray(key)))
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra):
    del params
    kwargs = dict(hparams)
    kwargs.update({k: v for k, v in extra.items()
                   if (k in params_ or accepts_any) and k != "key"})
    if keyed:
      next_key, sub = jax.random.split(state.key)
      return compressor(updates, key=sub, **kwargs), CompressState(next_key)
    return compressor(updates, **kwargs), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def with_norm(
    tx: optax.GradientTransformation | None = None,
    *,
    norm: str = "l2",
) -> optax.GradientTransformationExtraArgs:
  """Sends the norm of the uncompressed update next to the message.

  .. math::
    g \\mapsto \\bigl(\\mathrm{tx}(g),\\ \\|g\\|\\bigr)

  Ghosh et al.'s Algorithm 1 (arXiv version): every worker sends
  :math:`C(g_i) = \\{\\|g_i\\|_q, Q(g_i)\\}`, its compressed gradient
  *and* a norm of the uncompressed one, and the server drops the workers
  with the largest sent norms before averaging
  (:func:`~byzjax.aggregators.norm_threshold.norm_threshold` with
  ``norms=``; see :func:`using_sent_norms`). ``norm`` picks the scalar:

  * ``"l2"``: :math:`\\|g\\|_2` (:func:`byzjax.compression.l2_norm`);
  * ``"l1_scale"``: :math:`\\|g\\|_1 / d`
    (:func:`byzjax.compression.l1_scale`), the scaling factor of the
    paper's experiments (§7: :math:`C(x) = \\{\\|x\\|_1/d,
    \\operatorname{sign}(x)\\}`, "robustness ... comes from thresholding
    operation on the scaling factor"). With
    ``compress(scaled_sign)`` the message is then exactly the paper's.

  Both are overflow-safe and ``inf`` for a non-finite update.

  .. note::
    ``with_norm`` must be the outermost worker-side transform: its output is
    a :class:`NormMessage`, not an update, so nothing that expects an update
    (e.g. :func:`~byzjax.transforms.error_feedback.error_feedback`) can wrap
    it. Wrap the other way round, ``with_norm(error_feedback(...))``; the
    norm is then that of the raw gradient :math:`g`.

  Args:
    tx: the single-worker transform that produces the message, e.g.
      ``compress(top_k, k=...)``; ``None`` sends the update itself.
    norm: ``"l2"`` (default) or ``"l1_scale"``, the scalar sent.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose ``update``
    returns ``(NormMessage(update=sent, norm=norm), state)``; the state is
    ``tx``'s state (:class:`optax.EmptyState` for ``None``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.compression import sign
    >>> tx = with_norm(compress(sign))
    >>> msg, _ = tx.update({'w': jnp.array([3., -4.])}, tx.init(None))
    >>> msg.update['w'], msg.norm
    (Array([ 1., -1.], dtype=float32), Array(5., dtype=float32))

  Raises:
    ValueError: if ``norm`` is not one of ``"l2"``, ``"l1_scale"``.

  References:
    Ghosh, Maity, Kadhe, Mazumdar & Ramchandran, `Communication-Efficient and
    Byzantine-Robust Distributed Learning
    <https://arxiv.org/abs/1911.09721>`_, arXiv:1911.09721, 2019
    (Algorithm 1; §7).
  """
  norms = {"l2": compression.l2_norm, "l1_scale": compression.l1_scale}
  if norm not in norms:
    raise ValueError(
        f"norm must be one of {sorted(norms)}, got {norm!r}: \"l2\" sends "
        "||g||_2, \"l1_scale\" the scaling factor ||g||_1/d.")
  norm_fn = norms[norm]
  inner = optax.with_extra_args_support(
      optax.identity() if tx is None else tx)

  def init_fn(params):
    return inner.init(params)

  def update_fn(updates, state, params=None, **extra):
    sent, new_state = inner.update(updates, state, params, **extra)
    return NormMessage(update=sent, norm=norm_fn(updates)), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def using_sent_norms(
    aggregator: Callable[..., PyTree]) -> Callable[..., PyTree]:
  """Adapts a ``norms=``-taking aggregator to stacked :class:`NormMessage` s.

  ``using_sent_norms(f)(msg, **kw) = f(msg.update, norms=msg.norm, **kw)``.
  A plain stacked update (not a message) is passed through unchanged, with
  the aggregator computing norms itself. The returned function carries
  ``aggregator``'s signature (``functools.wraps``), so
  :func:`byzjax.aggregate` forwards the same hyperparameters and extras as
  for ``aggregator`` itself.

  Args:
    aggregator: an aggregator with a ``norms`` keyword argument, e.g.
      :func:`~byzjax.aggregators.norm_threshold.norm_threshold`.

  Returns:
    An aggregator taking a stacked :class:`NormMessage`.

  Raises:
    ValueError: if ``aggregator`` has no ``norms`` argument.
  """
  if "norms" not in inspect.signature(aggregator).parameters:
    raise ValueError(
        f"aggregator {getattr(aggregator, '__name__', aggregator)!r} has no "
        "`norms` argument.")

  @functools.wraps(aggregator)
  def wrapped(updates, *args, **kwargs):
    if isinstance(updates, NormMessage):
      kwargs["norms"] = updates.norm
      updates = updates.update
    return aggregator(updates, *args, **kwargs)

  return wrapped
