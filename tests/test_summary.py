"""Per-step and per-epoch scalars: steps.jsonl and TensorBoard event files, read back."""

import json
import shutil
import struct

import numpy as np
import pytest
from small import NUM_TRAIN, small_config
from tensorboardX.proto import event_pb2

from fmnist_jax import checkpoint, summary, train

BATCH = 64
EVERY = 4  # divides the small run's 32 steps per epoch (2,000 / 64, rounded up)
STEPS_PER_EPOCH = -(-NUM_TRAIN // BATCH)


def read_events(directory) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of every event file in `directory`, parsed from the TFRecord
  framing by hand (length, crc, payload, crc), independently of tensorboardX's writer."""
  scalars, tags = {}, set()
  for path in sorted(directory.glob("events.out.tfevents.*")):
    content, offset = path.read_bytes(), 0
    while offset < len(content):
      (length,) = struct.unpack("<Q", content[offset : offset + 8])
      event = event_pb2.Event.FromString(content[offset + 12 : offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        tags.add(value.tag)
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars, tags


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, small_dataset):
  monkeypatch = pytest.MonkeyPatch()
  monkeypatch.setattr(train.data, "load", lambda config: small_dataset)
  workdir = tmp_path_factory.mktemp("logged")
  config = small_config(
    num_epochs=2, num_seeds=2, batch_size=BATCH, **{"logging.every_steps": EVERY}
  )
  results = train.fit(config, workdir, show_progress=False)
  yield workdir, config, results
  monkeypatch.undo()


def test_steps_jsonl_has_every_nth_step_of_every_member(logged_run):
  workdir, _, _ = logged_run
  steps = summary.read_steps(workdir)
  expected = list(range(EVERY, 2 * STEPS_PER_EPOCH + 1, EVERY))
  for member in (0, 1):
    assert [s["step"] for s in steps if s["member"] == member] == expected
  # The windows tile each epoch, so their mean is the epoch's training loss in metrics.jsonl.
  epochs = checkpoint.read_metrics(workdir)
  for record in epochs:
    windows = [
      s for s in steps if s["member"] == record["member"] and s["epoch"] == record["epoch"]
    ]
    # Every window is 4 full batches but the epoch's last, which holds the partial batch.
    counts = [BATCH * EVERY] * (len(windows) - 1)
    counts.append(NUM_TRAIN - sum(counts))
    mean = np.average([w["train/loss"] for w in windows], weights=counts)
    assert mean == pytest.approx(record["train/loss"], rel=1e-5)
    assert all(w["learning_rate"] == pytest.approx(1e-3) for w in windows)


def test_event_files_hold_the_same_scalars_the_config_and_hparams(logged_run):
  workdir, _, results = logged_run
  steps, epochs = summary.read_steps(workdir), checkpoint.read_metrics(workdir)
  for member, name in enumerate(("seed0", "seed1")):
    scalars, tags = read_events(workdir / "tensorboard" / name)
    logged = {s["step"]: s["train/loss"] for s in steps if s["member"] == member}
    assert scalars["step/train/loss"].keys() == logged.keys()
    np.testing.assert_allclose(list(scalars["step/train/loss"].values()), list(logged.values()))
    val = {r["epoch"] * STEPS_PER_EPOCH: r["val/loss"] for r in epochs if r["member"] == member}
    assert scalars["epoch/val/loss"] == pytest.approx(val)
    assert "config/text_summary" in tags and "_hparams_/session_start_info" in tags
    test_accuracy = results["members"][member]["metrics"]["test"]["accuracy"]
    assert scalars["final/test/accuracy"][0] == pytest.approx(test_accuracy)


def test_a_resume_redoes_epochs_without_duplicating_steps(logged_run, tmp_path, small_dataset):
  workdir, config, _ = logged_run
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir, resumed)
  shutil.rmtree(resumed / "checkpoints" / "2")  # as if killed before epoch 2's save
  with pytest.MonkeyPatch.context() as monkeypatch:
    monkeypatch.setattr(train.data, "load", lambda config: small_dataset)
    train.fit(config, resumed, show_progress=False)
  assert summary.read_steps(resumed) == summary.read_steps(workdir)


def test_member_names_show_what_differs():
  assert summary.member_names([0, 1], [{"lr": 0.1}, {"lr": 0.1}]) == ["seed0", "seed1"]
  assert summary.member_names([0, 0], [{"optimizer.lr": 0.1}, {"optimizer.lr": 0.01}]) == [
    "seed0_lr=0.1",
    "seed0_lr=0.01",
  ]
  assert json.loads(summary.flat_hparams(small_config())["model.hidden_sizes"]) == [64]


def test_the_hparams_file_never_overwrites_the_scalars_of_the_same_second(tmp_path, monkeypatch):
  # tensorboardX names an event file by the second it opens in; a run that finishes within
  # that second wrote its HParams file over its scalars (seen in a fast test run).
  from tensorboardX import event_file_writer

  monkeypatch.setattr(event_file_writer, "time", type("Frozen", (), {"time": lambda: 1.7e9}))
  config = small_config(**{"logging.every_steps": 1})
  writer = summary.Writer(tmp_path, config, ["seed0"], steps_per_epoch=2, start_epoch=0)
  step_metrics = {name: np.ones((1, 2)) for name in ("loss", "correct", "count")}
  writer.log_steps(1, step_metrics, np.zeros(1, int), np.full((1, 2), 0.1), np.ones(1, bool))
  writer.log_epoch([{"epoch": 1, "member": 0, "train/loss": 1.0}])
  writer.close()
  final = {"test": {"accuracy": 0.5, "loss": 1.0}}
  writer.log_results(config, [{"seed": 0, "hyperparameters": {}, "metrics": final}])
  scalars, tags = read_events(tmp_path / "tensorboard" / "seed0")
  assert scalars["step/train/loss"] == {1: 1.0, 2: 1.0}
  assert scalars["epoch/train/loss"] == {2: 1.0}
  assert scalars["final/test/accuracy"] == {0: 0.5}
  assert "config/text_summary" in tags


def test_logged_learning_rates_follow_the_schedule_across_a_longer_resume(
  use_small_dataset, tmp_path
):
  """Each logged step's learning rate is the one the optimizer used at that step, also after
  a resume that lengthens the run (the schedule then spans the new number of epochs)."""
  overrides = {"batch_size": BATCH, "logging.every_steps": 1, "optimizer.schedule": "cosine"}
  train.fit(small_config(num_epochs=1, **overrides), tmp_path, show_progress=False)
  config = small_config(num_epochs=3, **overrides)
  train.fit(config, tmp_path, show_progress=False)
  steps = summary.read_steps(tmp_path)
  assert [s["step"] for s in steps] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
  _, first_run_schedule = train.make_optimizer(config.optimizer, STEPS_PER_EPOCH, 1)
  _, resumed_schedule = train.make_optimizer(config.optimizer, STEPS_PER_EPOCH, 3)
  peak = config.optimizer.learning_rate
  for s in steps:
    schedule = first_run_schedule if s["epoch"] == 1 else resumed_schedule
    assert s["learning_rate"] == pytest.approx(peak * float(schedule(s["step"] - 1)), rel=1e-5)
  assert steps[-1]["learning_rate"] < 0.01 * peak  # the cosine has decayed by the end
