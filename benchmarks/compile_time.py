"""Compile time of a whole run, for every config: what a user waits before training starts.

  python -m benchmarks.compile_time                 # every config in configs/
  python -m benchmarks.compile_time --configs=cnn,resnet --repeats=5

Runs each config end to end (`launch.py`'s dispatch: a run, a sweep or an
ensemble) for one epoch (and one pre-training epoch) on a 1,280 / 1,000 / 1,000
image subset, and sums the seconds JAX reports for tracing, lowering and XLA
compilation (or loading from the persistent cache) of every program the run
compiles (train epoch, evaluation, prediction, early stopping, ...).
Compilation does not depend on the number of examples: the scanned epoch is one
loop whatever its length. A command that trains several runs (a sweep's programs,
an ensemble's members) is also split into each run's share: each run compiles
right before its own first epoch, after the run before it has trained, and the
rest (an ensemble's scoring) is the difference.

Each config runs in a fresh process with a fresh, empty persistent compilation
cache: a user's first `launch.py` run, which keeps its cache in
~/.cache/fmnist_jax (so an ensemble that reloads its members' runs finds their
programs there). `--compilation_cache=DIR` times what a rerun or a resume waits:
a first, unmeasured run of each config fills DIR, and every measured run loads
from it. `--compilation_cache=off` times no cache at all.

Compile times of one config swing up to 1.5x on a shared machine: each config is
measured `--repeats` times (the configs interleaved, each after waiting for a
quiet machine) and the table gives the median with the min-max.
"""

from fmnist_jax import platform

platform.configure_xla()

import collections
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from unittest import mock

import jax
from absl import app, flags, logging

from benchmarks import quiet
from fmnist_jax import cli, data

_CONFIGS = flags.DEFINE_list("configs", None, "Config names (default: every one but base).")
_CACHE = flags.DEFINE_string(
  "compilation_cache",
  "",
  "A persistent compilation cache directory, as launch.py's (default: a fresh, empty one per "
  "run: a first run). A directory times a rerun (an unmeasured run fills it); 'off': no cache.",
)
_REPEATS = flags.DEFINE_integer(
  "repeats", 3, "Measurements per config, interleaved; the table gives their median."
)
_WAIT_QUIET = flags.DEFINE_bool(
  "wait_quiet", True, f"Before each measurement, wait for a quiet machine ({quiet.WAIT_QUIET})."
)
_ONE = flags.DEFINE_string("one", None, "Internal: measure this config (name[:argument]) here.")

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
  "/jax/compilation_cache/cache_retrieval_time_sec",
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


def measure(name: str, argument: str | None, seconds: collections.Counter) -> dict:
  """{"compile_s": the whole command's, "runs_compile_s": each training run's (one per
  `train.fit`: a sweep's programs, an ensemble's members), in order}."""
  from fmnist_jax import runs, train

  config = cli.load_config(name, argument)
  config.num_epochs = 1
  config.figures = False
  if config.pretrain.num_epochs:
    config.pretrain.num_epochs = 1
  seconds.clear()

  def compiled() -> float:
    return sum(seconds[event] for event in COMPILE_EVENTS)

  # Ensemble members are trained from their own config files: shorten them the same way.
  original_members, original_fit = runs.member_configs, train.fit
  runs_compile_s = []

  def short_members(config):
    members = original_members(config)
    for _, member in members:
      member.num_epochs, member.figures = 1, False
    return members

  def fit_counted(*args, **kwargs):
    before = compiled()
    try:
      return original_fit(*args, **kwargs)
    finally:
      runs_compile_s.append(compiled() - before)

  with (
    mock.patch.object(runs, "member_configs", short_members),
    mock.patch.object(train, "fit", fit_counted),
    tempfile.TemporaryDirectory() as workdir,
  ):
    runs.run_config(config, pathlib.Path(workdir) / name, show_progress=False)
  return {"compile_s": compiled(), "runs_compile_s": runs_compile_s}


def measure_here(label: str, cache: str) -> None:
  """Measures one config in this process; prints its compile and wall seconds as JSON."""
  logging.set_verbosity(logging.WARNING)
  platform.enable_compilation_cache(None if cache == "off" else cache)
  data.load = subset_loader()
  seconds = collections.Counter()
  jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kwargs: seconds.update({event: duration})
  )
  name, _, argument = label.partition(":")
  start = time.perf_counter()
  measured = measure(name, argument or None, seconds)
  print(json.dumps({**measured, "wall_s": time.perf_counter() - start}))


def measure_in_child(label: str, cache: str) -> dict:
  command = [sys.executable, "-m", "benchmarks.compile_time", f"--one={label}"]
  result = subprocess.run(
    [*command, f"--compilation_cache={cache}"], capture_output=True, text=True, check=False
  )
  if result.returncode:
    raise RuntimeError(f"{label} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> str:
  if len(values) == 1:
    return f"{values[0]:.1f}"
  return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main(argv):
  del argv
  if _ONE.value:
    measure_here(_ONE.value, _CACHE.value)
    return
  names = _CONFIGS.value or [n for n in cli.available_configs() if n not in SKIPPED]
  labels = [
    f"{name}:{argument}" if argument else name
    for name in names
    for argument in ARGUMENTS.get(name, (None,))
  ]
  results = {label: [] for label in labels}
  if _CACHE.value and _CACHE.value != "off":  # rerun times: every program already cached
    for label in labels:
      measure_in_child(label, _CACHE.value)
  for _ in range(_REPEATS.value):  # interleaved: a noisy minute hits one repeat of each
    for label in labels:
      quiet.wait_for_quiet(_WAIT_QUIET.value)
      with tempfile.TemporaryDirectory() as fresh_cache:
        results[label].append(measure_in_child(label, _CACHE.value or fresh_cache))
  print(
    f"| Config | Compile seconds (trace + lower + XLA or cache), median (min-max) of "
    f"{_REPEATS.value} | Each training run's share, median | Whole 1-epoch subset run, s |"
  )
  print("|---|---|---|---|")
  for label, measured in results.items():
    compile_s = _spread([run["compile_s"] for run in measured])
    # A sweep's programs and an ensemble's members are runs of their own: each compiles
    # before its own first epoch, after the run before it has trained.
    shares = zip(*(run["runs_compile_s"] for run in measured), strict=True)
    runs_s = " + ".join(f"{statistics.median(share):.1f}" for share in shares)
    wall_s = statistics.median(run["wall_s"] for run in measured)
    print(f"| {label} | {compile_s} | {runs_s} | {wall_s:.1f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
