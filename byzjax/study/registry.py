"""Names a study configuration may use, each mapped to a library function.

Every name in a config (dataset, model, defense, pre-aggregation, attack,
heterogeneity) is a key of one of the tables here; the table entry says how
to build the library object from the config's arguments and from the cell's
``R`` (workers) and ``f`` (Byzantine workers), and which ``(R, f)`` it
tolerates, so that :mod:`byzjax.study.config` can refuse a bad grid before
anything runs.

Conventions for the ``f``-dependent hyperparameters (as ByzFL sets them: the
defense is told ``f``):

* ``trimmed_mean``: ``trim_fraction = f / R`` (``f`` values cut from each
  side of every coordinate); ``norm_threshold``: drops the ``f / R`` fraction
  of largest norms (Ghosh et al.'s beta).
* ``krum``, ``multi_krum`` (averages the ``R - f`` best scored) and
  ``bulyan``: ``num_byzantine = f``.
* ``geometric_median_of_means``: ``num_groups = min(R, 2f + 1)`` (Chen, Su &
  Xu need more than ``2f`` groups).
* ``meamed``, ``monna``: ``num_byzantine = f``.
* ``centered_clipping`` (Karimireddy et al. 2021): the centre is the last
  step's aggregate; ``radius`` defaults to the median distance of the
  workers to it (see :mod:`byzjax.transforms.centered_clipping`).
* ``bucketing``: bucket size ``s = 2`` (Karimireddy et al. 2022); the rule
  after it is told ``f`` among the ``ceil(R / 2)`` bucket means.
* ``nnm`` (Allouah et al. 2023) and ``arc`` (Allouah et al. 2025): told
  ``f``.
* ``mda``, ``smea`` (exact enumeration; a cell with ``C(R, f)`` above their
  ``max_subsets`` is refused when the config is checked), ``caf`` and
  ``dnc``: ``num_byzantine = f``. ``dnc`` draws fresh coordinates every step
  (``aggregate(..., key_per_step=True)``, key from the cell's seed).
* ``signguard``: not told ``f`` (its norm bounds, 0.1 and 3 times the
  median, and its clustering need none); fresh coordinates every step, like
  ``dnc``.

Any of these can be overridden in the defense's ``args``.
"""

import dataclasses
import inspect
import re
from typing import Any, Callable, Mapping

import jax
import optax

from byzjax import aggregators
from byzjax import models
from byzjax.attacks import adaptive as adaptive_attacks
from byzjax.attacks import data as data_attacks
from byzjax.attacks import gradient as gradient_attacks
from byzjax.transforms.aggregate import aggregate
from byzjax.transforms.bucketing import bucketing
from byzjax.transforms.centered_clipping import centered_clip
from byzjax.transforms.centered_clipping import centered_clipping
from byzjax.transforms.foolsgold import foolsgold
from byzjax.transforms.foolsgold import foolsgold_weights
from byzjax.transforms.clipping import arc
from byzjax.transforms.nnm import nnm


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  regression: bool
  description: str


DATASETS = {
    "fashion_mnist": DatasetSpec(
        False, "Fashion-MNIST from its IDX files (Debian package "
        "dataset-fashion-mnist); metric: test accuracy"),
    "synthetic_classification": DatasetSpec(
        False, "a Gaussian mixture with num_classes classes in num_features "
        "dimensions (byzjax.data.gaussian_mixture); metric: test accuracy"),
    "synthetic_regression": DatasetSpec(
        True, "linear regression A w* + noise (byzjax.data.linear_regression); "
        "metric: error ||w - w*||"),
}

MODELS = {
    "linear": models.Linear,
    "mlp": models.MLP,
    "lenet": models.LeNet,
    "resnet": models.ResNet,
}


def _fields(cls) -> list[str]:
  return [f.name for f in dataclasses.fields(cls)
          if f.name not in ("parent", "name")]


def check_model_args(model: str, args: Mapping[str, Any], error) -> None:
  valid = [f for f in _fields(MODELS[model])
           if f not in ("num_classes", "features")]
  for k in args:
    if k not in valid:
      raise error(f"[task] model_args: {model!r} has no argument {k!r}; "
                  f"valid: {', '.join(valid) or '(none)'}.")


def build_model(model: str, args: Mapping[str, Any], num_outputs: int):
  cls = MODELS[model]
  kwargs = {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
            for k, v in args.items()}
  if model == "linear":
    return cls(num_outputs, **kwargs)
  return cls(num_classes=num_outputs, **kwargs)


# --------------------------------------------------------------------------
# Defenses.


@dataclasses.dataclass(frozen=True)
class RuleSpec:
  """An aggregator, its f-dependent defaults and the (R, f) it tolerates."""
  fn: Callable[..., Any]
  defaults: Callable[[int, int], dict]   # (R, f) -> hyperparameters
  tolerates: Callable[[int, int], bool]  # (R, f) -> within breakdown
  requirement: str                       # the tolerance, in words
  transform: Callable[..., Any] | None = None  # stateful rules: a factory


def _no_defaults(r, f):
  del r, f
  return {}


def _always(r, f):
  del r, f
  return True


def _half(r, f):
  return 2 * f < r


RULES = {
    "mean": RuleSpec(aggregators.mean, _no_defaults, _always,
                     "none (the non-robust baseline)"),
    "coordinate_median": RuleSpec(aggregators.coordinate_median, _no_defaults,
                                  _half, "f < R/2"),
    "trimmed_mean": RuleSpec(aggregators.trimmed_mean,
                             lambda r, f: {"trim_fraction": f / r}, _half,
                             "f < R/2"),
    "geometric_median": RuleSpec(aggregators.geometric_median, _no_defaults,
                                 _half, "f < R/2"),
    "geometric_median_of_means": RuleSpec(
        aggregators.geometric_median_of_means,
        lambda r, f: {"num_groups": min(r, 2 * f + 1)},
        lambda r, f: 2 * f + 1 <= r, "2f + 1 <= R"),
    "spectral_filter": RuleSpec(aggregators.spectral_filter, _no_defaults,
                                lambda r, f: 4 * f < r, "f < R/4"),
    "krum": RuleSpec(aggregators.krum, lambda r, f: {"num_byzantine": f},
                     lambda r, f: 2 * f + 2 < r, "2f + 2 < R"),
    "multi_krum": RuleSpec(
        aggregators.krum,
        lambda r, f: {"num_byzantine": f, "num_selected": r - f},
        lambda r, f: 2 * f + 2 < r, "2f + 2 < R"),
    "bulyan": RuleSpec(aggregators.bulyan, lambda r, f: {"num_byzantine": f},
                       lambda r, f: 4 * f + 3 <= r, "4f + 3 <= R"),
    "norm_threshold": RuleSpec(aggregators.norm_threshold,
                               lambda r, f: {"trim_fraction": f / r}, _half,
                               "f < R/2"),
    "sign_majority_vote": RuleSpec(aggregators.sign_majority_vote,
                                   _no_defaults, _half, "f < R/2"),
    "meamed": RuleSpec(aggregators.meamed, lambda r, f: {"num_byzantine": f},
                       _half, "f < R/2"),
    "monna": RuleSpec(aggregators.monna, lambda r, f: {"num_byzantine": f},
                      _half, "f < R/2"),
    # Stateful: the centre is last step's aggregate (Karimireddy et al. 2021).
    "centered_clipping": RuleSpec(centered_clip, _no_defaults, _half,
                                  "f < R/2", transform=centered_clipping),
    # Stateful: weights from each worker's accumulated history (Fung et al.).
    "foolsgold": RuleSpec(foolsgold_weights, _no_defaults,
                          lambda r, f: r >= 2,
                          "R >= 2 (no bound on f: it targets sybils)",
                          transform=foolsgold),
}


# --- issue 8 aggregators (rules helper) ------------------------------------
RULES.update({
    "mda": RuleSpec(aggregators.mda, lambda r, f: {"num_byzantine": f},
                    _half, "f < R/2 (and C(R, f) <= max_subsets)"),
    "smea": RuleSpec(aggregators.smea, lambda r, f: {"num_byzantine": f},
                     _half, "f < R/2 (and C(R, f) <= max_subsets)"),
    "caf": RuleSpec(aggregators.caf, lambda r, f: {"num_byzantine": f},
                    _half, "f < R/2"),
    "dnc": RuleSpec(aggregators.dnc, lambda r, f: {"num_byzantine": f},
                    _half, "f < R/2"),
    "signguard": RuleSpec(aggregators.signguard, _no_defaults, _half,
                          "f < R/2"),
})
# Randomized rules whose key is split on every step (fresh randomness).
KEY_PER_STEP = frozenset({"dnc", "signguard"})
# --- end of issue 8 aggregators ----------------------------------------------


def _rule_params(rule: str) -> list[str]:
  params = inspect.signature(RULES[rule].fn).parameters
  return [n for n, p in params.items()
          if p.kind is p.KEYWORD_ONLY and n not in ("return_info", "weights",
                                                    "init", "key", "norms",
                                                    "center")]


def check_rule_args(rule: str, args: Mapping[str, Any], error) -> None:
  valid = _rule_params(rule)
  for k in args:
    if k not in valid:
      raise error(f"[grid] defenses: {rule!r} has no argument {k!r}; "
                  f"valid: {', '.join(valid) or '(none)'}.")


def check_tolerates(rule: str, args: Mapping[str, Any], r: int, f: int,
                    error, *, label: str = "", rows: str = "") -> None:
  spec = RULES[rule]
  if not spec.tolerates(r, f):
    among = rows or f"R = {r} workers"
    raise error(
        f"[grid] defense {label or rule!r} tolerates {spec.requirement}, but "
        f"the grid has f = {f} Byzantine among {among}. Remove "
        f"f = {f} from [training] num_byzantine, add workers, or drop this "
        "defense.")
  # Build once on a tiny input: the library's own checks on the resolved
  # hyperparameters (e.g. a num_selected above R) fail here, before any run.
  kwargs = {**spec.defaults(r, f), **args}
  try:
    jax.eval_shape(lambda u: _call_rule(rule, u, kwargs, jax.random.key(0)),
                   {"w": jax.ShapeDtypeStruct((r, 2), "float32")})
  except (ValueError, TypeError) as e:
    raise error(f"[grid] defense {label or rule!r} at R = {r}, f = {f}: "
                f"{e}") from e


def _call_rule(rule, updates, kwargs, key):
  params = inspect.signature(RULES[rule].fn).parameters
  if "key" in params:
    kwargs = {**kwargs, "key": key}
  return RULES[rule].fn(updates, **kwargs)


def build_aggregate(rule: str, args: Mapping[str, Any], r: int, f: int,
                    key: jax.Array) -> optax.GradientTransformationExtraArgs:
  """``aggregate(rule)`` with the cell's f-dependent defaults and ``args``.

  The transform keeps the aggregator's diagnostics (``num_workers=R``) so
  the runner can report which workers it kept, where the rule says.
  """
  spec = RULES[rule]
  kwargs = {**spec.defaults(r, f), **args}
  if spec.transform is not None:
    return spec.transform(num_workers=r, **kwargs)
  params = inspect.signature(spec.fn).parameters
  if "key" in params:
    kwargs["key"] = key
  return aggregate(spec.fn, num_workers=r,
                   key_per_step=rule in KEY_PER_STEP, **kwargs)


PRE_AGGREGATION = {
    "bucketing": "Karimireddy et al. 2022: average random buckets of s = 2 "
                 "updates before the aggregator",
    "nnm": "Allouah et al. 2023: each row becomes the mean of its R - f "
           "nearest rows",
    "arc": "Allouah et al. 2025: clip the floor(2 f (R - f) / R) largest "
           "rows to the largest unclipped norm",
}


BUCKET_SIZE = 2


def rows_after(pre: tuple[str, ...], r: int) -> int:
  """How many rows reach the aggregator after the pre-aggregation chain.

  Bucketing with buckets of ``s`` leaves ``ceil(R / s)`` bucket means, of
  which at most ``f`` contain a Byzantine worker, so the aggregator is told
  ``f`` among ``ceil(R / s)`` rows (Karimireddy et al. 2022, Theorem I).
  """
  for name in pre:
    if name == "bucketing":
      r = -(-r // BUCKET_SIZE)
  return r


def check_pre_args(name: str, r: int, f: int, error) -> None:
  if name == "bucketing" and r < 2:
    raise error("[grid] bucketing needs at least 2 workers.")
  if name in ("nnm", "arc") and not 2 * f < r:
    raise error(f"[grid] {name} tolerates f < R/2, but the grid has f = {f} "
                f"Byzantine among R = {r} workers.")


def build_pre(name: str, key: jax.Array, f: int):
  """The pre-aggregation transform ``name`` for ``f`` Byzantine workers."""
  if name == "bucketing":
    return bucketing(BUCKET_SIZE, key=key)
  if name == "nnm":
    return nnm(f)
  if name == "arc":
    return arc(f)
  raise KeyError(name)


# --------------------------------------------------------------------------
# Attacks.


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  kind: str                          # "none", "gradient" or "data"
  fn: Callable[..., Any] | None      # factory
  keyed: bool = False
  description: str = ""


ATTACKS = {
    "none": AttackSpec("none", None, description="no attack (f workers "
                       "still count, and behave honestly)"),
    "sign_flip": AttackSpec("gradient", gradient_attacks.sign_flip_attack),
    "bit_flip": AttackSpec("gradient", gradient_attacks.bit_flip_attack),
    "gaussian_noise": AttackSpec("gradient",
                                 gradient_attacks.gaussian_noise_attack,
                                 keyed=True),
    "random_gaussian": AttackSpec("gradient",
                                  gradient_attacks.random_gaussian_attack,
                                  keyed=True),
    "alie": AttackSpec("gradient", gradient_attacks.alie_attack),
    "ipm": AttackSpec("gradient", gradient_attacks.ipm_attack),
    "constant": AttackSpec("gradient", gradient_attacks.constant_attack),
    "silence": AttackSpec("gradient", gradient_attacks.silence_attack),
    "label_flip": AttackSpec("data", data_attacks.label_flip),
    "label_shift": AttackSpec("data", data_attacks.label_shift),
    "feature_noise": AttackSpec("data", data_attacks.feature_noise),
    "impulse_noise": AttackSpec("data", data_attacks.impulse_noise),
    "backdoor": AttackSpec("data", data_attacks.backdoor),
}

_ATTACK_FUNCTIONS = {
    "sign_flip": gradient_attacks.sign_flip,
    "bit_flip": gradient_attacks.bit_flip,
    "gaussian_noise": gradient_attacks.gaussian_noise,
    "random_gaussian": gradient_attacks.random_gaussian,
    "alie": gradient_attacks.alie,
    "ipm": gradient_attacks.ipm,
    "constant": gradient_attacks.constant,
    "silence": gradient_attacks.silence,
}

_DATA_ATTACKS_WITH_CLASSES = ("label_flip", "label_shift")

# --- Adaptive gradient attacks (byzjax.attacks.adaptive) -------------------
# Kept in one block. "optimized_alie"/"optimized_ipm" search the scale that
# does the most damage to an aggregator: the runner passes the cell's
# defense rule (with its f-dependent defaults for the R rows the attack
# sees; pre-aggregation is not part of the target), see
# `target_aggregator` and `build_gradient_attack(..., aggregator=)`.

TARGETED_ATTACKS = ("optimized_alie", "optimized_ipm")


def _targeted(factory):
  """``factory(aggregator=mean, **args)``: the config check builds it alone."""
  def build(*, aggregator=None, **args):
    return factory(aggregator=aggregator or aggregators.mean, **args)
  build.__name__ = factory.__name__
  return build


# Signatures only: the arguments a config may give (no aggregator, no
# return_info, no num_byzantine: the runner supplies those).
def _mimic_args(*, warmup=1, target=None):
  del warmup, target


def _search_args(*, scale_range=(0.0, 10.0), num_candidates=16,
                 num_refinements=2, batch_size=None):
  del scale_range, num_candidates, num_refinements, batch_size


def _min_max_args(*, perturbation="unit_vec", tol=1e-5, max_iters=100):
  del perturbation, tol, max_iters


def _fang_krum_args(*, threshold=1e-5, max_iters=200):
  del threshold, max_iters


ATTACKS.update({
    "mimic": AttackSpec(
        "gradient", adaptive_attacks.mimic_attack,
        description="Karimireddy et al. 2022: every Byzantine worker copies "
        "one honest worker (the one farthest along the honest updates' "
        "top principal direction)"),
    "optimized_alie": AttackSpec(
        "gradient", _targeted(adaptive_attacks.optimized_alie_attack),
        description="ALIE with the z that moves the cell's defense farthest "
        "from the honest mean (ByzFL's Opt-ALIE criterion)"),
    "optimized_ipm": AttackSpec(
        "gradient", _targeted(adaptive_attacks.optimized_ipm_attack),
        description="IPM with the epsilon that moves the cell's defense "
        "farthest from the honest mean (ByzFL's Opt-IPM criterion)"),
    "min_max": AttackSpec(
        "gradient", adaptive_attacks.min_max_attack,
        description="Shejwalkar & Houmansadr 2021: mean + gamma p, largest "
        "gamma keeping the max distance to honest updates within theirs"),
    "min_sum": AttackSpec(
        "gradient", adaptive_attacks.min_sum_attack,
        description="Shejwalkar & Houmansadr 2021: as min_max with the sum "
        "of squared distances"),
    "fang_trimmed_mean": AttackSpec(
        "gradient", adaptive_attacks.fang_trimmed_mean_attack, keyed=True,
        description="Fang et al. 2020: values beyond the honest extremes, "
        "against trimmed mean"),
    "fang_median": AttackSpec(
        "gradient", adaptive_attacks.fang_trimmed_mean_attack, keyed=True,
        description="Fang et al. 2020: the trimmed-mean attack, which the "
        "paper also uses against the median"),
    "fang_krum": AttackSpec(
        "gradient", adaptive_attacks.fang_krum_attack,
        description="Fang et al. 2020: -lambda sign(mean) with the largest "
        "lambda Krum still selects"),
})

_ATTACK_FUNCTIONS.update({
    "mimic": _mimic_args,
    "optimized_alie": _search_args,
    "optimized_ipm": _search_args,
    "min_max": _min_max_args,
    "min_sum": _min_max_args,
    "fang_trimmed_mean": adaptive_attacks.fang_trimmed_mean,
    "fang_median": adaptive_attacks.fang_trimmed_mean,
    "fang_krum": _fang_krum_args,
})


def target_aggregator(rule: str, args: Mapping[str, Any], r: int, f: int,
                      key: jax.Array) -> Callable[[Any], Any]:
  """The defense rule as a function ``stacked -> aggregate`` for ``R = r``.

  What an optimised attack searches against: the rule with the cell's
  ``f``-dependent defaults for the ``r`` rows the attack sees, and ``args``.
  """
  kwargs = {**RULES[rule].defaults(r, f), **args}
  return lambda updates: _call_rule(rule, updates, kwargs, key)

# --- end of the adaptive gradient attacks block ----------------------------


def _attack_params(name: str) -> list[str]:
  spec = ATTACKS[name]
  if spec.kind == "none":
    return []
  fn = _ATTACK_FUNCTIONS.get(name, spec.fn)
  params = inspect.signature(fn).parameters
  skip = ("stacked", "byzantine", "key", "num_classes", "direction")
  return [n for n in params if n not in skip]


def check_attack_args(name: str, args: Mapping[str, Any], error) -> None:
  valid = _attack_params(name)
  for k in args:
    if k not in valid:
      raise error(f"[grid] attacks: {name!r} has no argument {k!r}; "
                  f"valid: {', '.join(valid) or '(none)'}.")
  spec = ATTACKS[name]
  try:
    if spec.kind == "gradient":
      spec.fn(**({"key": jax.random.key(0)} if spec.keyed else {}), **args)
    elif spec.kind == "data":
      build_data_attack(name, args, num_classes=10)
  except (ValueError, TypeError) as e:
    raise error(f"[grid] attack {name!r}: {e}") from e


def build_gradient_attack(name: str, args: Mapping[str, Any], key: jax.Array,
                          *, aggregator: Callable[[Any], Any] | None = None):
  """The attack transform; ``aggregator`` is the target of the optimised
  attacks (:data:`TARGETED_ATTACKS`), ignored by the others."""
  spec = ATTACKS[name]
  if spec.kind != "gradient":
    return None
  if name in TARGETED_ATTACKS and aggregator is not None:
    args = {**args, "aggregator": aggregator}
  return spec.fn(**({"key": key} if spec.keyed else {}), **args)


def build_data_attack(name: str, args: Mapping[str, Any], *, num_classes: int):
  spec = ATTACKS[name]
  if spec.kind != "data":
    return None
  if name in _DATA_ATTACKS_WITH_CLASSES:
    return spec.fn(num_classes, **args)
  if name == "backdoor" and "target_label" not in args:
    return spec.fn(8, **args)  # Acharya et al.'s target class
  return spec.fn(**args)


# --------------------------------------------------------------------------
# Heterogeneity.

_HET = re.compile(r"^(iid|dirichlet|shards|gamma)(?::([0-9.eE+-]+))?$")
HETEROGENEITY = ("iid", "dirichlet:ALPHA", "shards:S", "gamma:G")


def parse_heterogeneity(h, error) -> tuple[str, float | None]:
  """``"dirichlet:0.1"`` -> ``("dirichlet", 0.1)``; errors name the forms."""
  m = _HET.match(str(h)) if isinstance(h, str) else None
  forms = ", ".join(HETEROGENEITY)
  if m is None:
    raise error(f"[grid] heterogeneity: {h!r} is not a setting; use one of "
                f"{forms} (e.g. \"dirichlet:0.5\").")
  kind, value = m.group(1), m.group(2)
  if kind == "iid":
    if value is not None:
      raise error(f"[grid] heterogeneity: \"iid\" takes no value, got {h!r}.")
    return kind, None
  if value is None:
    raise error(f"[grid] heterogeneity: {kind!r} needs a value, e.g. "
                f"\"{kind}:{ {'dirichlet': 0.5, 'shards': 4, 'gamma': 0.5}[kind] }\".")
  try:
    v = float(value)
  except ValueError:
    raise error(f"[grid] heterogeneity: {h!r}: {value!r} is not a number.")
  if kind == "dirichlet" and not v > 0:
    raise error(f"[grid] heterogeneity: Dirichlet alpha must be > 0, got {h!r}.")
  if kind == "shards" and (v != int(v) or v < 1):
    raise error(f"[grid] heterogeneity: shards needs a whole number >= 1, "
                f"got {h!r}.")
  if kind == "gamma" and not 0 <= v <= 1:
    raise error(f"[grid] heterogeneity: gamma must lie in [0, 1], got {h!r}.")
  return kind, v
