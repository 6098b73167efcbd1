"""Runs launch.py with one fault injected, for faults a test cannot cause for real.

  python tests/faults.py FAULT [launch.py arguments ...]

FAULT is one of
  oom:E           the accelerator runs out of memory in epoch E (XLA's RESOURCE_EXHAUSTED)
  nan:E           the training loss becomes NaN in epoch E
  disk_full:E     saving epoch E's checkpoint fails with ENOSPC ("No space left on device")
  download:DIR    no local data; the official files "download" from DIR (a file:// URL)
  none            no fault

Everything else (flag parsing, error messages, exit status) is launch.py's own.
"""

import errno
import pathlib
import runpy
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fmnist_jax import platform  # noqa: E402

platform.configure_xla()


def in_epoch(epoch: int, function, fault):
  """Wraps a per-epoch `function` so its `epoch`-th call (1-based) runs `fault` instead."""
  calls = 0

  def wrapped(*args, **kwargs):
    nonlocal calls
    calls += 1
    if calls == epoch:
      return fault(*args, **kwargs)
    return function(*args, **kwargs)

  return wrapped


def patch_train_members(train, wrap):
  """Trainers made from now on get `wrap(train_members)` as their train_members."""
  import dataclasses

  create = train.Trainer.create.__func__

  def create_patched(cls, *args, **kwargs):
    trainer = create(cls, *args, **kwargs)
    return dataclasses.replace(trainer, train_members=wrap(trainer.train_members))

  train.Trainer.create = classmethod(create_patched)


def install(fault: str):
  name, _, argument = fault.partition(":")
  if name == "none":
    return
  import jax
  import numpy as np

  from fmnist_jax import checkpoint, data, train

  if name == "oom":

    def out_of_memory(*args, **kwargs):
      raise jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17179869184 bytes."
      )

    patch_train_members(train, lambda function: in_epoch(int(argument), function, out_of_memory))
  elif name == "nan":

    def with_nan_loss(train_members):
      def nan_loss(*args, **kwargs):
        state, step_metrics = train_members(*args, **kwargs)
        step_metrics = jax.device_get(step_metrics)
        step_metrics["loss"] = np.asarray(step_metrics["loss"]).copy()
        step_metrics["loss"][:, 3:] = np.nan
        return state, step_metrics

      return in_epoch(int(argument), train_members, nan_loss)

    patch_train_members(train, with_nan_loss)
  elif name == "disk_full":
    save = checkpoint.RunDir.save

    def save_or_fail(self, epoch, payload):
      if epoch == int(argument):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path / "checkpoints"))
      return save(self, epoch, payload)

    checkpoint.RunDir.save = save_or_fail
  elif name == "download":
    data.SYSTEM_DATA_DIR = "/nonexistent/fmnist_jax-test"
    data.DOWNLOAD_URL = pathlib.Path(argument).absolute().as_uri() + "/"
  else:
    raise ValueError(f"unknown fault {fault}")


if __name__ == "__main__":
  install(sys.argv[1])
  sys.argv = [str(ROOT / "launch.py"), *sys.argv[2:]]
  runpy.run_path(str(ROOT / "launch.py"), run_name="__main__")
