"""Compile time of a whole run, for every config: what a user waits before training starts.

  python -m benchmarks.compile_time                 # every config in configs/
  python -m benchmarks.compile_time --configs=cnn,resnet

Runs each config end to end (`launch.py`'s dispatch: a run, a sweep or an
ensemble) for one epoch (and one pre-training epoch) on a 1,280 / 1,000 / 1,000
image subset, and sums the seconds JAX reports for tracing, lowering and XLA
compilation of every program the run compiles (train epoch, evaluation,
prediction, early stopping, ...). Compilation does not depend on the number of
examples: the scanned epoch is one loop whatever its length. With
`--compilation_cache=DIR` run twice, the second run times what a rerun or a
resume of launch.py waits (launch.py keeps its cache in ~/.cache/fmnist_jax).
"""

from fmnist_jax import platform

platform.configure_xla()

import collections
import pathlib
import tempfile
import time

import jax
from absl import app, flags, logging

from fmnist_jax import cli, data

_CONFIGS = flags.DEFINE_list("configs", None, "Config names (default: every one but base).")
_CACHE = flags.DEFINE_string(
  "compilation_cache",
  "",
  "A persistent compilation cache directory, as launch.py's (default off: a first run). "
  "Run twice with the same directory to time a rerun.",
)

# A config file with arguments is measured once per argument.
ARGUMENTS = {
  "study_one_hidden": ("activation", "dropout", "units"),
  "study_patience": ("mlp", "cnn"),
}
SKIPPED = {"base", "study_a"}  # shared bases, not experiments
COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_trace_duration",
  "/jax/core/compile/jaxpr_to_mlir_module_duration",
  "/jax/core/compile/backend_compile_duration",
)


def subset_loader():
  real = data.load

  def load(config):
    dataset = real(config)

    def head(split, count):
      return None if split is None else data.Split(split.images[:count], split.labels[:count])

    return data.Dataset(
      train=head(dataset.train, 1280),
      validation=head(dataset.validation, 1000),
      test=head(dataset.test, 1000),
      source=dataset.source,
    )

  return load


def measure(name: str, argument: str | None, seconds: collections.Counter) -> float:
  from fmnist_jax import runs

  config = cli.load_config(name, argument)
  config.num_epochs = 1
  config.figures = False
  if config.pretrain.num_epochs:
    config.pretrain.num_epochs = 1
  seconds.clear()
  # Ensemble members are trained from their own config files: shorten them the same way.
  original = runs.member_configs

  def short_members(config):
    members = original(config)
    for _, member in members:
      member.num_epochs, member.figures = 1, False
    return members

  runs.member_configs = short_members
  try:
    with tempfile.TemporaryDirectory() as workdir:
      runs.run_config(config, pathlib.Path(workdir) / name, show_progress=False)
  finally:
    runs.member_configs = original
  return sum(seconds[event] for event in COMPILE_EVENTS)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  platform.enable_compilation_cache(_CACHE.value)
  data.load = subset_loader()
  seconds = collections.Counter()
  jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kwargs: seconds.update({event: duration})
  )
  names = _CONFIGS.value or [n for n in cli.available_configs() if n not in SKIPPED]
  print("| Config | Compile seconds (trace + lower + XLA) | Whole 1-epoch subset run, s |")
  print("|---|---|---|")
  for name in names:
    for argument in ARGUMENTS.get(name, (None,)):
      start = time.perf_counter()
      compile_s = measure(name, argument, seconds)
      label = f"{name}:{argument}" if argument else name
      print(f"| {label} | {compile_s:.1f} | {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
