"""Error analysis: confused pairs and patience against hand computations, and the run figures."""

import os
import shutil

import numpy as np
import pytest
from small import small_config

from fmnist_jax import analysis, data, train


def test_most_confused_pairs_are_the_largest_off_diagonal_cells():
  confusion = np.diag(np.full(data.NUM_CLASSES, 90))
  confusion[0, 6] = 25  # T-shirt seen as Shirt
  confusion[4, 2] = 40  # Coat seen as Pullover
  confusion[6, 0] = 5
  pairs = analysis.most_confused_pairs(confusion, k=5)
  assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
    ("Coat", "Pullover", 40),
    ("T-shirt/top", "Shirt", 25),
    ("Shirt", "T-shirt/top", 5),
  ]  # zero cells are not listed
  assert pairs[0]["share_of_true_class"] == pytest.approx(40 / 130)


VAL_LOSSES = [1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.76, 0.77, 0.72, 0.6, 0.65, 0.61]


def test_running_minima_and_the_patience_they_need():
  rows = analysis.running_minima(VAL_LOSSES)
  assert [(r["epoch"], r["val_loss"], r["waited"]) for r in rows] == [
    (1, 1.0, 1),
    (2, 0.8, 1),
    (5, 0.7, 3),
    (10, 0.6, 5),
  ]
  assert analysis.patience_needed(VAL_LOSSES) == 5
  assert analysis.patience_needed([0.5]) == 0


def _best_epoch_with_patience(losses, patience):
  """Keras' rule as train.update_early_stopping runs it: the best epoch it ends with."""
  import jax.numpy as jnp

  state = train.TrainState(step=jnp.zeros(()), params={}, model_state={}, opt_state=())
  early = train.EarlyStopping.create(state)
  for epoch, loss in enumerate(losses):
    if early.stopped:
      break
    early = train.update_early_stopping(
      early, state, jnp.float32(loss), epoch, patience=patience, min_delta=0.0
    )
  return int(early.best_epoch) + 1


def test_the_needed_patience_is_the_smallest_that_reaches_the_best_epoch():
  needed = analysis.patience_needed(VAL_LOSSES)
  best_epoch = int(np.argmin(VAL_LOSSES)) + 1
  assert _best_epoch_with_patience(VAL_LOSSES, needed) == best_epoch
  assert _best_epoch_with_patience(VAL_LOSSES, needed - 1) < best_epoch


def test_a_run_writes_its_analysis_and_figures(use_small_dataset, tmp_path):
  config = small_config(num_epochs=3, num_seeds=2, figures=True)
  train.fit(config, tmp_path, show_progress=False)
  for name in ("confusion.png", "per_class_f1.png", "misclassified.png", "learning_curves.png"):
    content = (tmp_path / name).read_bytes()
    assert content.startswith(b"\x89PNG") and len(content) > 10_000, name
  text = (tmp_path / "analysis.md").read_text()
  assert "Most confused class pairs" in text and "patience" in text
  history = analysis.read_history(tmp_path)
  assert sorted(history) == [0, 1] and len(history[0]["val/loss"]) == 3
  # The table lists member 0's minima from its logged validation losses.
  for row in analysis.running_minima(history[0]["val/loss"]):
    assert f"| {row['epoch']} | {row['val_loss']:.6f} | {row['waited']} |" in text


def test_curves_say_when_the_train_loss_is_on_smoothed_targets(tmp_path, monkeypatch):
  from matplotlib.figure import Figure

  legends = []
  monkeypatch.setattr(
    Figure,
    "savefig",
    lambda fig, *a, **k: legends.append([t.get_text() for t in fig.axes[0].get_legend().texts]),
  )
  history = {0: {"train/loss": [0.9, 0.7], "val/loss": [0.5, 0.4], "val/accuracy": [0.8, 0.9]}}
  for smoothed in (False, True):
    analysis.plot_learning_curves(history, tmp_path / "c.png", "t", smoothed_train_loss=smoothed)
  assert legends == [["train", "val"], ["train (smoothed targets)", "val"]]


def test_a_one_epoch_run_draws_visible_points_on_whole_epoch_ticks(tmp_path, monkeypatch):
  from matplotlib.figure import Figure

  drawn = []

  def record(fig, *args, **kwargs):
    for ax in fig.axes:
      markers = [line.get_marker() for line in ax.get_lines()]
      drawn.append((list(ax.get_xticks()), markers))

  monkeypatch.setattr(Figure, "savefig", record)
  one = {0: {"train/loss": [0.9], "val/loss": [0.5], "learning_rate": [0.01]}}
  analysis.plot_learning_curves(one, tmp_path / "c.png", "t")
  loss_ticks, loss_markers = drawn[0]
  assert loss_ticks == [1.0] and loss_markers == ["o", "o"]
  assert drawn[2] == ([1.0], ["o"])  # the learning rate
  drawn.clear()
  long = {
    0: {"train/loss": list(np.linspace(1, 0.1, 40)), "val/loss": list(np.linspace(1, 0.2, 40))}
  }
  analysis.plot_learning_curves(long, tmp_path / "c.png", "t")
  ticks, markers = drawn[0]
  assert all(float(t).is_integer() for t in ticks) and len(ticks) < 15
  assert set(markers) == {"None"}


def test_a_kill_while_a_figure_is_saved_leaves_the_old_figure_whole(tmp_path, monkeypatch):
  history = {0: {"train/loss": [0.9, 0.7], "val/loss": [0.5, 0.4]}}
  path = tmp_path / "curves.png"
  analysis.plot_learning_curves(history, path, "first")
  old = path.read_bytes()
  assert old.startswith(b"\x89PNG")

  def killed(*args):
    raise KeyboardInterrupt

  with monkeypatch.context() as patch:
    patch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
      analysis.plot_learning_curves({0: {**history[0], "train/loss": [0.8, 0.1]}}, path, "2nd")
  assert path.read_bytes() == old
  analysis.plot_learning_curves({0: {**history[0], "train/loss": [0.8, 0.1]}}, path, "2nd")
  assert path.read_bytes() != old and path.read_bytes().startswith(b"\x89PNG")


def test_the_protocol_names_label_smoothing(small_dataset):
  assert "smoothed" not in train.protocol(small_config(), small_dataset)
  line = train.protocol(small_config(label_smoothing=0.1), small_dataset)
  assert "training targets smoothed by 0.1 (val" in line
  # A sweep over label smoothing: the members' values, not the config's 0.
  sweep = train.Members(seeds=(0, 0, 0), hyperparams={"label_smoothing": (0.0, 0.05, 0.1)})
  line = train.protocol(small_config(), small_dataset, sweep)
  assert "smoothed by 0.05, 0.1 (the members with label_smoothing > 0)" in line
  unsmoothed = train.Members(seeds=(0,), hyperparams={"label_smoothing": (0.0,)})
  assert "smoothed" not in train.protocol(
    small_config(label_smoothing=0.1), small_dataset, unsmoothed
  )


def test_compare_writes_a_per_class_chart_and_table(use_small_dataset, tmp_path):
  for name, hidden in (("small", (16,)), ("wide", (128,))):
    train.fit(
      small_config(num_epochs=1, **{"model.hidden_sizes": hidden}),
      tmp_path / name,
      show_progress=False,
    )
  text, written = analysis.compare([tmp_path / "small", tmp_path / "wide"], tmp_path / "out")
  assert written == ["per_class_f1.png", "per_class_f1.md", "learning_curves.png"]
  for name in ("per_class_f1.png", "learning_curves.png"):
    assert (tmp_path / "out" / name).read_bytes().startswith(b"\x89PNG")
  assert "| Trouser |" in text and "| class | small (1 seed) | wide (1 seed) |" in text
  # Two runs of one name in different directories stay two columns and two curves.
  shutil.copytree(tmp_path / "wide", tmp_path / "other" / "small")
  text, _ = analysis.compare([tmp_path / "small", tmp_path / "other" / "small"], tmp_path / "o2")
  assert (
    f"| class | {tmp_path / 'small'} (1 seed) | {tmp_path / 'other' / 'small'} (1 seed) |" in text
  )
  assert analysis.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
