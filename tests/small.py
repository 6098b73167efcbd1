"""A small real-data setup shared by the training tests: a tiny MLP config."""

from ml_collections import ConfigDict

from configs import base

NUM_TRAIN, NUM_VAL, NUM_TEST = 2_000, 500, 1_000


def small_config(**overrides) -> ConfigDict:
  config = base.get_config()
  config.model = ConfigDict({"name": "mlp", "hidden_sizes": (64,), "dropout_rates": 0.1})
  config.batch_size = 64
  config.num_epochs = 3
  config.checkpoint.max_to_keep = 2
  config.figures = False  # figures have their own tests; they cost ~2 s per run
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config
