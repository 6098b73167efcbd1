"""Training: it learns, it is reproducible, it resumes identically, it stops like Keras."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from ml_collections import ConfigDict
from small import NUM_TRAIN, saved_params, small_config

from fmnist_jax import data, train

CHANCE = 1 / data.NUM_CLASSES


def test_mlp_learns_well_above_chance(use_small_dataset, tmp_path):
  results = train.fit(small_config(), tmp_path, show_progress=False)
  assert results["members"][0]["metrics"]["test"]["accuracy"] > 0.7 > 5 * CHANCE
  history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in history] == [1, 2, 3]
  assert history[-1]["train/loss"] < history[0]["train/loss"]
  assert (tmp_path / "config.json").exists() and (tmp_path / "results.json").exists()


def test_same_seed_is_bit_identical_and_another_seed_is_not(use_small_dataset, tmp_path):
  runs = [
    train.fit(small_config(num_epochs=2, seed=seed), tmp_path / str(i), show_progress=False)
    for i, seed in enumerate([0, 0, 1])
  ]
  assert runs[0]["members"][0]["metrics"] == runs[1]["members"][0]["metrics"]
  for a, b in zip(saved_params(tmp_path / "0"), saved_params(tmp_path / "1"), strict=True):
    np.testing.assert_array_equal(a, b)
  assert (
    runs[0]["members"][0]["metrics"]["val"]["loss"]
    != runs[2]["members"][0]["metrics"]["val"]["loss"]
  )


def test_resume_continues_exactly_where_it_stopped(use_small_dataset, tmp_path):
  config = small_config(**{"early_stopping.enabled": True, "early_stopping.patience": 5})
  uninterrupted = train.fit(config, tmp_path / "whole", show_progress=False)
  config.num_epochs = 1
  train.fit(config, tmp_path / "resumed", show_progress=False)
  config.num_epochs = 3
  resumed = train.fit(config, tmp_path / "resumed", show_progress=False)
  assert resumed["members"] == uninterrupted["members"]
  for a, b in zip(
    saved_params(tmp_path / "whole"), saved_params(tmp_path / "resumed"), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  history = [
    json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
  ]
  assert [record["epoch"] for record in history] == [1, 2, 3]
  # Training time counts every epoch, the one before the resume included.
  assert resumed["train_seconds"] == pytest.approx(sum(record["seconds"] for record in history))


def test_a_workdir_of_another_config_is_refused(use_small_dataset, tmp_path):
  train.fit(small_config(num_epochs=1), tmp_path, show_progress=False)
  with pytest.raises(train.config_checks.ConfigError, match="optimizer"):
    train.fit(
      small_config(num_epochs=1, **{"optimizer.learning_rate": 0.1}), tmp_path, show_progress=False
    )


def test_epochs_compile_once(small_dataset):
  config = small_config()
  trainer = train.Trainer.create(config, small_dataset.train.images, NUM_TRAIN)
  state = trainer.init(jax.random.key(0))
  images, labels = (
    jax.device_put(small_dataset.train.images),
    jax.device_put(small_dataset.train.labels),
  )
  keys = [jax.random.key(epoch) for epoch in range(3)]
  for key in keys:
    with jax.transfer_guard("disallow"):  # no host round trip inside the epoch
      state, _ = trainer.train_epoch(state, images, labels, key)
    # Every split size, one evaluation program: fixed-size host batches.
    for split in small_dataset.splits().values():
      stacked = jax.tree.map(lambda x: x[None], state)  # one member
      trainer.evaluate_members(stacked, split.images, split.labels)
  assert trainer.train_epoch._cache_size() == 1
  assert trainer.evaluate_batch_members._cache_size() == 1


def test_every_split_predicted_in_one_program_equals_each_split_alone(small_dataset):
  config = small_config(num_seeds=2)
  trainer = train.Trainer.create(config, small_dataset.train.images, NUM_TRAIN, num_members=2)
  state = trainer.init_state(train.members_of(config))
  splits = {name: split.images for name, split in small_dataset.splits().items()}
  together = trainer.predict_splits(state, splits)
  assert list(together) == list(splits)
  for name, images in splits.items():
    assert together[name].shape == (2, images.shape[0], data.NUM_CLASSES)
    alone = trainer.predict_members(state, jax.device_put(images))
    np.testing.assert_allclose(together[name], alone, atol=1e-6)
  assert trainer.evaluate_batch_members._cache_size() == 1


def test_every_example_is_seen_once_per_epoch_with_a_partial_last_batch():
  indices, weights = train._epoch_batches(jax.random.key(0), 10, 4)
  assert indices.shape == weights.shape == (3, 4)  # ceil(10 / 4) steps, as Keras
  real = np.asarray(indices)[np.asarray(weights) == 1]
  assert sorted(real.tolist()) == list(range(10))
  assert np.asarray(weights).sum() == 10


@pytest.mark.parametrize("num_examples", [1, 2, 97, 50_000, 2**16, 2**16 + 1])
def test_the_epoch_shuffle_is_jaxs_permutation_bit_for_bit(num_examples):
  # 50,000 and 2**16 draw tied 32-bit sort keys for some seeds: stability shows.
  keys = jax.random.split(jax.random.key(num_examples), 4)
  shuffle = jax.jit(jax.vmap(train.shuffled_indices, in_axes=(0, None)), static_argnums=1)
  ours = shuffle(keys, num_examples)
  theirs = jax.vmap(jax.random.permutation, in_axes=(0, None))(keys, num_examples)
  np.testing.assert_array_equal(ours, theirs)
  assert ours.dtype == theirs.dtype


def test_the_radix_argsort_is_stable_on_tied_keys():
  sort_keys = jnp.array([7, 0x10000, 7, 3, 0x10000, 0xFFFFFFFF, 3, 0], jnp.uint32)
  np.testing.assert_array_equal(
    train._stable_argsort_uint32(sort_keys), np.argsort(np.asarray(sort_keys), kind="stable")
  )


def _keras_early_stopping(val_losses, patience, min_delta):
  """Keras 3 EarlyStopping.on_epoch_end for monitor='val_loss', written out in Python."""
  best, best_epoch, wait = np.inf, -1, 0
  min_delta = -min_delta  # Keras' _set_monitor_op flips the sign in "min" mode
  for epoch, loss in enumerate(val_losses):
    wait += 1
    if loss - min_delta < best:  # Keras' _is_improvement
      best, best_epoch, wait = loss, epoch, 0
      continue
    if wait >= patience and epoch > 0:
      return epoch, best_epoch
  return None, best_epoch


@pytest.mark.parametrize("patience,min_delta", [(1, 0.0), (3, 0.0), (2, 0.05)])
def test_early_stopping_follows_keras(patience, min_delta):
  val_losses = [1.0, 0.8, 0.82, 0.79, 0.85, 0.9, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95]
  state = train.TrainState(
    step=jnp.zeros(()), params={"w": jnp.zeros(())}, model_state={}, opt_state=()
  )
  es = train.EarlyStopping.create(state)
  stopped_at = None
  for epoch, loss in enumerate(val_losses):
    state = state.replace(params={"w": jnp.float32(epoch)})
    es = train.update_early_stopping(
      es, state, jnp.float32(loss), epoch, patience=patience, min_delta=min_delta
    )
    if bool(es.stopped):
      stopped_at = epoch
      break
  expected_stop, expected_best = _keras_early_stopping(val_losses, patience, min_delta)
  assert stopped_at == expected_stop
  assert int(es.best_epoch) == expected_best
  assert float(es.best_params["w"]) == expected_best  # the best epoch's weights are kept


def test_early_stopping_restores_the_best_weights(use_small_dataset, tmp_path):
  # min_delta so large that only the first epoch counts as an improvement.
  config = small_config(
    num_epochs=5,
    **{
      "early_stopping.enabled": True,
      "early_stopping.patience": 1,
      "early_stopping.min_delta": 100.0,
    },
  )
  results = train.fit(config, tmp_path, show_progress=False)
  assert results["members"][0]["epochs_trained"] == 2 and results["members"][0]["stopped_early"]
  assert results["members"][0]["best_epoch"] == 1 and results["members"][0]["restored_best"]
  first_epoch = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
  assert results["members"][0]["metrics"]["val"]["loss"] == pytest.approx(
    first_epoch["val/loss"], rel=1e-6
  )


def test_the_progress_line_counts_the_epochs_since_the_best(use_small_dataset, tmp_path, capsys):
  # min_delta so large that only the first epoch improves: 0, 1, 2 epochs since the best.
  config = small_config(
    num_seeds=2,
    **{
      "early_stopping.enabled": True,
      "early_stopping.patience": 5,
      "early_stopping.min_delta": 100.0,
    },
  )
  train.fit(config, tmp_path, show_progress=True)
  lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
  assert [line.split("since_best=")[1].split()[0] for line in lines] == ["0/5", "1/5", "2/5"]
  assert all(line.endswith("at most)") for line in lines)


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_weights_are_selected_per_member_only_where_members_can_differ(
  num_seeds, use_small_dataset, tmp_path, monkeypatch
):
  """A lone member trains only while active, and its best weights come back whole, so its
  run traces no per-member selection (a program with a select per weight to compile)."""
  selections = []
  select, select_jit = train._select, train._select_jit
  monkeypatch.setattr(train, "_select", lambda *a: selections.append("epoch") or select(*a))
  monkeypatch.setattr(train, "_select_jit", lambda *a: selections.append("final") or select_jit(*a))
  config = small_config(
    num_epochs=2,
    num_seeds=num_seeds,
    **{"early_stopping.enabled": True, "parallel.members": "vmap"},
  )
  results = train.fit(config, tmp_path, show_progress=False)
  assert all(member["restored_best"] for member in results["members"])
  # Vmapped members may stop at different epochs: each epoch keeps the stopped ones' weights.
  assert selections == ([] if num_seeds == 1 else ["epoch"])


def test_non_finite_loss_stops_with_a_message_naming_the_fix(
  use_small_dataset, tmp_path, monkeypatch
):
  # A NaN pixel poisons the loss deterministically (an exploding learning rate may not).
  scale = data.make_preprocess
  monkeypatch.setattr(
    data, "make_preprocess", lambda name, images: lambda x: scale(name, images)(x) * jnp.nan
  )
  config = small_config()
  with pytest.raises(FloatingPointError, match=r"step \d+ \(epoch 1\).*optimizer.learning_rate"):
    train.fit(config, tmp_path, show_progress=False)
  assert (tmp_path / "config.json").exists()


def test_autoencoder_pretraining_lowers_reconstruction_loss(use_small_dataset, tmp_path):
  config = small_config(num_epochs=1, batch_size=100, **{"pretrain.num_epochs": 2})
  config.model = ConfigDict({"name": "autoencoder", "head_sizes": (32,)})
  results = train.fit(config, tmp_path, show_progress=False)
  history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  pretrain = [r["pretrain/loss"] for r in history if r.get("phase") == "pretrain"]
  assert len(pretrain) == 2 and pretrain[1] < pretrain[0]
  assert results["members"][0]["metrics"]["test"]["accuracy"] > 2 * CHANCE


def test_the_jitted_train_step_is_the_scanned_epochs_step(small_dataset):
  config = small_config(**{"model.dropout_rates": 0.0})
  trainer = train.Trainer.create(config, small_dataset.train.images, NUM_TRAIN)
  images, labels = small_dataset.train.images, small_dataset.train.labels
  key = jax.random.key(3)
  shuffle_key, dropout_key = jax.random.split(key)
  indices, weights = train._epoch_batches(shuffle_key, NUM_TRAIN, config.batch_size)
  step_keys = jax.random.split(dropout_key, indices.shape[0])
  by_step = trainer.init(jax.random.key(0))
  for batch_indices, batch_weights, step_key in zip(indices, weights, step_keys, strict=True):
    batch = (images[np.asarray(batch_indices)], labels[np.asarray(batch_indices)], batch_weights)
    by_step, _ = trainer.train_step(by_step, batch, step_key)
  by_epoch, _ = trainer.train_epoch(trainer.init(jax.random.key(0)), images, labels, key)
  assert int(by_step.step) == int(by_epoch.step) == indices.shape[0]
  for a, b in zip(jax.tree.leaves(by_step.params), jax.tree.leaves(by_epoch.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_batch_norm_statistics_train_in_the_scanned_epoch(use_small_dataset, tmp_path):
  config = small_config(num_epochs=1)
  config.model = ConfigDict(
    {
      "name": "cnn",
      "conv_features": (8, 16),
      "dense_sizes": (32,),
      "batch_norm": True,
      "conv_dropout_rates": 0.1,
    }
  )
  results = train.fit(config, tmp_path, show_progress=False)
  assert results["members"][0]["metrics"]["test"]["accuracy"] > 3 * CHANCE
  manager = ocp.CheckpointManager(tmp_path / "checkpoints")
  statistics = jax.tree.leaves(manager.restore(1)["state"]["model_state"])
  manager.close()
  assert statistics and all(np.abs(np.asarray(s)).sum() > 0 for s in statistics)
  assert any(not np.allclose(s, 1.0) and not np.allclose(s, 0.0) for s in statistics)


def _member_lines(workdir, index):
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [line for line in lines if line["member"] == index]


@pytest.mark.parametrize("execution", ["vmap", "map"])
def test_each_member_equals_a_separate_run_with_its_seed(execution, use_small_dataset, tmp_path):
  config = small_config(num_epochs=2, num_seeds=3, **{"parallel.members": execution})
  together = train.fit(config, tmp_path / "3", show_progress=False)
  alone = train.fit(small_config(num_epochs=2, seed=2), tmp_path / "1", show_progress=False)
  assert [m["seed"] for m in together["members"]] == [0, 1, 2]
  vmapped, single = together["members"][2]["metrics"], alone["members"][0]["metrics"]
  for split in ("train", "val", "test"):
    assert vmapped[split]["loss"] == pytest.approx(single[split]["loss"], rel=1e-4)
    assert vmapped[split]["accuracy"] == pytest.approx(single[split]["accuracy"], abs=2e-3)
  for a, b in zip(saved_params(tmp_path / "3"), saved_params(tmp_path / "1"), strict=True):
    np.testing.assert_allclose(a[2], b[0], rtol=1e-4, atol=1e-5)
  # Different seeds really are different models, and the summary is their statistics.
  accuracies = [m["metrics"]["test"]["accuracy"] for m in together["members"]]
  assert len(set(accuracies)) > 1
  stats = together["summary"]["test"]["accuracy"]
  assert stats["mean"] == pytest.approx(np.mean(accuracies))
  assert stats["std"] == pytest.approx(np.std(accuracies, ddof=1))
  assert (stats["min"], stats["max"]) == (min(accuracies), max(accuracies))
  assert [r["epoch"] for r in _member_lines(tmp_path / "3", 1)] == [1, 2]


@pytest.mark.parametrize("execution", ["vmap", "map"])
def test_a_stopped_member_keeps_its_weights_while_the_others_train(execution, small_dataset):
  config = small_config(**{"parallel.members": execution})
  trainer = train.Trainer.create(config, small_dataset.train.images, NUM_TRAIN, num_members=2)
  state = trainer.init_members(
    jax.random.split(jax.random.key(0), 2), {"learning_rate": jnp.full((2,), 1e-3)}
  )
  before = jax.tree.map(np.asarray, state)
  images, labels = (
    jnp.asarray(a) for a in (small_dataset.train.images, small_dataset.train.labels)
  )
  state, step_metrics = trainer.train_members(
    state, jnp.array([True, False]), images, labels, jax.random.split(jax.random.key(1), 2)
  )
  # One after another, the stopped member's epoch is skipped, not computed and discarded.
  assert (step_metrics["count"][1].sum() == 0) == (execution == "map")
  for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(old[1], new[1])  # frozen, optimizer state and step included
  moved = [
    not np.array_equal(old[0], new[0])
    for old, new in zip(jax.tree.leaves(before.params), jax.tree.leaves(state.params), strict=True)
  ]
  assert all(moved)


def test_members_stop_early_independently():
  # Member 0 stops after epoch 2 (patience 1); member 1 keeps improving.
  val_losses = np.array([[1.0, 2.0, 0.1, 0.1], [1.0, 0.9, 0.8, 0.7]], np.float32)
  state = train.TrainState(
    step=jnp.zeros((2,)), params={"w": jnp.zeros((2,))}, model_state={}, opt_state=()
  )
  es = train.EarlyStopping.create(state, num_members=2)
  update = jax.vmap(
    lambda *args: train.update_early_stopping(*args, patience=1, min_delta=0.0),
    in_axes=(0, 0, 0, None, 0),
  )
  for epoch in range(4):
    active = ~np.asarray(es.stopped)
    state = state.replace(params={"w": jnp.full((2,), float(epoch))})
    es = update(es, state, jnp.asarray(val_losses[:, epoch]), epoch, jnp.asarray(active))
  assert np.asarray(es.stopped).tolist() == [True, False]
  assert np.asarray(es.best_epoch).tolist() == [0, 3]  # member 0's later 0.1 came after its stop
  assert np.asarray(es.best_params["w"]).tolist() == [0.0, 3.0]


def test_a_diverged_member_is_frozen_alone_until_none_would_go_on(capsys):
  members = train.members_of(small_config(num_seeds=4))
  nan = float("nan")
  # Member 0's loss goes NaN at step 2 and member 1's passes the threshold at step 1; member
  # 2 is stopped (it trained no steps: its NaNs are not a loss); member 3 trains on.
  step_metrics = {
    "loss": np.array([[0.5, 0.4, nan], [0.5, 50.0, 0.3], [nan, nan, nan], [0.5, 0.4, 0.3]])
  }
  steps_before, peak_lrs = np.array([30, 30, 27, 30]), np.full(4, 0.1)
  diverged = train._newly_diverged(
    step_metrics, np.array([True, True, False, True]), steps_before, 10, members, peak_lrs, 10.0
  )
  assert diverged.tolist() == [True, True, False, False]
  warnings = capsys.readouterr().err
  assert "member 0 (seed 0" in warnings and "member 1 (seed 1" in warnings
  assert "member 2" not in warnings and "member 3" not in warnings and "epoch 11" in warnings
  # Once no member is left to train, the run ends with the last member's cause.
  with pytest.raises(FloatingPointError, match=r"every member diverged by epoch 11; .*step 32 "):
    train._newly_diverged(
      step_metrics, np.array([False, True, False, False]), steps_before, 10, members, peak_lrs, 10
    )
  # A single run raises the cause itself, its step counted from the run's start.
  single = train.members_of(small_config())
  with pytest.raises(FloatingPointError, match=r"loss became nan at step 33 \(epoch 11\)"):
    train._newly_diverged(
      {"loss": step_metrics["loss"][:1]},
      np.array([True]),
      steps_before[:1],
      10,
      single,
      peak_lrs[:1],
      0.0,
    )
