"""Waiting for a quiet machine before a timed run (the shared 2-core machines are noisy).

Two kinds of noise. Other processes on this machine: `wait_for_quiet` runs
../shared/tools/wait-quiet, which watches /proc/stat. And noise from outside it,
which /proc/stat does not show: on the 2-core Zen 5 of 2026-12-06, for stretches
of a few seconds to over a minute, the two cores delivered about one core's work
(no steal time reported). A loop that XLA splits evenly over the cores then took
about twice as long, and A1's training step as long as on one core (0.69 -> 1.1
ms). `wait_for_even_cores` probes for that with such a loop. The probe also
reads slow at many moments when A1 runs at full speed (benchmarks/README.md), so
it delays some runs and still misses some stretches.
"""

import functools
import pathlib
import subprocess
import sys
import time

# Beside the checkout, on the project's machines.
WAIT_QUIET = pathlib.Path(__file__).resolve().parents[2] / "shared" / "tools" / "wait-quiet"

# A probe slower than this times the fastest one seen means the cores are not both at work.
EVEN_CORES_TOLERANCE = 1.3
EVEN_CORES_TIMEOUT_S = 120.0
# Every probe this process ran: their minimum is the machine's quiet speed.
_probe_seconds: list[float] = []


def wait_for_quiet(enabled: bool = True) -> None:
  """Runs ../shared/tools/wait-quiet (beside the checkout) where present, then
  `wait_for_even_cores`; returns at once when not `enabled`."""
  if not enabled:
    return
  if WAIT_QUIET.exists():
    subprocess.run([str(WAIT_QUIET)], check=False, capture_output=True)
  wait_for_even_cores()


def best_seconds(run, repeats: int) -> float:
  """The fastest of `repeats` timed calls of `run`, which must block until its work is done."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return best


@functools.cache
def _even_split_probe():
  """A jitted memory-bound loop over 4 MB that XLA:CPU splits evenly over the cores
  (on the CPU also where a GPU or TPU is jax's default device)."""
  import jax
  import jax.numpy as jnp

  values = jax.device_put(jnp.ones((1 << 20,), jnp.float32), jax.devices("cpu")[0])
  passes = jax.jit(lambda v: jax.lax.fori_loop(0, 50, lambda _, x: x * 0.9 + 1.0, v))
  jax.block_until_ready(passes(values))  # compile
  return lambda: best_seconds(lambda: jax.block_until_ready(passes(values)), repeats=3)


def wait_for_even_cores(
  tolerance: float = EVEN_CORES_TOLERANCE, timeout_s: float = EVEN_CORES_TIMEOUT_S
) -> bool:
  """Waits until the even-split probe runs within `tolerance` of the fastest seen
  in this process (the first call takes 5 probes a second apart to find it), or
  `timeout_s` passes. Returns whether the cores were even."""
  probe = _even_split_probe()
  while len(_probe_seconds) < 5:
    _probe_seconds.append(probe())
    time.sleep(1.0)
  deadline = time.monotonic() + timeout_s
  while True:
    _probe_seconds.append(probe())
    if _probe_seconds[-1] <= tolerance * min(_probe_seconds):
      return True
    if time.monotonic() > deadline:
      print(f"cores still uneven after {timeout_s:.0f} s; timing anyway", file=sys.stderr)
      return False
    time.sleep(1.0)
