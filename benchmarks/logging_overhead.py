"""What logging costs: steady images/s of whole `fit` epochs, logging off, default and per step.

  python -m benchmarks.logging_overhead [--config=mlp_baseline] [--epochs=6] [--repeats=3]

Each mode trains the config in a fresh workdir through `train.fit`, as
launch.py does; an epoch's time is the interval between two progress updates,
so it holds everything a user waits for: the compiled epoch, validation,
metrics.jsonl, steps.jsonl, TensorBoard events and the checkpoint save. The
first epoch (compile) is dropped; steady images/s is the median over the others
and over `repeats` runs per mode, the modes interleaved. The fastest model is
the worst case: its epochs are shortest, so fixed logging costs weigh most.
Wait for a quiet machine first: ../shared/tools/wait-quiet.
"""

from fmnist_jax import platform

platform.configure_xla()

import statistics
import tempfile
import time

from absl import app, flags, logging

from fmnist_jax import cli, data, metrics, progress, train

_CONFIG = flags.DEFINE_string("config", "mlp_baseline", "Config name in configs/.")
_EPOCHS = flags.DEFINE_integer("epochs", 6, "Epochs per run; the first is dropped.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs per mode, interleaved.")

MODES = {
  "off": {"tensorboard": False, "every_steps": 0},
  "default (TensorBoard, every 50 steps)": {"tensorboard": True, "every_steps": 50},
  "every step": {"tensorboard": True, "every_steps": 1},
}


def epoch_seconds(config) -> list[float]:
  """Seconds between successive progress updates of one `fit` (compile epoch dropped)."""
  stamps = []
  update = progress.EpochBar.update

  def stamped(self, record):
    stamps.append(time.perf_counter())
    return update(self, record)

  progress.EpochBar.update = stamped
  try:
    with tempfile.TemporaryDirectory() as workdir:
      train.fit(config, workdir, show_progress=False)
  finally:
    progress.EpochBar.update = update
  return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  seconds = {mode: [] for mode in MODES}
  num_train = None
  for _ in range(_REPEATS.value):
    for mode, switches in MODES.items():
      config = cli.load_config(_CONFIG.value)
      config.num_epochs = _EPOCHS.value
      config.figures = False
      config.early_stopping.enabled = False
      config.logging.tensorboard = switches["tensorboard"]
      config.logging.every_steps = switches["every_steps"]
      if num_train is None:
        num_train = len(data.load(config.data).train)
      seconds[mode] += epoch_seconds(config)
  base = num_train / statistics.median(seconds["off"])
  rows = []
  for mode, values in seconds.items():
    speed = num_train / statistics.median(values)
    rows.append(
      [
        mode,
        f"{speed:,.0f}",
        f"{num_train / max(values):,.0f}-{num_train / min(values):,.0f}",
        f"{speed / base - 1:+.1%}",
        str(len(values)),
      ]
    )
  print(
    metrics.render_table(
      ["Logging", "Steady images/s (median)", "min-max", "vs off", "Epochs timed"],
      rows,
      title=f"{_CONFIG.value}: whole fit epochs ({num_train:,} images), compile excluded",
    )
  )


if __name__ == "__main__":
  app.run(main)
