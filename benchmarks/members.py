"""N seeds in one vmapped program vs N separate runs, end to end, as a user runs them.

  python -m benchmarks.members --config=configs/mlp_baseline.py --num_seeds=8 --repeats=3

Each repeat runs, in alternating order, (a) `launch.py --config.seed=s` once per
seed, one process after another, and (b) one `launch.py --config.num_seeds=N`.
Both include start-up, data loading, compilation, checkpoints and evaluation.
It reports the median wall time of each, their ratio, the steady seconds per
member-epoch (from metrics.jsonl, first epoch excluded), and checks that the
vmapped members reach the separate runs' test accuracies.
"""

import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "configs/mlp_baseline.py", "Config file.")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 8, "Seeds (members).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved repeats of both ways.")
_OVERRIDES = flags.DEFINE_multi_string("override", [], "Extra --config.KEY=VALUE for both.")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _launch(workdir: pathlib.Path, *overrides: str) -> float:
  start = time.perf_counter()
  subprocess.run(
    [
      sys.executable,
      "launch.py",
      f"--config={_CONFIG.value}",
      *(f"--config.{o}" for o in _OVERRIDES.value),
      *overrides,
      f"--workdir={workdir}",
      "--noprogress",
    ],
    cwd=ROOT,
    check=True,
    capture_output=True,
  )
  return time.perf_counter() - start


def _steady_epoch_seconds(workdir: pathlib.Path) -> list[float]:
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  by_epoch = {line["epoch"]: line["seconds"] for line in lines if "seconds" in line}
  return [seconds for epoch, seconds in sorted(by_epoch.items()) if epoch > 1]


def _test_accuracies(workdir: pathlib.Path) -> list[float]:
  results = json.loads((workdir / "results.json").read_text())
  return [member["metrics"]["test"]["accuracy"] for member in results["members"]]


def main(argv):
  del argv
  seeds = range(_NUM_SEEDS.value)
  walls = {"separate": [], "vmapped": []}
  member_epoch = {"separate": [], "vmapped": []}
  accuracies = {}
  with tempfile.TemporaryDirectory() as tmp:
    for repeat in range(_REPEATS.value):
      order = ["separate", "vmapped"] if repeat % 2 == 0 else ["vmapped", "separate"]
      for way in order:
        root = pathlib.Path(tmp) / f"{way}{repeat}"
        if way == "separate":
          walls[way].append(sum(_launch(root / str(s), f"--config.seed={s}") for s in seeds))
          member_epoch[way] += [
            statistics.median(_steady_epoch_seconds(root / str(s))) for s in seeds
          ]
          accuracies[way] = [_test_accuracies(root / str(s))[0] for s in seeds]
        else:
          walls[way].append(_launch(root, f"--config.num_seeds={_NUM_SEEDS.value}"))
          member_epoch[way].append(
            statistics.median(_steady_epoch_seconds(root)) / _NUM_SEEDS.value
          )
          accuracies[way] = _test_accuracies(root)
        print(f"repeat {repeat + 1} {way:8s} {walls[way][-1]:7.1f} s", flush=True)

  separate, vmapped = (statistics.median(walls[w]) for w in ("separate", "vmapped"))
  per_member = {w: statistics.median(v) for w, v in member_epoch.items()}
  print(f"\n{_CONFIG.value}, {_NUM_SEEDS.value} seeds, median of {_REPEATS.value} repeats")
  print(f"{'':28s}{'separate':>10s}{'vmapped':>10s}{'ratio':>8s}")
  print(
    f"{'end to end, all seeds (s)':28s}{separate:10.1f}{vmapped:10.1f}{separate / vmapped:7.2f}x"
  )
  print(
    f"{'steady s per member-epoch':28s}{per_member['separate']:10.3f}"
    f"{per_member['vmapped']:10.3f}{per_member['vmapped'] / per_member['separate']:7.2f}x"
  )
  gap = max(abs(a - b) for a, b in zip(accuracies["separate"], accuracies["vmapped"], strict=True))
  print(f"largest test-accuracy difference, member vs its separate run: {gap:.4f}")


if __name__ == "__main__":
  app.run(main)
