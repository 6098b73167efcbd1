"""The failure catalogue (README "Troubleshooting"): each mistake and fault, as a user meets it.

Every case runs `launch.py` in a process of its own, as a user would, and
checks the exit status, that one `error:` line names the problem and the fix,
that no traceback reaches the user, and that nothing already written is lost:
mistakes are made against a copy of a finished run, whose every file must come
through unchanged. Faults a test cannot cause for real (out of memory on an
accelerator, a full disk) are injected by tests/faults.py.
"""

import asyncio
import fcntl
import gc
import gzip
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import types
from dataclasses import dataclass

import numpy as np
import pytest
from idx_files import IMAGES_MAGIC, LABELS_MAGIC, idx_bytes, write_idx
from small import zero_checkpoint_data

ROOT = pathlib.Path(__file__).resolve().parent.parent
NUM_TRAIN, NUM_TEST = 600, 200
# A quick, complete run on synthetic files: 2 epochs, a validation split, checkpoints.
BASE = (
  "--config=configs/mlp_baseline.py",
  "--config.num_epochs=2",
  "--config.batch_size=50",
  "--config.data.validation_size=100",
  "--config.figures=False",
  "--config.data.verify_checksums=False",  # synthetic files
)
FILES = {
  "train-images-idx3-ubyte.gz": IMAGES_MAGIC,
  "train-labels-idx1-ubyte.gz": LABELS_MAGIC,
  "t10k-images-idx3-ubyte.gz": IMAGES_MAGIC,
  "t10k-labels-idx1-ubyte.gz": LABELS_MAGIC,
}


def synthetic_arrays(seed: int = 0) -> dict[str, np.ndarray]:
  """Learnable synthetic Fashion-MNIST: each class is a bright band at its own rows."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for prefix, count in (("train", NUM_TRAIN), ("t10k", NUM_TEST)):
    labels = rng.permutation(np.arange(count) % 10).astype(np.uint8)
    images = rng.integers(0, 60, (count, 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
      images[index, 2 + 2 * label : 4 + 2 * label] = 200
    arrays[f"{prefix}-images-idx3-ubyte.gz"] = images
    arrays[f"{prefix}-labels-idx1-ubyte.gz"] = labels
  return arrays


def write_dataset(directory: pathlib.Path, arrays=None) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  for name, array in (arrays or synthetic_arrays()).items():
    write_idx(directory / name, idx_bytes(array, FILES[name]))
  return directory


def launch(*args, fault: str | None = None, env: dict | None = None, timeout: float = 300):
  command = [sys.executable, "tests/faults.py", fault] if fault else [sys.executable, "launch.py"]
  return subprocess.run(
    [*command, *args, "--noprogress"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={key: value for key, value in {**os.environ, **(env or {})}.items() if value is not None},
  )


def snapshot(directory: pathlib.Path) -> dict[str, str]:
  """SHA-256 of every file under `directory` (the lock file aside), by relative path."""
  return {
    str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
    for path in sorted(directory.rglob("*"))
    if path.is_file() and path.name != ".lock"
  }


def results_without_times(workdir: pathlib.Path) -> dict:
  results = json.loads((workdir / "results.json").read_text())
  for key in ("wall_seconds", "train_seconds"):
    results.pop(key)
  return results


def assert_one_clear_error(result, status: int, problem: str, fix: str):
  output = result.stdout + result.stderr
  assert result.returncode == status, output[-3000:]
  assert "Traceback" not in output, output[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert re.search(problem, errors[0]), errors[0]
  assert re.search(fix, errors[0]), errors[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
  return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("finished") / "run"
  result = launch(*BASE, f"--config.data.dir={data_dir}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> pathlib.Path:
  """A finished run to make mistakes against; its files must survive each one."""
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  return workdir


# ---------------------------------------------------------------------------
# Config mistakes and data faults: refused before anything is written.


@dataclass(frozen=True)
class Mistake:
  args: tuple[str, ...]
  problem: str  # regex the error line must match: what is wrong
  fix: str  # regex the error line must match: what to do
  data: str = "good"  # the data directory's state (see `corrupt_data`)
  env: tuple = ()
  fault: str | None = None


MISTAKES = {
  # Config files and flags.
  "config file missing": Mistake(
    ("--config=configs/nope.py",), "configs/nope.py not found", "choose one of: configs/"
  ),
  "config without get_config": Mistake(
    ("--config={tmp}/broken.py",), "does not define get_config", "returning an ml_collections"
  ),
  "config with a syntax error": Mistake(
    ("--config={tmp}/syntax.py",), "syntax.py failed to load: SyntaxError", "line"
  ),
  "get_config raises": Mistake(
    ("--config=configs/study_one_hidden.py:nonsense",),
    r"study_one_hidden.py:nonsense failed to load: ValueError",
    "choose one of",
  ),
  "unknown config key": Mistake(
    ("--config.optimizer.learnin_rate=1",), "unknown config key", "did you mean 'learning_rate'"
  ),
  "unknown config key, nothing close": Mistake(
    ("--config.optimizer.lr=0.1",),
    r"unknown config key in --config.optimizer.lr \(lr\)",
    "config.optimizer has: .*learning_rate.*momentum",
  ),
  "unknown config section": Mistake(
    ("--config.optimiser.learning_rate=0.1",),
    "unknown config key in --config.optimiser.learning_rate",
    "did you mean 'optimizer'",
  ),
  "unknown model key": Mistake(
    ("--config.model.widths=3",), "unknown config key", "fmnist_jax/models.py"
  ),
  "wrong type": Mistake(("--config.batch_size=abc",), "--config.batch_size=abc", "--help"),
  "unexpected argument": Mistake(("extra",), "unexpected arguments", "--config.KEY=VALUE"),
  "override before --config": Mistake(
    ("--config.seed=3", "--config=configs/mlp_baseline.py"),
    "--config.seed=3 comes before --config=FILE",
    "put --config=FILE first",
  ),
  "negative learning rate": Mistake(
    ("--config.optimizer.learning_rate=-1",), "learning_rate=-1.0", r"a number in \(0.0, 10.0\]"
  ),
  "zero batch size": Mistake(("--config.batch_size=0",), "batch_size=0", "positive integer"),
  "negative epochs": Mistake(("--config.num_epochs=-3",), "num_epochs=-3", "positive integer"),
  "zero seeds": Mistake(("--config.num_seeds=0",), "num_seeds=0", "positive integer"),
  "batch larger than the split": Mistake(
    ("--config.batch_size=100000",), "batch_size=100000", "larger than the training split"
  ),
  "validation as large as train": Mistake(
    ("--config.data.validation_size=600",),
    "validation_size=600 is impossible",
    r"int in \[0, 599\]",
  ),
  "unknown optimizer": Mistake(
    ("--config.optimizer.name=rmsprop",), "optimizer.name='rmsprop'", "choose one of"
  ),
  "unknown model": Mistake(("--config.model.name=transformer",), "model.name", "choose one of"),
  "unknown activation": Mistake(
    ("--config.model.activation=relux",), "model.activation='relux'", "choose one of"
  ),
  "layer size not a number": Mistake(
    ("--config.model.hidden_sizes=(300,abc)",),
    "model.hidden_sizes=",
    "must be a tuple of positive integers",
  ),
  "kernel size of 0": Mistake(
    ("--config=configs/cnn.py", "--config.model.kernel_size=0"),
    "model.kernel_size=0",
    "positive integer",
  ),
  "dropout rate of 1.5": Mistake(
    ("--config=configs/mlp_1hidden.py", "--config.model.dropout_rates=1.5"),
    "dropout_rates",
    r"must be in \[0, 1\)",
  ),
  "unknown validation split": Mistake(
    ("--config.data.validation_split=head",), "validation_split='head'", "choose one of"
  ),
  "unknown preprocessing": Mistake(
    ("--config.data.preprocessing=zscore",), "preprocessing='zscore'", "choose one of"
  ),
  "weight decay with adam": Mistake(
    ("--config.optimizer.name=adam", "--config.optimizer.weight_decay=0.1"),
    "weight_decay",
    "use adamw .* or sgd",
  ),
  "unknown compute dtype": Mistake(
    ("--config.compute_dtype=float16",), "compute_dtype='float16'", "choose one of"
  ),
  "unknown matmul library": Mistake(
    ("--config.cpu_matmul_library=mkl",), "cpu_matmul_library='mkl'", "choose one of"
  ),
  "pre-training a non-autoencoder": Mistake(
    ("--config.pretrain.num_epochs=2",), "pretrain.num_epochs", "autoencoder"
  ),
  "early stopping without validation": Mistake(
    ("--config.data.validation_size=0", "--config.early_stopping.enabled=True"),
    "early_stopping",
    "validation_size > 0",
  ),
  "negative divergence threshold": Mistake(
    ("--config.divergence_threshold=-1",), "divergence_threshold", r"\[0.0, inf\)"
  ),
  "impossible augmentation": Mistake(
    ("--config.augment.translate=30",), "augment.translate=30", r"pixels in \[0, 14\]"
  ),
  "label smoothing above 1": Mistake(
    ("--config.label_smoothing=1.5",), "label_smoothing=1.5", r"a number in \[0.0, 1.0\)"
  ),
  "sweep of an unknown key": Mistake(
    ("--config.sweep.grid=optimizer.lr=1,2",), "unknown config key", "optimizer.lr"
  ),
  "unknown sweep metric": Mistake(("--config.sweep.metric=val/acc",), "sweep.metric", "choose"),
  "ensemble of an unknown config": Mistake(
    ("--config=configs/mlp_ensemble.py", "--config.ensemble.members=('mlp_1hidden', 'nope')"),
    "names 'nope', which is not a config",
    "choose from",
  ),
  # Data.
  "data directory missing": Mistake(
    ("--config.data.dir=/nonexistent/fmnist",), "/nonexistent/fmnist", "Put the four files"
  ),
  "one data file missing": Mistake(
    (), "t10k-labels-idx1-ubyte", "Put the four files", data="missing t10k-labels-idx1-ubyte.gz"
  ),
  "truncated gz": Mistake(
    (), "train-images-idx3-ubyte", r"download|replace|again", data="truncated"
  ),
  "wrong magic number": Mistake((), "magic", r"download|replace|again", data="magic"),
  "image and label counts differ": Mistake(
    (), r"600 images but labels of shape \(599,\)", "do not belong together", data="count"
  ),
  "label out of range": Mistake((), "label", r"download|replace|again", data="label 12"),
  "checksum mismatch of a local file": Mistake(
    ("--config.data.verify_checksums=True",),
    "train-images-idx3-ubyte.gz fails its checksum",
    "delete it so that it is downloaded again",
  ),
  "checksum mismatch after download": Mistake(
    (),
    r"download of .*(SHA-256|sha256|checksum)",
    r"discarded; retry",
    data="served wrong",
    fault="download:{data}",
    env=(("FMNIST_DATA_DIR", None), ("XDG_CACHE_HOME", "{tmp}/cache")),
  ),
  "unwritable download cache": Mistake(
    (),
    "Cannot write to the download cache",
    r"XDG_CACHE_HOME to a writable",
    fault="download:{data}",
    env=(("FMNIST_DATA_DIR", None), ("XDG_CACHE_HOME", "{tmp}/a_file/cache")),
  ),
}


def corrupt_data(state: str, good: pathlib.Path, tmp: pathlib.Path) -> pathlib.Path:
  """A data directory in `state`: "good", or with one file missing, cut short or wrong."""
  if state == "good":
    return good
  directory = shutil.copytree(good, tmp / "data")
  what, _, argument = state.partition(" ")
  arrays = synthetic_arrays()
  if what == "missing":
    (directory / argument).unlink()
  elif what == "truncated":
    path = directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  elif what == "magic":
    content = idx_bytes(arrays["train-images-idx3-ubyte.gz"], 0x00000802)
    write_idx(directory / "train-images-idx3-ubyte.gz", content)
  elif what == "count":
    labels = arrays["train-labels-idx1-ubyte.gz"][:-1]
    write_idx(directory / "train-labels-idx1-ubyte.gz", idx_bytes(labels, LABELS_MAGIC))
  elif what == "label":
    labels = arrays["train-labels-idx1-ubyte.gz"].copy()
    labels[7] = int(argument)
    write_idx(directory / "train-labels-idx1-ubyte.gz", idx_bytes(labels, LABELS_MAGIC))
  elif state == "served wrong":  # what a broken mirror serves: valid gzip, wrong content
    for name in FILES:
      (directory / name).write_bytes(gzip.compress(b"not Fashion-MNIST"))
  return directory


@pytest.mark.parametrize("name", list(MISTAKES))
def test_a_mistake_gets_one_clear_line_and_loses_nothing(name, data_dir, run_copy, tmp_path):
  case = MISTAKES[name]
  (tmp_path / "broken.py").write_text("def make_config():\n  return None\n")
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  (tmp_path / "a_file").write_text("")
  data = corrupt_data(case.data, data_dir, tmp_path)

  def fill(text: str | None) -> str | None:
    return text if text is None else text.format(tmp=tmp_path, data=data)

  own_config = any(arg.startswith("--config=") for arg in case.args)
  base = [arg for arg in BASE if not (own_config and arg.startswith("--config="))]
  # A download case has no data directory: the search must find nothing and download.
  data_flag = [] if case.fault else [f"--config.data.dir={data}"]
  before = snapshot(run_copy)
  own = list(map(fill, case.args))
  args = [*own, *base, *data_flag] if own_config else [*base, *data_flag, *own]
  result = launch(
    *args,
    f"--workdir={run_copy}",
    fault=fill(case.fault) if case.fault else None,
    env={key: fill(value) for key, value in case.env},
  )
  assert_one_clear_error(result, 2, case.problem, case.fix)
  assert snapshot(run_copy) == before


# ---------------------------------------------------------------------------
# Training faults: the run stops with its last good checkpoint kept.


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  workdir = tmp_path / "run"
  args = (*BASE, "--config.num_epochs=3", f"--config.data.dir={data_dir}", f"--workdir={workdir}")
  result = launch(*args, fault="nan:2")
  assert_one_clear_error(
    result, 2, r"loss became nan at step 14 \(epoch 2\)", "Lower optimizer.learning_rate"
  )
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1"]
  assert [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").open()] == [1]
  # The checkpoint is good: a rerun without the fault resumes from it and finishes.
  result = launch(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").open()] == [1, 2, 3]


def test_a_blow_up_is_caught_by_the_divergence_threshold(data_dir, tmp_path):
  # SGD with momentum at lr 10 on raw 0-255 pixels: the loss jumps to ~30 and stays (finite).
  result = launch(
    *BASE,
    f"--config.data.dir={data_dir}",
    "--config.data.preprocessing=raw",
    "--config.optimizer.learning_rate=10",
    "--config.divergence_threshold=10",
    f"--workdir={tmp_path / 'run'}",
  )
  assert_one_clear_error(
    result,
    2,
    r"loss reached [\d.e+]+, above divergence_threshold=10 at step \d+ \(epoch 1\)",
    "Lower optimizer.learning_rate \\(now 10\\)",
  )


def test_out_of_memory_suggests_a_smaller_batch(data_dir, tmp_path):
  workdir = tmp_path / "run"
  args = (*BASE, f"--config.data.dir={data_dir}", f"--workdir={workdir}")
  result = launch(*args, fault="oom:2")
  assert_one_clear_error(
    result, 2, "out of memory on the accelerator", "Lower batch_size \\(now 50"
  )
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1"]


# ---------------------------------------------------------------------------
# Workdir faults.


def test_a_workdir_that_is_a_file_is_named(data_dir, tmp_path):
  not_a_directory = tmp_path / "file"
  not_a_directory.write_text("mine")
  result = launch(*BASE, f"--config.data.dir={data_dir}", f"--workdir={not_a_directory}")
  assert_one_clear_error(result, 2, f"cannot write to workdir {not_a_directory}", "writable")
  assert not_a_directory.read_text() == "mine"


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(data_dir, tmp_path):
  workdir = tmp_path / "run"
  args = (*BASE, "--config.num_epochs=3", f"--config.data.dir={data_dir}", f"--workdir={workdir}")
  result = launch(*args, fault="disk_full:2")
  assert_one_clear_error(result, 2, "the disk is full", "Free space")
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1"]
  result = launch(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  reference = tmp_path / "reference"
  assert launch(*args[:-1], f"--workdir={reference}").returncode == 0
  assert results_without_times(workdir) == results_without_times(reference)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(run_copy, data_dir):
  zero_checkpoint_data(run_copy / "checkpoints" / "2")
  before = results_without_times(run_copy)
  result = launch(*BASE, f"--config.data.dir={data_dir}", f"--workdir={run_copy}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(
    r"warning: the checkpoint of epoch 2 .* is unreadable .*moved to unreadable-2/ .*resuming "
    r"from epoch 1",
    result.stderr,
  ), result.stderr[-3000:]
  assert (run_copy / "checkpoints" / "unreadable-2").is_dir()  # set aside, not deleted
  assert results_without_times(run_copy) == before  # epoch 2 retrained to the same numbers
  assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_predict_names_a_corrupt_latest_checkpoint(run_copy, tmp_path):
  zero_checkpoint_data(run_copy / "checkpoints" / "2")
  np.save(tmp_path / "x.npy", np.zeros((1, 28, 28), np.uint8))
  before = snapshot(run_copy)
  result = predict("--workdir", str(run_copy), str(tmp_path / "x.npy"))
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and re.search(
    r"latest checkpoint .* \(epoch 2\) is unreadable .*retrain the run with --overwrite", errors[0]
  ), result.stderr[-3000:]
  assert snapshot(run_copy) == before
  assert "Traceback" not in result.stderr, result.stderr[-3000:]  # see the two tests below


def test_only_a_failed_restores_late_callbacks_are_kept_off_the_terminal(monkeypatch):
  from fmnist_jax import checkpoint

  shown = []
  monkeypatch.setattr(sys, "unraisablehook", shown.append)
  checkpoint._quiet_failed_restore_leftovers()
  checkpoint._quiet_failed_restore_leftovers()  # installed once, not stacked
  late = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
  other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
  for unraisable in (late, other, types.SimpleNamespace(exc_value=ValueError("x"))):
    sys.unraisablehook(unraisable)
  assert [u.exc_value.args[0] for u in shown] == ["something else", "x"]


def test_only_a_failed_restores_unawaited_reads_are_kept_off_the_terminal(caplog):
  from fmnist_jax import checkpoint

  checkpoint._quiet_failed_restore_leftovers()
  checkpoint._quiet_failed_restore_leftovers()
  assert len(logging.getLogger("asyncio").filters) == 1
  # Coroutines that fail as orbax's would, in a file of its package: a read and a write.
  source = (
    "async def async_deserialize():\n  raise ValueError('DATA_LOSS: corrupt')\n"
    "async def async_serialize():\n  raise ValueError('disk error')\n"
  )
  fake_orbax = os.path.join("site-packages", "orbax", "checkpoint", "serialization.py")
  coroutines = {}
  exec(compile(source, fake_orbax, "exec"), coroutines)

  def fail_unawaited(coroutine_function):
    loop = asyncio.new_event_loop()
    task = loop.create_task(coroutine_function())
    loop.run_until_complete(asyncio.sleep(0.01))  # the task runs and fails; nobody awaits it
    loop.close()
    del task
    gc.collect()  # asyncio logs "Task exception was never retrieved" when it is collected

  with caplog.at_level(logging.ERROR, logger="asyncio"):
    fail_unawaited(coroutines["async_deserialize"])
    fail_unawaited(coroutines["async_serialize"])
  logged = [r for r in caplog.records if r.name == "asyncio"]
  assert [r.exc_info[1].args[0] for r in logged] == ["disk error"]
  assert logged[0].getMessage().startswith("Task exception was never retrieved")


def test_a_half_written_checkpoint_is_ignored(run_copy, data_dir):
  # What kill -9 during a save leaves: an uncommitted temporary directory.
  shutil.copytree(
    run_copy / "checkpoints" / "2", run_copy / "checkpoints" / "3.orbax-checkpoint-tmp"
  )
  args = (*BASE, "--config.num_epochs=3", f"--config.data.dir={data_dir}", f"--workdir={run_copy}")
  result = launch(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [json.loads(line)["epoch"] for line in (run_copy / "metrics.jsonl").open()] == [1, 2, 3]


def test_a_broken_log_line_is_named_and_one_a_full_disk_cut_short_is_redone(run_copy, data_dir):
  finished = results_without_times(run_copy)
  # Killed during epoch 2's save: its checkpoint never committed, so a rerun redoes epoch 2.
  shutil.rmtree(run_copy / "checkpoints" / "2")
  (run_copy / "results.json").unlink()
  args = (*BASE, f"--config.data.dir={data_dir}", f"--workdir={run_copy}")
  log = run_copy / "metrics.jsonl"
  first, second = log.read_text().splitlines(keepends=True)
  log.write_text(first.replace('"epoch": 1,', '"epoch": 1,,', 1) + second)  # a bad hand edit
  before = snapshot(run_copy)
  assert_one_clear_error(
    launch(*args), 2, r"metrics.jsonl, line 1, is not a JSON record", "Mend or delete that line"
  )
  assert snapshot(run_copy) == before
  log.write_text(first + second[:30])  # a full disk cut epoch 2's line short
  result = launch(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [json.loads(line)["epoch"] for line in log.open()] == [1, 2]
  assert results_without_times(run_copy) == finished


def test_a_workdir_of_another_config_is_refused_unless_overwrite(run_copy, data_dir):
  before = snapshot(run_copy)
  (run_copy / "notes.txt").write_text("mine")
  args = (*BASE, f"--config.data.dir={data_dir}", "--config.seed=7", f"--workdir={run_copy}")
  result = launch(*args)
  assert_one_clear_error(
    result, 2, r"holds a run of a different config \(differs in: seed\)", "--overwrite"
  )
  assert {k: v for k, v in snapshot(run_copy).items() if k != "notes.txt"} == before
  result = launch(*args, "--overwrite")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "--overwrite: removed" in result.stderr
  assert json.loads((run_copy / "config.json").read_text())["seed"] == 7
  assert (run_copy / "notes.txt").read_text() == "mine"  # only the run's own files go


def hold_lock(workdir: pathlib.Path) -> subprocess.Popen:
  """Another process holding the workdir's lock, as a running launch.py does."""
  code = (
    "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
    "f.truncate(0); f.write('4242'); f.flush(); print('locked', flush=True); time.sleep(120)"
  )
  holder = subprocess.Popen(
    [sys.executable, "-c", code, str(workdir / ".lock")], stdout=subprocess.PIPE, text=True
  )
  assert holder.stdout.readline().strip() == "locked"
  return holder


def test_two_runs_on_one_workdir_are_refused(run_copy, data_dir):
  before = snapshot(run_copy)
  holder = hold_lock(run_copy)
  try:
    args = (*BASE, f"--config.data.dir={data_dir}", f"--workdir={run_copy}")
    result = launch(*args)
    assert_one_clear_error(
      result, 2, r"in use by another run \(process 4242\)", "another --workdir"
    )
    result = launch(*args, "--overwrite")
    assert_one_clear_error(result, 2, "in use by another run", "wait for it")
    assert snapshot(run_copy) == before
  finally:
    holder.kill()
    holder.wait()
  # A killed run leaves no stale lock: the kernel drops it with the process.
  assert launch(*args).returncode == 0


def test_the_lock_is_held_while_training(data_dir, tmp_path):
  workdir = tmp_path / "run"
  process = subprocess.Popen(
    [sys.executable, "launch.py", *BASE, "--config.num_epochs=200", f"--config.data.dir={data_dir}"]
    + [f"--workdir={workdir}", "--noprogress"],
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.time() + 120
    while not (workdir / "metrics.jsonl").exists() and time.time() < deadline:
      time.sleep(0.2)
    with open(workdir / ".lock", "a+") as handle, pytest.raises(BlockingIOError):
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  finally:
    process.kill()
    process.wait()


# ---------------------------------------------------------------------------
# predict: bad inputs and runs it cannot use.


def predict(*args):
  return subprocess.run(
    [sys.executable, "-m", "fmnist_jax.predict", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


PREDICT_MISTAKES = {
  "unreadable image": (
    lambda tmp: (tmp / "x.png").write_bytes(b"not an image"),
    "x.png",
    r"cannot read .*x.png as an image",
    "pass a PNG/JPEG file",
  ),
  "wrong number of channels": (
    lambda tmp: np.save(tmp / "x.npy", np.zeros((2, 28, 28, 3), np.uint8)),
    "x.npy",
    r"3-channel images \(shape \(2, 28, 28, 3\)\)",
    r"pass \[N, 28, 28\] arrays",
  ),
  "wrong image size in an array": (
    lambda tmp: np.save(tmp / "x.npy", np.zeros((4, 32, 32))),
    "x.npy",
    r"shape \(4, 32, 32\)",
    r"predict needs \[N, 28, 28\]",
  ),
  "corrupt npy": (
    lambda tmp: (tmp / "x.npy").write_bytes(b"\x93NUMPY garbage"),
    "x.npy",
    "cannot read .*x.npy as a .npy array",
    "np.save",
  ),
  "input file missing": (lambda tmp: None, "x.png", "no such file", "pass image, .npy or IDX"),
}


@pytest.mark.parametrize("name", list(PREDICT_MISTAKES))
def test_predict_refuses_a_bad_input_in_one_line(name, finished_run, tmp_path):
  write, input_name, problem, fix = PREDICT_MISTAKES[name]
  write(tmp_path)
  result = predict("--workdir", str(finished_run), str(tmp_path / input_name))
  assert_one_clear_error(result, 2, problem, fix)


def test_predict_names_a_workdir_it_cannot_use(run_copy, tmp_path):
  np.save(tmp_path / "x.npy", np.zeros((1, 28, 28), np.uint8))
  result = predict("--workdir", str(tmp_path / "nothing"), str(tmp_path / "x.npy"))
  assert_one_clear_error(result, 2, "not a run directory", "pass a --workdir of a run")
  shutil.rmtree(run_copy / "checkpoints")
  result = predict("--workdir", str(run_copy), str(tmp_path / "x.npy"))
  assert_one_clear_error(result, 2, "no checkpoint in", "rerun the run's command")
