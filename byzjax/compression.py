"""Pure, jittable compressors of one worker's update.

Every compressor maps one worker's update (a pytree shaped like the
parameters) to a pytree of the same structure, shapes and dtypes: the vector
the worker sends. Under :func:`byzjax.transforms.per_worker` (or a plain
:func:`jax.vmap`) they run for all workers at once. :func:`compress
<byzjax.transforms.compress.compress>` lifts any of them into an optax
transform, and :func:`error_feedback
<byzjax.transforms.error_feedback.error_feedback>` adds memory.

With :math:`x \\in \\mathbb{R}^d` the whole update (all leaves together,
:math:`d` the total number of entries):

* :func:`sign`: :math:`\\operatorname{sign}(x)`;
* :func:`scaled_sign`: :math:`\\tfrac{\\|x\\|_1}{d} \\operatorname{sign}(x)`
  (its scale alone: :func:`l1_scale`);
* :func:`top_k`: the :math:`k` largest :math:`|x_j|`, zeros elsewhere;
* :func:`rand_k`: :math:`k` uniform coordinates scaled by :math:`d/k`
  (unbiased);
* :func:`qsgd`: stochastic quantisation to ``levels`` levels (unbiased);
* :func:`shared_rand_k`: the :math:`k` coordinates drawn by the server and
  shared by all workers, scaled by :math:`d/k` (Data & Diggavi's
  Algorithm 2, line 7; :func:`draw_coordinates`,
  :func:`gather_coordinates`, :func:`scatter_coordinates`).

``scaled_sign`` (the :math:`\\ell_1`-QSGD of Ghosh et al.) and ``top_k`` are
:math:`\\delta`-approximate compressors (Ghosh et al., arXiv 2019, Definition 4:
:math:`\\|Q(x) - x\\|^2 \\le (1 - \\delta) \\|x\\|^2`) with
:math:`\\delta = \\|x\\|_1^2 / (d \\|x\\|_2^2)` and :math:`\\delta \\ge k/d`.

Conventions shared by all compressors:

* **Erasures stay erasures.** If the input has any NaN or Inf entry, the
  whole output is NaN, so the server still sees an erased message (a
  compressor such as ``top_k`` or ``rand_k`` could otherwise drop the bad
  entry, and ``sign`` maps Inf to a valid ``1``).
* **Overflow.** Norms are computed after scaling by a power of two, so inputs
  of 1e30 or 3e38 give finite messages (``scaled_sign`` of a row of 3e38 is
  3e38 times the signs, not ``inf``); the ``d/k`` scaling of ``rand_k`` and
  ``shared_rand_k`` and the norm of ``qsgd`` saturate at the largest finite
  float.
* **Randomness** comes only from an explicit ``key`` argument.
* Hyperparameters that fix shapes (``k``, ``levels``) are Python ints,
  validated at trace time with a ``ValueError`` naming them.

Coordinate-global selection (``top_k``, ``rand_k``, ``shared_rand_k``) works
on the concatenation of the leaves' scores (one float per entry); it is the
only place where leaves are concatenated, because "the k largest entries of
the whole update" is by definition a global decision.

References:
  Ghosh, Maity, Kadhe, Mazumdar & Ramchandran, `Communication-Efficient and
  Byzantine-Robust Distributed Learning <https://arxiv.org/abs/1911.09721>`_,
  arXiv:1911.09721, 2019 (§3, compressors; §7, the scaling factor
  :math:`\|x\|_1/d`).

  Alistarh, Grubic, Li, Tomioka & Vojnovic, `QSGD: Communication-Efficient
  SGD via Gradient Quantization and Encoding
  <https://arxiv.org/abs/1610.02132>`_, 2017.

  Data & Diggavi, `Byzantine-Resilient SGD in High Dimensions on
  Heterogeneous Data <https://arxiv.org/abs/2005.07866>`_, 2021 (§5.2,
  Algorithm 2: rand-k with coordinates chosen by the server, each worker
  sending :math:`\tfrac{d}{k}\operatorname{select}_K(p_r)`).

  Bernstein, Wang, Azizzadenesheli & Anandkumar, `signSGD: Compressed
  Optimisation for Non-Convex Problems <https://arxiv.org/abs/1802.04434>`_,
  2018.
"""

from typing import Any

import jax
import jax.numpy as jnp

from byzjax import _checks
from byzjax import tree as btree

PyTree = Any


# ---------------------------------------------------------------------------
# Private helpers.


def _size(tree: PyTree) -> int:
  """Total number of entries ``d`` of a (single-worker) pytree."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError("updates: the pytree has no leaves.")
  return int(sum(jnp.size(leaf) for leaf in leaves))


def _offsets(tree: PyTree) -> list[tuple[int, int]]:
  """``(offset, size)`` of every leaf in the global coordinate order."""
  out, off = [], 0
  for leaf in jax.tree.leaves(tree):
    n = int(jnp.size(leaf))
    out.append((off, n))
    off += n
  return out


def _all_finite(tree: PyTree) -> jax.Array:
  """Whether every entry of the tree is finite (boolean scalar)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


def _keep_erasure(x: PyTree, out: PyTree) -> PyTree:
  """All-NaN output where the input had any non-finite entry."""
  ok = _all_finite(x)
  return jax.tree.map(lambda o: jnp.where(ok, o, jnp.nan).astype(o.dtype), out)


def _max_abs(tree: PyTree) -> jax.Array:
  return jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32)
                            for x in jax.tree.leaves(tree)]))


def l2_norm(updates: PyTree) -> jax.Array:
  """Overflow-safe Euclidean norm of one worker's whole update (float32).

  The update is scaled by a power of two near its largest entry before
  squaring, so entries of 1e30 or 3e38 give their true norm (``inf`` only if
  the norm itself exceeds the float32 range). An input with a NaN or Inf
  entry has norm ``inf``.

  Args:
    updates: a pytree (one worker's update, no worker axis).

  Returns:
    A float32 scalar.
  """
  m = _max_abs(updates)
  e = btree.pow2_exponent(m)
  sq = sum(jnp.sum(jnp.square(jnp.ldexp(x.astype(jnp.float32), -e)))
           for x in jax.tree.leaves(updates))
  norm = jnp.ldexp(jnp.sqrt(sq), e)
  return jnp.where(jnp.isnan(norm), jnp.inf, norm)


def l1_scale(updates: PyTree) -> jax.Array:
  """Overflow-safe scaling factor :math:`\\|x\\|_1 / d` of one update (float32).

  The scalar of Ghosh et al.'s compressed message
  :math:`C(x) = \\{\\|x\\|_1/d,\\ \\operatorname{sign}(x)\\}` (arXiv
  version, §7), the scale of :func:`scaled_sign`; §7 thresholds on it. The
  sum runs over :math:`x / 2^e` with :math:`2^e` just above
  :math:`\\max_j |x_j|`, so entries of 1e30 or 3e38 give their true scale,
  which never exceeds :math:`\\max_j |x_j|`. An input with a NaN or Inf
  entry has scale ``inf``.

  Args:
    updates: a pytree (one worker's update, no worker axis); :math:`d` is
      its total number of entries.

  Returns:
    A float32 scalar.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.compression import l1_scale
    >>> l1_scale({'w': jnp.array([-2.0, 0.0, 4.0])})
    Array(2., dtype=float32)
  """
  d = _size(updates)
  e = btree.pow2_exponent(_max_abs(updates))
  l1_scaled = sum(jnp.sum(jnp.abs(jnp.ldexp(x.astype(jnp.float32), -e)))
                  for x in jax.tree.leaves(updates))
  scale = jnp.ldexp(l1_scaled / d, e)
  return jnp.where(_all_finite(updates), scale, jnp.inf)


def _global_scores(tree: PyTree, fn) -> jax.Array:
  # Coordinate-global selection: one float32 score per entry of the whole
  # update, concatenated in leaf order (see the module docstring).
  return jnp.concatenate([jnp.ravel(fn(x)).astype(jnp.float32)
                          for x in jax.tree.leaves(tree)])


def _coordinate_mask(coords: jax.Array, tree: PyTree) -> PyTree:
  """Boolean tree shaped like ``tree``, True at the global ``coords``."""
  def leaf_mask(leaf, off_size):
    off, n = off_size
    local = coords - off
    idx = jnp.where((local >= 0) & (local < n), local, n)  # n: dropped
    flat = jnp.zeros((n,), bool).at[idx].set(True, mode="drop")
    return jnp.reshape(flat, jnp.shape(leaf))
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(
      treedef, [leaf_mask(l, o) for l, o in zip(leaves, _offsets(tree))])


def _coordinate_scale(scale, d: int, k: int) -> float:
  """``scale``, or the paper's :math:`d/k` when it is ``None``."""
  if scale is None:
    return d / k
  return _checks.check_positive("scale", scale)


def _check_coords(coords) -> None:
  shape = getattr(coords, "shape", None)
  if shape is None or len(shape) != 1:
    raise ValueError(
        f"coords must be a 1-D integer array of coordinates, got shape "
        f"{shape}.")


# ---------------------------------------------------------------------------
# Deterministic compressors.


def sign(updates: PyTree) -> PyTree:
  """Coordinate-wise sign, :math:`Q(x) = \\operatorname{sign}(x)`.

  One bit per coordinate (zeros map to 0). This is signSGD's message; it is
  not a :math:`\\delta`-approximate compressor (no scale), use
  :func:`scaled_sign` for that.

  Args:
    updates: one worker's update (a pytree).

  Returns:
    A pytree of the same structure with entries in ``{-1, 0, 1}`` (all NaN
    if the input has a non-finite entry).

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.compression import sign
    >>> sign({'w': jnp.array([-2.0, 0.0, 3.0])})['w']
    Array([-1.,  0.,  1.], dtype=float32)

  References:
    Bernstein et al., `signSGD: Compressed Optimisation for Non-Convex
    Problems <https://arxiv.org/abs/1802.04434>`_, 2018.
  """
  _size(updates)
  return _keep_erasure(updates, jax.tree.map(jnp.sign, updates))


def scaled_sign(updates: PyTree) -> PyTree:
  """Scaled sign (:math:`\\ell_1`-QSGD): the signs times the mean magnitude.

  .. math::
    Q(x) = \\frac{\\|x\\|_1}{d} \\operatorname{sign}(x)

  A :math:`\\delta`-approximate compressor with
  :math:`\\delta = \\|x\\|_1^2 / (d \\|x\\|_2^2)` (Ghosh et al., arXiv 2019, §3;
  Karimireddy et al. 2019). :math:`\\|x\\|_1` and :math:`d` are taken over
  the whole update (all leaves).

  The sum is computed on :math:`x / 2^e` with :math:`2^e` just above
  :math:`\\max_j |x_j|`, so :math:`\\|x\\|_1` of a row of 1e30 or 3e38 never
  overflows; the scale :math:`\\|x\\|_1 / d \\le \\max_j |x_j|` is always
  finite for finite input.

  Args:
    updates: one worker's update (a pytree).

  Returns:
    A pytree of the same structure: ``scale * sign(x)`` leaf by leaf (all NaN
    if the input has a non-finite entry).

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.compression import scaled_sign
    >>> scaled_sign({'w': jnp.array([-2.0, 0.0, 4.0])})['w']
    Array([-2.,  0.,  2.], dtype=float32)

  References:
    Ghosh et al., `Communication-Efficient and Byzantine-Robust Distributed
    Learning <https://arxiv.org/abs/1911.09721>`_, arXiv:1911.09721, 2019
    (§3, example 5: :math:`\\ell_1`-QSGD).

    Karimireddy et al., `Error Feedback Fixes SignSGD and other Gradient
    Compression Schemes <https://arxiv.org/abs/1901.09847>`_, 2019.
  """
  scale = l1_scale(updates)  # inf for a non-finite input: NaN out below
  out = jax.tree.map(lambda x: (jnp.sign(x) * scale).astype(x.dtype), updates)
  return _keep_erasure(updates, out)


def top_k(updates: PyTree, *, k: int) -> PyTree:
  """Keeps the ``k`` entries of largest magnitude of the whole update.

  .. math::
    Q(x)_j = x_j \\, \\mathbb{1}[j \\in \\operatorname{top}_k(|x|)]

  A :math:`\\delta`-approximate compressor with :math:`\\delta \\ge k/d`
  (Ghosh et al., arXiv 2019, §3). The selection is coordinate-global: the ``k``
  largest :math:`|x_j|` over all leaves together (their scores are
  concatenated once; see the module docstring). Exactly ``k`` entries are
  kept (ties broken by position).

  Args:
    updates: one worker's update (a pytree).
    k: number of entries to keep, a Python int in ``[1, d]``.

  Returns:
    A pytree of the same structure with all but ``k`` entries zeroed (all
    NaN if the input has a non-finite entry).

  Raises:
    ValueError: if ``k`` is not an int in ``[1, d]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from byzjax.compression import top_k
    >>> top_k({'a': jnp.array([1., -5.]), 'b': jnp.array([3., 0.5])}, k=2)
    {'a': Array([ 0., -5.], dtype=float32), 'b': Array([3., 0.], dtype=float32)}

  References:
    Stich, Cordonnier & Jaggi, `Sparsified SGD with Memory
    <https://arxiv.org/abs/1809.07599>`_, 2018.
  """
  d = _size(updates)
  _checks.check_int("k", k, low=1, high=d)
  scores = _global_scores(updates, jnp.abs)
  _, idx = jax.lax.top_k(scores, k)
  mask = _coordinate_mask(idx, updates)
  out = jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)),
                     updates, mask)
  return _keep_erasure(updates, out)


# ---------------------------------------------------------------------------
# Random compressors.


def draw_coordinates(key: jax.Array, params_like: PyTree, k: int) -> jax.Array:
  """Draws ``k`` of the ``d`` global coordinates uniformly without replacement.

  Coordinates index the concatenation of the leaves of ``params_like`` in
  ``jax.tree.leaves`` order (leaf by leaf, each leaf in row-major order). In
  Data & Diggavi's Algorithm 2 the server draws one such set per step and
  broadcasts it; every worker sends only those coordinates, scaled by
  :math:`d/k` (:func:`shared_rand_k`; in ``k`` dimensions
  :func:`gather_coordinates`), the server aggregates in ``k`` dimensions
  and scatters the result back (:func:`scatter_coordinates`, which applies
  the :math:`d/k` by default).

  The set is the ``k`` smallest of ``d`` i.i.d. 32-bit random integers
  (converted to float32 for :func:`jax.lax.top_k`, which is fast on floats);
  this is uniform up to ties at the boundary, which have probability below
  ``d / 2**24`` and are broken by position.

  Args:
    key: a PRNG key.
    params_like: a pytree shaped like one worker's update (arrays or
      :class:`jax.ShapeDtypeStruct`).
    k: number of coordinates, a Python int in ``[1, d]``.

  Returns:
    Sorted int32 coordinates, shape ``[k]``.

  Raises:
    ValueError: if ``k`` is not an int in ``[1, d]``.

  References:
    Data & Diggavi, `Byzantine-Resilient SGD in High Dimensions on
    Heterogeneous Data <https://arxiv.org/abs/2005.07866>`_, 2021.
  """
  d = _size(params_like)
  _checks.check_int("k", k, low=1, high=d)
  bits = jax.random.bits(key, (d,), jnp.uint32)
  _, idx = jax.lax.top_k(-bits.astype(jnp.float32), k)
  return jnp.sort(idx).astype(jnp.int32)


def gather_coordinates(stacked: PyTree, coords: jax.Array) -> jax.Array:
  """Gathers the global ``coords`` of every worker's update into ``[R, k]``.

  Works leaf by leaf (each coordinate is read from the leaf that holds it),
  so the ``R x d`` updates are never concatenated.

  Args:
    stacked: pytree whose leaves share a leading worker axis ``R``.
    coords: int coordinates ``[k]`` as returned by :func:`draw_coordinates`
      (global indices into one worker's update, see there).

  Returns:
    An array ``[R, k]`` (dtype: the leaves' result type); column ``j`` holds
    coordinate ``coords[j]`` of every worker, unscaled: Data & Diggavi's
    messages are :math:`d/k` times these (the default ``scale`` of
    :func:`scatter_coordinates` puts that factor back).
  """
  _check_coords(coords)
  leaves = jax.tree.leaves(stacked)
  r = leaves[0].shape[0]
  dtype = jnp.result_type(*leaves)
  out = jnp.zeros((r, coords.shape[0]), dtype)
  off = 0
  for leaf in leaves:
    rows = jnp.reshape(leaf, (r, -1))
    n = rows.shape[1]
    local = coords - off
    inside = (local >= 0) & (local < n)
    vals = jnp.take(rows, jnp.clip(local, 0, n - 1), axis=1).astype(dtype)
    out = jnp.where(inside[None], vals, out)
    off += n
  return out


def scatter_coordinates(values: jax.Array, coords: jax.Array,
                        params_like: PyTree, *,
                        scale: float | None = None) -> PyTree:
  """Places ``k`` coordinate values back into a params-shaped tree.

  Args:
    values: ``[..., k]`` values of coordinates ``coords`` (e.g. the server's
      aggregate ``[k]`` of :func:`gather_coordinates`'s ``[R, k]``, or the
      ``[R, k]`` messages themselves).
    coords: int coordinates ``[k]`` (see :func:`draw_coordinates`).
    params_like: pytree shaped like one worker's update (arrays or
      :class:`jax.ShapeDtypeStruct`); gives structure, shapes and dtypes.
    scale: multiplies the values. ``None`` (the default) is :math:`d/k`,
      Data & Diggavi's Algorithm 2 (line 7): each worker sends
      :math:`\tfrac{d}{k}\operatorname{select}_K(p_r)`, which is unbiased,
      :math:`\mathbb{E}_K[\tfrac{d}{k}\operatorname{select}_K(p)] = p`
      (their §5.2, eq. (14)), and the server steps along the robust
      aggregate of those messages. With a positively homogeneous aggregator
      (mean, medians, geometric median, the spectral filter with
      ``sigma=None``) aggregating the raw gathered values and scattering
      with :math:`d/k` equals aggregating the scaled messages; with the
      filter's fixed ``sigma``, give it in the units of the values it sees.
      ``scale=1.0`` updates only the drawn coordinates, unscaled: a biased
      estimate (its mean is :math:`\tfrac{k}{d}p`), *not* the paper's
      algorithm; it equals the paper's at a step size ``k / d`` times
      smaller.

  Returns:
    A pytree shaped like ``params_like`` (with the leading dims of
    ``values`` prepended): ``scale * values`` at ``coords``, zeros elsewhere.

  Raises:
    ValueError: if ``scale`` is not a positive finite Python number or
      ``None``, or ``coords`` is not 1-D.

  References:
    Data & Diggavi, `Byzantine-Resilient SGD in High Dimensions on
    Heterogeneous Data <https://arxiv.org/abs/2005.07866>`_, 2021
    (Algorithm 2, line 7; Lemma 2).
  """
  _check_coords(coords)
  scale = _coordinate_scale(scale, _size(params_like), coords.shape[0])
  lead = values.shape[:-1]
  def leaf_scatter(leaf, off_size):
    off, n = off_size
    local = coords - off
    idx = jnp.where((local >= 0) & (local < n), local, n)  # n: dropped
    dtype = leaf.dtype
    flat = jnp.zeros(lead + (n,), dtype).at[..., idx].set(
        (values * scale).astype(dtype), mode="drop")
    return jnp.reshape(flat, lead + tuple(leaf.shape))
  leaves, treedef = jax.tree.flatten(params_like)
  return jax.tree.unflatten(
      treedef,
      [leaf_scatter(l, o) for l, o in zip(leaves, _offsets(params_like))])


def shared_rand_k(updates: PyTree, *, coords: jax.Array,
                  scale: float | None = None) -> PyTree:
  """Data & Diggavi's message: the server's ``coords``, scaled by ``d / k``.

  .. math::
    g_{K, r} = \tfrac{d}{k} \operatorname{select}_K(p_r), \qquad
    \operatorname{select}_K(v)_j = v_j \mathbb{1}[j \in K]

  (their Algorithm 2, line 7), with the set :math:`K` of ``k`` coordinates
  drawn uniformly by the server (:func:`draw_coordinates`) and shared by all
  workers, so the nonzero pattern is common to all of them. Over the draw of
  :math:`K` it is unbiased, :math:`\mathbb{E}_K[g_{K,r}] = p_r` (their
  §5.2 and Lemma 2, eq. (14)). For the ``k``-dimensional server-side view,
  use :func:`gather_coordinates` / :func:`scatter_coordinates` instead.

  Args:
    updates: one worker's update (a pytree).
    coords: int coordinates ``[k]`` shared by all workers.
    scale: multiplies the kept entries. ``None`` (the default) is
      :math:`d/k`, the paper's. ``1.0`` keeps the entries unscaled: a biased
      message (mean :math:`\tfrac{k}{d}p_r`), *not* the paper's algorithm.

  Returns:
    A pytree of the same structure: ``scale * x`` at ``coords``, zeros
    elsewhere (all NaN if the input has a non-finite entry). Products that
    would overflow saturate at the largest finite float.

  Raises:
    ValueError: if ``coords`` is not 1-D or ``scale`` is not ``None`` or a
      positive finite Python number.

  References:
    Data & Diggavi, `Byzantine-Resilient SGD in High Dimensions on
    Heterogeneous Data <https://arxiv.org/abs/2005.07866>`_, 2021
    (Algorithm 2).
  """
  d = _size(updates)
  _check_coords(coords)
  scale = _coordinate_scale(scale, d, coords.shape[0])
  mask = _coordinate_mask(coords, updates)
  out = jax.tree.map(
      lambda x, m: jnp.where(m, btree.saturate(x * jnp.asarray(scale, x.dtype)),
                             jnp.zeros_like(x)), updates, mask)
  return _keep_erasure(updates, out)


def rand_k(updates: PyTree, *, k: int, key: jax.Array) -> PyTree:
  """Keeps ``k`` uniformly random coordinates, scaled by ``d / k``.

  .. math::
    Q(x)_j = \\tfrac{d}{k} \\, x_j \\, \\mathbb{1}[j \\in S],
    \\qquad S \\sim \\operatorname{Unif}\\binom{[d]}{k}

  Unbiased, :math:`\\mathbb{E}_S[Q(x)] = x`, since every coordinate is kept
  with probability :math:`k/d`. Here every worker draws its own ``S``; for
  the server-drawn set shared by all workers see :func:`shared_rand_k`.
  Products that would overflow saturate at the largest finite float.

  Args:
    updates: one worker's update (a pytree).
    k: number of coordinates, a Python int in ``[1, d]``.
    key: a PRNG key.

  Returns:
    A pytree of the same structure (all NaN if the input has a non-finite
    entry).

  Raises:
    ValueError: if ``k`` is not an int in ``[1, d]``.

  References:
    Stich, Cordonnier & Jaggi, `Sparsified SGD with Memory
    <https://arxiv.org/abs/1809.07599>`_, 2018.
  """
  d = _size(updates)
  coords = draw_coordinates(key, updates, k)
  return shared_rand_k(updates, coords=coords, scale=d / k)


def qsgd(updates: PyTree, *, levels: int, key: jax.Array) -> PyTree:
  """QSGD stochastic quantisation with ``levels`` levels (unbiased).

  With :math:`s` = ``levels`` and :math:`r_j = |x_j| / \\|x\\|_2 \\in [0, 1]`,
  :math:`l_j = \\lfloor s r_j \\rfloor`:

  .. math::
    Q_s(x)_j = \\|x\\|_2 \\operatorname{sign}(x_j) \\, \\xi_j, \\qquad
    \\xi_j = \\begin{cases} (l_j + 1)/s & \\text{w.p. } s r_j - l_j \\\\
                         l_j / s & \\text{otherwise,} \\end{cases}

  so :math:`\\mathbb{E}[\\xi_j] = r_j` and :math:`\\mathbb{E}[Q_s(x)] = x`
  (Alistarh et al. 2017, §3.1, with one bucket: the norm is that of the
  whole update). The norm is computed in power-of-two-scaled units, so
  entries of 1e30 do not overflow; a message whose norm exceeds the float
  range saturates at the largest finite float.

  Args:
    updates: one worker's update (a pytree).
    levels: number of quantisation levels :math:`s`, a Python int >= 1
      (``levels=1`` sends :math:`\\|x\\| \\operatorname{sign}(x_j)` or 0).
    key: a PRNG key.

  Returns:
    A pytree of the same structure (all NaN if the input has a non-finite
    entry).

  Raises:
    ValueError: if ``levels`` is not an int >= 1.

  References:
    Alistarh et al., `QSGD: Communication-Efficient SGD via Gradient
    Quantization and Encoding <https://arxiv.org/abs/1610.02132>`_, 2017.
  """
  _size(updates)
  _checks.check_int("levels", levels, low=1)
  s = float(levels)
  e = btree.pow2_exponent(_max_abs(updates))
  leaves, treedef = jax.tree.flatten(updates)
  scaled = [jnp.ldexp(x.astype(jnp.float32), -e) for x in leaves]  # |.| <= 1
  m = jnp.sqrt(sum(jnp.sum(jnp.square(y)) for y in scaled))  # ||x|| / 2**e
  safe_m = jnp.where(m > 0, m, 1.0)
  keys = jax.random.split(key, len(leaves))
  out = []
  for x, y, kk in zip(leaves, scaled, keys):
    ratio = jnp.clip(jnp.abs(y) / safe_m, 0.0, 1.0)
    level = jnp.floor(s * ratio)
    up = jax.random.uniform(kk, y.shape) < (s * ratio - level)
    xi = (level + up.astype(jnp.float32)) / s
    mag = btree.saturate(jnp.ldexp(m * xi, e))
    out.append((jnp.sign(y) * mag).astype(x.dtype))
  return _keep_erasure(updates, jax.tree.unflatten(treedef, out))
