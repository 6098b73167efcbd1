"""Scalars for TensorBoard and for scripts: per-step and per-epoch, every member.

A run writes, besides metrics.jsonl (one line per member and epoch):

  steps.jsonl                     every `logging.every_steps` steps, per member: the
                                  window's mean training loss and accuracy, and the LR
  tensorboard/<member>/events.*   the same scalars plus every epoch's train and
                                  validation metrics, the config as text, and at the end
                                  the hyperparameters with the final metrics (HParams tab)

The per-step values come out of the compiled epoch as one [members, steps] array
per metric, fetched once per epoch with the epoch's other metrics: logging adds
no host round trip per step. x-axes are global steps (updates), so per-step and
per-epoch curves line up. tensorboardX writes the event files: it is maintained,
small, and needs neither TensorFlow nor PyTorch.
"""

import json
import pathlib
from collections.abc import Sequence

import numpy as np
from ml_collections import ConfigDict

from fmnist_jax import checkpoint, metrics


def member_names(seeds: Sequence[int], hyperparams: list[dict]) -> list[str]:
  """One directory name per member: its seed, plus its hyperparameters where they differ."""
  varying = [key for key in hyperparams[0] if len({h[key] for h in hyperparams}) > 1]
  return [
    f"seed{seed}"
    + "".join(f"_{key.rpartition('.')[2]}={metrics.name_safe(h[key])}" for key in varying)
    for seed, h in zip(seeds, hyperparams, strict=True)
  ]


def flat_hparams(config: ConfigDict) -> dict:
  """The config as flat TensorBoard hyperparameters (numbers, strings and booleans)."""
  flat = {}

  def visit(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict):
        visit(value, f"{prefix}{key}.")
      elif isinstance(value, bool | int | float | str):
        flat[f"{prefix}{key}"] = value
      else:  # tuples, lists, None
        flat[f"{prefix}{key}"] = json.dumps(value)

  visit(json.loads(config.to_json_best_effort()), "")
  return flat


class Writer:
  """Writes steps.jsonl and TensorBoard event files for one run's members (process 0 only)."""

  def __init__(
    self,
    workdir: pathlib.Path,
    config: ConfigDict,
    names: Sequence[str],
    *,
    steps_per_epoch: int,
    start_epoch: int,
    enabled: bool = True,
  ):
    self.every_steps = config.logging.every_steps
    self.steps_per_epoch = steps_per_epoch
    self.names = list(names)
    self.steps_path = pathlib.Path(workdir) / "steps.jsonl"
    self._enabled = enabled
    self._tensorboard = False
    self._dirs = [pathlib.Path(workdir) / "tensorboard" / name for name in self.names]
    self._writers = []
    if not enabled:  # (a resume's RunDir has trimmed steps.jsonl to its checkpoint)
      return
    self._tensorboard = config.logging.tensorboard
    if self._tensorboard:
      from tensorboardX import SummaryWriter

      # purge_step: a resume drops the events of the epochs it redoes.
      purge = start_epoch * steps_per_epoch + 1 if start_epoch else None
      self._writers = [SummaryWriter(str(path), purge_step=purge) for path in self._dirs]
      if not start_epoch:
        text = "    " + config.to_json_best_effort(indent=2).replace("\n", "\n    ")
        for writer in self._writers:
          writer.add_text("config", text, 0)

  def log_steps(
    self,
    epoch: int,
    step_metrics: dict,
    steps_before: np.ndarray,
    learning_rates_MxS: np.ndarray,
    active: np.ndarray,
  ):
    """Every `every_steps`-th step of the epoch just trained: the mean loss and accuracy
    of the steps since the previous point, and the step's learning rate, per active
    member."""
    if not (self._enabled and self.every_steps):
      return
    loss_MxS = np.asarray(step_metrics["loss"], np.float64)
    correct_MxS = np.asarray(step_metrics["correct"], np.float64)
    count_MxS = np.asarray(step_metrics["count"], np.float64)
    lines = []
    for member in np.flatnonzero(active):
      first = int(steps_before[member])  # global steps of this epoch: first + 1 ... first + S
      for index in range(loss_MxS.shape[1]):
        step = first + index + 1
        if step % self.every_steps:
          continue
        window = slice(max(0, index + 1 - self.every_steps), index + 1)
        counts = count_MxS[member, window]
        values = {
          "train/loss": float(np.sum(loss_MxS[member, window] * counts) / counts.sum()),
          "train/accuracy": float(correct_MxS[member, window].sum() / counts.sum()),
          "learning_rate": float(learning_rates_MxS[member, index]),
        }
        lines.append(
          json.dumps({"step": step, "epoch": epoch, "member": int(member), **values}) + "\n"
        )
        if self._writers:
          for key, value in values.items():
            self._writers[member].add_scalar(f"step/{key}", value, step)
    with self.steps_path.open("a") as f:
      f.writelines(lines)

  def log_epoch(self, records: Sequence[dict]):
    """An epoch's metrics.jsonl records (one per active member) as TensorBoard scalars."""
    if not self._writers:
      return
    for record in records:
      writer = self._writers[record["member"]]
      step = record["epoch"] * self.steps_per_epoch
      for key, value in record.items():
        if key.startswith(("train/", "val/")) or key in ("learning_rate", "seconds"):
          writer.add_scalar(f"epoch/{key}", value, step)
      writer.flush()

  def log_results(self, config: ConfigDict, members: Sequence[dict]):
    """The hyperparameters and each member's final metrics, for TensorBoard's HParams tab."""
    if not (self._enabled and self._tensorboard):
      return
    from tensorboardX import SummaryWriter
    from tensorboardX import summary as tensorboardx_summary

    hparams = flat_hparams(config)
    for path, member in zip(self._dirs, members, strict=True):
      final = {
        f"final/{split}/{key}": float(values[key])
        for split, values in member["metrics"].items()
        for key in ("accuracy", "f1_macro", "loss")
        if key in values
      }
      member_hparams = {
        **hparams,
        "seed": member["seed"],
        **{  # TensorBoard takes numbers and strings: per-layer rates become "(0.2, 0.4)"
          key: value if isinstance(value, int | float) else metrics.format_value(value)
          for key, value in member["hyperparameters"].items()
        },
      }
      # What `SummaryWriter.add_hparams(..., name=".")` writes, in a file of its own:
      # tensorboardX names a file by the second it opens in and opens it for writing, so
      # add_hparams' own writer overwrote the scalars of a run done within that second.
      with SummaryWriter(str(path), filename_suffix=".hparams") as writer:
        for summary_proto in tensorboardx_summary.hparams(member_hparams, final):
          writer.file_writer.add_summary(summary_proto)
        for key, value in final.items():
          writer.add_scalar(key, value)

  def close(self):
    for writer in self._writers:
      writer.close()
    self._writers = []


def read_steps(workdir: pathlib.Path) -> list[dict]:
  """Every line of a workdir's steps.jsonl (none when logging was off)."""
  return checkpoint.read_jsonl(pathlib.Path(workdir) / "steps.jsonl")
