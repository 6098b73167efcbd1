"""benchmarks/speedrun.py: seeds timed one after another, each scored, and their ensemble."""

import numpy as np
from small import small_config

from benchmarks import speedrun
from fmnist_jax import ensemble


def test_speedrun_scores_each_seed_and_their_ensemble(use_small_dataset, monkeypatch):
  config = small_config(num_epochs=2)
  logits_seen = []
  combine = ensemble.combine
  monkeypatch.setattr(
    ensemble, "combine", lambda logits, rule: logits_seen.append(logits) or combine(logits, rule)
  )
  summary = speedrun.run(config, num_seeds=2)

  assert summary["split"] == "validation"  # small_config holds out a validation split
  assert [run["seed"] for run in summary["runs"]] == [0, 1]
  accuracies = [run["accuracy"] for run in summary["runs"]]
  assert min(accuracies) > 0.6 and accuracies[0] != accuracies[1]  # both learned, differently
  assert summary["mean_accuracy"] == np.mean(accuracies)
  assert all(run["train_s"] > 0 for run in summary["runs"]) and summary["compile_s"] > 0
  # The ensemble: the softmax sum of exactly these two members' logits, scored on validation.
  (stacked,) = logits_seen
  labels = use_small_dataset.validation.labels
  assert stacked.shape == (2, len(labels), 10)
  member_accuracies = (np.asarray(stacked).argmax(-1) == labels).mean(axis=1)
  np.testing.assert_allclose(member_accuracies, accuracies, atol=1e-6)
  probabilities = np.exp(stacked) / np.exp(stacked).sum(-1, keepdims=True)
  expected = (probabilities.sum(0).argmax(-1) == labels).mean()
  assert summary["ensemble_accuracy"] == np.float32(expected)
