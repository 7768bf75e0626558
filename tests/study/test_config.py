"""Config parsing: every mistake gets an error that names it and the fix."""

import copy
import os

import pytest

from byzjax import study
from byzjax.study import config as config_lib
from byzjax.study import runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

BASE = {
    "name": "t",
    "task": {"dataset": "synthetic_classification", "model": "mlp",
             "model_args": {"hidden": [8]}, "num_features": 6,
             "num_classes": 3, "train_samples": 400, "test_samples": 100},
    "training": {"num_workers": 16, "num_byzantine": [1, 2], "batch_size": 4,
                 "steps": 4, "eval_every": 2, "learning_rate": [0.1, 0.01],
                 "seeds": 2},
    "grid": {"heterogeneity": ["iid", "dirichlet:0.5"],
             "defenses": ["mean", "trimmed_mean", "bucketing+krum"],
             "attacks": ["none", {"name": "ipm", "epsilon": 0.5}]},
}


def _with(path, value):
  cfg = copy.deepcopy(BASE)
  *head, last = path.split(".")
  t = cfg
  for h in head:
    t = t[h]
  if value is KeyError:
    del t[last]
  else:
    t[last] = value
  return cfg


def test_valid_config_expands_to_the_cartesian_product():
  cfg = study.load_config(BASE)
  cells = study.expand(cfg)
  assert len(cells) == 2 * 2 * 3 * 2  # het x f x defenses x attacks
  assert [d.label for d in cfg.defenses] == ["mean", "trimmed_mean",
                                            "bucketing+krum"]
  assert cfg.attacks[1].label == "ipm(epsilon=0.5)"
  assert cfg.training.seeds == (0, 1)


def test_cell_ids_are_stable_and_change_with_their_settings():
  cfg = study.load_config(BASE)
  ids = [c.cell_id(cfg) for c in study.expand(cfg)]
  assert len(set(ids)) == len(ids)
  assert ids == [c.cell_id(cfg) for c in study.expand(study.load_config(BASE))]
  # A new attack adds cells and leaves the others' ids unchanged ...
  more = _with("grid.attacks", ["none", {"name": "ipm", "epsilon": 0.5},
                                "sign_flip"])
  cfg2 = study.load_config(more)
  ids2 = {c.cell_id(cfg2) for c in study.expand(cfg2)}
  assert set(ids) < ids2 and len(ids2) == len(ids) * 3 // 2
  # ... while a changed training setting changes every id.
  cfg3 = study.load_config(_with("training.steps", 6))
  assert not set(ids) & {c.cell_id(cfg3) for c in study.expand(cfg3)}


def test_cells_that_differ_only_in_f_share_a_program_when_the_rule_allows():
  cfg = study.load_config(BASE)
  keys = {}
  for c in study.expand(cfg):
    keys.setdefault(c.defense.rule, set()).add(c.program_key())
  # mean ignores f (it is traced); trimmed mean and Krum are told f.
  assert len(keys["mean"]) == 2        # attacks x 1
  assert len(keys["trimmed_mean"]) == 4  # attacks x f
  assert len(keys["krum"]) == 4


@pytest.mark.parametrize("path,value,message", [
    ("task.dataset", "fashion_mnst", "Did you mean 'fashion_mnist'"),
    ("task.model", "lenett", "Did you mean 'lenet'"),
    ("task.model_args", {"hiden": [8]}, "has no argument 'hiden'"),
    ("training.lerning_rate", 0.1, "unknown key 'lerning_rate'"),
    ("training.learning_rate", [0.1, -1.0], "must be > 0"),
    ("training.learning_rate", float("nan"), "must be finite"),
    ("training.steps", 5, "multiple of eval_every"),
    ("training.num_honest", 8, "exactly one of num_workers"),
    ("training.num_workers", KeyError, "exactly one of num_workers"),
    ("training.num_byzantine", [16], "leaves no honest worker"),
    ("training.worker_momentum", 1.5, "must be <= 0.999"),
    ("training.seeds", [0, 0], "distinct seeds"),
    ("training.optimizer", "adamw", "Valid: adam, sgd"),
    ("grid.defenses", ["geometric_medain"], "Did you mean 'geometric_median'"),
    ("grid.defenses", ["nmm+mean"], "Did you mean 'nnm'"),
    ("grid.defenses", [{"rule": "krum", "args": {"f": 2}}],
     "'krum' has no argument 'f'"),
    ("grid.defenses", [{"rule": "multi_krum", "args": {"num_selected": 99}}],
     "multi_krum"),
    ("grid.defenses", ["mean", "mean"], "appear twice"),
    ("grid.attacks", ["alie", {"name": "ipm", "epsilon": float("nan")}],
     "epsilon"),
    ("grid.attacks", [{"name": "ipm", "eps": 0.5}], "'ipm' has no argument"),
    ("grid.attacks", ["sing_flip"], "Did you mean 'sign_flip'"),
    ("grid.heterogeneity", ["dirichlet"], "needs a value"),
    ("grid.heterogeneity", ["dirichlet:-1"], "alpha must be > 0"),
    ("grid.heterogeneity", ["noniid"], "is not a setting"),
    ("grid.heterogeneity", ["gamma:1.5"], "gamma must lie in [0, 1]"),
    ("grid.heterogenity", ["iid"], "Did you mean 'heterogeneity'"),
])
def test_config_mistakes_are_named(path, value, message):
  with pytest.raises(config_lib.ConfigError) as err:
    study.load_config(_with(path, value))
  assert message in str(err.value)


def test_defense_beyond_its_breakdown_point_is_refused_before_running():
  # Krum needs 2f + 2 < R among the ceil(16 / 2) = 8 bucket means: f = 3
  # is too many (f = 2 is not).
  study.load_config(_with("training.num_byzantine", [1, 2]))
  cfg = _with("training.num_byzantine", [1, 3])
  with pytest.raises(config_lib.ConfigError) as err:
    study.load_config(cfg)
  msg = str(err.value)
  assert "'bucketing+krum' tolerates 2f + 2 < R" in msg
  assert "f = 3" in msg and "R = 8 bucket means of 16 workers" in msg
  # A rule with breakdown 1/2 at f = R/2.
  cfg = _with("training.num_byzantine", [8])
  cfg["grid"]["defenses"] = ["coordinate_median"]
  with pytest.raises(config_lib.ConfigError, match="tolerates f < R/2"):
    study.load_config(cfg)
  # The mean is the non-robust baseline: any f < R is allowed.
  cfg["grid"]["defenses"] = ["mean"]
  study.load_config(cfg)


def test_data_attack_on_a_regression_task_is_refused():
  cfg = copy.deepcopy(BASE)
  cfg["task"] = {"dataset": "synthetic_regression", "model": "linear"}
  cfg["grid"]["heterogeneity"] = ["iid"]
  cfg["grid"]["attacks"] = ["sign_flip", "label_flip"]
  with pytest.raises(config_lib.ConfigError, match="'label_flip' is a data "
                     "attack"):
    study.load_config(cfg)
  cfg["grid"]["attacks"] = ["sign_flip"]
  cfg["grid"]["heterogeneity"] = ["dirichlet:0.1"]
  with pytest.raises(config_lib.ConfigError, match="has no labels"):
    study.load_config(cfg)


def test_num_honest_adds_f_workers():
  cfg = copy.deepcopy(BASE)
  cfg["training"].pop("num_workers")
  cfg["training"]["num_honest"] = 10
  cfg["grid"]["defenses"] = ["mean"]
  cells = study.expand(study.load_config(cfg))
  assert {(c.num_byzantine, c.num_workers) for c in cells} == {(1, 11),
                                                              (2, 12)}


def test_bucketing_shrinks_the_rows_the_rule_sees():
  from byzjax.study import registry  # pylint: disable=g-import-not-at-top
  assert registry.rows_after(("bucketing",), 11) == 6
  assert registry.rows_after((), 11) == 11


def test_centered_clipping_is_a_defense_with_diagnostics():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from byzjax.study import registry  # pylint: disable=g-import-not-at-top
  cfg = _with("grid.defenses", ["centered_clipping",
                                {"rule": "centered_clipping",
                                 "args": {"radius": 1.0, "num_iters": 3},
                                 "label": "cc_fixed"}])
  parsed = study.load_config(cfg)
  assert len(parsed.defenses) == 2
  tx = registry.build_aggregate("centered_clipping", {"num_iters": 2}, 8, 2,
                                jax.random.key(0))
  state = tx.init({"w": jnp.zeros(3)})
  assert state.info.weights.shape == (8,)  # kept for byz_weight
  with pytest.raises(config_lib.ConfigError, match="radius"):
    study.load_config(_with("grid.defenses", [
        {"rule": "centered_clipping", "args": {"radius": -1.0}}]))


def test_toml_errors_and_missing_file():
  with pytest.raises(config_lib.ConfigError, match="not found"):
    study.load_config("/nonexistent/study.toml")
  with pytest.raises(config_lib.ConfigError, match="not valid TOML"):
    study.load_config("name = \n[task]\n")


@pytest.mark.parametrize("name", sorted(os.listdir(
    os.path.join(REPO, "experiments", "configs"))))
def test_shipped_configs_parse(name):
  cfg = study.load_config(os.path.join(REPO, "experiments", "configs", name))
  assert runner.expand(cfg)
