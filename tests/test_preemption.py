"""Runs survive interruption: kill -9 anywhere, SIGTERM, Ctrl-C; saves every N epochs."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from small import committed_epochs, saved_params, small_config, without_times, worker_command

from fmnist_jax import checkpoint, parallel, train
from fmnist_jax.errors import UserError

EPOCHS = 5


def start_worker(workdir, **flags) -> subprocess.Popen:
  return subprocess.Popen(
    worker_command(workdir, epochs=EPOCHS, **flags),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )


def finish(process: subprocess.Popen) -> int:
  _, stderr = process.communicate(timeout=300)
  assert process.returncode in (0, -signal.SIGKILL), stderr[-3000:]
  return process.returncode


def test_kill_9_anywhere_then_rerun_is_bit_identical(real_data_dir, tmp_path):
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  assert finish(start_worker(whole)) == 0

  # Killed with epoch 2's checkpoint written but not committed: the rerun ignores it.
  assert finish(start_worker(killed, kill="commit:2")) == -signal.SIGKILL
  assert committed_epochs(killed) == [1]
  # Killed after epoch 4's metrics are written, before its checkpoint: they are redone.
  assert finish(start_worker(killed, kill="logged:4")) == -signal.SIGKILL
  assert max(committed_epochs(killed)) in (2, 3)  # epoch 3's async save may be cut off
  # Killed at a random moment of a rerun (start-up, compile, an epoch or a save).
  rng = random.Random(0)
  for _ in range(2):
    process = start_worker(killed)
    time.sleep(rng.uniform(2.0, 8.0))
    process.kill()
    finish(process)
  assert finish(start_worker(killed)) == 0

  for a, b in zip(saved_params(whole), saved_params(killed), strict=True):
    np.testing.assert_array_equal(a, b)
  results = [json.loads((w / "results.json").read_text()) for w in (whole, killed)]
  assert without_times(results[0]) == without_times(results[1])
  histories = [without_times(checkpoint.read_metrics(w)) for w in (whole, killed)]
  assert [record["epoch"] for record in histories[1]] == list(range(1, EPOCHS + 1))
  assert histories[0] == histories[1]


def test_sigterm_saves_and_exits_cleanly_and_the_rerun_resumes(real_data_dir, tmp_path):
  command = [
    sys.executable,
    "launch.py",
    "--config=configs/mlp_baseline.py",
    f"--workdir={tmp_path}",
    "--config.num_epochs=20",
    "--config.figures=False",
    "--noprogress",
  ]
  process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not checkpoint.read_metrics(tmp_path) and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 143, stderr
  assert "SIGTERM" in stderr and "rerun the same command to resume" in stderr
  assert "Traceback" not in stderr
  epochs_done = [record["epoch"] for record in checkpoint.read_metrics(tmp_path)]
  assert 1 <= len(epochs_done) < 20 and committed_epochs(tmp_path)[-1] == epochs_done[-1]

  command[4] = f"--config.num_epochs={epochs_done[-1] + 1}"  # resume for one more epoch
  done = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert f"resuming after epoch {epochs_done[-1]}, its latest save" in done.stderr
  epochs = [record["epoch"] for record in checkpoint.read_metrics(tmp_path)]
  assert epochs == list(range(1, epochs_done[-1] + 2))


def test_checkpoints_every_n_epochs_and_at_the_end(use_small_dataset, tmp_path):
  config = small_config(num_epochs=5, **{"checkpoint.every_epochs": 2})
  config.checkpoint.max_to_keep = 5
  train.fit(config, tmp_path, show_progress=False)
  assert committed_epochs(tmp_path) == [2, 4, 5]
  # An early stop between two saves is saved too.
  config = small_config(
    num_epochs=50,
    **{
      "checkpoint.every_epochs": 7,
      "early_stopping.enabled": True,
      "early_stopping.patience": 1,
      "optimizer.learning_rate": 0.05,
    },
  )
  results = train.fit(config, tmp_path / "early", show_progress=False)
  stopped_at = results["members"][0]["epochs_trained"]
  assert stopped_at < 50 and committed_epochs(tmp_path / "early")[-1] == stopped_at


@pytest.fixture
def python_sigint_handler():
  """Python's own SIGINT handler, as a terminal's python starts with (a shell's background
  job, e.g. `pytest &`, inherits SIGINT ignored); the outer handler is put back after."""
  outer = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, outer)


def test_a_second_ctrl_c_does_not_cut_off_the_last_save(
  use_small_dataset, tmp_path, monkeypatch, python_sigint_handler
):
  """Ctrl-C in epoch 2, then another while the run waits for epoch 1's save (as `uv run`
  forwarding the terminal's SIGINT): the save completes and the first interrupt ends fit."""
  log_metrics = checkpoint.RunDir.log_metrics
  wait_until_finished = ocp.CheckpointManager.wait_until_finished
  interrupted, waits_finished = [], []

  def ctrl_c_in_epoch_2(self, record):
    if record["epoch"] == 2:
      interrupted.append(True)
      raise KeyboardInterrupt
    log_metrics(self, record)

  def second_ctrl_c_while_orbax_waits(self):
    if interrupted:
      os.kill(os.getpid(), signal.SIGINT)
    wait_until_finished(self)
    waits_finished.append(bool(interrupted))

  monkeypatch.setattr(checkpoint.RunDir, "log_metrics", ctrl_c_in_epoch_2)
  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", second_ctrl_c_while_orbax_waits)
  with pytest.raises(KeyboardInterrupt):
    train.fit(small_config(num_epochs=5), tmp_path, show_progress=False)
  assert waits_finished and waits_finished[-1]  # orbax's wait after the interrupts ran to its end
  interrupted.clear()  # no more Ctrl-C: committed_epochs below waits on orbax too
  assert committed_epochs(tmp_path) == [1]
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  # Held back with nothing else on its way out, a Ctrl-C is raised when the block ends.
  with pytest.raises(KeyboardInterrupt), parallel.HeldInterrupts():
    os.kill(os.getpid(), signal.SIGINT)
    held = True
  assert held


def test_a_resume_trims_the_redone_epochs_and_a_kill_mid_trim_loses_nothing(tmp_path, monkeypatch):
  path = tmp_path / "metrics.jsonl"
  records = [{"epoch": 1, "phase": "pretrain"}] + [{"epoch": e, "loss": e} for e in (1, 2, 3)]
  original = "".join(json.dumps(r) + "\n" for r in records)
  path.write_text(original)

  def killed(*args):
    raise KeyboardInterrupt

  with monkeypatch.context() as patch:
    patch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
      checkpoint.trim_jsonl(path, last_epoch=2)
  assert path.read_text() == original  # the old file, whole
  checkpoint.trim_jsonl(path, last_epoch=2)
  assert checkpoint.read_jsonl(path) == records[:3]
  checkpoint.trim_jsonl(path, last_epoch=0)
  assert checkpoint.read_jsonl(path) == []


def test_a_log_line_cut_off_mid_append_is_dropped_and_a_broken_one_named(tmp_path):
  path = tmp_path / "metrics.jsonl"
  records = [{"epoch": e, "loss": e / 10} for e in (1, 2, 3)]
  whole = "".join(json.dumps(r) + "\n" for r in records)
  path.write_text(whole + '{"epoch": 4, "lo')  # a full disk cut the append short
  assert checkpoint.read_jsonl(path) == records
  checkpoint.trim_jsonl(path, last_epoch=3)  # the resume from epoch 3 redoes epoch 4
  assert path.read_text() == whole
  path.write_text(whole.replace('"loss": 0.2', '"loss": 0.2,,'))  # a hand edit gone wrong
  with pytest.raises(UserError, match=r"metrics.jsonl, line 2, is not a JSON record.*--overwrite"):
    checkpoint.read_jsonl(path)


def test_overwrite_clears_what_a_killed_write_left_and_keeps_the_users_files(tmp_path):
  run_files = ("config.json", "sweep.json", ".config.json.partial", ".results.json.partial")
  figures = ("loss.png", ".confusion.png.partial")
  for name in (*run_files, *figures):
    (tmp_path / name).write_text("run's")
  for name in ("notes.txt", ".notes.txt.partial", ".hidden"):
    (tmp_path / name).write_text("mine")
  removed = checkpoint.clear(tmp_path)
  assert sorted(removed) == sorted((*run_files, *figures))
  kept = sorted(p.name for p in tmp_path.iterdir())
  assert kept == [".hidden", ".lock", ".notes.txt.partial", "notes.txt"]
