"""benchmarks/compare.py end to end, with fmnist_jax as its only implementation.

The peers need PyTorch, Keras and TensorFlow (their own environment), so they are
not run here; fmnist_jax's own peer program and the runner's table are.
"""

import json
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_compare_times_and_scores_fmnist_jax(real_data_dir, tmp_path):
  command = [
    sys.executable,
    "-m",
    "benchmarks.compare",
    "--models=mlp_baseline",
    "--peers=fmnist_jax",
    "--repeats=2",
    "--num_examples=4150",  # trimmed to 20 whole batches of 200: 4,000
    "--epochs=2",
    "--peak_gflops=100",
    "--nowait_quiet",
    f"--out={tmp_path}",
  ]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]

  result = json.loads((tmp_path / "compare.json").read_text())
  runs = result["runs"]["mlp_baseline"]["fmnist_jax"]
  assert [run.get("error") for run in runs] == [None, None]
  assert all(run["num_params"] == 266_610 for run in runs)  # A1: 784-300-100-10
  assert [run["seed"] for run in runs] == [0, 1]  # repeat r trains with seed r
  spec = result["meta"]["specs"]["mlp_baseline"]
  assert (spec["num_examples"], spec["steps"], spec["accuracy_settled"]) == (4000, 40, True)
  for run in runs:  # images/s counts the images each epoch trained on
    steady = sorted(run["epoch_seconds"][1:])
    assert abs(run["images_per_s"] - 4000 / steady[len(steady) // 2]) < 1e-6
  row = result["table"]["mlp_baseline"]["fmnist_jax"]
  speeds = [run["images_per_s"] for run in runs]
  assert row["images_per_s_min"] == min(speeds) > 0 and row["runs"] == 2
  # The roofline fraction is images/s x training FLOPs per image over the given peak.
  flops = result["meta"]["flops"]["mlp_baseline"]
  assert 1.0e6 < flops < 1.3e6  # ~1.13 MFLOP per image (forward + both gradients)
  assert abs(row["roofline"] - row["images_per_s"] * flops / 100e9) < 1e-9
  assert row["test_accuracy"] > 0.6  # 2 epochs of 4,000 images learn (0.69); chance is 0.1
  accuracies = [run["test_accuracy"] for run in runs]
  assert abs(row["test_accuracy"] - sum(accuracies) / 2) < 1e-12  # the mean over the seeds
  assert row["test_accuracy_min"] == min(accuracies)
  markdown = (tmp_path / "compare.md").read_text()
  assert markdown.count("fmnist_jax") >= 1 and "Partial" not in markdown
  assert result["meta"]["runs_done"] == result["meta"]["runs_planned"] == 2
  assert (tmp_path / "compare.png").stat().st_size > 0


# Run in a process of its own: compare defines absl flags other benchmarks define too.
_CHILD_ENVS = """
import json, os
os.environ["XLA_FLAGS"] = "--xla_dump_to=/tmp/xla_dump"
from benchmarks import compare
print(json.dumps({
  name: compare.child_env(name).get("XLA_FLAGS") for name in compare.IMPLEMENTATIONS
} | {"defaults": compare.DEFAULT_IMPLEMENTATIONS, "this process": os.environ["XLA_FLAGS"]}))
"""


def test_peers_run_with_the_users_xla_flags_unless_named_for_fmnist_jaxs():
  from fmnist_jax import platform

  done = subprocess.run(
    [sys.executable, "-c", _CHILD_ENVS], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0, done.stderr[-3000:]
  envs = json.loads(done.stdout.strip().splitlines()[-1])
  # compare itself runs with fmnist_jax's flags (its FLOP counts compile fmnist_jax's models)...
  assert set(platform.CPU_FLAGS) <= set(envs["this process"].split())
  # ...but hands every implementation the environment it was started in: fmnist_jax's
  # program sets its flags itself, Keras on JAX runs with XLA's defaults as its users do.
  for name in ("fmnist_jax", "keras_jax", "keras_tensorflow", "pytorch"):
    assert envs[name] == "--xla_dump_to=/tmp/xla_dump"
  # The opt-in variant gets fmnist_jax's flags on top of the user's.
  tuned = envs["keras_jax_xla_flags"].split()
  assert tuned[0] == "--xla_dump_to=/tmp/xla_dump" and set(platform.CPU_FLAGS) <= set(tuned)
  assert "keras_jax_xla_flags" not in envs["defaults"] and "keras_jax" in envs["defaults"]


def test_an_interrupted_comparison_keeps_the_runs_it_finished(real_data_dir, tmp_path):
  command = [sys.executable, "-m", "benchmarks.compare", "--models=mlp_baseline"]
  command += ["--peers=fmnist_jax", "--repeats=3", "--num_examples=2000", "--epochs=2"]
  command += ["--peak_gflops=100", "--nowait_quiet", f"--out={tmp_path}"]
  process = subprocess.Popen(
    command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  try:
    first = process.stdout.readline()  # printed once the first run's outputs are written
    assert first.startswith("mlp_baseline repeat 1 fmnist_jax:"), process.stderr.read()[-3000:]
    process.send_signal(signal.SIGINT)  # during the second run: Ctrl-C an hour in
    _, stderr = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr
  assert "compare.json and compare.png hold the 1 of 3 runs that finished" in stderr
  result = json.loads((tmp_path / "compare.json").read_text())
  assert len(result["runs"]["mlp_baseline"]["fmnist_jax"]) == 1
  assert result["table"]["mlp_baseline"]["fmnist_jax"]["runs"] == 1
  assert "**Partial:** 1 of the 3 runs finished" in (tmp_path / "compare.md").read_text()
  assert (tmp_path / "compare.png").stat().st_size > 0
  assert not list(tmp_path.glob(".*.partial"))


def test_an_unknown_peer_is_named_before_anything_runs(tmp_path):
  command = [sys.executable, "-m", "benchmarks.compare", "--peers=fmnist_jax,tensorflow"]
  done = subprocess.run(
    [*command, f"--out={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert done.returncode != 0
  assert "--peers: unknown ['tensorflow']" in done.stderr and "keras_tensorflow" in done.stderr
  assert "Traceback" not in done.stderr
  assert not (tmp_path / "out").exists()


def test_an_impossible_example_count_is_named_before_anything_runs(real_data_dir, tmp_path):
  command = [sys.executable, "-m", "benchmarks.compare", "--models=cnn", "--peers=fmnist_jax"]
  command += ["--num_examples=70000", "--peak_gflops=100", "--nowait_quiet"]
  done = subprocess.run(
    [*command, f"--out={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert done.returncode != 0
  assert "--num_examples=70000: cnn needs one batch of 128 to 60,000" in done.stderr
  assert "Traceback" not in done.stderr
  assert "repeat 1" not in done.stdout  # nothing was timed


def test_a_peer_refuses_data_that_is_not_the_specs(tmp_path, monkeypatch):
  from benchmarks.peers import common

  np.savez(tmp_path / "data.npz", train_labels=np.zeros(48_000, np.int32))
  (tmp_path / "spec.json").write_text(json.dumps({"num_examples": 60_000}))
  argv = ["peer", f"--spec={tmp_path / 'spec.json'}", f"--data={tmp_path / 'data.npz'}"]
  monkeypatch.setattr(sys, "argv", argv)
  with pytest.raises(SystemExit, match="has 48,000 training images, the spec 60,000"):
    common.parse_args()


_MARKDOWN = """
import json
from benchmarks import compare
row = {"framework": "fmnist_jax", "images_per_s": 2000.0, "images_per_s_min": 1900.0,
       "images_per_s_max": 2100.0, "roofline": 0.3, "first_epoch_s": 6.0,
       "process_wall_s": 20.0, "test_accuracy": 0.2, "test_accuracy_min": 0.1,
       "test_accuracy_max": 0.3}
tables = {}
for num_examples, epochs in ((6400, 3), (59904, 2)):
  spec = {"model": {"batch_norm": True}, "num_examples": num_examples, "epochs": epochs,
          "batch_size": 128, "num_params": 1}
  specs = {"resnet": compare.table_spec(spec)}
  meta = {"repeats": 3, "machine": "CPU", "specs": specs, "flops": {"resnet": 1e8},
          "runs_done": 3, "runs_planned": 3}
  tables[num_examples] = compare.markdown({"resnet": {"fmnist_jax": row}}, meta)
mlp = {"model": {"name": "mlp"}, "num_examples": 128, "epochs": 1, "batch_size": 128}
print(json.dumps({"tables": tables, "mlp_settled": compare.accuracy_settled(mlp)}))
"""


def test_the_table_says_when_batch_norm_has_not_settled():
  done = subprocess.run(
    [sys.executable, "-c", _MARKDOWN], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  short, settled = result["tables"]["6400"], result["tables"]["59904"]
  assert "6,400 examples x 3 epochs = 150 steps" in short
  assert "Test accuracy after 150 steps measures batch norm's lag" in short
  assert "--models=resnet --num_examples=60000 --epochs=2" in short
  assert "59,904 examples x 2 epochs = 936 steps" in settled and "lag" not in settled
  assert result["mlp_settled"]  # no batch norm: one step's accuracy is the model's


_ORDERS = """
import json
from benchmarks import compare
names = ["fmnist_jax", "pytorch", "keras_jax"]
print(json.dumps([compare.repeat_order(names, repeat) for repeat in range(4)]))
"""


def test_each_repeat_starts_one_implementation_later():
  done = subprocess.run(
    [sys.executable, "-c", _ORDERS], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0, done.stderr[-3000:]
  orders = json.loads(done.stdout.strip().splitlines()[-1])
  assert orders == [
    ["fmnist_jax", "pytorch", "keras_jax"],
    ["pytorch", "keras_jax", "fmnist_jax"],
    ["keras_jax", "fmnist_jax", "pytorch"],
    ["fmnist_jax", "pytorch", "keras_jax"],
  ]


def _scripted_probe(monkeypatch, seconds):
  from benchmarks import quiet

  probes = iter(seconds)
  monkeypatch.setattr(quiet, "_even_split_probe", lambda: lambda: next(probes))
  monkeypatch.setattr(quiet, "_probe_seconds", [])
  monkeypatch.setattr(quiet.time, "sleep", lambda _: None)
  return quiet


def test_waits_while_the_cores_run_slow(monkeypatch):
  # Five calibration probes, then two at twice the quiet speed, then a quiet one.
  quiet = _scripted_probe(monkeypatch, [1.0, 1.1, 1.0, 1.2, 1.0, 2.0, 1.9, 1.1, 9.9])
  assert quiet.wait_for_even_cores(tolerance=1.3, timeout_s=60)
  assert quiet._probe_seconds[-1] == 1.1  # it stopped at the first even probe


def test_gives_up_after_the_timeout(monkeypatch):
  quiet = _scripted_probe(monkeypatch, [1.0] * 5 + [2.0] * 100)
  assert not quiet.wait_for_even_cores(tolerance=1.3, timeout_s=0)
