"""Finished runs read back from their workdirs, and ensembles across runs.

An ensemble config (configs/mlp_ensemble.py: B3, configs/cnn_ensemble.py: B6)
names member configs; `fit_ensemble` trains or reuses each member's run and
scores the studies' ensemble once per seed: member m of every run together,
so the ensemble gets a mean +- std over seeds like any run. Ensembles score the
logits each run saved (`checkpoint.read_logits`); only a run without them, or
whose file or data no longer match its results, is restored and predicted again.

  python -m fmnist_jax.runs runs/mlp_1hidden runs/mlp_2hidden [--out=runs/mlp_ensemble]

scores the ensemble of every member of the given workdirs (B3: two MLPs; B6:
two CNNs) next to each member, with each rule of `fmnist_jax.ensemble`, on the
splits the runs share, and writes ensemble.json into --out. With --paired it
scores the studies' ensembles instead, as the ensemble configs do: seed m of
every run together, for each seed they all trained, mean +- std over m.
"""

import dataclasses
import json
import pathlib
import sys
from functools import partial
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from fmnist_jax import checkpoint, cli, config_checks, data, ensemble, metrics, sweep, train
from fmnist_jax.errors import ConfigError, UserError


def _tuples(value):
  """JSON lists back to the tuples configs use (model widths, per-layer rates)."""
  if isinstance(value, dict):
    return {key: _tuples(item) for key, item in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(item) for item in value)
  return value


def _member_names(workdir: pathlib.Path, results: dict) -> list[str]:
  return [f"{workdir.name}/seed{member['seed']}" for member in results["members"]]


@dataclasses.dataclass
class Run:
  """A finished run: its config, results, trainer and every member's reported weights."""

  workdir: pathlib.Path
  config: ConfigDict
  results: dict
  trainer: train.Trainer
  state: train.TrainState  # stacked members, the weights results.json reports
  dataset: data.Dataset

  def member_names(self) -> list[str]:
    return _member_names(self.workdir, self.results)


@dataclasses.dataclass
class ScoredRun:
  """A finished run's config and results, and its members' logits on every split: all an
  ensemble needs of it."""

  workdir: pathlib.Path
  config: ConfigDict
  results: dict
  logits: dict[str, np.ndarray]  # split -> [members, examples, classes]

  def member_names(self) -> list[str]:
    return _member_names(self.workdir, self.results)


def _on_this_device(abstract):
  """Shapes on this process's first device: a restore target that compiles no copy of a leaf."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)


def _read_finished(workdir: pathlib.Path) -> tuple[ConfigDict, dict]:
  """The config and results of the finished run in `workdir`."""
  config_path, results_path = workdir / "config.json", workdir / "results.json"
  if not config_path.exists():
    raise UserError(f"{workdir} is not a run directory (no config.json); pass a --workdir of a run")
  if not results_path.exists():
    raise UserError(f"the run in {workdir} has not finished (no results.json); rerun its command")
  config = ConfigDict(_tuples(checkpoint.with_new_keys(json.loads(config_path.read_text()))))
  return config, json.loads(results_path.read_text())


def load_run(workdir: str | pathlib.Path, dataset: data.Dataset | None = None) -> Run:
  """Restores a finished run's members (best weights where its results used them).

  `dataset`: the run's data when the caller has loaded it already (default: loaded here).
  """
  workdir = pathlib.Path(workdir)
  config, results = _read_finished(workdir)
  if not config.checkpoint.enabled:
    raise UserError(f"the run in {workdir} kept no checkpoints (checkpoint.enabled=False)")
  if dataset is None:
    dataset = data.load(config.data)
  members = train.Members(
    seeds=tuple(member["seed"] for member in results["members"]),
    hyperparams={
      key: tuple(_tuples(m["hyperparameters"][key]) for m in results["members"])
      for key in results["members"][0]["hyperparameters"]
    },
  )
  trainer = train.Trainer.create(
    config, dataset.train.images, len(dataset.train), num_members=len(members)
  )
  abstract = trainer.state_shapes(members)
  # Closed also when the checkpoint is unreadable: no orbax thread outlives the call.
  with checkpoint.RunDir(workdir, config, exclusive=False) as run_dir:
    restored = run_dir.restore_latest(
      {
        "state": _on_this_device(abstract.checkpointed()),
        "early_stopping": _on_this_device(
          jax.eval_shape(partial(train.EarlyStopping.create, num_members=len(members)), abstract)
        ),
      }
    )
  if restored is None:
    raise UserError(f"no checkpoint in {workdir}/checkpoints; rerun the run's command")
  payload = trainer.layout.adopt(restored[1])
  dropout_rates, label_smoothing = jax.device_put(trainer.member_settings(members))
  state = abstract.replace(dropout_rates=dropout_rates, label_smoothing=label_smoothing)
  final, _ = train.final_states(
    config,
    state.restored(payload["state"]),
    payload["early_stopping"],
    has_validation=dataset.validation is not None,
  )
  return Run(workdir, config, results, trainer, final, dataset)


def load_scored(workdirs: list[str | pathlib.Path]) -> tuple[list[ScoredRun], dict]:
  """Every finished run's logits (those it saved, or else predicted from its checkpoints)
  and the labels of the splits they share: (runs in the given order, split -> labels)."""
  workdirs = [pathlib.Path(workdir) for workdir in workdirs]
  finished = [(workdir, *_read_finished(workdir)) for workdir in workdirs]
  first_dir, first_config, _ = finished[0]
  for workdir, config, _ in finished[1:]:
    if config.data.to_dict() != first_config.data.to_dict():
      differs = sorted(
        key for key in first_config.data if config.data.get(key) != first_config.data.get(key)
      )
      raise UserError(
        f"{workdir} and {first_dir} use different data (data.{', data.'.join(differs)}); "
        f"an ensemble's members must be scored on the same splits"
      )
  dataset = data.load(first_config.data)
  fingerprint = dataset.fingerprint()
  scored_runs = []
  for workdir, config, results in finished:
    logits, why_not = checkpoint.read_logits(workdir, results.get("logits"), fingerprint)
    if logits is None:
      print(
        f"{workdir}: no saved logits to reuse ({why_not}); predicting its members from "
        f"their checkpoints",
        file=sys.stderr,
        flush=True,
      )
      run = load_run(workdir, dataset)
      images = {name: split.images for name, split in dataset.splits().items()}
      logits = run.trainer.predict_splits(run.state, images)
    scored_runs.append(ScoredRun(workdir, config, results, logits))
  return scored_runs, {name: split.labels for name, split in dataset.splits().items()}


def _stacked_logits(scored_runs: list[ScoredRun]) -> dict[str, np.ndarray]:
  """split -> [every member of every run, N, C] logits, runs in the given order."""
  return {
    name: np.concatenate([run.logits[name] for run in scored_runs])
    for name in scored_runs[0].logits
  }


def evaluate_ensemble(workdirs: list[str | pathlib.Path]) -> dict[str, Any]:
  """Every member of every workdir, and their ensemble by each rule, on the shared splits."""
  scored_runs, labels = load_scored(workdirs)
  scored = ensemble.score(_stacked_logits(scored_runs), labels)
  return {
    "workdirs": [str(run.workdir) for run in scored_runs],
    "member_names": [name for run in scored_runs for name in run.member_names()],
    "members": scored["members"],
    "rules": scored["rules"],
    "gain": ensemble.best_member_gain(scored),
  }


def _shared_seeds(workdirs: list[pathlib.Path]) -> list[int]:
  """The seeds every run in `workdirs` trained, in order; a UserError when there are none."""
  seeds = {
    workdir: [m["seed"] for m in _read_finished(workdir)[1]["members"]] for workdir in workdirs
  }
  shared = sorted(set.intersection(*(set(found) for found in seeds.values())))
  if not shared:
    listed = "; ".join(f"{workdir}: {found}" for workdir, found in seeds.items())
    raise UserError(
      f"an ensemble pairs the runs' members seed by seed, but no seed is in every run "
      f"({listed}); train every member config with the same seeds (config.seed, num_seeds)"
    )
  return shared


def evaluate_paired(workdirs: list[str | pathlib.Path]) -> dict[str, Any]:
  """The studies' ensemble (one model of each run), once per seed, and their statistics.

  Ensemble m combines the members of every run with the m-th seed they share (B3:
  B1's seed m with B2's seed m), so its mean +- std over m is comparable with each
  run's. Seeds not in every run are left out (`unpaired_seeds`). The ensemble of
  all members of all runs is reported too.
  """
  workdirs = [pathlib.Path(workdir) for workdir in workdirs]
  seeds = _shared_seeds(workdirs)
  runs, labels = load_scored(workdirs)
  logits = _stacked_logits(runs)
  # Each run's seed -> (its row in the stacked logits, its member name).
  by_seed, offset = [], 0
  for run in runs:
    found = [member["seed"] for member in run.results["members"]]
    by_seed.append({seed: (offset + i, run.member_names()[i]) for i, seed in enumerate(found)})
    offset += len(found)
  pairs = []
  for seed in seeds:
    rows = [members[seed][0] for members in by_seed]
    scored = ensemble.score({name: value[rows] for name, value in logits.items()}, labels)
    pairs.append(
      {
        "members": [members[seed][1] for members in by_seed],
        "member_metrics": scored["members"],
        "rules": scored["rules"],
        "gain": ensemble.best_member_gain(scored),
      }
    )
  everything = ensemble.score(logits, labels)
  return {
    "workdirs": [str(run.workdir) for run in runs],
    # Each run over the seeds paired, so that it compares with the ensembles' rows.
    "run_summaries": {
      run.workdir.name: metrics.across_members([pair["member_metrics"][r] for pair in pairs])
      for r, run in enumerate(runs)
    },
    "protocol": runs[0].results["protocol"],
    "pairs": pairs,
    "unpaired_seeds": {
      str(run.workdir): sorted(set(members) - set(seeds))
      for run, members in zip(runs, by_seed, strict=True)
      if set(members) - set(seeds)
    },
    "rule_summaries": {
      rule: metrics.across_members([pair["rules"][rule] for pair in pairs])
      for rule in ensemble.RULES
    },
    "all_members": {
      "member_names": [name for run in runs for name in run.member_names()],
      "rules": everything["rules"],
      "gain": ensemble.best_member_gain(everything),
    },
  }


def member_configs(config: ConfigDict) -> list[tuple[str, ConfigDict]]:
  """(name, config) of each `config.ensemble.members` entry, with the ensemble's seeds."""
  available = cli.available_configs()
  result = []
  for name in config.ensemble.members:
    if name not in available:
      raise ConfigError(
        f"config.ensemble.members names {name!r}, which is not a config in {cli.CONFIGS_DIR}; "
        f"choose from {available}"
      )
    member = cli.load_config(name)
    if member.ensemble.members:
      raise ConfigError(
        f"config.ensemble.members: {name!r} is itself an ensemble; list its members instead"
      )
    member.seed, member.num_seeds = config.seed, config.num_seeds
    result.append((name, member))
  if len(result) < 2:
    raise ConfigError(
      f"config.ensemble.members={tuple(config.ensemble.members)!r}: an ensemble needs at least "
      f"two member configs"
    )
  return result


def fit_ensemble(
  config: ConfigDict, workdir: str | pathlib.Path, *, show_progress: bool = True
) -> dict:
  """Trains (or reuses) each member config in <workdir>/../<name>/, then scores the ensembles.

  Writes results.json (every paired ensemble, their statistics per rule, the
  all-members ensemble) and per_class_f1.png (members and ensemble) to `workdir`.
  """
  workdir = pathlib.Path(workdir)
  members = member_configs(config)
  for _, member in members:
    config_checks.check(member)  # every member is checked before any trains
  with checkpoint.RunDir(workdir, config, checkpoints=False) as run_dir:
    member_dirs = []
    for name, member in members:
      member_dir = workdir.parent / name
      member_dirs.append(member_dir)
      if checkpoint.is_finished(member_dir, member):
        print(f"ensemble member {name}: reusing the finished run in {member_dir}", flush=True)
        continue
      print(f"ensemble member {name}: training in {member_dir}", flush=True)
      train.fit(member, member_dir, show_progress=show_progress)
    result = evaluate_paired(member_dirs)
    result["ensemble_summary"] = result["rule_summaries"][ensemble.STUDY_RULE]
    run_dir.write_results(result)
  if config.figures:
    from fmnist_jax import analysis  # matplotlib only when figures are wanted

    analysis.write_ensemble_outputs(run_dir.path, workdir.name, result)
  return result


def format_paired(result: dict, title: str) -> str:
  """The ensemble's studies table (mean +- std over seed pairs), then each run and rule on test."""
  summary = result["rule_summaries"][ensemble.STUDY_RULE]
  single = len(result["pairs"]) == 1
  text = metrics.format_summary_table(
    summary,
    num_members=len(result["pairs"]),
    title=f"{title}\n{result['protocol']}",
    unit="seed pairs (ensemble m = seed m of every member config)",
    unit_one="seed pair",
  )
  rows = [
    [name, *_test_cells(run_summary["test"], single)]
    for name, run_summary in result["run_summaries"].items()
  ]
  rows += [
    [f"ensemble: {rule}", *_test_cells(result["rule_summaries"][rule]["test"], single)]
    for rule in ensemble.RULES
  ]
  all_members = result["all_members"]["rules"][ensemble.STUDY_RULE]["test"]
  rows.append(
    [
      f"all {len(result['all_members']['member_names'])} models ({ensemble.STUDY_RULE})",
      f"{all_members['accuracy']:.4f}",
      f"{all_members['f1_macro']:.4f}",
    ]
  )
  first = "Test" if single else "Test, mean +- std over seeds"
  table = metrics.render_table([first, "Accuracy", "F1"], rows, title=None)
  return f"{text}\n\n{table}"


def _test_cells(stats: dict, single: bool) -> list[str]:
  return [metrics.format_stat(stats[key], spread=not single) for key in ("accuracy", "f1_macro")]


def main(argv: list[str]) -> int:
  import argparse

  parser = argparse.ArgumentParser(prog="python -m fmnist_jax.runs", description=__doc__)
  parser.add_argument("workdirs", nargs="+", help="run directories whose members to combine")
  parser.add_argument("--out", help="directory for ensemble.json (default: none)")
  parser.add_argument(
    "--paired",
    action="store_true",
    help="one ensemble per seed the runs share (seed m of every run), mean +- std over them",
  )
  args = parser.parse_args(argv)
  try:
    result = (evaluate_paired if args.paired else evaluate_ensemble)(args.workdirs)
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  if args.paired:
    names = " + ".join(pathlib.Path(workdir).name for workdir in args.workdirs)
    print(format_paired(result, f"Ensembles of {names}, seed by seed"))
    for workdir, seeds in result["unpaired_seeds"].items():
      print(f"left out: {workdir}'s seeds {seeds}, which not every run has")
  else:
    print(ensemble.format_report(result, result["member_names"]))
    gain = result["gain"]
    print(f"\nensemble (softmax_sum) minus the best member, test accuracy: {gain:+.4f}")
  if args.out:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.write_whole(out / "ensemble.json", json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out / 'ensemble.json'}")
  return 0


def run_config(config: ConfigDict, workdir: str | pathlib.Path, *, show_progress: bool = True):
  """What `launch.py` runs for `config`: an ensemble of other configs, a sweep, or one run."""
  if config.ensemble.members:
    return fit_ensemble(config, workdir, show_progress=show_progress)
  if config.sweep.grid or config.sweep.zip:
    return sweep.run(config, workdir, show_progress=show_progress)
  return train.fit(config, workdir, show_progress=show_progress)


if __name__ == "__main__":
  from fmnist_jax import platform

  platform.configure_xla()
  platform.enable_compilation_cache(platform.default_compilation_cache())
  sys.exit(main(sys.argv[1:]))
