r"""Trains one experiment: one command per study row.

  python launch.py --config=configs/cnn.py
  python launch.py --config=configs/cnn.py --config.optimizer.learning_rate=3e-4 --workdir=runs/x
  python launch.py --config=configs/mlp_baseline.py --config.num_seeds=5
  python launch.py --config=configs/mlp_baseline.py \
    --config.sweep.grid="optimizer.learning_rate=0.1,0.01; model.hidden_sizes=[(100,), (300,)]"

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
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Delete the workdir's run (checkpoints, metrics, results) and start over."
)
_DRY_RUN = flags.DEFINE_bool(
  "dry_run", False, "Print the resolved config, parameters per layer and the plan; train nothing."
)
_COMPILATION_CACHE = flags.DEFINE_string(
  "compilation_cache",
  str(platform.default_compilation_cache()),
  "JAX's persistent compilation cache (reruns and resumes skip compiling); '' turns it off.",
)
flags.mark_flag_as_required("config")


def report(results: dict, name: str) -> str:
  """The end-of-run summary: the studies' table (mean +- std over members) and per class."""
  from fmnist_jax import data, ensemble, metrics

  members = results["members"]
  epochs = sorted({member["epochs_trained"] for member in members})
  best = sorted({member["best_epoch"] for member in members if member["best_epoch"]})
  title = (
    f"{name}: {results['num_params']:,} params, "
    f"{'-'.join(map(str, (epochs[0], epochs[-1]) if len(epochs) > 1 else epochs))} epochs"
    + (f", best epoch {best[0]}" if len(best) == 1 else "")
    + (f", best epochs {best[0]}-{best[-1]}" if len(best) > 1 else "")
    + f", {results['train_seconds']:.0f}s training\n{results['protocol']}"
  )
  if len(members) == 1:
    split_metrics = members[0]["metrics"]
    return (
      f"{metrics.format_table(split_metrics, title=title)}\n\nPer-class test metrics:\n"
      f"{metrics.format_per_class_table(split_metrics['test'], data.CLASS_NAMES)}"
    )
  text = (
    f"{metrics.format_summary_table(results['summary'], num_members=len(members), title=title)}"
    f"\n\n{metrics.format_members_table(members)}"
  )
  if "ensemble" in results:
    by_split = results["ensemble"]["rules"][ensemble.STUDY_RULE]
    accuracies = ", ".join(f"{split} {by_split[split]['accuracy']:.4f}" for split in by_split)
    text += (
      f"\n\nEnsemble of the {len(members)} members (argmax of summed softmax): {accuracies}; "
      f"test {results['ensemble']['gain']:+.4f} over the best member"
    )
  return text


def main(argv):
  del argv  # cli.parse_flags refused positional arguments
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  # Imported after flag parsing so `--help` and flag errors are instant.
  from fmnist_jax import checkpoint, parallel, runs, sweep
  from fmnist_jax.errors import Preempted

  config = _CONFIG.value
  platform.enable_compilation_cache(_COMPILATION_CACHE.value)
  parallel.initialize(config.parallel)  # multi-host only; before any other JAX call
  workdir = pathlib.Path(_WORKDIR.value or cli.default_workdir(sys.argv))
  is_sweep = bool(config.sweep.grid or config.sweep.zip)
  is_ensemble = bool(config.ensemble.members)
  try:
    if _DRY_RUN.value:
      print(cli.dry_run(config, workdir))
      return 0
    if _OVERWRITE.value and checkpoint.is_writer():
      removed = checkpoint.clear(workdir)
      if removed:
        print(f"--overwrite: removed {', '.join(removed)} from {workdir}", file=sys.stderr)
    results = runs.run_config(config, workdir, show_progress=_PROGRESS.value)
  except Preempted as stop:
    print(f"\n{stop}", file=sys.stderr)
    return cli.EXIT_PREEMPTED
  except Exception as error:
    message = cli.explain(error, config, workdir)
    if message is None or _DEBUG.value:
      raise  # a bug, not a user mistake: the traceback is what a bug report needs
    print(f"error: {message}", file=sys.stderr)
    return cli.EXIT_USER_ERROR
  except KeyboardInterrupt:
    # `uv run` forwards the terminal's SIGINT too; a second one must not break the shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(
      f"\ninterrupted; rerun the same command to resume from the latest checkpoint in {workdir}",
      file=sys.stderr,
    )
    return 130

  if is_ensemble:
    members = " + ".join(config.ensemble.members)
    print(runs.format_paired(results, f"{workdir.name}: {members}, argmax of summed softmax"))
    print(f"\nWrote {workdir}/results.json and per_class_f1.png.")
  elif is_sweep:
    print(sweep.format_markdown(results))
    print(f"\nWrote {workdir}/sweep.md, sweep.csv, sweep.png and sweep_curves.png.")
  else:
    print(report(results, workdir.name))
    figures = (
      ", analysis.md and figures (confusion, per-class F1, misclassified, learning curves)"
      if config.figures
      else ""
    )
    print(f"\nWrote {workdir}/results.json, metrics.jsonl, checkpoints{figures}.")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
