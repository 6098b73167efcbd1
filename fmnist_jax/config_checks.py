"""Config validation before anything compiles: each error names the key, the value and the fix.

Unknown keys are refused earlier, by the locked ConfigDict (`launch.py`); this
module checks values: ranges, names and combinations.
"""

import math

from ml_collections import ConfigDict

from fmnist_jax import data, layers, models, parallel, platform
from fmnist_jax.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "onecycle")
PRETRAIN_LOSSES = ("mse", "binary_crossentropy")
# Model keys holding layer widths (models.py); each a tuple of positive integers.
LAYER_SIZE_KEYS = (
  "hidden_sizes",
  "dense_sizes",
  "head_sizes",
  "conv_features",
  "stage_features",
  "encoder_features",
  "decoder_features",
  "blocks",
)
# Metrics a sweep can rank and plot; a loss is minimized, the others maximized.
SWEEP_METRICS = tuple(
  f"{split}/{key}"
  for split in ("val", "test", "train")
  for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss")
)


def _positive_ints(values) -> bool:
  """A tuple (or list) of positive integers, or of such tuples (VGG's `blocks`)."""
  if not isinstance(values, tuple | list):
    return False
  return all(
    _positive_ints(v) if isinstance(v, tuple | list) else type(v) is int and v > 0 for v in values
  )


def _fail(key: str, value, fix: str):
  raise ConfigError(f"config.{key}={value!r}: {fix}")


def _positive_int(config: ConfigDict, key: str):
  value = _get(config, key)
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    _fail(key, value, "must be a positive integer")


def _in_range(
  config: ConfigDict, key: str, low: float, high: float, *, low_open=False, high_open=True
):
  value = _get(config, key)
  too_low = value <= low if low_open else value < low
  too_high = value >= high if high_open else value > high
  if not isinstance(value, int | float) or not math.isfinite(value) or too_low or too_high:
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    _fail(key, value, f"must be a number in {interval}")


def _one_of(config: ConfigDict, key: str, choices):
  value = _get(config, key)
  if value not in choices:
    _fail(key, value, f"choose one of {list(choices)}")


def _get(config: ConfigDict, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def check(config: ConfigDict, *, num_train: int | None = None, has_validation: bool = True):
  """Raises ConfigError for the first impossible value; `num_train` enables size checks."""
  for key in (
    "num_epochs",
    "num_seeds",
    "batch_size",
    "eval_batch_size",
    "checkpoint.max_to_keep",
    "checkpoint.every_epochs",
  ):
    _positive_int(config, key)
  every = config.logging.every_steps
  if isinstance(every, bool) or not isinstance(every, int) or every < 0:
    _fail("logging.every_steps", every, "must be 0 (off) or a positive number of steps")
  if not isinstance(config.parallel.num_devices, int) or config.parallel.num_devices < 0:
    _fail("parallel.num_devices", config.parallel.num_devices, "must be 0 (all devices) or more")
  _one_of(config, "parallel.members", parallel.MEMBER_EXECUTIONS)
  if num_train is not None and config.batch_size > num_train:
    _fail(
      "batch_size",
      config.batch_size,
      f"larger than the training split ({num_train} examples); lower it",
    )
  if not isinstance(config.seed, int):
    _fail("seed", config.seed, "must be an integer")
  _one_of(config, "conv_impl", layers.CONV_IMPLS)
  _one_of(config, "pool_order", layers.POOL_ORDERS)
  _one_of(config, "cpu_matmul_library", platform.MATMUL_LIBRARIES)
  _one_of(config, "compute_dtype", tuple(layers.COMPUTE_DTYPES))
  _in_range(config, "divergence_threshold", 0.0, math.inf)
  _in_range(config, "label_smoothing", 0.0, 1.0)
  _in_range(config, "ema_decay", 0.0, 1.0)
  for key, limit in (("augment.translate", 14), ("augment.cutout", 28)):
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
      _fail(key, value, f"must be a whole number of pixels in [0, {limit}]")
  for key in ("grid", "zip"):
    if not isinstance(config.sweep[key], str):
      _fail(f"sweep.{key}", config.sweep[key], "must be a string like 'KEY=V1,V2; KEY2=V3,V4'")
  _one_of(config, "sweep.metric", SWEEP_METRICS)

  members = config.ensemble.members
  if not isinstance(members, tuple | list) or not all(isinstance(m, str) for m in members):
    _fail("ensemble.members", members, "must be a tuple of config names, e.g. ('cnn', 'resnet')")
  if members and (config.sweep.grid or config.sweep.zip):
    _fail("ensemble.members", members, "an ensemble config cannot also sweep; sweep its members")

  _one_of(config, "data.source", data.SOURCES)
  _one_of(config, "data.validation_split", data.VALIDATION_SPLITS)
  _one_of(config, "data.preprocessing", data.PREPROCESSINGS)

  _one_of(config, "model.name", sorted(models.MODELS))
  for key in ("activation", "head_activation", "autoencoder_activation"):
    if key in config.model:
      _one_of(config, f"model.{key}", sorted(layers.ACTIVATIONS))
  for key in ("kernel_size", "depth", "width"):  # whole-model integers, where a model has them
    if key in config.model:
      _positive_int(config, f"model.{key}")
  if "batch_norm_momentum" in config.model:
    _in_range(config, "model.batch_norm_momentum", 0.0, 1.0)
  for key in LAYER_SIZE_KEYS:
    sizes = config.model.get(key)
    if sizes is not None and not _positive_ints(sizes):
      _fail(f"model.{key}", sizes, "must be a tuple of positive integers, e.g. (300, 100)")
  for key in models.DROPOUT_KEYS:
    rates = config.model.get(key, 0.0)
    for rate in rates if isinstance(rates, list | tuple) else (rates,):
      if not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        _fail(f"model.{key}", rates, "dropout rates must be in [0, 1)")

  _one_of(config, "optimizer.name", OPTIMIZERS)
  _one_of(config, "optimizer.schedule", SCHEDULES)
  _in_range(config, "optimizer.learning_rate", 0.0, 10.0, low_open=True, high_open=False)
  _in_range(config, "optimizer.momentum", 0.0, 1.0)
  _in_range(config, "optimizer.b1", 0.0, 1.0)
  _in_range(config, "optimizer.b2", 0.0, 1.0)
  _in_range(config, "optimizer.eps", 0.0, 1.0, low_open=True)
  _in_range(config, "optimizer.weight_decay", 0.0, 1.0)
  _in_range(config, "optimizer.warmup_epochs", 0.0, config.num_epochs)
  if config.optimizer.weight_decay and config.optimizer.name == "adam":
    _fail(
      "optimizer.weight_decay",
      config.optimizer.weight_decay,
      "adam applies no weight decay; set it to 0, or use adamw (decoupled) or sgd",
    )

  es = config.early_stopping
  if es.enabled:
    _positive_int(config, "early_stopping.patience")
    _in_range(config, "early_stopping.min_delta", 0.0, math.inf)
    if not has_validation:
      _fail(
        "early_stopping.enabled",
        True,
        "needs a validation split; set data.validation_size > 0 or disable it",
      )

  pre = config.pretrain
  if pre.num_epochs:
    _positive_int(config, "pretrain.num_epochs")
    if config.model.name != "autoencoder":
      _fail(
        "pretrain.num_epochs",
        pre.num_epochs,
        "pre-training needs model.name='autoencoder'; set it to 0",
      )
    if config.data.preprocessing != "scale01":
      _fail(
        "data.preprocessing",
        config.data.preprocessing,
        "reconstruction pre-training targets [0, 1] images; use 'scale01'",
      )
    _one_of(config, "pretrain.loss", PRETRAIN_LOSSES)
    _in_range(config, "pretrain.learning_rate", 0.0, 10.0, low_open=True, high_open=False)
