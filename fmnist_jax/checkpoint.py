"""A run's working directory: config, metrics, results and orbax checkpoints.

The only module that imports orbax. Layout of a workdir:

  config.json        the resolved config (a rerun with another config is refused)
  metrics.jsonl      one JSON line per member and epoch (and pre-training epoch)
  results.json       final metrics of every member and split, per class included, and
                     their mean/std/min/max over members
  checkpoints/<epoch>/   latest training state (params, optimizer, early stopping)
  best/<epoch>/          every member's params and batch statistics of its best epoch

Two managers, so the "keep the best" policy can never delete the latest
checkpoint that a resume needs (a known orbax pitfall with a single manager).
"""

import json
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from fmnist_jax.errors import ConfigError, UserError

# Config keys a resumed run may change: extending training, and moving to another
# number of devices (checkpoints restore onto any of them).
RESUMABLE_KEYS = ("num_epochs", "parallel")


def _comparable(config_dict: dict) -> dict:
  return {k: v for k, v in config_dict.items() if k not in RESUMABLE_KEYS}


def config_json(config: ConfigDict) -> str:
  """The config as config.json holds it."""
  return config.to_json_best_effort(indent=2, sort_keys=True)


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  """Every line of a workdir's metrics.jsonl (none when it has none yet)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def is_finished(workdir: pathlib.Path, config: ConfigDict) -> bool:
  """True when `workdir` holds a finished run (results.json) of exactly `config`."""
  workdir = pathlib.Path(workdir)
  saved = workdir / "config.json"
  return (
    (workdir / "results.json").exists()
    and saved.exists()
    and json.loads(saved.read_text()) == json.loads(config_json(config))
  )


def is_writer() -> bool:
  return jax.process_index() == 0


class RunDir:
  """Owns one workdir: writes the config, appends metrics, saves and restores checkpoints."""

  def __init__(
    self,
    workdir: pathlib.Path,
    config: ConfigDict,
    *,
    checkpoints: bool = True,
    max_to_keep: int = 2,
  ):
    self.path = pathlib.Path(workdir).absolute()
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      current_json = config_json(config)
      config_path = self.path / "config.json"
      if config_path.exists():
        saved, current = json.loads(config_path.read_text()), json.loads(current_json)
        if _comparable(saved) != _comparable(current):
          changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
          raise ConfigError(
            f"workdir {self.path} holds a run of a different config (differs in: "
            f"{', '.join(changed)}); pass another --workdir, or delete that directory to "
            f"start over"
          )
      if is_writer():
        config_path.write_text(current_json + "\n")
    except OSError as error:
      raise UserError(
        f"cannot write to workdir {self.path}: {error.strerror}; pass a writable --workdir"
      ) from None
    self.metrics_path = self.path / "metrics.jsonl"
    self._managers = None
    if checkpoints:

      def options(keep: int, name: str):
        # Own barrier names: on several hosts, two managers saving the same epoch would
        # otherwise meet at one barrier ("_async_commit_complete.<epoch>") and fail.
        return ocp.CheckpointManagerOptions(
          max_to_keep=keep,
          create=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name),
        )

      self._managers = (
        ocp.CheckpointManager(self.path / "checkpoints", options=options(max_to_keep, "latest")),
        ocp.CheckpointManager(self.path / "best", options=options(1, "best")),
      )

  def restore_latest(self, abstract_payload: Any) -> tuple[int, Any] | None:
    """(epoch, payload) of the latest checkpoint, or None; trims metrics after that epoch."""
    epoch = self._managers[0].latest_step() if self._managers else None
    self._trim_metrics(epoch or 0)
    if epoch is None:
      return None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_payload)
    payload = self._managers[0].restore(epoch, args=ocp.args.StandardRestore(target))
    return epoch, payload

  def _trim_metrics(self, last_epoch: int):
    """Drops metric lines of epochs a resume will redo, so the history has no duplicates."""
    if not (is_writer() and self.metrics_path.exists()):
      return
    kept = [
      line
      for line in self.metrics_path.read_text().splitlines()
      if line
      and last_epoch > 0
      and (json.loads(line).get("phase") == "pretrain" or json.loads(line)["epoch"] <= last_epoch)
    ]
    self.metrics_path.write_text("".join(line + "\n" for line in kept))

  def log_metrics(self, record: dict):
    if is_writer():
      with self.metrics_path.open("a") as f:
        f.write(json.dumps(record) + "\n")

  def read_metrics(self) -> list[dict]:
    return read_metrics(self.path)

  def save(self, epoch: int, payload: Any):
    """Saves the training state `payload` of `epoch` as the latest (asynchronously)."""
    if self._managers:
      self._managers[0].save(epoch, args=ocp.args.StandardSave(payload))

  def save_best(self, epoch: int, payload: Any):
    """Saves the best weights `payload` (reached at `epoch`), replacing the previous best."""
    if self._managers:
      self._managers[1].save(epoch, args=ocp.args.StandardSave(payload))

  def write_results(self, results: dict):
    if is_writer():
      (self.path / "results.json").write_text(json.dumps(results, indent=2) + "\n")

  def wait(self):
    for manager in self._managers or ():
      manager.wait_until_finished()

  def close(self):
    for manager in self._managers or ():
      manager.close()
