"""Trains one experiment: one command per study row.

  python launch.py --config=configs/cnn.py
  python launch.py --config=configs/cnn.py --config.optimizer.learning_rate=3e-4 --workdir=runs/x

The workdir (default runs/<config name>) receives config.json, metrics.jsonl,
results.json and orbax checkpoints; rerunning the same command resumes from
the latest checkpoint. User mistakes print one line and exit with status 2
(--debug shows the traceback).
"""

from fmnist_jax import platform

platform.configure_xla()

import pathlib
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fmnist_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config file (configs/*.py); override fields with --config.KEY=VALUE.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory; default runs/<config file name>.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks instead of one-line errors.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show the per-epoch progress bar.")
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(
      f"unexpected arguments {argv[1:]}; options are --config=..., "
      f"--config.KEY=VALUE, --workdir=..."
    )
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  # Imported after flag parsing so `--help` and flag errors are instant.
  from fmnist_jax import data, metrics, train
  from fmnist_jax.errors import UserError

  config = _CONFIG.value
  config_path = pathlib.Path(config_flags.get_config_filename(flags.FLAGS["config"]))
  workdir = pathlib.Path(_WORKDIR.value or pathlib.Path("runs") / config_path.stem)
  try:
    results = train.fit(config, workdir, show_progress=_PROGRESS.value)
  except (UserError, FloatingPointError) as error:
    if _DEBUG.value:
      raise
    print(f"error: {error}", file=sys.stderr)
    return cli.EXIT_USER_ERROR
  except KeyboardInterrupt:
    # `uv run` forwards the terminal's SIGINT too; a second one must not break the shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(
      f"\ninterrupted; rerun the same command to resume from the latest checkpoint in {workdir}",
      file=sys.stderr,
    )
    return 130

  split_metrics = results["metrics"]
  title = (
    f"{config_path.stem}: {results['num_params']:,} params, "
    f"{results['epochs_trained']} epochs"
    + (f", best epoch {results['best_epoch']}" if results["best_epoch"] else "")
    + f", {results['wall_seconds']:.0f}s"
  )
  print(metrics.format_table(split_metrics, title=title))
  print(
    f"\nPer-class test metrics:\n"
    f"{metrics.format_per_class_table(split_metrics['test'], data.CLASS_NAMES)}"
  )
  print(f"\nWrote {workdir}/results.json, metrics.jsonl and checkpoints.")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
