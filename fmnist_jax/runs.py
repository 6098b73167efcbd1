"""Finished runs read back from their workdirs, and ensembles across runs.

  python -m fmnist_jax.runs runs/mlp_1hidden runs/mlp_2hidden [--out=runs/mlp_ensemble]

scores the ensemble of every member of the given workdirs (B3: two MLPs; B6:
two CNNs) next to each member, with each rule of `fmnist_jax.ensemble`, on the
splits the runs share, and writes ensemble.json into --out.
"""

import dataclasses
import json
import pathlib
import sys
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from fmnist_jax import checkpoint, data, ensemble, train
from fmnist_jax.errors import UserError


def _tuples(value):
  """JSON lists back to the tuples configs use (model widths, per-layer rates)."""
  if isinstance(value, dict):
    return {key: _tuples(item) for key, item in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(item) for item in value)
  return value


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
    return [f"{self.workdir.name}/seed{member['seed']}" for member in self.results["members"]]


def load_run(workdir: str | pathlib.Path) -> Run:
  """Restores a finished run's members (best weights where its results used them)."""
  workdir = pathlib.Path(workdir)
  config_path, results_path = workdir / "config.json", workdir / "results.json"
  if not config_path.exists():
    raise UserError(f"{workdir} is not a run directory (no config.json); pass a --workdir of a run")
  if not results_path.exists():
    raise UserError(f"the run in {workdir} has not finished (no results.json); rerun its command")
  config = ConfigDict(_tuples(json.loads(config_path.read_text())))
  results = json.loads(results_path.read_text())
  if not config.checkpoint.enabled:
    raise UserError(f"the run in {workdir} kept no checkpoints (checkpoint.enabled=False)")
  dataset = data.load(config.data)
  members = train.Members(
    seeds=tuple(member["seed"] for member in results["members"]),
    hyperparams={
      name.rpartition(".")[2]: tuple(m["hyperparameters"][name] for m in results["members"])
      for name in results["members"][0]["hyperparameters"]
    },
  )
  trainer = train.Trainer.create(
    config, dataset.train.images, len(dataset.train), num_members=len(members)
  )
  state = trainer.init_state(members)
  run_dir = checkpoint.RunDir(workdir, config)
  restored = run_dir.restore_latest(
    {"state": state, "early_stopping": train.EarlyStopping.create(state, len(members))}
  )
  run_dir.close()
  if restored is None:
    raise UserError(f"no checkpoint in {workdir}/checkpoints; rerun the run's command")
  _, payload = restored
  final, _ = train.final_states(
    config,
    payload["state"],
    payload["early_stopping"],
    has_validation=dataset.validation is not None,
  )
  return Run(workdir, config, results, trainer, final, dataset)


def evaluate_ensemble(workdirs: list[str | pathlib.Path]) -> dict[str, Any]:
  """Every member of every workdir, and their ensemble by each rule, on the shared splits."""
  runs = [load_run(workdir) for workdir in workdirs]
  first = runs[0]
  for run in runs[1:]:
    if run.config.data.to_dict() != first.config.data.to_dict():
      differs = sorted(
        key for key in first.config.data if run.config.data.get(key) != first.config.data.get(key)
      )
      raise UserError(
        f"{run.workdir} and {first.workdir} use different data (data.{', data.'.join(differs)}); "
        f"an ensemble's members must be scored on the same splits"
      )
  splits = first.dataset.splits()
  logits = {
    name: np.concatenate(
      [
        np.asarray(run.trainer.predict_members(run.state, jax.device_put(split.images)))
        for run in runs
      ]
    )
    for name, split in splits.items()
  }
  scored = ensemble.score(logits, {name: split.labels for name, split in splits.items()})
  names = [name for run in runs for name in run.member_names()]
  return {
    "workdirs": [str(run.workdir) for run in runs],
    "member_names": names,
    "members": scored["members"],
    "rules": scored["rules"],
    "gain": ensemble.best_member_gain(scored),
  }


def main(argv: list[str]) -> int:
  import argparse

  parser = argparse.ArgumentParser(prog="python -m fmnist_jax.runs", description=__doc__)
  parser.add_argument("workdirs", nargs="+", help="run directories whose members to combine")
  parser.add_argument("--out", help="directory for ensemble.json (default: none)")
  args = parser.parse_args(argv)
  try:
    result = evaluate_ensemble(args.workdirs)
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(ensemble.format_report(result, result["member_names"]))
  print(f"\nensemble (softmax_sum) minus the best member, test accuracy: {result['gain']:+.4f}")
  if args.out:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ensemble.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out / 'ensemble.json'}")
  return 0


if __name__ == "__main__":
  from fmnist_jax import platform

  platform.configure_xla()
  sys.exit(main(sys.argv[1:]))
