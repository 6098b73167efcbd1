"""launch.py as a user runs it: one command trains; every mistake is one clear line."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def launch(*args, workdir):
  return subprocess.run(
    [sys.executable, "launch.py", *args, f"--workdir={workdir}", "--noprogress"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_one_command_trains_evaluates_and_checkpoints(real_data_dir, tmp_path):
  result = launch("--config=configs/mlp_baseline.py", "--config.num_epochs=1", workdir=tmp_path)
  assert result.returncode == 0, result.stderr
  assert "train " in result.stdout and "test " in result.stdout and "Ankle boot" in result.stdout
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["num_params"] == 266_610
  assert results["members"][0]["metrics"]["test"]["accuracy"] > 0.7
  assert len(results["members"][0]["metrics"]["test"]["f1"]) == 10
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["momentum"] == 0.9
  assert (tmp_path / "checkpoints" / "1").is_dir() and any((tmp_path / "best").iterdir())
  for name in ("analysis.md", "confusion.png", "misclassified.png", "learning_curves.png"):
    assert (tmp_path / name).is_file(), name


def test_seeds_report_mean_and_std_and_every_member(real_data_dir, tmp_path):
  result = launch(
    "--config=configs/mlp_baseline.py",
    "--config.num_epochs=1",
    "--config.num_seeds=2",
    workdir=tmp_path,
  )
  assert result.returncode == 0, result.stderr
  assert "+-" in result.stdout and "over 2 members" in result.stdout
  assert "train 50,000 / val 10,000 (tail split) / test 10,000" in result.stdout
  results = json.loads((tmp_path / "results.json").read_text())
  assert [member["seed"] for member in results["members"]] == [0, 1]
  accuracies = [member["metrics"]["test"]["accuracy"] for member in results["members"]]
  assert results["summary"]["test"]["accuracy"]["mean"] == pytest.approx(sum(accuracies) / 2)


def test_the_default_workdir_names_the_config_and_its_argument():
  from fmnist_jax import cli

  assert cli.default_workdir(["launch.py", "--config=configs/cnn.py"]) == pathlib.Path("runs/cnn")
  assert cli.default_workdir(
    ["launch.py", "--config", "configs/study_one_hidden.py:units"]
  ) == pathlib.Path("runs/study_one_hidden_units")


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path):
  result = launch("--config=configs/cnn.py", "--dry_run", workdir=tmp_path / "run")
  assert result.returncode == 0, result.stderr
  assert "stages.0.conv" in result.stdout and "1,701,578" in result.stdout
  assert "1 member(s), seeds 0" in result.stdout and "Nothing was trained" in result.stdout
  assert "Devices: 1 cpu" in result.stdout
  assert not (tmp_path / "run").exists()
  result = launch(
    "--config=configs/mlp_ensemble.py", "--dry_run", "--config.num_seeds=3", workdir=tmp_path / "e"
  )
  assert result.returncode == 0, result.stderr
  assert f"mlp_2hidden: {tmp_path / 'mlp_2hidden'}, 3 seed(s)" in result.stdout


def test_a_rerun_loads_its_programs_from_the_compilation_cache(real_data_dir, tmp_path):
  cache = tmp_path / "cache"
  flags = ("--config=configs/mlp_baseline.py", "--config.num_epochs=1")
  first = launch(*flags, f"--compilation_cache={cache}", workdir=tmp_path / "a")
  assert first.returncode == 0, first.stderr
  entries = sorted(path.name for path in cache.iterdir())
  assert entries  # the train epoch, the evaluation, ...
  second = launch(*flags, f"--compilation_cache={cache}", workdir=tmp_path / "b")
  assert second.returncode == 0, second.stderr
  assert sorted(path.name for path in cache.iterdir()) == entries  # every program was a hit
  results = [json.loads((tmp_path / run / "results.json").read_text()) for run in "ab"]
  assert results[0]["members"][0]["metrics"] == results[1]["members"][0]["metrics"]
  off = launch(*flags, "--compilation_cache=", workdir=tmp_path / "c")
  assert off.returncode == 0, off.stderr
  assert sorted(path.name for path in cache.iterdir()) == entries
