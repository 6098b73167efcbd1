"""A small real-data setup shared by the training tests: a tiny MLP config and data subset."""

import pathlib
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from configs import base
from fmnist_jax import data

NUM_TRAIN, NUM_VAL, NUM_TEST = 2_000, 500, 1_000
WORKER = pathlib.Path(__file__).parent / "run_worker.py"  # training in a process of its own


def worker_command(workdir, **flags) -> list[str]:
  """The command line of tests/run_worker.py: worker_command(dir, model="cnn", devices=8)."""
  return [sys.executable, str(WORKER), str(workdir), *(f"--{k}={v}" for k, v in flags.items())]


def small_config(**overrides) -> ConfigDict:
  config = base.get_config()
  config.model = ConfigDict({"name": "mlp", "hidden_sizes": (64,), "dropout_rates": 0.1})
  config.batch_size = 64
  config.num_epochs = 3
  config.checkpoint.max_to_keep = 2
  config.figures = False  # figures have their own tests; they cost ~2 s per run
  return override(config, **overrides)


def override(config: ConfigDict, **overrides) -> ConfigDict:
  """Sets dotted keys: override(config, **{"optimizer.learning_rate": 0.1})."""
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def small_dataset(data_dir: pathlib.Path, num_train: int = NUM_TRAIN) -> data.Dataset:
  """The first `num_train` / 500 / 1,000 real images: enough to learn, fast to train."""
  train_split, test_split = data.load_arrays(data_dir)

  def head(split, start, count):
    return data.Split(split.images[start : start + count], split.labels[start : start + count])

  return data.Dataset(
    train=head(train_split, 0, num_train),
    validation=head(train_split, num_train, NUM_VAL),
    test=head(test_split, 0, NUM_TEST),
    source="test subset",
  )


def saved_params(workdir: pathlib.Path) -> list[np.ndarray]:
  """The latest checkpoint's parameters, read by orbax alone onto one device, whatever
  number of devices saved them."""
  with ocp.CheckpointManager(workdir / "checkpoints") as manager:
    path = workdir / "checkpoints" / str(manager.latest_step()) / "default"
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    target = jax.tree.map(
      lambda meta: jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=one_device),
      checkpointer.metadata(path).item_metadata,
    )
    restored = checkpointer.restore(path, target)
  return [np.asarray(leaf) for leaf in jax.tree.leaves(restored["state"]["params"])]


TIMES = ("seconds", "wall_seconds", "train_seconds")


def committed_epochs(workdir: pathlib.Path) -> list[int]:
  """The epochs whose checkpoints orbax has committed in `workdir`."""
  if not (workdir / "checkpoints").is_dir():
    return []
  with ocp.CheckpointManager(workdir / "checkpoints") as manager:
    return sorted(manager.all_steps())


def zero_checkpoint_data(checkpoint: pathlib.Path):
  """Overwrites one checkpoint's array data with zeros, as a disk fault would leave it."""
  for path in checkpoint.rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(b"\0" * path.stat().st_size)


def without_times(value):
  """`value` (results, metrics records) without its wall-clock fields, to compare runs."""
  if isinstance(value, dict):
    return {k: without_times(v) for k, v in value.items() if k not in TIMES}
  if isinstance(value, list):
    return [without_times(v) for v in value]
  return value
