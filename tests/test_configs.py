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
  "cnn": 241_546,
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
  if name in EXPECTED_PARAMS:
    assert f"--config=configs/{name}.py" in doc


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
