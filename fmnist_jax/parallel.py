"""Data parallelism with `jax.sharding`: one mesh axis over the devices of every host.

The same jitted programs (the scanned epoch, the vmapped members, the scanned
evaluation) run on one device or many. On a mesh:

- the train state (every member's params, optimizer and batch-norm state) and the
  uint8 dataset are replicated on every device;
- each batch, gathered by the global shuffle, is constrained to be split along the
  `data` axis, so each device runs forward and backward on batch / devices
  examples, and XLA inserts the all-reduce of the gradients (GSPMD).

Why a replicated dataset: the global shuffle is then exactly the one-device
shuffle, so N devices train the model one device trains (up to the summation
order of the gradient all-reduce), at 55 MB of uint8 per device. Why named
shardings and not `pmap`: `pmap` is JAX's legacy path; with shardings the code
has no per-device axis, and one device is the unchanged single-device program.

Multi-host (TPU pod slices, multi-node GPU): `jax.distributed.initialize()` runs
when `config.parallel.distributed` is True or $FMNIST_DISTRIBUTED=1; every host
then reads the dataset itself and computes the same replicated arrays, and only
process 0 writes logs, figures and results (orbax checkpoints involve every host).
"""

import dataclasses
import os
import signal
import sys
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from fmnist_jax.errors import ConfigError

DATA_AXIS = "data"
DISTRIBUTED_ENV = "FMNIST_DISTRIBUTED"
# config.parallel.members: how the members of one program run (configs/base.py).
MEMBER_EXECUTIONS = ("auto", "vmap", "map")


def resolve_member_execution(name: str) -> str:
  """ "auto" -> "map" on CPU, "vmap" on GPU/TPU.

  On XLA:CPU the members' batched matmuls (vmapped im2col convolutions) run slower
  than the same matmuls one member at a time (A3's autoencoder: 1.28x per member for
  5 members), and a CPU has no idle units for side-by-side members to fill.
  """
  if name == "auto":
    return "map" if jax.default_backend() == "cpu" else "vmap"
  return name


def initialize(parallel_config: ConfigDict) -> None:
  """Joins the other hosts' processes (multi-host only); call before any other JAX use."""
  wanted = parallel_config.distributed or os.environ.get(DISTRIBUTED_ENV) == "1"
  if wanted and not jax.distributed.is_initialized():
    jax.distributed.initialize()  # on Cloud TPU and SLURM every argument is detected


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where arrays live: on one device (`mesh` None), or replicated / batch-split on a mesh."""

  mesh: Mesh | None = None

  @property
  def num_devices(self) -> int:
    return 1 if self.mesh is None else self.mesh.size

  @property
  def replicated(self) -> NamedSharding | None:
    return None if self.mesh is None else NamedSharding(self.mesh, P())

  def split_batch(self, tree):
    """Constrains every leaf's leading (batch) axis to be split over the data axis."""
    if self.mesh is None:
      return tree
    sharding = NamedSharding(self.mesh, P(DATA_AXIS))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)

  def replicate(self, array: np.ndarray) -> jax.Array:
    """A host array (the same on every host) as a device array on every device."""
    if self.mesh is None:
      return jax.device_put(array)
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, self.replicated, lambda index: array[index])

  def adopt(self, tree):
    """Arrays restored from a checkpoint, placed as a fresh run's own arrays are.

    On one device a run's arrays are uncommitted (jit outputs of uncommitted
    inputs), but orbax restores committed ones, and a committed argument lowers a
    program differently: a resumed or reloaded run would compile every program
    again instead of loading a fresh run's from the compilation cache.
    """
    if self.mesh is not None:  # restored with the mesh's shardings, as the run made them
      return tree
    return jax.device_put(jax.device_get(tree))

  def jit(self, fn, **kwargs):
    """`jax.jit` whose outputs are replicated on the mesh (so every host can read them)."""
    if self.mesh is not None:
      kwargs["out_shardings"] = self.replicated
    return jax.jit(fn, **kwargs)


SINGLE_DEVICE = Layout()


def make_layout(config: ConfigDict) -> Layout:
  """The layout for `config.parallel.num_devices` devices (0 = all), batch sizes checked."""
  available = jax.devices()
  wanted = config.parallel.num_devices or len(available)
  if wanted > len(available):
    raise ConfigError(
      f"parallel.num_devices={wanted}, but JAX sees {len(available)} device(s) "
      f"({available[0].platform}); use parallel.num_devices=0 for all of them"
    )
  if wanted == 1:
    return SINGLE_DEVICE
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % wanted:
      raise ConfigError(
        f"{key}={config[key]} does not split over {wanted} devices; use a multiple of "
        f"{wanted} (each device takes {key} / {wanted} examples), or set parallel.num_devices"
      )
  mesh = jax.make_mesh(
    (wanted,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=available[:wanted]
  )
  return Layout(mesh)


class _SignalFlag:
  """Turns a signal into a flag until `close`, then restores the previous handler.

  Only in the main thread (signal's own rule), and only over a handler Python can
  restore (getsignal is None for one installed outside Python: left alone).
  """

  def __init__(self, signum: int):
    self.raised = False
    self._signum = signum
    self._previous = None
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signum) is not None:
      self._previous = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def close(self):
    if self._previous is not None:
      signal.signal(self._signum, self._previous)
      self._previous = None


class PreemptionSignal(_SignalFlag):
  """Turns SIGTERM (how Cloud TPU VMs and schedulers announce preemption) into a flag.

  The epoch loop reads it once per epoch: the epoch in flight finishes, is saved,
  and the run exits cleanly. On several hosts they agree: any host's signal
  stops all of them after the same epoch, so their checkpoints match.
  """

  def __init__(self):
    super().__init__(signal.SIGTERM)

  def received(self) -> bool:
    if jax.process_count() == 1:
      return self.raised
    return bool(multihost_utils.process_allgather(np.asarray(self.raised)).any())


class HeldInterrupts:
  """Holds Ctrl-C (SIGINT) back while a run shuts down and waits for its last save.

  `uv run` forwards the terminal's SIGINT to the run, which also gets it from the
  terminal, and users press Ctrl-C twice: a second interrupt must not cut off the
  save of the last epoch. A Ctrl-C held back is raised when the block ends, unless
  an exception (the first Ctrl-C's, say) is already on its way out.
  """

  def __enter__(self):
    self._interrupt = _SignalFlag(signal.SIGINT)
    return self

  def __exit__(self, exc_type, exc, traceback):
    self._interrupt.close()
    if self._interrupt.raised and exc_type is None and sys.exc_info()[0] is None:
      raise KeyboardInterrupt
    return False
