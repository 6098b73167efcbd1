"""A run's working directory: config, metrics, results and orbax checkpoints.

The only module that imports orbax. Layout of a workdir:

  .lock              held (flock) by the run using the workdir; a second run is refused
  config.json        the resolved config (a rerun with another config is refused)
  metrics.jsonl      one JSON line per member and epoch (and pre-training epoch)
  steps.jsonl, tensorboard/   per-step and per-epoch scalars (fmnist_jax/summary.py)
  results.json       final metrics of every member and split, per class included, and
                     their mean/std/min/max over members
  logits.npz         every member's logits on each split, of the weights results.json
                     reports (an ensemble scores them without reloading the checkpoints)
  checkpoints/<epoch>/   latest training state (params, optimizer, early stopping)
  best/<epoch>/          every member's params and batch statistics of its best epoch

Two managers, so the "keep the best" policy can never delete the latest
checkpoint that a resume needs (a known orbax pitfall with a single manager).
A latest checkpoint that cannot be read (a disk fault, a file cut short) is
moved aside to `checkpoints/unreadable-<epoch>/` and the run resumes from the
one before it, saying so.
"""

import errno
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import pathlib
import shutil
import sys
import traceback
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from fmnist_jax import parallel
from fmnist_jax.errors import ConfigError, UserError

# Config keys that change neither the model nor its recipe: the devices it runs on
# (checkpoints restore onto any number of them), how convolutions and pooling are
# computed (the same function; only float rounding differs) and what is logged or plotted.
OUTPUT_KEYS = ("parallel", "conv_impl", "pool_order", "cpu_matmul_library", "logging", "figures")
# Config keys a resumed run may change: those, and extending training.
RESUMABLE_KEYS = ("num_epochs", *OUTPUT_KEYS)
LOGITS_FILE = "logits.npz"


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


@functools.cache
def _defaults() -> dict:
  """configs/base.py's values, flattened (empty where the configs package is absent)."""
  try:
    from configs import base
  except ImportError:
    return {}
  return _flatten(json.loads(config_json(base.get_config())))


def config_differences(saved: dict, current: dict, *, ignore: tuple = RESUMABLE_KEYS) -> list[str]:
  """Dotted keys whose values differ between a workdir's config and the current one.

  Keys under `ignore` do not count, nor do keys fmnist_jax gained after the run was
  made: absent from the saved config and at their default now (they change nothing).
  """
  saved, current = _flatten(saved), _flatten(current)
  defaults = _defaults()
  differences = []
  for key in sorted(set(saved) | set(current)):
    if key.split(".")[0] in ignore:
      continue
    if key not in saved and key in defaults and current[key] == defaults[key]:
      continue
    if saved.get(key, "<absent>") != current.get(key, "<absent>"):
      differences.append(key)
  return differences


def with_new_keys(saved: dict) -> dict:
  """A workdir's saved config plus the keys fmnist_jax gained after it was made, at
  their defaults (which change nothing), so older runs still load. The model section
  is each config's own, so it is left as saved."""
  filled = json.loads(json.dumps(saved))
  present = _flatten(saved)
  for key, value in _defaults().items():
    if key in present or key.startswith("model."):
      continue
    *parents, leaf = key.split(".")
    node = filled
    for parent in parents:
      node = node.setdefault(parent, {})
    node.setdefault(leaf, value)
  return filled


def config_json(config: ConfigDict) -> str:
  """The config as config.json holds it."""
  return config.to_json_best_effort(indent=2, sort_keys=True)


def _jsonl_entries(path: pathlib.Path) -> list[tuple[str, dict]]:
  """(line, record) for every record of a JSON-lines log.

  A last line cut off mid-append (no newline after it: a full disk, a crashed machine) is
  dropped: its epoch was never saved, so a resume redoes it and logs it again.
  """
  lines = path.read_text().split("\n")
  entries = []
  for number, line in enumerate(lines, start=1):
    if not line:
      continue
    try:
      entries.append((line, json.loads(line)))
    except json.JSONDecodeError as error:
      if number == len(lines):  # the unterminated tail
        break
      raise UserError(
        f"{path}, line {number}, is not a JSON record ({error}). Mend or delete that line, or "
        f"rerun with --overwrite to start the run afresh."
      ) from None
  return entries


def read_jsonl(path: pathlib.Path) -> list[dict]:
  """Every record of a JSON-lines file (none when it does not exist yet)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return [record for _, record in _jsonl_entries(path)]


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  """Every line of a workdir's metrics.jsonl (none when it has none yet)."""
  return read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")


def train_seconds(records: list[dict]) -> float:
  """Wall seconds of every training epoch in metrics.jsonl records (each epoch once,
  whatever its members; pre-training's epochs not counted)."""
  return float(
    sum({r["epoch"]: r["seconds"] for r in records if "seconds" in r and "phase" not in r}.values())
  )


def trim_jsonl(path: pathlib.Path, last_epoch: int):
  """Drops the records of epochs after `last_epoch` (pre-training records stay while any
  epoch is kept), which a resume from `last_epoch` redoes."""
  if not path.exists():
    return
  kept = [
    line
    for line, record in _jsonl_entries(path)
    if last_epoch > 0 and (record.get("phase") == "pretrain" or record["epoch"] <= last_epoch)
  ]
  write_whole(path, "".join(line + "\n" for line in kept))  # a kill here keeps the old file


def is_finished(workdir: pathlib.Path, config: ConfigDict) -> bool:
  """True when `workdir` holds a finished run (results.json) of exactly `config`."""
  workdir = pathlib.Path(workdir)
  saved = workdir / "config.json"
  return (
    (workdir / "results.json").exists()
    and saved.exists()
    and not config_differences(
      json.loads(saved.read_text()),
      json.loads(config_json(config)),
      ignore=OUTPUT_KEYS,
    )
  )


def read_logits(
  workdir: pathlib.Path, saved: dict | None, data_fingerprint: str
) -> tuple[dict[str, np.ndarray] | None, str]:
  """(split -> [M, N, C] logits, "") from a finished run's logits.npz, described by
  `saved` (its results.json's "logits"); (None, why not) when the run saved none, the
  file is not the one its results were written with, or the data differ."""
  if not saved:
    return None, "its run saved none"
  path = pathlib.Path(workdir) / saved["file"]
  try:
    content = path.read_bytes()
  except OSError as error:
    return None, f"{path.name} cannot be read: {error.strerror or error}"
  if hashlib.sha256(content).hexdigest() != saved["sha256"]:
    return None, f"{path.name} is not the file results.json was written with"
  if saved["data_sha256"] != data_fingerprint:
    return None, "the data differ from the run's"
  with np.load(io.BytesIO(content)) as arrays:
    return {name: arrays[name] for name in arrays.files}, ""


def partial_path(path: pathlib.Path) -> pathlib.Path:
  """Where `write_whole` writes `path` before renaming it."""
  return path.with_name(f".{path.name}.partial")


def write_whole(path: pathlib.Path, content: bytes | str):
  """Writes `path` whole or not at all (a partial file, then a rename), so that a reader
  (another host's process, a report on a running workdir) never sees half a file."""
  partial = partial_path(path)
  if isinstance(content, str):
    partial.write_text(content)
  else:
    partial.write_bytes(content)
  os.replace(partial, path)


def is_writer() -> bool:
  return jax.process_index() == 0


# What a run writes into its workdir, so `clear` removes only a run's own files.
RUN_OUTPUTS = (
  "config.json",
  "metrics.jsonl",
  "steps.jsonl",
  "results.json",
  LOGITS_FILE,
  "tensorboard",
  "checkpoints",
  "best",
  "analysis.md",
  "sweep.json",
  "sweep.md",
  "sweep.csv",
)


def _is_run_output(name: str) -> bool:
  """A file a run writes (RUN_OUTPUTS, its PNGs), or what a killed `write_whole` left of one."""
  if name.startswith(".") and name.endswith(".partial"):  # partial_path's form
    name = name[1 : -len(".partial")]
  return name in RUN_OUTPUTS or name.endswith(".png")


class WorkdirLock:
  """An exclusive flock on <workdir>/.lock: one run per workdir at a time.

  The kernel drops the lock when its process ends, kill -9 included, so a
  crashed run never leaves a stale lock behind.
  """

  def __init__(self, path: pathlib.Path):
    self.path = pathlib.Path(path)
    self._file = None

  def acquire(self):
    lock_path = self.path / ".lock"
    handle = lock_path.open("a+")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      owner = handle.read().strip() or "unknown"
      handle.close()
      raise UserError(
        f"workdir {self.path} is in use by another run (process {owner}); wait for it to "
        f"finish, or pass another --workdir"
      ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    self._file = handle

  def release(self):
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


def clear(workdir: pathlib.Path) -> list[str]:
  """Deletes a run's outputs from `workdir` (for --overwrite); returns what it removed.

  Only a run's own files go (RUN_OUTPUTS, its PNGs, the partial files a killed
  `write_whole` left of either, and sweep programs: subdirectories holding a config.json);
  anything else a user keeps there stays. Refused while another run holds the workdir.
  """
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    return []
  lock = WorkdirLock(workdir)
  lock.acquire()
  removed = []
  try:
    for entry in sorted(workdir.iterdir()):
      program = entry.is_dir() and (entry / "config.json").exists()
      if _is_run_output(entry.name) or program:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        removed.append(entry.name)
  finally:
    lock.release()
  return removed


def disk_full(error: BaseException) -> bool:
  """True when `error`, or one it was raised from, is a full disk (or a file size limit)."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
      return True
    if "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else ""


def _is_orphaned_read_callback(unraisable) -> bool:
  """Whether an unraisable exception is a failed restore's late read callback.

  When one read of a restore fails, orbax raises and closes its event loop while
  tensorstore still has the checkpoint's other reads in flight; as each finishes,
  its callback raises "Event loop is closed" in a tensorstore thread, which
  Python would print as a bare traceback after fmnist_jax's one-line message.
  """
  error = unraisable.exc_value
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _is_orphaned_read_task(record: logging.LogRecord) -> bool:
  """Whether an asyncio log record is a failed restore's other read, failing unawaited.

  The same restore's other reads are asyncio tasks too; one that fails after the
  first error (the same corrupt file) is never awaited, and asyncio logs "Task
  exception was never retrieved" with its traceback when the task is collected.
  Only errors raised in orbax's deserialization code qualify: never a save's.
  """
  error = record.exc_info[1] if record.exc_info else None
  if error is None or not record.getMessage().startswith("Task exception was never retrieved"):
    return False
  return any(
    f"orbax{os.sep}checkpoint" in frame.f_code.co_filename and "deserialize" in frame.f_code.co_name
    for frame, _ in traceback.walk_tb(error.__traceback__)
  )


class _DropOrphanedReadTasks(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not _is_orphaned_read_task(record)


def _quiet_failed_restore_leftovers():
  """Keeps a failed restore's late callbacks and unawaited reads off the terminal (its
  error is reported once, by fmnist_jax); anything else still shows. Installed once."""
  asyncio_logger = logging.getLogger("asyncio")
  if not any(isinstance(f, _DropOrphanedReadTasks) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_DropOrphanedReadTasks())
  previous = sys.unraisablehook
  if getattr(previous, "drops_orphaned_read_callbacks", False):
    return

  def hook(unraisable):
    if not _is_orphaned_read_callback(unraisable):
      previous(unraisable)

  hook.drops_orphaned_read_callbacks = True
  sys.unraisablehook = hook


class RunDir:
  """Owns one workdir: writes the config, appends metrics, saves and restores checkpoints."""

  def __init__(
    self,
    workdir: pathlib.Path,
    config: ConfigDict,
    *,
    checkpoints: bool = True,
    max_to_keep: int = 2,
    exclusive: bool = True,
  ):
    """`exclusive` takes the workdir's lock (a training run); readers pass False and
    change nothing in the workdir (no config written, nothing trimmed or moved)."""
    self.path = pathlib.Path(workdir).absolute()
    self._read_only = not exclusive
    self._lock = WorkdirLock(self.path)
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      if exclusive and is_writer():
        self._lock.acquire()
      current_json = config_json(config)
      config_path = self.path / "config.json"
      if config_path.exists():
        saved, current = json.loads(config_path.read_text()), json.loads(current_json)
        changed = config_differences(saved, current)
        if changed:
          self._lock.release()
          raise ConfigError(
            f"workdir {self.path} holds a run of a different config (differs in: "
            f"{', '.join(changed)}); pass another --workdir, or --overwrite to delete that "
            f"run and start over"
          )
      if is_writer() and not self._read_only:
        write_whole(config_path, current_json + "\n")
    except OSError as error:
      self._lock.release()
      if disk_full(error):
        raise UserError(disk_full_message(self.path)) from None
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
    """(epoch, payload) of the latest readable checkpoint, or None; trims metrics after it.

    An unreadable checkpoint is moved aside (never deleted) and the one before it used.
    """
    if not self._managers:
      if not self._read_only:
        self._trim_metrics(0)
      return None
    manager = self._managers[0]
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_payload)
    # Before the first restore: a failed one's callbacks can fire before its error reaches us.
    _quiet_failed_restore_leftovers()
    unreadable = []
    for epoch in sorted(manager.all_steps(), reverse=True):
      try:
        payload = manager.restore(epoch, args=ocp.args.StandardRestore(target))
      except Exception as error:  # orbax and tensorstore raise many types for a bad file
        if self._read_only:  # an older epoch is not the model the run reported
          raise UserError(
            f"the latest checkpoint of the run in {self.path} (epoch {epoch}) is unreadable "
            f"({type(error).__name__}: {_first_line(error)}); its files were left as they are. "
            f"Restore them from a backup, or retrain the run with --overwrite"
          ) from None
        unreadable.append((epoch, error))
        continue
      self._set_aside(unreadable, fallback=epoch)
      if not self._read_only:
        self._trim_metrics(epoch)
      return epoch, payload
    self._set_aside(unreadable, fallback=None)
    if not self._read_only:
      self._trim_metrics(0)
    return None

  def _set_aside(self, unreadable: list[tuple[int, Exception]], fallback: int | None):
    """Moves unreadable checkpoints to checkpoints/unreadable-<epoch>/ and says so."""
    if not unreadable:
      return
    for epoch, error in unreadable:
      first_line = _first_line(error)
      source = self.path / "checkpoints" / str(epoch)
      target = source.with_name(f"unreadable-{epoch}")
      if is_writer():
        shutil.rmtree(target, ignore_errors=True)
        source.rename(target)
      resume = f"resuming from epoch {fallback}" if fallback else "starting from epoch 0"
      print(
        f"warning: the checkpoint of epoch {epoch} in {self.path / 'checkpoints'} is "
        f"unreadable ({type(error).__name__}: {first_line}); it was moved to {target.name}/ "
        f"and the run is {resume}",
        file=sys.stderr,
      )
    self._managers[0].reload()

  def _trim_metrics(self, last_epoch: int):
    """Drops the metric and step lines of epochs a resume will redo (no duplicates)."""
    if is_writer():
      for name in ("metrics.jsonl", "steps.jsonl"):
        trim_jsonl(self.path / name, last_epoch)

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
      write_whole(self.path / "results.json", json.dumps(results, indent=2) + "\n")

  def write_logits(self, logits_by_split: dict[str, np.ndarray], data_fingerprint: str) -> dict:
    """Writes the members' logits (split -> [M, N, C]) to logits.npz, whole or not at all;
    returns what results.json keeps of them: the file's and the data's SHA-256, which tie
    the file to these results and to the examples it was computed on."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in logits_by_split.items()})
    content = buffer.getvalue()
    if is_writer():
      write_whole(self.path / LOGITS_FILE, content)
    return {
      "file": LOGITS_FILE,
      "sha256": hashlib.sha256(content).hexdigest(),
      "data_sha256": data_fingerprint,
    }

  def wait(self):
    with parallel.HeldInterrupts():  # a second Ctrl-C must not cut off a save
      for manager in self._managers or ():
        manager.wait_until_finished()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def close(self):
    """Finishes pending saves, closes the managers and releases the workdir."""
    try:
      with parallel.HeldInterrupts():
        for manager in self._managers or ():
          manager.close()
    finally:
      self._managers = None
      self._lock.release()


def disk_full_message(path: pathlib.Path) -> str:
  return (
    f"the disk is full: writing to {path} failed with 'No space left on device'. Free space "
    f"there (or pass a --workdir on another disk); rerunning the same command resumes from "
    f"the last complete checkpoint"
  )
