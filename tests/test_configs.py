"""Every config file: loads, passes validation, builds its model, documents its study row."""

import importlib
import pathlib

import pytest
from flax import nnx

from fmnist_jax import config_checks, models

CONFIGS = sorted(
  p.stem
  for p in (pathlib.Path(__file__).parent.parent / "configs").glob("*.py")
  if not p.stem.startswith("_")
)
# Parameter counts pinned by the studies (A1, A3) or by the documented widths.
EXPECTED_PARAMS = {
  "mlp_baseline": 266_610,
  "autoencoder": 313_139,
  "autoencoder_early_stop": 313_139,
  "vgg": 2_424_516,
  "cnn": 1_701_578,
  "resnet": 1_374_930,
  "cpu_fast": 98_666,
  "speedrun": 662_554,
  "sota": 4_623_754,
  "sota_wrn": 10_961_082,  # WRN-16-8, see test_models' formula
  "mlp_1hidden": 784 * 512 + 512 + 512 * 10 + 10,  # 407,050
  "mlp_2hidden": 784 * 2048 + 2048 + 2048 * 512 + 512 + 512 * 10 + 10,  # 2,661,898
}
# Configs whose docstring gives the command (study_a only holds study A's protocol).
COMMANDS = [name for name in CONFIGS if name != "study_a"]
# Study B's hyperparameter studies: how many compiled programs (and points) each sweep runs.
# Dropout rates, like optimizer hyperparameters, vary between members of one program.
STUDY_SWEEPS = {
  "study_inputs": (None, 3, 9),
  "study_optimizers": (None, 2, 24),
  "study_one_hidden:activation": ("activation", 5, 5),
  "study_one_hidden:dropout": ("dropout", 1, 8),
  "study_one_hidden:units": ("units", 6, 6),
  "study_two_hidden": (None, 2, 4),
  "study_cnn": (None, 2, 4),
}


def load(name):
  return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid_and_builds(name):
  config = load(name)
  config_checks.check(config)
  model = nnx.eval_shape(lambda: models.build(config.model, rngs=nnx.Rngs(0)))
  if name in EXPECTED_PARAMS:
    assert models.count_params(model) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_docstring_names_its_study_row_and_command(name):
  doc = importlib.import_module(f"configs.{name}").__doc__
  assert doc and ("Study" in doc or "study" in doc)
  if name in COMMANDS:
    assert f"--config=configs/{name}.py" in doc


@pytest.mark.parametrize("name", sorted(STUDY_SWEEPS))
def test_study_sweeps_plan_their_programs(name):
  from fmnist_jax import sweep

  arg, num_programs, num_points = STUDY_SWEEPS[name]
  module = importlib.import_module(f"configs.{name.partition(':')[0]}")
  config = module.get_config(arg) if arg else module.get_config()
  plan = sweep.programs(config)  # checks every point's config too
  assert len(plan) == num_programs
  assert sum(len(program.members) for program in plan) == num_points * config.num_seeds


@pytest.mark.parametrize(
  ("name", "args"),
  [("study_one_hidden", ("activation", "dropout", "units")), ("study_patience", ("mlp", "cnn"))],
)
def test_configs_with_an_argument_build_every_part(name, args):
  module = importlib.import_module(f"configs.{name.partition(':')[0]}")
  for arg in args:
    config_checks.check(module.get_config(arg))
  with pytest.raises(ValueError, match="choose one of"):
    module.get_config("nonsense")


def test_study_protocols():
  a1, a4, b4 = load("mlp_baseline"), load("autoencoder_early_stop"), load("cnn")
  assert (a1.data.validation_split, a1.data.validation_size) == ("tail", 10_000)
  assert (
    a1.optimizer.name,
    a1.optimizer.learning_rate,
    a1.optimizer.momentum,
    a1.batch_size,
    a1.num_epochs,
  ) == ("sgd", 0.01, 0.9, 200, 5)
  assert a4.early_stopping.enabled and a4.early_stopping.patience == 5
  assert (b4.data.validation_split, b4.data.validation_size) == ("random", 12_000)
  assert (b4.optimizer.name, b4.optimizer.learning_rate, b4.optimizer.eps) == ("adam", 1e-3, 1e-7)
  assert b4.early_stopping.patience == 10
  b1, b2 = load("mlp_1hidden"), load("mlp_2hidden")
  assert (b1.model.hidden_sizes, b1.optimizer.learning_rate) == ((512,), 3e-4)  # see its docstring
  assert (b2.model.hidden_sizes, b2.model.dropout_rates) == ((2048, 512), (0.2, 0.4))
  assert b2.optimizer.learning_rate == 1e-4
  assert (b1.label_smoothing, b2.label_smoothing) == (0.0, 0.1)  # B2's: chosen on validation
  assert b1.early_stopping.patience == b2.early_stopping.patience == 15  # study 3
  assert load("mlp_ensemble").ensemble.members == ("mlp_1hidden", "mlp_2hidden")
  assert load("cnn_ensemble").ensemble.members == ("cnn", "resnet")
