"""Kill -9 during checkpoint saves, N times at random moments; every resume must succeed.

  uv run python tests/kill_during_save.py --times=10

Each round trains `mlp_baseline.py` on the small real subset in a fresh workdir
and sends SIGKILL a random delay after epoch E's save begins (E random; the
delay spans the measured save time, so kills land before, during and just after
orbax writes and commits). It then checks that the latest checkpoint committed
when the kill came is still there (no epoch lost beyond the last completed
save; the worker records what was committed just before killing itself), reruns the same
command, and requires the resumed run to finish with the results and metrics
history of an uninterrupted run. Prints one line per round and the tally.
"""

import argparse
import json
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parent)]

from small import committed_epochs, without_times, worker_command  # noqa: E402

EPOCHS = 4


def train(workdir: pathlib.Path, **flags) -> subprocess.CompletedProcess:
  command = worker_command(workdir, model="mlp_baseline", epochs=EPOCHS, **flags)
  return subprocess.run(command, capture_output=True, text=True, timeout=600)


def outcome(workdir: pathlib.Path) -> tuple[dict, list[dict]]:
  results = json.loads((workdir / "results.json").read_text())
  history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return without_times(results), without_times(history)


def drill(times: int, seed: int, root: pathlib.Path) -> int:
  """Runs `times` rounds under `root`; returns how many resumed to the uninterrupted result."""
  reference = root / "reference"
  timed = train(reference, time_saves=1)
  assert timed.returncode == 0, timed.stderr[-3000:]
  save_seconds = [float(s) for s in re.findall(r"save \d+: ([\d.]+) s", timed.stdout)]
  window = max(save_seconds)
  print(f"saves take {min(save_seconds):.3f}-{window:.3f} s; kills land in 0-{1.5 * window:.3f} s")
  expected = outcome(reference)
  rng = random.Random(seed)
  passed = 0
  for round_index in range(times):
    workdir = root / f"round{round_index}"
    epoch, delay = rng.randint(1, EPOCHS - 1), rng.uniform(0.0, 1.5 * window)
    killed = train(workdir, kill=f"save:{epoch}:{delay:.4f}")
    survived = committed_epochs(workdir)
    leftovers = [p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
    at_kill = json.loads((workdir / "committed_at_kill.json").read_text())
    # Lost work: a checkpoint committed when the kill came is gone, or the latest is unreadable.
    kept = max(survived, default=0) >= max(at_kill, default=0)
    resumed = train(workdir)
    same = resumed.returncode == 0 and outcome(workdir) == expected
    ok = killed.returncode == -signal.SIGKILL and kept and same
    passed += ok
    print(
      f"round {round_index + 1}: killed {delay:.3f} s into epoch {epoch}'s save "
      f"(status {killed.returncode}); committed at the kill: {at_kill or 'none'}, after: "
      f"{survived or 'none'}"
      f"{', uncommitted ' + ', '.join(leftovers) if leftovers else ''}; resume "
      f"{'finished identical to the uninterrupted run' if same else 'FAILED'}"
      + ("" if ok else f"\n{resumed.stderr[-2000:]}"),
      flush=True,
    )
  print(f"{passed} of {times} resumes succeeded with no lost epoch")
  return passed


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--times", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    passed = drill(args.times, args.seed, pathlib.Path(root))
  sys.exit(0 if passed == args.times else 1)


if __name__ == "__main__":
  main()
