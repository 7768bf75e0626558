"""Gradient attacks: rewrite the Byzantine workers' rows of the stacked updates.

Every attack exists in two forms:

* a **pure function** ``attack(stacked, byzantine, *, hparams..., key=...)``
  that takes the stacked updates (every leaf has a leading worker axis
  ``R``) and a boolean mask ``byzantine`` of shape ``[R]``, and returns the
  stacked updates with the Byzantine rows replaced. Honest rows are returned
  bit for bit (``jnp.where`` on the mask), so an attack can never perturb an
  honest worker;
* an **optax transform** ``<attack>_attack(...)`` (built by
  :func:`gradient_attack`) to place in a chain between the worker-side
  transforms and the aggregator (simulation only):

  .. code-block:: python

    tx = optax.chain(
        per_worker(compress(top_k, k=100), num_workers),
        alie_attack(),
        byzjax.aggregate(geometric_median),
        optax.sgd(lr))
    updates, state = tx.update(stacked_grads, state, byzantine=mask)

Conventions:

* **Who is Byzantine.** The mask is a per-step keyword extra argument
  ``byzantine=`` of the transform's ``update`` (forwarded by
  :func:`optax.chain`), so the simulator can keep a fixed set or redraw it
  every step. Without it, the transform falls back to its factory argument
  ``num_byzantine=f``: the first ``f`` workers are Byzantine.
* **Randomness.** Pure functions take an explicit ``key``. Transforms carry
  the key in their state (:class:`GradientAttackState`), given as the
  factory argument ``key=`` and split on every update, so a per-step key is
  never shared with other transforms of the chain by accident.
* **Omniscience.** Attacks that use statistics of the honest workers (ALIE,
  IPM, annulus) see every honest row of the current step. Honest rows that
  are themselves erasures (a non-finite entry) are left out of those
  statistics.
* **Non-finite messages.** :func:`constant` sends NaN, Inf, 1e30 or 3e38;
  :func:`silence` sends NaN rows, which every aggregator treats as an
  erasure (DESIGN.md, Contracts: any non-finite entry).

The attacks can be stacked in one chain (e.g. an attack on some workers and
silence on others) by giving each its own mask in a wrapper, since a
transform leaves the rows outside its mask untouched.

References:
  Acharya et al., `Robust Training in High Dimensions via Block Coordinate
  Geometric Median Descent <https://arxiv.org/abs/2106.08882>`_, 2022
  (additive N(0, 100) noise and scaled bit flip -100 g).

  Ghosh et al., `Communication-Efficient and Byzantine-Robust Distributed
  Learning with Error Feedback <https://arxiv.org/abs/1911.09721>`_, 2020
  (additive N(0, 10 I) noise).

  Baruch, Baruch & Goldberg, `A Little Is Enough: Circumventing Defenses
  For Distributed Learning <https://arxiv.org/abs/1902.06156>`_, 2019.

  Xie, Koyejo & Gupta, `Fall of Empires: Breaking Byzantine-tolerant SGD by
  Inner Product Manipulation <https://arxiv.org/abs/1903.03936>`_, 2020.

  Data & Diggavi, `Byzantine-Resilient SGD in High Dimensions on
  Heterogeneous Data <https://arxiv.org/abs/2005.07866>`_, 2021.

  Bagdasaryan et al., `How To Backdoor Federated Learning
  <https://arxiv.org/abs/1807.00459>`_, AISTATS 2020 (model replacement).

The adaptive attacks (mimic, optimised ALIE/IPM, MinMax/MinSum, Fang et al.)
are in :mod:`byzjax.attacks.adaptive`.
"""

import functools
import inspect
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from byzjax import _checks
from byzjax import tree as btree
from byzjax._public import public

PyTree = Any


class GradientAttackState(NamedTuple):
  """State of a gradient attack transform."""
  key: jax.Array | None  # typed PRNG key, shape (), split on every update;
  #                        None for deterministic attacks


# ---------------------------------------------------------------------------
# Private helpers.


def _rows_of(leaf: jax.Array, mask: jax.Array) -> jax.Array:
  """Broadcasts a per-worker vector ``[R]`` against a stacked leaf."""
  return jnp.reshape(mask, (-1,) + (1,) * (leaf.ndim - 1))


def _check_mask(stacked: PyTree, byzantine) -> jax.Array:
  r = btree.num_workers(stacked)
  if byzantine is None:
    raise ValueError(
        "byzantine: a boolean mask of shape (num_workers,) is required.")
  byzantine = jnp.asarray(byzantine)
  _checks.check_worker_vector("byzantine", byzantine, r)
  return byzantine.astype(bool)


def _replace_rows(stacked: PyTree, byzantine: jax.Array,
                  attacked: PyTree) -> PyTree:
  """Byzantine rows from ``attacked`` (broadcast), honest rows unchanged."""
  return jax.tree.map(
      lambda x, a: jnp.where(_rows_of(x, byzantine),
                             jnp.broadcast_to(a, x.shape).astype(x.dtype), x),
      stacked, attacked)


def _leaf_keys(key: jax.Array, tree: PyTree) -> PyTree:
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))


def _require_key(key, name: str) -> None:
  if key is None:
    raise ValueError(f"key is required: the {name} attack is random.")


def _reference(stacked: PyTree, byzantine: jax.Array):
  """Honest, live rows (zeroed elsewhere), their mask and their count."""
  ref = ~byzantine & btree.live_workers(stacked)
  clean = btree.mask_workers(stacked, ref)
  count = jnp.sum(ref)
  return clean, ref, count


def _honest_mean(clean: PyTree, ref: jax.Array, count: jax.Array) -> PyTree:
  # weights <= 1 multiply before summing, so rows of 3e38 do not overflow.
  w = ref / jnp.maximum(count, 1)
  return btree.weighted_sum(w, clean)


def _tree_unit(tree: PyTree) -> PyTree:
  """``tree / ||tree||`` (overflow-safe); zeros for a zero tree."""
  norm = btree.worker_norms(jax.tree.map(lambda x: x[None], tree))[0]
  e = btree.pow2_exponent(norm)
  mant = jnp.ldexp(norm, -e)
  safe = jnp.where(mant > 0, mant, 1.0)
  return jax.tree.map(lambda x: jnp.ldexp(x, -e) / safe.astype(x.dtype), tree)


# ---------------------------------------------------------------------------
# Pure attacks.

# One compiled program per shape and hyperparameters for eager calls; no
# upcast (honest rows come back bit for bit, in their own dtype).
_attack = public(upcast=False, stacked_output=True)


@_attack
def gaussian_noise(stacked: PyTree, byzantine: jax.Array, *,
                   key: jax.Array | None = None,
                   variance: float = 100.0) -> PyTree:
  """Adds Gaussian noise to the Byzantine rows: :math:`g_i + \\xi_i`.

  :math:`\\xi_i \\sim \\mathcal{N}(0, \\sigma^2 I)` i.i.d. per Byzantine
  worker, :math:`\\sigma^2` = ``variance``. BGMD uses :math:`\\sigma^2 = 100`
  (the default); Ghosh et al. use :math:`\\sigma^2 = 10`.

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    key: PRNG key (required).
    variance: noise variance :math:`\\sigma^2 \\ge 0`.

  Returns:
    The stacked updates with the Byzantine rows rewritten.
  """
  byzantine = _check_mask(stacked, byzantine)
  _checks.check_positive("variance", variance, allow_zero=True)
  _require_key(key, "gaussian_noise")
  std = variance ** 0.5
  noisy = jax.tree.map(
      lambda x, k: x + std * jax.random.normal(k, x.shape, x.dtype),
      stacked, _leaf_keys(key, stacked))
  return _replace_rows(stacked, byzantine, noisy)


@_attack
def bit_flip(stacked: PyTree, byzantine: jax.Array, *,
             scale: float = 100.0) -> PyTree:
  """Scaled bit flip: Byzantine workers send :math:`-c\\, g_i`.

  BGMD's "scaled bit flip" uses :math:`c = 100` (the default). Products
  beyond the float range saturate at the largest finite float (the attacker
  sends a huge finite message, not an erasure).

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    scale: the factor :math:`c > 0`.

  Returns:
    The stacked updates with the Byzantine rows rewritten.
  """
  byzantine = _check_mask(stacked, byzantine)
  _checks.check_positive("scale", scale)
  flipped = jax.tree.map(lambda x: btree.saturate(jnp.asarray(x) * -scale),
                         stacked)
  return _replace_rows(stacked, byzantine, flipped)


@_attack
def model_replacement(stacked: PyTree, byzantine: jax.Array, *,
                      scale: float | None = None) -> PyTree:
  """Model replacement (scaling): Byzantine workers send :math:`\\gamma g_i`.

  Bagdasaryan et al. (AISTATS 2020, "model replacement": the scaled
  update that replaces the global model) boost a backdoored update so that it survives averaging:
  with :math:`n` participants and server learning rate :math:`\\eta`, the
  attacker sends :math:`\\gamma (X - G^t)` with :math:`\\gamma = n/\\eta`,
  so that the new global model is (about) its backdoored model :math:`X`.
  Here each Byzantine worker scales its own update :math:`g_i` (computed
  on its batch, e.g. poisoned by :func:`byzjax.attacks.backdoor`) by
  ``scale``; by default :math:`\\gamma = R / f` with :math:`f` the number of
  Byzantine workers this step (:math:`n/\\eta` with :math:`\\eta = 1`, shared
  by the :math:`f` attackers), so that the mean of the ``R`` updates is the
  Byzantine workers' mean update plus :math:`\\frac{1}{R}` times the honest
  sum. Combine it with the backdoor data attack for the paper's attack:

  .. code-block:: python

    Simulation(..., data_attack=byzjax.attacks.backdoor(target_label,
                                                       trigger_mask=patch),
               attack=byzjax.attacks.model_replacement_attack())

  Products beyond the float range saturate at the largest finite float.

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    scale: :math:`\\gamma > 0`; ``None`` for :math:`R / f`.

  Returns:
    The stacked updates with the Byzantine rows rewritten.

  References:
    Bagdasaryan, Veit, Hua, Estrin & Shmatikov, `How To Backdoor Federated
    Learning <https://arxiv.org/abs/1807.00459>`_, AISTATS 2020.
  """
  byzantine = _check_mask(stacked, byzantine)
  if scale is not None:
    _checks.check_positive("scale", scale)
    gamma = jnp.asarray(scale, jnp.float32)
  else:
    r = btree.num_workers(stacked)
    gamma = r / jnp.maximum(jnp.sum(byzantine), 1).astype(jnp.float32)
  boosted = jax.tree.map(
      lambda x: btree.saturate(jnp.asarray(x) * gamma.astype(x.dtype)),
      stacked)
  return _replace_rows(stacked, byzantine, boosted)


@_attack
def sign_flip(stacked: PyTree, byzantine: jax.Array, *,
              reference: str = "own") -> PyTree:
  """Sign flip: Byzantine workers send :math:`-g_i` (or minus the honest mean).

  With ``reference="own"`` (the default) each Byzantine worker flips its own
  gradient, :math:`-g_i`: a worker that computed an honest gradient and
  sends its negative, the sign-flipping fault of the literature. Some
  libraries (ByzFL's ``SignFlipping``, for one) instead have every Byzantine
  worker send the negated mean of the honest workers,
  :math:`-\\frac{1}{|H|}\\sum_{i \\in H} g_i` (an omniscient attack, the same
  as :func:`ipm` with :math:`\\varepsilon = 1`); ``reference="honest_mean"``
  gives that convention. Honest rows that are erasures are left out of the
  mean.

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    reference: ``"own"`` (:math:`-g_i`) or ``"honest_mean"`` (minus the mean
      of the honest live workers).

  Returns:
    The stacked updates with the Byzantine rows rewritten.
  """
  byzantine = _check_mask(stacked, byzantine)
  if reference == "own":
    flipped = jax.tree.map(jnp.negative, stacked)
  elif reference == "honest_mean":
    clean, ref, count = _reference(stacked, byzantine)
    flipped = jax.tree.map(lambda m: -m[None],
                           _honest_mean(clean, ref, count))
  else:
    raise ValueError(
        f"reference must be 'own' or 'honest_mean', got {reference!r}.")
  return _replace_rows(stacked, byzantine, flipped)


@_attack
def random_gaussian(stacked: PyTree, byzantine: jax.Array, *,
                    key: jax.Array | None = None, mean: float = 0.0,
                    variance: float = 100.0) -> PyTree:
  """Byzantine workers send random vectors :math:`\\mathcal{N}(m, \\sigma^2 I)`.

  Unlike :func:`gaussian_noise` the gradient is discarded.

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    key: PRNG key (required).
    mean: the mean :math:`m` of every coordinate.
    variance: the variance :math:`\\sigma^2 \\ge 0`.

  Returns:
    The stacked updates with the Byzantine rows rewritten.
  """
  byzantine = _check_mask(stacked, byzantine)
  _checks.check_positive("variance", variance, allow_zero=True)
  _checks.check_finite("mean", mean)
  _require_key(key, "random_gaussian")
  std = variance ** 0.5
  rand = jax.tree.map(
      lambda x, k: mean + std * jax.random.normal(k, x.shape, x.dtype),
      stacked, _leaf_keys(key, stacked))
  return _replace_rows(stacked, byzantine, rand)


def alie_z_max(num_workers, num_byzantine) -> jax.Array:
  """ALIE's :math:`z_{\\max}` (Baruch et al. 2019, Algorithm 3).

  .. math::
    s = \\lfloor n/2 + 1 \\rfloor - f, \\qquad
    z_{\\max} = \\Phi^{-1}\\Bigl(\\frac{n - s}{n}\\Bigr)

  with :math:`n` workers of which :math:`f` are Byzantine and :math:`\\Phi`
  the standard normal CDF: the largest :math:`z` such that the :math:`s`
  honest workers needed for a majority are still, in expectation, farther
  from the mean than the attackers. The probability is clipped to
  :math:`[10^{-6}, 1 - 10^{-6}]` so that :math:`z` stays finite when
  :math:`f > n/2`, where the formula has no meaning.

  Args:
    num_workers: :math:`n` (int or traced int).
    num_byzantine: :math:`f` (int or traced int).

  Returns:
    A float32 scalar.
  """
  n = jnp.asarray(num_workers, jnp.float32)
  f = jnp.asarray(num_byzantine, jnp.float32)
  s = jnp.floor(n / 2 + 1) - f
  p = jnp.clip((n - s) / n, 1e-6, 1 - 1e-6)
  return jax.scipy.special.ndtri(p).astype(jnp.float32)


@_attack
def alie(stacked: PyTree, byzantine: jax.Array, *,
         z: float | None = None) -> PyTree:
  """"A little is enough" (ALIE): :math:`\\mu_j - z \\sigma_j` per coordinate.

  Every Byzantine worker sends

  .. math::
    p_j = \\mu_j - z \\, \\sigma_j,

  where :math:`\\mu_j` and :math:`\\sigma_j` are the mean and (population,
  ``ddof=0``) standard deviation of coordinate :math:`j` over the honest
  workers, and :math:`z` is given or, by default, :func:`alie_z_max` with
  :math:`n = R` and :math:`f` the number of Byzantine workers this step
  (Baruch et al. 2019, Algorithm 3). The standard deviation is computed in
  power-of-two-scaled units, so honest rows of 1e30 do not overflow it.

  The default :math:`z` is the paper's,
  :math:`\\Phi^{-1}((n - s)/n)` with :math:`s = \\lfloor n/2 + 1\\rfloor - f`
  (:func:`alie_z_max`). Several public implementations (Blades, for one)
  take the quantile over the honest workers only,
  :math:`\\Phi^{-1}((n - f - s)/(n - f))`, which is smaller (e.g. 0.16
  against 0.39 for ``n = 20, f = 4``); to reproduce results obtained with
  that convention, pass it as ``z``.

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    z: the number of standard deviations; ``None`` for :math:`z_{\\max}`.

  Returns:
    The stacked updates with the Byzantine rows rewritten.

  References:
    Baruch, Baruch & Goldberg, `A Little Is Enough: Circumventing Defenses
    For Distributed Learning <https://arxiv.org/abs/1902.06156>`_, 2019.
  """
  byzantine = _check_mask(stacked, byzantine)
  if z is not None:
    _checks.check_finite("z", z)
  r = btree.num_workers(stacked)
  clean, ref, count = _reference(stacked, byzantine)
  mu = _honest_mean(clean, ref, count)
  if z is None:
    z_val = alie_z_max(r, jnp.sum(byzantine))
  else:
    z_val = jnp.asarray(z, jnp.float32)
  w = ref / jnp.maximum(count, 1)

  def leaf_attack(x, m):
    dev = jnp.where(_rows_of(x, ref), x - m[None], 0.0)
    e = btree.pow2_exponent(jnp.max(jnp.abs(dev), axis=0))  # per coordinate
    scaled = jnp.ldexp(dev, e[None] * -1)
    var = jnp.tensordot(w.astype(x.dtype), jnp.square(scaled), axes=1)
    sigma = jnp.ldexp(jnp.sqrt(var), e)
    return btree.saturate(m - z_val.astype(x.dtype) * sigma)

  attacked = jax.tree.map(leaf_attack, clean, mu)
  return _replace_rows(stacked, byzantine, jax.tree.map(lambda a: a[None],
                                                        attacked))


@_attack
def ipm(stacked: PyTree, byzantine: jax.Array, *,
        epsilon: float = 0.1) -> PyTree:
  """Inner-product manipulation: :math:`-\\varepsilon` times the honest mean.

  Every Byzantine worker sends :math:`-\\varepsilon` times the mean of the
  honest workers' updates (Xie et al. 2020, §4): a small :math:`\\varepsilon`
  (0.1) breaks Krum and coordinate-wise median, a large one (e.g. 100) the
  mean, by making the inner product of the aggregate with the true gradient
  negative.

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    epsilon: :math:`\\varepsilon > 0`.

  Returns:
    The stacked updates with the Byzantine rows rewritten.

  References:
    Xie, Koyejo & Gupta, `Fall of Empires: Breaking Byzantine-tolerant SGD
    by Inner Product Manipulation <https://arxiv.org/abs/1903.03936>`_, 2020.
  """
  byzantine = _check_mask(stacked, byzantine)
  _checks.check_positive("epsilon", epsilon)
  clean, ref, count = _reference(stacked, byzantine)
  mu = _honest_mean(clean, ref, count)
  attacked = jax.tree.map(lambda m: btree.saturate(-epsilon * m)[None], mu)
  return _replace_rows(stacked, byzantine, attacked)


@public(upcast=False, stacked_output=True, like_update=("direction",))
def annulus(stacked: PyTree, byzantine: jax.Array, *,
            key: jax.Array | None = None, direction: PyTree | None = None,
            radius_scale: float = 1.0) -> PyTree:
  """Annulus attack: corrupt points at the honest distance, along one direction.

  Construction (after the experiments of Data & Diggavi, whose filter
  detects corrupt points by the variance they add along one direction):

  .. math::
    \\mu = \\tfrac{1}{|H|} \\sum_{i \\in H} g_i, \\qquad
    \\rho = \\operatorname{median}_{i \\in H} \\|g_i - \\mu\\|, \\qquad
    b = \\mu + c \\, \\rho \\, u,

  and every Byzantine worker sends the same :math:`b`. Here :math:`H` is the
  set of honest live workers, :math:`c` = ``radius_scale`` and :math:`u` a
  unit vector: ``direction`` normalized, or, by default, a uniformly random
  direction (a normalized Gaussian tree drawn from ``key``; drawn again on
  each call with a fresh key). Each corrupt point lies in the annulus of the
  honest points (its distance :math:`c\\rho` to their mean is typical, so
  norm or distance filters do not reject it), but all corrupt points are
  shifted the same way, which moves the mean by :math:`\\varepsilon c \\rho`
  along :math:`u` and adds variance :math:`\\approx \\varepsilon c^2 \\rho^2`
  in that one direction: the signature the spectral filter looks for.
  Distances use overflow-safe norms (:func:`byzjax.tree.worker_norms`);
  :math:`\\rho` is the lower median.

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    key: PRNG key for the random direction (required if ``direction`` is
      ``None``).
    direction: optional tree shaped like one worker's update giving
      :math:`u` (normalized here; a zero tree sends :math:`\\mu`).
    radius_scale: :math:`c \\ge 0`.

  Returns:
    The stacked updates with the Byzantine rows rewritten.

  References:
    Data & Diggavi, `Byzantine-Resilient SGD in High Dimensions on
    Heterogeneous Data <https://arxiv.org/abs/2005.07866>`_, 2021.
  """
  byzantine = _check_mask(stacked, byzantine)
  _checks.check_positive("radius_scale", radius_scale, allow_zero=True)
  clean, ref, count = _reference(stacked, byzantine)
  mu = _honest_mean(clean, ref, count)
  if direction is None:
    _require_key(key, "annulus (without a direction)")
    direction = jax.tree.map(
        lambda m, k: jax.random.normal(k, m.shape, m.dtype),
        mu, _leaf_keys(key, mu))
  unit = _tree_unit(direction)
  dist = btree.worker_norms(
      jax.tree.map(lambda x, m: x - m[None], clean, mu))
  ordered = jnp.sort(jnp.where(ref, dist, jnp.inf))
  rho = ordered[jnp.maximum(count - 1, 0) // 2]
  rho = jnp.where(count > 0, rho, 0.0)
  attacked = jax.tree.map(
      lambda m, u: btree.saturate(
          m + (radius_scale * rho).astype(m.dtype) * u)[None],
      mu, unit)
  return _replace_rows(stacked, byzantine, attacked)


@_attack
def constant(stacked: PyTree, byzantine: jax.Array, *, value: float) -> PyTree:
  """Byzantine workers send every entry equal to ``value``.

  ``value=nan`` or ``inf`` sends an erasure, ``1e30`` or ``3e38`` (or their
  negatives) a huge finite message that must not overflow an aggregator.

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.
    value: the value of every entry (any float, including NaN and Inf).

  Returns:
    The stacked updates with the Byzantine rows rewritten.
  """
  byzantine = _check_mask(stacked, byzantine)
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"value must be a Python float, got {value!r}.")
  filled = jax.tree.map(lambda x: jnp.full((1,) + x.shape[1:], value, x.dtype),
                        stacked)
  return _replace_rows(stacked, byzantine, filled)


@_attack
def silence(stacked: PyTree, byzantine: jax.Array) -> PyTree:
  """Byzantine workers send nothing: their rows become NaN (erasures).

  Args:
    stacked: stacked updates, leaves ``[R, ...]``.
    byzantine: boolean mask ``[R]``.

  Returns:
    The stacked updates with the Byzantine rows set to NaN.
  """
  return constant(stacked, byzantine, value=float("nan"))


# ---------------------------------------------------------------------------
# Transforms.


def gradient_attack(
    attack: Callable[..., PyTree],
    *,
    key: jax.Array | None = None,
    num_byzantine: int | None = None,
    **hparams: Any,
) -> optax.GradientTransformationExtraArgs:
  """Lifts a pure attack into an optax transform over the stacked updates.

  ``update(stacked, state, params=None, *, byzantine=None)`` returns
  ``attack(stacked, byzantine, **hparams)`` (with ``key=`` a fresh subkey of
  the state's key when the transform holds one). Other extra arguments are
  ignored, so the transform composes in :func:`optax.chain`.

  Args:
    attack: a pure attack ``attack(stacked, byzantine, **hparams)`` of this
      module (or any function with that contract).
    key: PRNG key (typed or legacy) for a random attack; it is stored in the
      state as a typed key and split on every update.
    num_byzantine: default Byzantine set when ``update`` gets no
      ``byzantine=`` mask: the first ``num_byzantine`` workers.
    **hparams: the attack's hyperparameters, closed over.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`GradientAttackState`.

  Raises:
    ValueError: if ``key`` is given to an attack without a ``key`` argument,
      or ``num_byzantine`` is not a non-negative int; at trace time, if no
      mask is available or it has the wrong shape.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> tx = gradient_attack(sign_flip)
    >>> x = {'w': jnp.array([[1., 2.], [3., 4.], [5., 6.]])}
    >>> out, _ = tx.update(x, tx.init(None),
    ...                    byzantine=jnp.array([False, True, False]))
    >>> out['w']
    Array([[ 1.,  2.],
           [-3., -4.],
           [ 5.,  6.]], dtype=float32)
  """
  params_ = inspect.signature(attack).parameters
  name = getattr(attack, "__name__", repr(attack))
  if key is not None and "key" not in params_:
    raise ValueError(f"key was given but attack {name!r} takes no key.")
  if num_byzantine is not None:
    _checks.check_int("num_byzantine", num_byzantine, low=0)
  if "key" in hparams or "byzantine" in hparams:
    raise ValueError(
        "key and byzantine are not hyperparameters: pass key= to the factory "
        "and byzantine= to update.")

  def init_fn(params):
    del params
    if key is None:
      return GradientAttackState(key=None)
    k = jnp.asarray(key)
    if not jnp.issubdtype(k.dtype, jax.dtypes.prng_key):
      k = jax.random.wrap_key_data(k)
    return GradientAttackState(key=k)

  def update_fn(updates, state, params=None, *, byzantine=None, **extra):
    del params, extra
    if byzantine is None:
      if num_byzantine is None:
        raise ValueError(
            "byzantine: pass a boolean mask update(..., byzantine=mask) or "
            "build the attack with num_byzantine=.")
      r = btree.num_workers(updates)
      if num_byzantine > r:
        raise ValueError(
            f"num_byzantine must lie in [0, {r}], got {num_byzantine}.")
      byzantine = jnp.arange(r) < num_byzantine
    kwargs = dict(hparams)
    new_state = state
    if state.key is not None:
      next_key, sub = jax.random.split(state.key)
      kwargs["key"] = sub
      new_state = GradientAttackState(key=next_key)
    return attack(updates, byzantine, **kwargs), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _factory(attack, *, keyed: str):
  """Builds ``<attack>_attack(**hparams)`` around :func:`gradient_attack`.

  ``keyed``: ``"required"``, ``"optional"`` (annulus: a key unless a
  direction is given) or ``"no"``.
  """
  name = attack.__name__

  def factory(*, key=None, num_byzantine=None, **hparams):
    needs_key = keyed == "required" or (
        keyed == "optional" and hparams.get("direction") is None)
    if needs_key and key is None:
      raise ValueError(f"key is required: the {name} attack is random.")
    # Validate the scalar hyperparameters (and catch unknown names) now, on
    # a dummy input, rather than at the first trace. Tree-valued ones (an
    # annulus direction) are checked at the first trace.
    scalars = {k: v for k, v in hparams.items()
               if not (hasattr(v, "shape") or isinstance(v, (dict, list, tuple))
                       or jax.tree.structure(v).num_nodes > 1)}
    unknown = set(hparams) - set(inspect.signature(attack).parameters)
    if unknown:
      raise ValueError(f"{name} has no hyperparameter(s) {sorted(unknown)}.")
    if keyed != "no":
      scalars["key"] = jax.random.key(0)
    jax.eval_shape(functools.partial(attack, **scalars),
                   {"w": jnp.zeros((2, 1), jnp.float32)},
                   jnp.array([True, False]))
    return gradient_attack(attack, key=key, num_byzantine=num_byzantine,
                           **hparams)

  factory.__name__ = f"{name}_attack"
  factory.__qualname__ = factory.__name__
  factory.__doc__ = (
      f"Transform form of :func:`{name}`: ``gradient_attack({name}, "
      "**hparams)``.\n\n"
      "See :func:`gradient_attack` for ``key=``, ``num_byzantine=`` and the "
      f"``byzantine=`` mask of ``update``, and :func:`{name}` for the "
      "hyperparameters, which are validated here.")
  return factory


gaussian_noise_attack = _factory(gaussian_noise, keyed="required")
bit_flip_attack = _factory(bit_flip, keyed="no")
model_replacement_attack = _factory(model_replacement, keyed="no")
sign_flip_attack = _factory(sign_flip, keyed="no")
random_gaussian_attack = _factory(random_gaussian, keyed="required")
alie_attack = _factory(alie, keyed="no")
ipm_attack = _factory(ipm, keyed="no")
annulus_attack = _factory(annulus, keyed="optional")
constant_attack = _factory(constant, keyed="no")
silence_attack = _factory(silence, keyed="no")
