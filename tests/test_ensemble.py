"""The ensemble evaluator: rules against a NumPy hand computation, identical members, runs."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from small import small_config

from fmnist_jax import data, ensemble, runs, train


def _logits(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 3


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_identical_members_score_as_the_single_model():
  logits = _logits(0, (500, 10))
  labels = np.random.default_rng(1).integers(0, 10, 500)
  single = ensemble.score({"test": logits[None]}, {"test": labels})
  stacked = ensemble.score({"test": np.stack([logits] * 4)}, {"test": labels})
  for rule in ensemble.RULES:
    assert (
      stacked["rules"][rule]["test"]["confusion_matrix"]
      == single["members"][0]["test"]["confusion_matrix"]
    )
    assert stacked["rules"][rule]["test"]["accuracy"] == pytest.approx(
      float(np.mean(logits.argmax(-1) == labels))
    )


def test_splits_scored_together_equal_each_split_scored_alone():
  sizes = {"train": 300, "val": 120, "test": 77}
  logits = {
    name: np.stack([_logits(i, (n, 10)), _logits(i + 9, (n, 10))])
    for i, (name, n) in enumerate(sizes.items())
  }
  labels = {name: np.random.default_rng(n).integers(0, 10, n) for name, n in sizes.items()}
  together = ensemble.score(logits, labels)
  for name in sizes:
    alone = ensemble.score({name: logits[name]}, {name: labels[name]})
    for rule in ensemble.RULES:
      assert together["rules"][rule][name] == alone["rules"][rule][name]
    for member in range(2):
      assert together["members"][member][name] == alone["members"][member][name]
      log_probs = logits[name][member] - np.log(np.exp(logits[name][member]).sum(-1, keepdims=True))
      expected_loss = -log_probs[np.arange(sizes[name]), labels[name]].mean()
      assert together["members"][member][name]["loss"] == pytest.approx(expected_loss, rel=1e-5)
  assert list(together["members"][0]) == list(sizes)  # the callers' order, not jit's sorted one


def test_two_members_match_a_hand_computation():
  logits = np.stack([_logits(2, (400, 10)), _logits(3, (400, 10))])
  labels = np.random.default_rng(4).integers(0, 10, 400)
  scored = ensemble.score({"test": logits}, {"test": labels})
  by_hand = {
    "softmax_sum": (_softmax(logits[0]) + _softmax(logits[1])).argmax(-1),
    "mean_logit": ((logits[0] + logits[1]) / 2).argmax(-1),
  }
  # Two voters: agreement wins; a 1-1 split goes to whichever of the two voted classes has
  # more summed probability.
  choices = logits.argmax(-1)
  summed = _softmax(logits[0]) + _softmax(logits[1])
  rows = np.arange(400)
  by_hand["vote"] = np.where(
    summed[rows, choices[0]] >= summed[rows, choices[1]], choices[0], choices[1]
  )
  for rule, predictions in by_hand.items():
    expected = float(np.mean(predictions == labels))
    assert scored["rules"][rule]["test"]["accuracy"] == pytest.approx(expected), rule
  for index in range(2):
    member = scored["members"][index]["test"]
    assert member["accuracy"] == pytest.approx(float(np.mean(logits[index].argmax(-1) == labels)))
    log_probabilities = np.log(_softmax(logits[index].astype(np.float64)))
    expected_loss = -log_probabilities[np.arange(400), labels].mean()
    assert member["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_majority_vote_overrules_a_confident_member():
  confident = np.full((1, 10), -10.0, np.float32)
  confident[0, 3] = 10.0  # very sure of class 3
  mild = np.zeros((1, 10), np.float32)
  mild[0, 5] = 1.0  # mildly prefers class 5
  logits = np.stack([confident, mild, mild])
  assert int(ensemble.combine(logits, "vote")[0]) == 5
  assert int(ensemble.combine(logits, "softmax_sum")[0]) == 3


def test_runs_of_two_workdirs_form_an_ensemble(use_small_dataset, tmp_path):
  first = train.fit(small_config(num_epochs=2, num_seeds=2), tmp_path / "a", show_progress=False)
  second = train.fit(
    small_config(num_epochs=2, **{"model.hidden_sizes": (32, 16)}),
    tmp_path / "b",
    show_progress=False,
  )
  assert "ensemble" in first and "ensemble" not in second
  result = runs.evaluate_ensemble([tmp_path / "a", tmp_path / "b"])
  assert result["member_names"] == ["a/seed0", "a/seed1", "b/seed0"]
  # Members read back from their checkpoints score exactly as their runs reported.
  reported = [m["metrics"] for m in first["members"] + second["members"]]
  for restored, expected in zip(result["members"], reported, strict=True):
    assert restored["test"]["confusion_matrix"] == expected["test"]["confusion_matrix"]
  assert 0.5 < result["rules"]["softmax_sum"]["test"]["accuracy"] <= 1
  json.dumps(result)  # serializable as ensemble.json


def test_a_reloaded_run_holds_its_settings_and_compiles_a_fresh_runs_programs(
  use_small_dataset, tmp_path
):
  config = small_config(num_epochs=1, num_seeds=2, label_smoothing=0.1)
  train.fit(config, tmp_path / "a", show_progress=False)
  run = runs.load_run(tmp_path / "a")
  fresh = run.trainer.init_state(train.members_of(config))
  for got, want in (
    (run.state.dropout_rates, fresh.dropout_rates),
    (run.state.label_smoothing, fresh.label_smoothing),
  ):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(a, b)
  assert np.asarray(run.state.label_smoothing).tolist() == pytest.approx([0.1, 0.1])
  # Restored arrays are placed as a fresh run's, so the reload (and a resume) lowers the
  # same programs and loads the fresh run's from the compilation cache.
  batch = run.trainer.eval_batches(use_small_dataset.test.images[:10])[0]
  lowered = [
    run.trainer.evaluate_batch_members.lower(state, *batch).as_text()
    for state in (fresh, run.state)
  ]
  assert lowered[0] == lowered[1]


def test_an_unfinished_run_is_named(tmp_path):
  with pytest.raises(runs.UserError, match="not a run directory"):
    runs.load_run(tmp_path)
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(runs.UserError, match="has not finished"):
    runs.load_run(tmp_path)


def test_combine_runs_under_jit():
  logits = jax.numpy.asarray(_logits(5, (3, 20, 10)))
  for rule in ensemble.RULES:
    assert jax.jit(ensemble.combine, static_argnums=1)(logits, rule).shape == (20,)


def _member_configs(num_seeds):
  return [
    ("a", small_config(num_epochs=2, num_seeds=num_seeds)),
    ("b", small_config(num_epochs=2, num_seeds=num_seeds, **{"model.hidden_sizes": (32, 16)})),
  ]


def test_an_ensemble_config_pairs_its_members_seed_by_seed(
  use_small_dataset, tmp_path, monkeypatch, capsys
):
  monkeypatch.setattr(runs, "member_configs", lambda config: _member_configs(num_seeds=2))
  config = small_config(figures=True)
  config.ensemble.members = ("a", "b")
  result = runs.fit_ensemble(config, tmp_path / "ensemble", show_progress=False)
  assert [pair["members"] for pair in result["pairs"]] == [
    ["a/seed0", "b/seed0"],
    ["a/seed1", "b/seed1"],
  ]
  # Oracle: each run's restored members' logits, combined by hand.
  first, second = runs.load_run(tmp_path / "a"), runs.load_run(tmp_path / "b")
  labels = first.dataset.test.labels
  logits = [
    np.asarray(run.trainer.predict_members(run.state, run.dataset.test.images))
    for run in (first, second)
  ]
  accuracies = []
  for index, pair in enumerate(result["pairs"]):
    predicted = (_softmax(logits[0][index]) + _softmax(logits[1][index])).argmax(-1)
    accuracies.append(float(np.mean(predicted == labels)))
    assert pair["rules"]["softmax_sum"]["test"]["accuracy"] == pytest.approx(accuracies[-1])
  summary = result["ensemble_summary"]["test"]["accuracy"]
  assert summary["mean"] == pytest.approx(np.mean(accuracies))
  assert summary["std"] == pytest.approx(np.std(accuracies, ddof=1), abs=1e-7)
  assert len(result["all_members"]["member_names"]) == 4
  assert json.loads((tmp_path / "ensemble" / "results.json").read_text())["pairs"]
  assert (tmp_path / "ensemble" / "per_class_f1.png").read_bytes().startswith(b"\x89PNG")
  table = runs.format_paired(result, "t")
  assert "ensemble: softmax_sum" in table and "all 4 models" in table
  # The same pairs from the command line, for runs trained apart.
  capsys.readouterr()
  out = tmp_path / "paired"
  assert runs.main([str(tmp_path / "a"), str(tmp_path / "b"), "--paired", f"--out={out}"]) == 0
  assert "Ensembles of a + b, seed by seed" in capsys.readouterr().out
  written = json.loads((out / "ensemble.json").read_text())
  assert [pair["members"] for pair in written["pairs"]] == [p["members"] for p in result["pairs"]]
  assert written["rule_summaries"] == json.loads(json.dumps(result["rule_summaries"]))

  # A rerun reuses the finished members instead of training them again.
  history = (tmp_path / "a" / "metrics.jsonl").read_text()
  capsys.readouterr()
  again = runs.fit_ensemble(config, tmp_path / "ensemble", show_progress=False)
  assert capsys.readouterr().out.count("reusing the finished run") == 2
  assert (tmp_path / "a" / "metrics.jsonl").read_text() == history
  assert again["rule_summaries"] == result["rule_summaries"]


def test_an_ensemble_pairs_the_seeds_every_member_has(use_small_dataset, tmp_path, monkeypatch):
  configs = _member_configs(num_seeds=2)  # a: seeds 0 and 1
  configs[1][1].seed, configs[1][1].num_seeds = 1, 1  # b: seed 1 only
  monkeypatch.setattr(runs, "member_configs", lambda config: configs)
  result = runs.fit_ensemble(small_config(), tmp_path / "ensemble", show_progress=False)
  assert [pair["members"] for pair in result["pairs"]] == [["a/seed1", "b/seed1"]]
  assert result["unpaired_seeds"] == {str(tmp_path / "a"): [0]}
  # a's seed 1 is its second member: the pair scores that member's logits, not its first.
  member_a = result["pairs"][0]["member_metrics"][0]["test"]["confusion_matrix"]
  trained = json.loads((tmp_path / "a" / "results.json").read_text())["members"]
  assert [m["seed"] for m in trained] == [0, 1]
  assert member_a == trained[1]["metrics"]["test"]["confusion_matrix"]
  assert member_a != trained[0]["metrics"]["test"]["confusion_matrix"]
  # Each run's row is over the paired seed only, as the ensemble's is.
  paired_accuracy = result["run_summaries"]["a"]["test"]["accuracy"]
  assert paired_accuracy["mean"] == trained[1]["metrics"]["test"]["accuracy"]
  assert paired_accuracy["std"] == 0.0


def test_runs_that_share_no_seed_do_not_pair(tmp_path):
  for name, seeds in (("a", [0, 1]), ("b", [5])):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(small_config().to_json())
    members = [{"seed": seed} for seed in seeds]
    (tmp_path / name / "results.json").write_text(json.dumps({"members": members}))
  with pytest.raises(runs.UserError, match=r"no seed is in every run .*a: \[0, 1\].*b: \[5\]"):
    runs.evaluate_paired([tmp_path / "a", tmp_path / "b"])


def test_ensemble_member_configs_come_from_configs_with_the_ensembles_seeds():
  from configs import mlp_ensemble

  config = mlp_ensemble.get_config()
  config.seed, config.num_seeds = 7, 3
  members = runs.member_configs(config)
  assert [name for name, _ in members] == ["mlp_1hidden", "mlp_2hidden"]
  assert all((m.seed, m.num_seeds) == (7, 3) for _, m in members)
  config.ensemble.members = ("mlp_1hidden", "no_such_config")
  with pytest.raises(runs.ConfigError, match="no_such_config.*choose from"):
    runs.member_configs(config)
  config.ensemble.members = ("mlp_1hidden",)
  with pytest.raises(runs.ConfigError, match="at least two"):
    runs.member_configs(config)
  config.ensemble.members = ("mlp_1hidden", "cnn_ensemble")
  with pytest.raises(runs.ConfigError, match="itself an ensemble"):
    runs.member_configs(config)


def _restored_logits(workdir):
  """An oracle for saved logits: the run's members restored from their checkpoints."""
  run = runs.load_run(workdir)
  images = {name: split.images for name, split in run.dataset.splits().items()}
  return run.trainer.predict_splits(run.state, images)


def test_an_ensemble_scores_the_logits_its_members_saved(
  use_small_dataset, tmp_path, monkeypatch, capsys
):
  train.fit(small_config(num_epochs=1, num_seeds=2), tmp_path / "a", show_progress=False)
  train.fit(small_config(num_epochs=1, **{"model.dropout_rates": 0.3}), tmp_path / "b")
  workdirs = [tmp_path / "a", tmp_path / "b"]
  for workdir, num_members in zip(workdirs, (2, 1), strict=True):
    saved = json.loads((workdir / "results.json").read_text())["logits"]
    with np.load(workdir / saved["file"]) as arrays:
      for name, restored in _restored_logits(workdir).items():
        assert arrays[name].shape == (num_members, *restored.shape[1:])
        np.testing.assert_array_equal(arrays[name], restored)  # the same bits
  predicted = runs.evaluate_ensemble(workdirs)

  def no_reload(*args, **kwargs):
    raise AssertionError("reloaded a checkpoint although the run saved its logits")

  monkeypatch.setattr(runs, "load_run", no_reload)
  capsys.readouterr()
  reused = runs.evaluate_ensemble(workdirs)
  assert reused == predicted
  assert "no saved logits" not in capsys.readouterr().err


def _flipped_test_images(dataset):
  test = data.Split(dataset.test.images[:, :, ::-1].copy(), dataset.test.labels)
  return dataclasses.replace(dataset, test=test)


@pytest.mark.parametrize("stale", ["missing", "rewritten", "data_changed"])
def test_saved_logits_that_no_longer_match_are_predicted_again(
  use_small_dataset, tmp_path, monkeypatch, capsys, stale
):
  workdir = tmp_path / "a"
  train.fit(small_config(num_epochs=1), workdir, show_progress=False)
  saved = workdir / "logits.npz"
  if stale == "missing":
    saved.unlink()
  if stale == "rewritten":  # e.g. another run's file copied over it
    with np.load(saved) as arrays:
      np.savez(saved, **{name: arrays[name] + 1 for name in arrays.files})
  if stale == "data_changed":  # the same config, other images: the saved logits are stale
    monkeypatch.setattr(data, "load", lambda config: _flipped_test_images(use_small_dataset))
  capsys.readouterr()
  result = runs.evaluate_ensemble([workdir])
  reason = {
    "missing": "logits.npz cannot be read",
    "rewritten": "logits.npz is not the file results.json was written with",
    "data_changed": "the data differ",
  }[stale]
  assert f"no saved logits to reuse ({reason}" in capsys.readouterr().err
  expected = _restored_logits(workdir)["test"][0].argmax(-1)
  labels = data.load(None).test.labels
  assert result["members"][0]["test"]["accuracy"] == pytest.approx(np.mean(expected == labels))
  if stale == "data_changed":  # the flipped images' predictions, not the saved ones
    with np.load(saved) as arrays:
      assert (arrays["test"][0].argmax(-1) != expected).any()


def test_a_dataset_fingerprint_changes_with_any_image_label_or_split(small_dataset):
  fingerprint = small_dataset.fingerprint()
  copy = data.Dataset(
    *(data.Split(s.images.copy(), s.labels.copy()) for s in small_dataset.splits().values()),
    source="elsewhere",
  )
  assert copy.fingerprint() == fingerprint  # where the files came from does not count
  images = small_dataset.test.images.copy()
  images[7, 3, 5] ^= 1
  labels = small_dataset.test.labels.copy()
  labels[0] = (labels[0] + 1) % 10
  changed = [
    dataclasses.replace(small_dataset, test=data.Split(images, small_dataset.test.labels)),
    dataclasses.replace(small_dataset, test=data.Split(small_dataset.test.images, labels)),
    dataclasses.replace(small_dataset, validation=None),
  ]
  assert len({fingerprint, *(dataset.fingerprint() for dataset in changed)}) == 4
