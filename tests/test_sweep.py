"""Sweeps: the declaration syntax, grouping into programs, vmapped points equal separate runs."""

import csv
import json

import numpy as np
import pytest
from ml_collections import ConfigDict
from small import small_config

from fmnist_jax import sweep, train
from fmnist_jax.errors import ConfigError


def test_grid_takes_every_combination_and_zip_pairs():
  config = small_config()
  config.sweep.grid = "optimizer.learning_rate=0.1,0.01; model.activation=relu,tanh"
  config.sweep.zip = "model.hidden_sizes=[(32,), (64, 32)]; batch_size=32,64"
  points = sweep.points(config)
  assert len(points) == 2 * 2 * 2
  assert points[0] == {
    "optimizer.learning_rate": 0.1,
    "model.activation": "relu",
    "model.hidden_sizes": (32,),
    "batch_size": 32,
  }
  assert {(p["model.hidden_sizes"], p["batch_size"]) for p in points} == {
    ((32,), 32),
    ((64, 32), 64),
  }
  assert sweep.points(small_config()) == [{}]


@pytest.mark.parametrize(
  "field,spec,message",
  [
    ("grid", "optimizer.learning_rate", "write KEY=V1,V2"),
    ("grid", "optimizer.learnin_rate=0.1", 'unknown config key.*did you mean "learning_rate"'),
    ("grid", "optimizer.learning_rate=0.1,-1", r"learning_rate=-1.*\(0.0, 10.0\]"),
    ("grid", "batch_size=abc", "batch_size='abc' does not fit"),
    ("zip", "optimizer.learning_rate=0.1,0.2; batch_size=32", "lengths differ"),
    ("grid", "num_seeds=1,2", "cannot be swept"),
    ("grid", "model.hidden_sizes=[(32,), (64,)", "not a Python list"),
  ],
)
def test_a_bad_sweep_is_named_before_anything_trains(field, spec, message):
  config = small_config()
  config.sweep[field] = spec
  with pytest.raises(ConfigError, match=message):
    sweep.programs(config)


def test_optimizer_points_share_one_program_and_shapes_get_their_own():
  config = small_config(num_seeds=2, **{"optimizer.name": "sgd"})
  config.sweep.grid = "optimizer.learning_rate=0.1,0.01,0.001; model.hidden_sizes=[(32,), (64,)]"
  plan = sweep.programs(config)
  assert [p.name for p in plan] == ["hidden_sizes-32", "hidden_sizes-64"]
  for program, width in zip(plan, (32, 64), strict=True):
    assert program.config.model.hidden_sizes == (width,)
    assert program.members.seeds == (0, 1) * 3
    np.testing.assert_allclose(
      program.members.hyperparams["optimizer.learning_rate"], [0.1] * 2 + [0.01] * 2 + [0.001] * 2
    )
    assert program.members.hyperparams["optimizer.momentum"] == (0.0,) * 6


def _two_layer_mlp(hidden_sizes, dropout_rates) -> ConfigDict:
  return ConfigDict({"name": "mlp", "hidden_sizes": hidden_sizes, "dropout_rates": dropout_rates})


def test_dropout_points_share_one_program_with_each_layer_on_where_any_member_uses_it():
  config = small_config()
  config.model = _two_layer_mlp((32, 16), (0.0, 0.0))
  config.sweep.zip = (
    "model.dropout_rates=[(0.0, 0.3), (0.5, 0.0)]; optimizer.learning_rate=1e-3,3e-4"
  )
  (program,) = sweep.programs(config)
  assert program.name == "" and program.config.model.dropout_rates == (0.5, 0.3)
  assert program.members.hyperparams["model.dropout_rates"] == ((0.0, 0.3), (0.5, 0.0))
  assert program.members.hyperparams["optimizer.learning_rate"] == (1e-3, 3e-4)


def _assert_members_equal_separate_runs(config, key, values, tmp_path, checked=None):
  """A one-key sweep of `config` is one program whose rows equal separate runs of `config`
  with each value (or with the values at the indices `checked`), with its members side by
  side (vmap) and one after another (map)."""
  config.sweep.grid = f"{key}={list(values)}"
  swept = {}
  for execution in ("vmap", "map"):
    config.parallel.members = execution
    swept[execution] = sweep.run(config, tmp_path / execution, show_progress=False)
    assert swept[execution]["programs"] == [""]  # one program
  config.parallel.members = "auto"
  for index in range(len(values)) if checked is None else checked:
    value = values[index]
    alone_config = sweep.apply(config, {key: value})
    alone_config.sweep.grid = ""
    alone = train.fit(alone_config, tmp_path / f"alone{index}", show_progress=False)
    alone = alone["members"][0]["metrics"]
    for execution, result in swept.items():
      row = result["rows"][index]
      assert row["point"] == {key: value}, execution
      for split in ("val", "test"):
        assert row["stats"][f"{split}/loss"]["mean"] == pytest.approx(
          alone[split]["loss"], rel=1e-4
        ), (execution, value)
        assert row["stats"][f"{split}/accuracy"]["mean"] == pytest.approx(
          alone[split]["accuracy"], abs=2e-3
        ), (execution, value)
  for result in swept.values():
    assert len({row["stats"]["val/loss"]["mean"] for row in result["rows"]}) == len(values)


def test_a_vmapped_learning_rate_sweep_equals_separate_runs(use_small_dataset, tmp_path):
  config = small_config(num_epochs=2, **{"optimizer.name": "sgd", "optimizer.momentum": 0.9})
  learning_rates = (0.3, 0.2, 0.1, 0.05, 0.03, 0.01, 0.003, 0.001)  # the 8 values
  # All 8 members in the program, checked against separate runs at the ends and the middle.
  _assert_members_equal_separate_runs(
    config, "optimizer.learning_rate", learning_rates, tmp_path, checked=(0, 3, 7)
  )


def test_a_vmapped_dropout_sweep_equals_separate_runs(use_small_dataset, tmp_path):
  # (0.0, 0.3): its first layer is on in the program (another member uses it) at rate 0.
  config = small_config(num_epochs=2)
  config.model = _two_layer_mlp((64, 32), (0.0, 0.0))
  rates = ((0.0, 0.3), (0.5, 0.0), (0.2, 0.2))
  _assert_members_equal_separate_runs(config, "model.dropout_rates", rates, tmp_path)


def test_a_vmapped_sgd_weight_decay_sweep_equals_separate_runs(use_small_dataset, tmp_path):
  # Weight decay 0 is compiled in for that member (another uses decay), at 0.
  config = small_config(num_epochs=2, **{"optimizer.name": "sgd", "optimizer.momentum": 0.9})
  config.optimizer.learning_rate = 0.1
  _assert_members_equal_separate_runs(config, "optimizer.weight_decay", (0.0, 0.05), tmp_path)


def test_a_vmapped_label_smoothing_sweep_equals_separate_runs(use_small_dataset, tmp_path):
  # Smoothing 0 is compiled in for that member (another smooths), at 0.
  config = small_config(num_epochs=2)
  _assert_members_equal_separate_runs(config, "label_smoothing", (0.0, 0.2), tmp_path)


def test_a_sweep_writes_its_table_plots_and_survives_a_diverging_member(
  use_small_dataset, tmp_path
):
  config = small_config(
    num_epochs=2,
    num_seeds=2,
    **{"optimizer.name": "sgd", "optimizer.momentum": 0.9, "model.activation": "linear"},
  )
  # lr 10 on a linear network blows up to NaN within the first epoch; 0.01 learns.
  config.sweep.grid = "optimizer.learning_rate=0.01,10; model.hidden_sizes=[(16,), (32,)]"
  swept = sweep.run(config, tmp_path, show_progress=False)
  assert len(swept["rows"]) == 4
  for row in swept["rows"]:
    diverging = row["point"]["optimizer.learning_rate"] == 10
    assert row["diverged"] == (2 if diverging else 0)
    assert (row["stats"]["val/accuracy"]["mean"] > 0.5) != diverging
  assert swept["best"]["optimizer.learning_rate"] == 0.01
  with (tmp_path / "sweep.csv").open() as f:
    table = list(csv.DictReader(f))
  assert len(table) == 4 and {"val/accuracy_mean", "test/accuracy_std"} <= set(table[0])
  markdown = (tmp_path / "sweep.md").read_text()
  assert markdown.count("| **0.01** |") == 1 and "(2 diverged)" in markdown
  for name in ("sweep.png", "sweep_curves.png"):
    assert (tmp_path / name).stat().st_size > 10_000
  assert json.loads((tmp_path / "sweep.json").read_text())["rows"][0]["seeds"] == [0, 1]
  # Rerunning the same sweep resumes every program instead of training again.
  again = sweep.run(config, tmp_path, show_progress=False)
  assert json.dumps(again["rows"]) == json.dumps(swept["rows"])  # NaNs included


def test_a_one_seed_sweep_table_shows_plain_values():
  stats = {"mean": 0.875, "std": 0.0, "min": 0.875, "max": 0.875}
  row = {
    "point": {"optimizer.learning_rate": 0.1},
    "seeds": [0],
    "epochs_trained": [20],
    "diverged": 0,
    "stats": {"val/accuracy": stats},
  }
  results = {"swept": ["optimizer.learning_rate"], "rows": [row], "best": None, "num_seeds": 1}
  results["metric"] = "val/accuracy"
  markdown = sweep.format_markdown(results)
  assert "one seed" in markdown and "| 0.1 | 0.8750 | - |" in markdown and "+-" not in markdown
  results["num_seeds"] = 2
  assert "0.8750 +- 0.0000 (0.8750-0.8750)" in sweep.format_markdown(results)
