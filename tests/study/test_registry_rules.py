"""The issue-8 aggregators (mda, smea, caf, dnc) by name in a study config."""

import copy
import textwrap

import numpy as np
import pytest

from byzjax import study
from byzjax.study import config as config_lib
from byzjax.study import registry

BASE = {
    "name": "t",
    "task": {"dataset": "synthetic_classification", "model": "mlp",
             "model_args": {"hidden": [8]}, "num_features": 6,
             "num_classes": 3, "train_samples": 400, "test_samples": 100},
    "training": {"num_workers": 8, "num_byzantine": [2], "batch_size": 4,
                 "steps": 4, "eval_every": 2, "learning_rate": [0.1],
                 "seeds": 1},
    "grid": {"heterogeneity": ["iid"],
             "defenses": ["mda", "smea", "caf", "dnc"],
             "attacks": ["none"]},
}


def test_new_rules_are_registered_and_checked():
  # Two of the four, to keep the default suite short (each is traced once at
  # its (R, f)); all four train in test_runner_trains_with_each_new_rule.
  two = copy.deepcopy(BASE)
  two["grid"]["defenses"] = ["mda", "dnc"]
  cfg = study.load_config(two)
  assert [d.label for d in cfg.defenses] == ["mda", "dnc"]
  assert {"smea", "caf", "signguard"} <= set(registry.RULES)
  assert registry.RULES["dnc"].defaults(8, 2) == {"num_byzantine": 2}
  assert "dnc" in registry.KEY_PER_STEP
  # C(40, 10) subsets: refused when the config is checked, naming the bound.
  big = copy.deepcopy(BASE)
  big["training"].update(num_workers=40, num_byzantine=[10])
  big["grid"]["defenses"] = ["mda"]
  with pytest.raises(config_lib.ConfigError, match="max_subsets"):
    study.load_config(big)


CONFIG = textwrap.dedent("""
    name = "tiny_rules"
    [task]
    dataset = "synthetic_classification"
    model = "mlp"
    model_args = { hidden = [8] }
    num_features = 6
    num_classes = 3
    train_samples = 480
    test_samples = 120
    [training]
    num_workers = 7
    num_byzantine = [2]
    batch_size = 8
    steps = 6
    eval_every = 3
    learning_rate = [0.3]
    seeds = 1
    [grid]
    heterogeneity = ["iid"]
    defenses = ["mda", "smea", "caf", "dnc"]
    attacks = ["alie"]
    """)


@pytest.mark.slow  # four compiled training programs
def test_runner_trains_with_each_new_rule(tmp_path):
  rows = study.run(CONFIG, str(tmp_path / "out"), progress=False,
                   log=lambda _: None, as_dataframe=False, report=False)
  assert {r["defense"] for r in rows} == {"mda", "smea", "caf", "dnc"}
  assert len(rows) == 4 * 2
  acc = np.array([r["accuracy"] for r in rows])
  assert np.all((acc >= 0) & (acc <= 1))


def test_foolsgold_is_a_stateful_defense_whose_weights_are_diagnostics():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from byzjax.simulation import loop  # pylint: disable=g-import-not-at-top
  one = copy.deepcopy(BASE)
  one["grid"]["defenses"] = ["foolsgold"]
  assert [d.label for d in study.load_config(one).defenses] == ["foolsgold"]
  tx = registry.build_aggregate("foolsgold", {}, 4, 1, jax.random.key(0))
  state = tx.init({"w": jnp.zeros(3)})
  # Three sybils sending the same update and one honest worker: FoolsGold
  # gives the sybils (almost) no weight, which the simulator reports.
  x = jnp.asarray([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0],
                   [-1.0, 0.5, 0.2]])
  _, state = tx.update({"w": x}, state)
  diag = loop.byzantine_diagnostics(state, jnp.asarray([True, True, True,
                                                          False]))
  assert float(diag["byz_weight"]) < 0.05
