"""Training in a process of its own, for tests that need one: fake devices, kill -9.

  python tests/run_worker.py WORKDIR [--model=small|mlp_baseline|cnn] [--devices=N]
      [--epochs=N] [--num_train=N] [--every=N] [--sgd=LEARNING_RATE] [--pool_order=ORDER]
      [--kill=commit:EPOCH|logged:EPOCH|save:EPOCH:SECONDS] [--time_saves=1]
      [--coordinator=HOST:PORT --num_processes=N --process_id=I]

Trains on the small real subset (tests/small.py). `--kill` sends this process
SIGKILL at a chosen point: `commit:E` once epoch E's checkpoint is fully written
but not yet committed (orbax's atomic rename), `logged:E` once epoch E's metrics
are written but before its checkpoint is saved, `save:E:S` S seconds after epoch
E's save begins (while orbax writes it, or after), first writing the epochs then
committed to WORKDIR/committed_at_kill.json. `--time_saves=1` prints how long
each save takes to be fully written. Set XLA_FLAGS in the environment
for fake CPU devices. `--coordinator` makes it one process of a multi-process
("multi-host") run on this machine, its processes talking over gloo. Compiled
programs go to the cache in $FMNIST_TEST_COMPILATION_CACHE (tests/conftest.py
sets one per test session), so the tests' many short runs of one program
compile it once.
"""

import argparse
import json
import os
import pathlib
import signal
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from small import override, small_config, small_dataset  # noqa: E402

from configs import cnn, mlp_baseline  # noqa: E402
from fmnist_jax import checkpoint, data, platform, train  # noqa: E402

MODELS = {"small": small_config, "mlp_baseline": mlp_baseline.get_config, "cnn": cnn.get_config}


def config_for(model: str, **overrides):
  config = MODELS[model]()
  return override(config, figures=False, **{"early_stopping.enabled": False}, **overrides)


def kill_self():
  os.kill(os.getpid(), signal.SIGKILL)


def arm_kill(spec: str):
  where, epoch = spec.split(":")[:2]
  if where == "commit":  # orbax commits `<step>.orbax-checkpoint-tmp` by renaming it `<step>`
    rename = os.rename

    def rename_then_die(source, target, *args, **kwargs):
      if pathlib.Path(target).parent.name == "checkpoints" and pathlib.Path(target).name == epoch:
        kill_self()
      return rename(source, target, *args, **kwargs)

    os.rename = rename_then_die
  elif where == "logged":
    log_metrics = checkpoint.RunDir.log_metrics

    def log_then_die(self, record):
      log_metrics(self, record)
      if record.get("epoch") == int(epoch) and "phase" not in record:
        kill_self()

    checkpoint.RunDir.log_metrics = log_then_die
  elif where == "save":
    save, delay = checkpoint.RunDir.save, float(spec.split(":")[2])

    def save_and_die_soon(self, saved_epoch, payload):
      if saved_epoch == int(epoch):

        def record_then_kill():
          # What was committed at the moment of the kill: all of it must survive.
          committed = sorted(
            int(p.name) for p in (self.path / "checkpoints").iterdir() if p.name.isdigit()
          )
          (self.path / "committed_at_kill.json").write_text(json.dumps(committed))
          kill_self()

        threading.Timer(delay, record_then_kill).start()
      return save(self, saved_epoch, payload)

    checkpoint.RunDir.save = save_and_die_soon
  else:
    raise ValueError(f"unknown --kill {spec}")


def time_saves():
  """Prints `save E: S s`: from the save call until orbax has committed it."""
  save = checkpoint.RunDir.save

  def timed_save(self, epoch, payload):
    start = time.perf_counter()
    save(self, epoch, payload)
    self.wait()
    print(f"save {epoch}: {time.perf_counter() - start:.3f} s", flush=True)

  checkpoint.RunDir.save = timed_save


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir", type=pathlib.Path)
  parser.add_argument("--model", default="small", choices=sorted(MODELS))
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--num_train", type=int, default=2_000)
  parser.add_argument("--every", type=int, default=1)
  parser.add_argument("--sgd", type=float, help="train with plain SGD at this learning rate")
  parser.add_argument("--pool_order", help="config.pool_order (default: the config's)")
  parser.add_argument("--kill")
  parser.add_argument("--time_saves", type=int, default=0, help="1: print save times")
  parser.add_argument("--coordinator")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  args = parser.parse_args()
  platform.enable_compilation_cache(os.environ.get("FMNIST_TEST_COMPILATION_CACHE"))
  if args.coordinator:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  dataset = small_dataset(data.find_data_dir(None), args.num_train)
  data.load = lambda config: dataset
  if args.time_saves:
    time_saves()
  if args.kill:
    arm_kill(args.kill)
  config = config_for(
    args.model,
    num_epochs=args.epochs,
    **{"parallel.num_devices": args.devices, "checkpoint.every_epochs": args.every},
  )
  if args.sgd:
    override(config, **{"optimizer.name": "sgd", "optimizer.learning_rate": args.sgd})
  if args.pool_order:
    config.pool_order = args.pool_order
  train.fit(config, args.workdir, show_progress=False)


if __name__ == "__main__":
  main()
