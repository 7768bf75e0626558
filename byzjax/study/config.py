"""Study configuration: a TOML file parsed once into typed settings.

A study is a robustness benchmark: defenses x attacks x Byzantine counts x
heterogeneity settings x seeds (x selection hyperparameters such as the
learning rate). The configuration names every axis; :func:`load_config`
checks every name and value before anything runs, and every error says which
key is wrong, what was found and what is valid.

Example (``experiments/configs/quickstart.toml``)::

  name = "quickstart"

  [task]
  dataset = "fashion_mnist"           # or synthetic_classification, synthetic_regression
  fallback = "synthetic_classification"  # used when the dataset is not installed
  model = "mlp"
  model_args = { hidden = [64] }

  [training]
  num_workers = 20                    # R (or num_honest = 10: R = 10 + f)
  num_byzantine = [4]
  batch_size = 32
  steps = 100
  eval_every = 20
  learning_rate = [0.05]
  seeds = 2

  [grid]
  heterogeneity = ["iid"]
  defenses = ["mean", "coordinate_median", "geometric_median"]
  attacks = ["none", "sign_flip", "alie"]

Defenses and attacks are names or inline tables with arguments::

  defenses = ["trimmed_mean", { rule = "krum", pre = ["bucketing"],
                                args = { num_selected = 3 }, label = "bucketed multi-krum" }]
  attacks = ["none", { name = "ipm", epsilon = 0.5 }, "label_flip"]

Heterogeneity settings are ``"iid"``, ``"dirichlet:ALPHA"``, ``"shards:S"``
(each worker holds S label-sorted shards) or ``"gamma:G"`` (a fraction G of
the data is spread i.i.d., the rest is sorted by label).
"""

import dataclasses
import difflib
import hashlib
import json
import numbers
import os
import sys
from typing import Any, Mapping, Sequence

if sys.version_info >= (3, 11):
  import tomllib
else:  # pragma: no cover - Python 3.10
  import tomli as tomllib

from byzjax.study import registry


class ConfigError(ValueError):
  """A study configuration that cannot run; the message says how to fix it."""


def _suggest(name: str, valid: Sequence[str]) -> str:
  close = difflib.get_close_matches(str(name), list(valid), n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  return f"{hint} Valid: {', '.join(sorted(valid))}."


def _check_keys(where: str, table: Mapping[str, Any], valid: Sequence[str]):
  for key in table:
    if key not in valid:
      raise ConfigError(f"[{where}]: unknown key {key!r}." +
                        _suggest(key, valid))


def _check_finite_args(where: str, args: Mapping[str, Any]) -> None:
  for k, v in args.items():
    if isinstance(v, float) and not v - v == 0:
      raise ConfigError(f"{where}: argument {k} = {v!r} must be a finite "
                        "number.")


def _as_list(where: str, value) -> list:
  if isinstance(value, (list, tuple)):
    if not value:
      raise ConfigError(f"{where}: the list is empty; give at least one value.")
    return list(value)
  return [value]


def _int(where: str, value, low: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ConfigError(f"{where} must be an integer, got {value!r}.")
  if low is not None and value < low:
    raise ConfigError(f"{where} must be >= {low}, got {value!r}.")
  return int(value)


def _float(where: str, value, *, low: float | None = None,
           high: float | None = None, low_open: bool = False) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ConfigError(f"{where} must be a number, got {value!r}.")
  value = float(value)
  if value != value or value in (float("inf"), float("-inf")):
    raise ConfigError(f"{where} must be finite, got {value!r}.")
  if low is not None and (value < low or (low_open and value == low)):
    raise ConfigError(f"{where} must be {'>' if low_open else '>='} {low}, "
                      f"got {value!r}.")
  if high is not None and value > high:
    raise ConfigError(f"{where} must be <= {high}, got {value!r}.")
  return value


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """What is learned: dataset, model and its evaluation metric."""
  dataset: str
  model: str
  model_args: tuple = ()            # sorted (name, value) pairs
  fallback: str | None = None
  path: str | None = None
  train_samples: int | None = None
  test_samples: int = 2000
  num_features: int = 100
  num_classes: int = 10
  noise_std: float = 0.0

  @property
  def is_regression(self) -> bool:
    return registry.DATASETS[self.dataset].regression


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """How every run trains (shared by all cells)."""
  num_workers: int | None
  num_honest: int | None
  num_byzantine: tuple[int, ...]
  batch_size: int
  steps: int
  eval_every: int
  learning_rate: tuple[float, ...]
  optimizer: str = "sgd"
  server_momentum: float = 0.0
  lr_schedule: str = "constant"
  lr_decay: float = 1.0
  worker_momentum: float = 0.0
  weight_decay: float = 0.0
  redraw_byzantine: bool = False
  seeds: tuple[int, ...] = (0,)
  data_seed: int = 0

  def workers_for(self, f: int) -> int:
    """``R`` for ``f`` Byzantine workers (fixed, or honest + f)."""
    return self.num_workers if self.num_workers is not None else (
        self.num_honest + f)


@dataclasses.dataclass(frozen=True)
class DefenseConfig:
  rule: str
  pre: tuple[str, ...] = ()
  args: tuple = ()                  # sorted (name, value) pairs
  label: str = ""


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  name: str
  args: tuple = ()
  label: str = ""


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """A parsed, validated study."""
  name: str
  task: TaskConfig
  training: TrainingConfig
  heterogeneity: tuple[str, ...]
  defenses: tuple[DefenseConfig, ...]
  attacks: tuple[AttackConfig, ...]
  source: str = ""                  # the TOML text it came from

  def fingerprint(self) -> str:
    return settings_hash(dataclasses.asdict(self) | {"source": ""})


def settings_hash(settings: Any) -> str:
  """A stable short hash of JSON-able settings (keys sorted)."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


TOP_KEYS = ("name", "task", "training", "grid")
TASK_KEYS = ("dataset", "fallback", "path", "model", "model_args",
             "train_samples", "test_samples", "num_features", "num_classes",
             "noise_std")
TRAINING_KEYS = ("num_workers", "num_honest", "num_byzantine", "batch_size",
                 "steps", "eval_every", "learning_rate", "optimizer",
                 "server_momentum", "lr_schedule", "lr_decay",
                 "worker_momentum", "weight_decay", "redraw_byzantine",
                 "seeds", "data_seed")
GRID_KEYS = ("heterogeneity", "defenses", "attacks")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "exponential", "cosine")


def _parse_task(t: Mapping[str, Any]) -> TaskConfig:
  _check_keys("task", t, TASK_KEYS)
  for key in ("dataset", "model"):
    if key not in t:
      raise ConfigError(f"[task]: {key!r} is required." +
                        _suggest("", registry.DATASETS if key == "dataset"
                                 else registry.MODELS))
  dataset = t["dataset"]
  if dataset not in registry.DATASETS:
    raise ConfigError(f"[task] dataset: unknown dataset {dataset!r}." +
                      _suggest(dataset, registry.DATASETS))
  fallback = t.get("fallback")
  if fallback is not None and fallback not in registry.DATASETS:
    raise ConfigError(f"[task] fallback: unknown dataset {fallback!r}." +
                      _suggest(fallback, registry.DATASETS))
  model = t["model"]
  if model not in registry.MODELS:
    raise ConfigError(f"[task] model: unknown model {model!r}." +
                      _suggest(model, registry.MODELS))
  model_args = t.get("model_args", {})
  if not isinstance(model_args, Mapping):
    raise ConfigError("[task] model_args must be a table, e.g. "
                      "model_args = { hidden = [128] }.")
  registry.check_model_args(model, model_args, ConfigError)
  for name in (dataset, fallback):
    if name and registry.DATASETS[name].regression and model != "linear":
      raise ConfigError(
          f"[task]: dataset {name!r} is a regression task and needs "
          f"model = \"linear\" (got {model!r}).")
  train_samples = t.get("train_samples")
  if train_samples is not None:
    train_samples = _int("[task] train_samples", train_samples, low=1)
  return TaskConfig(
      dataset=dataset, model=model,
      model_args=tuple(sorted((k, _freeze(v)) for k, v in model_args.items())),
      fallback=fallback, path=t.get("path"),
      train_samples=train_samples,
      test_samples=_int("[task] test_samples", t.get("test_samples", 2000), 1),
      num_features=_int("[task] num_features", t.get("num_features", 100), 1),
      num_classes=_int("[task] num_classes", t.get("num_classes", 10), 2),
      noise_std=_float("[task] noise_std", t.get("noise_std", 0.0), low=0.0))


def _freeze(v):
  return tuple(v) if isinstance(v, list) else v


def _parse_training(t: Mapping[str, Any]) -> TrainingConfig:
  _check_keys("training", t, TRAINING_KEYS)
  has_r, has_h = "num_workers" in t, "num_honest" in t
  if has_r == has_h:
    raise ConfigError(
        "[training]: give exactly one of num_workers (R, fixed) or "
        "num_honest (R = num_honest + f, as ByzFL counts workers).")
  num_workers = _int("[training] num_workers", t["num_workers"], 1) if has_r \
      else None
  num_honest = _int("[training] num_honest", t["num_honest"], 1) if has_h \
      else None
  fs = tuple(_int("[training] num_byzantine", f, 0)
             for f in _as_list("[training] num_byzantine",
                               t.get("num_byzantine", [0])))
  if num_workers is not None:
    for f in fs:
      if f >= num_workers:
        raise ConfigError(
            f"[training] num_byzantine = {f} leaves no honest worker among "
            f"num_workers = {num_workers}; use f < R.")
  for key in ("batch_size", "steps", "eval_every"):
    if key not in t:
      raise ConfigError(f"[training]: {key!r} is required.")
  steps = _int("[training] steps", t["steps"], 1)
  eval_every = _int("[training] eval_every", t["eval_every"], 1)
  if steps % eval_every:
    raise ConfigError(
        f"[training] steps = {steps} must be a multiple of eval_every = "
        f"{eval_every}.")
  if "learning_rate" not in t:
    raise ConfigError("[training]: 'learning_rate' is required (a number, or "
                      "a list to select against the worst attack).")
  lrs = tuple(_float("[training] learning_rate", v, low=0.0, low_open=True)
              for v in _as_list("[training] learning_rate", t["learning_rate"]))
  optimizer = t.get("optimizer", "sgd")
  if optimizer not in OPTIMIZERS:
    raise ConfigError(f"[training] optimizer: unknown {optimizer!r}." +
                      _suggest(optimizer, OPTIMIZERS))
  schedule = t.get("lr_schedule", "constant")
  if schedule not in SCHEDULES:
    raise ConfigError(f"[training] lr_schedule: unknown {schedule!r}." +
                      _suggest(schedule, SCHEDULES))
  seeds = t.get("seeds", 1)
  if isinstance(seeds, list):
    seeds = tuple(_int("[training] seeds", s, 0) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
      raise ConfigError("[training] seeds: give distinct seeds, e.g. [0, 1, 2] "
                        "or a count such as seeds = 3.")
  else:
    seeds = tuple(range(_int("[training] seeds", seeds, 1)))
  redraw = t.get("redraw_byzantine", False)
  if not isinstance(redraw, bool):
    raise ConfigError(f"[training] redraw_byzantine must be true or false, "
                      f"got {redraw!r}.")
  return TrainingConfig(
      num_workers=num_workers, num_honest=num_honest, num_byzantine=fs,
      batch_size=_int("[training] batch_size", t["batch_size"], 1),
      steps=steps, eval_every=eval_every, learning_rate=lrs,
      optimizer=optimizer,
      server_momentum=_float("[training] server_momentum",
                             t.get("server_momentum", 0.0), low=0.0, high=0.999),
      lr_schedule=schedule,
      lr_decay=_float("[training] lr_decay", t.get("lr_decay", 1.0), low=0.0,
                      high=1.0, low_open=True),
      worker_momentum=_float("[training] worker_momentum",
                             t.get("worker_momentum", 0.0), low=0.0,
                             high=0.999),
      weight_decay=_float("[training] weight_decay",
                          t.get("weight_decay", 0.0), low=0.0),
      redraw_byzantine=redraw, seeds=seeds,
      data_seed=_int("[training] data_seed", t.get("data_seed", 0), 0))


def _parse_defense(d) -> DefenseConfig:
  if isinstance(d, str):
    parts = d.split("+")
    d = {"rule": parts[-1], "pre": parts[:-1]}
  if not isinstance(d, Mapping):
    raise ConfigError(f"[grid] defenses: each entry is a name or a table "
                      f"{{ rule = ..., pre = [...], args = {{...}} }}, got {d!r}.")
  _check_keys("grid.defenses entry", d, ("rule", "pre", "args", "label"))
  rule = d.get("rule")
  if rule not in registry.RULES:
    raise ConfigError(f"[grid] defenses: unknown aggregator {rule!r}." +
                      _suggest(rule, registry.RULES))
  pre = tuple(d.get("pre", ()))
  for p in pre:
    if p not in registry.PRE_AGGREGATION:
      raise ConfigError(f"[grid] defenses: unknown pre-aggregation {p!r}." +
                        _suggest(p, registry.PRE_AGGREGATION))
  args = d.get("args", {})
  if not isinstance(args, Mapping):
    raise ConfigError(f"[grid] defenses: args of {rule!r} must be a table.")
  _check_finite_args(f"[grid] defense {rule!r}", args)
  registry.check_rule_args(rule, args, ConfigError)
  label = d.get("label") or "+".join(pre + (rule,))
  return DefenseConfig(rule=rule, pre=pre,
                       args=tuple(sorted((k, _freeze(v))
                                         for k, v in args.items())),
                       label=str(label))


def _parse_attack(a) -> AttackConfig:
  if isinstance(a, str):
    a = {"name": a}
  if not isinstance(a, Mapping) or "name" not in a:
    raise ConfigError(f"[grid] attacks: each entry is a name or a table "
                      f"{{ name = ..., <arguments> }}, got {a!r}.")
  name = a["name"]
  if name not in registry.ATTACKS:
    raise ConfigError(f"[grid] attacks: unknown attack {name!r}." +
                      _suggest(name, registry.ATTACKS))
  args = {k: v for k, v in a.items() if k not in ("name", "label")}
  _check_finite_args(f"[grid] attack {name!r}", args)
  registry.check_attack_args(name, args, ConfigError)
  label = a.get("label") or (name if not args else name + "(" + ", ".join(
      f"{k}={v}" for k, v in sorted(args.items())) + ")")
  return AttackConfig(name=name, args=tuple(sorted(args.items())),
                      label=str(label))


def parse_config(data: Mapping[str, Any], source: str = "") -> StudyConfig:
  """Validates a configuration mapping (a parsed TOML document)."""
  _check_keys("top level", data, TOP_KEYS)
  for key in ("task", "training", "grid"):
    if key not in data or not isinstance(data[key], Mapping):
      raise ConfigError(f"the [{key}] table is required.")
  task = _parse_task(data["task"])
  training = _parse_training(data["training"])
  grid = data["grid"]
  _check_keys("grid", grid, GRID_KEYS)
  for key in ("defenses", "attacks"):
    if key not in grid:
      raise ConfigError(f"[grid]: {key!r} is required.")
  hets = tuple(_as_list("[grid] heterogeneity", grid.get("heterogeneity",
                                                         ["iid"])))
  for h in hets:
    registry.parse_heterogeneity(h, ConfigError)
    if task.is_regression and h != "iid":
      raise ConfigError(
          f"[grid] heterogeneity {h!r} splits by label; the regression task "
          f"{task.dataset!r} has no labels: use \"iid\".")
  defenses = tuple(_parse_defense(d) for d in _as_list("[grid] defenses",
                                                       grid["defenses"]))
  attacks = tuple(_parse_attack(a) for a in _as_list("[grid] attacks",
                                                     grid["attacks"]))
  for kind, items in (("defense", [d.label for d in defenses]),
                      ("attack", [a.label for a in attacks])):
    dup = {x for x in items if items.count(x) > 1}
    if dup:
      raise ConfigError(f"[grid]: {kind} label(s) {sorted(dup)} appear twice; "
                        "give each entry a distinct label = \"...\".")
  if len(set(hets)) != len(hets):
    raise ConfigError("[grid] heterogeneity: a setting appears twice.")
  for a in attacks:
    spec = registry.ATTACKS[a.name]
    if spec.kind == "data" and (task.is_regression or (
        task.fallback and registry.DATASETS[task.fallback].regression)):
      raise ConfigError(
          f"[grid] attacks: {a.name!r} is a data attack on labels or images; "
          f"the regression task {task.dataset!r} has none. Use gradient "
          "attacks (e.g. sign_flip, alie, ipm).")
  # Every (defense, f) must be within the defense's breakdown point.
  for d in defenses:
    for f in training.num_byzantine:
      r = training.workers_for(f)
      for p in d.pre:
        registry.check_pre_args(p, r, f, ConfigError)
      # The rule sees the rows left by the pre-aggregation (bucket means).
      rows = registry.rows_after(d.pre, r)
      registry.check_tolerates(
          d.rule, dict(d.args), rows, f, ConfigError, label=d.label,
          rows="" if rows == r else
          f"the R = {rows} bucket means of {r} workers")
  name = data.get("name", "byzjax study")
  return StudyConfig(name=str(name), task=task, training=training,
                     heterogeneity=hets, defenses=defenses, attacks=attacks,
                     source=source)


def load_config(config) -> StudyConfig:
  """A :class:`StudyConfig` from a path, a TOML string, a dict or itself."""
  if isinstance(config, StudyConfig):
    return config
  if isinstance(config, Mapping):
    return parse_config(config)
  if isinstance(config, (str, os.PathLike)) and os.path.isfile(config):
    with open(config, "rb") as f:
      text = f.read().decode()
  elif isinstance(config, str) and "\n" in config:
    text = config
  else:
    raise ConfigError(f"config file {config!r} not found.")
  try:
    data = tomllib.loads(text)
  except tomllib.TOMLDecodeError as e:
    raise ConfigError(f"{config if len(str(config)) < 200 else 'config'}: "
                      f"not valid TOML: {e}") from e
  return parse_config(data, source=text)
