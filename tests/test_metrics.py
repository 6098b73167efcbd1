"""Tests for fmnist_jax.metrics, with scikit-learn as the independent oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from fmnist_jax import metrics

NUM_CLASSES = 10
NUM_EXAMPLES = 500
# float32 ratios of counts vs sklearn's float64.
TOLERANCE = 1e-6
# Fraction of random predictions in the synthetic cases, like a ~70% classifier.
ERROR_RATE = 0.3
CLASS_NAMES = (
  "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Labels and mostly-correct predictions, like a trained classifier's."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, NUM_EXAMPLES)
  wrong = rng.random(NUM_EXAMPLES) < ERROR_RATE
  predictions = np.where(wrong, rng.integers(0, NUM_CLASSES, NUM_EXAMPLES), labels)
  return labels, predictions


def _never_predicted(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Class 3 is in the labels but never predicted: its precision is 0/0."""
  labels, predictions = _random_case(seed)
  return labels, np.where(predictions == 3, 4, predictions)


def _absent_from_labels(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Class 7 is predicted but never a label: its recall is 0/0."""
  labels, predictions = _random_case(seed)
  return np.where(labels == 7, 2, labels), predictions


def _absent_everywhere(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Classes 5 and 9 appear nowhere; they still count (as 0) in the macro means."""
  labels, predictions = _random_case(seed)
  return np.where(labels >= 5, labels % 5, labels), np.where(
    np.isin(predictions, (5, 9)), 0, predictions
  )


CASES = {
  "random0": lambda: _random_case(0),
  "random1": lambda: _random_case(1),
  "uniform": lambda: (
    np.random.default_rng(2).integers(0, NUM_CLASSES, NUM_EXAMPLES),
    np.random.default_rng(3).integers(0, NUM_CLASSES, NUM_EXAMPLES),
  ),
  "never_predicted": lambda: _never_predicted(4),
  "absent_from_labels": lambda: _absent_from_labels(5),
  "absent_everywhere": lambda: _absent_everywhere(6),
}


def _sklearn_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, np.ndarray]:
  """The oracle, over the fixed class set like fmnist_jax."""
  classes = list(range(NUM_CLASSES))
  precision, recall, f1, support = skm.precision_recall_fscore_support(
    labels, predictions, labels=classes, average=None, zero_division=0
  )
  macro = skm.precision_recall_fscore_support(
    labels, predictions, labels=classes, average="macro", zero_division=0
  )
  return {
    "accuracy": skm.accuracy_score(labels, predictions),
    "precision_macro": macro[0],
    "recall_macro": macro[1],
    "f1_macro": macro[2],
    "precision": precision,
    "recall": recall,
    "f1": f1,
    "support": support,
    "confusion_matrix": skm.confusion_matrix(labels, predictions, labels=classes),
  }


def _assert_matches(ours: dict, expected: dict) -> None:
  for key, value in expected.items():
    if key in ("support", "confusion_matrix"):
      np.testing.assert_array_equal(np.asarray(ours[key]), value, err_msg=key)
    else:
      np.testing.assert_allclose(np.asarray(ours[key]), value, atol=TOLERANCE, err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_matches_sklearn(case):
  labels, predictions = CASES[case]()
  cm = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(predictions), NUM_CLASSES)
  assert cm.dtype == jnp.int32 and cm.shape == (NUM_CLASSES, NUM_CLASSES)
  ours = {**metrics.from_confusion(cm), "confusion_matrix": cm}
  _assert_matches(ours, _sklearn_metrics(labels, predictions))


def test_case_edges_hold():
  """The edge cases really have the 0/0 they are named for."""
  assert 3 not in _never_predicted(4)[1]
  assert 7 not in _absent_from_labels(5)[0]
  labels, predictions = _absent_everywhere(6)
  assert not np.isin((5, 9), np.concatenate([labels, predictions])).any()


@pytest.mark.parametrize("weight_dtype", [jnp.float32, jnp.bool_])
def test_weights_mask_padding(weight_dtype):
  labels, predictions = _random_case(7)
  keep = np.random.default_rng(8).random(NUM_EXAMPLES) < 0.7
  # Padded examples may carry any label: masked out, they must not count.
  padded_labels = np.where(keep, labels, 0)
  cm = metrics.confusion_matrix(
    jnp.asarray(padded_labels),
    jnp.asarray(predictions),
    NUM_CLASSES,
    weights=jnp.asarray(keep).astype(weight_dtype),
  )
  ours = {**metrics.from_confusion(cm), "confusion_matrix": cm}
  _assert_matches(ours, _sklearn_metrics(labels[keep], predictions[keep]))


def test_groups_count_one_matrix_per_group():
  labels, predictions = _random_case(11)
  groups = np.random.default_rng(12).integers(0, 3, NUM_EXAMPLES)
  cm = metrics.confusion_matrix(
    jnp.asarray(labels), jnp.asarray(predictions), NUM_CLASSES, groups=groups, num_groups=3
  )
  assert cm.shape == (3, NUM_CLASSES, NUM_CLASSES)
  for group in range(3):
    in_group = groups == group
    np.testing.assert_array_equal(
      cm[group],
      skm.confusion_matrix(labels[in_group], predictions[in_group], labels=range(NUM_CLASSES)),
    )


def test_uint8_labels_and_batched_shape():
  """Labels as stored on disk (uint8) and a [steps, batch] layout give the same counts."""
  labels, predictions = _random_case(9)
  cm = metrics.confusion_matrix(
    jnp.asarray(labels, jnp.uint8).reshape(10, -1),
    jnp.asarray(predictions).reshape(10, -1),
    NUM_CLASSES,
  )
  np.testing.assert_array_equal(
    cm, skm.confusion_matrix(labels, predictions, labels=range(NUM_CLASSES))
  )


def test_empty_confusion_matrix_is_zero_not_nan():
  result = metrics.from_confusion(jnp.zeros((NUM_CLASSES, NUM_CLASSES), jnp.int32))
  for key, value in result.items():
    np.testing.assert_array_equal(value, 0, err_msg=key)


def test_jit_vmap_and_strict_mode():
  """Three stacked eval sets in one jitted, vmapped call equal three separate calls."""
  cases = [CASES[name]() for name in ("random0", "never_predicted", "absent_from_labels")]
  labels_SxN = jnp.asarray(np.stack([labels for labels, _ in cases]))
  predictions_SxN = jnp.asarray(np.stack([predictions for _, predictions in cases]))
  weights_SxN = jnp.ones(labels_SxN.shape, jnp.float32)

  @jax.jit
  def evaluate(labels, predictions, weights):
    cm_SxCxC = jax.vmap(metrics.confusion_matrix, in_axes=(0, 0, None, 0))(
      labels, predictions, NUM_CLASSES, weights
    )
    # from_confusion takes a leading batch axis directly, and also under vmap.
    return cm_SxCxC, metrics.from_confusion(cm_SxCxC), jax.vmap(metrics.from_confusion)(cm_SxCxC)

  # Implicit transfers or rank promotion inside the metrics would raise here.
  with jax.numpy_rank_promotion("raise"), jax.transfer_guard("disallow"):
    cm_SxCxC, batched, vmapped = evaluate(labels_SxN, predictions_SxN, weights_SxN)
  for i, (labels, predictions) in enumerate(cases):
    expected = _sklearn_metrics(labels, predictions)
    for result in (batched, vmapped):
      ours = {key: value[i] for key, value in result.items()}
      _assert_matches({**ours, "confusion_matrix": cm_SxCxC[i]}, expected)


def test_accumulates_in_scan():
  """Per-batch matrices summed in a scan carry equal the whole-split matrix."""
  labels, predictions = _random_case(10)
  labels_BxN = jnp.asarray(labels).reshape(5, -1)
  predictions_BxN = jnp.asarray(predictions).reshape(5, -1)

  def body(cm_CxC, batch):
    return cm_CxC + metrics.confusion_matrix(*batch, NUM_CLASSES), None

  init_CxC = jnp.zeros((NUM_CLASSES, NUM_CLASSES), jnp.int32)
  cm, _ = jax.jit(lambda: jax.lax.scan(body, init_CxC, (labels_BxN, predictions_BxN)))()
  np.testing.assert_array_equal(
    cm, skm.confusion_matrix(labels, predictions, labels=range(NUM_CLASSES))
  )


def test_summarize_is_plain_python():
  labels, predictions = _random_case(11)
  cm = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(predictions), NUM_CLASSES)
  summary = metrics.summarize(cm, loss_sum=jnp.float32(125.0), count=NUM_EXAMPLES)
  expected = _sklearn_metrics(labels, predictions)
  _assert_matches(summary, expected)
  assert summary["loss"] == pytest.approx(125.0 / NUM_EXAMPLES)
  assert list(summary)[:4] == list(metrics.SCALAR_KEYS)
  assert type(summary["accuracy"]) is float
  assert all(type(s) is int for s in summary["support"])
  assert summary["confusion_matrix"] == expected["confusion_matrix"].tolist()
  # count defaults to the examples in the matrix; a host matrix works too.
  from_host = metrics.summarize(np.asarray(cm), loss_sum=125.0)
  assert from_host["loss"] == pytest.approx(125.0 / NUM_EXAMPLES)
  assert "loss" not in metrics.summarize(cm)
  with pytest.raises(ValueError, match="count is 0"):
    metrics.summarize(cm, loss_sum=1.0, count=0)


# Study B's B4 row (STUDIES.md), as summaries with only the scalar keys.
B4_SPLITS = {
  "test": {"accuracy": 0.9268, "precision_macro": 0.92741234, "recall_macro": 0.9268,
           "f1_macro": 0.927089, "f1": [0.9] * NUM_CLASSES},
  "train": {"accuracy": 0.969708, "precision_macro": 0.97, "recall_macro": 0.9697,
            "f1_macro": 0.96970849, "loss": 0.08123456},
  "val": {"accuracy": 0.933167, "precision_macro": 0.9332, "recall_macro": 0.9331,
          "f1_macro": 0.9330, "loss": 0.2039},
}  # fmt: skip


def test_flatten_keys():
  flat = metrics.flatten(B4_SPLITS)
  assert flat["val/accuracy"] == 0.933167
  assert flat["test/f1_macro"] == 0.927089
  assert flat["train/loss"] == 0.08123456
  assert "test/f1" not in flat  # per-class lists are skipped
  assert set(flat) == {
    f"{split}/{key}" for split, values in B4_SPLITS.items() for key in values if key != "f1"
  }
  summary_keys = metrics.flatten({"val": metrics.summarize(jnp.eye(NUM_CLASSES, dtype=jnp.int32))})
  assert set(summary_keys) == {
    "val/accuracy", "val/precision_macro", "val/recall_macro", "val/f1_macro"
  }  # fmt: skip


def test_format_table():
  table = metrics.format_table(B4_SPLITS, title="B4 tuned CNN")
  lines = table.splitlines()
  assert lines[0] == "B4 tuned CNN"
  assert lines[1].split() == ["Split", "Accuracy", "Precision", "Recall", "F1", "Loss"]
  # Rows in train, val, test order whatever the dict order, six decimals.
  assert lines[3].split() == ["train", "0.969708", "0.970000", "0.969700", "0.969708", "0.081235"]
  assert lines[4].split() == ["val", "0.933167", "0.933200", "0.933100", "0.933000", "0.203900"]
  assert lines[5].split() == ["test", "0.926800", "0.927412", "0.926800", "0.927089", "-"]
  # Fixed width: every row of the table is as long as the header.
  assert len({len(line) for line in lines[1:6]}) == 1
  no_loss = metrics.format_table({"val": {"accuracy": 0.5}})
  assert "Loss" not in no_loss and no_loss.splitlines()[0].startswith("Split")


def test_format_summary_table_shows_a_spread_only_over_several_members():
  other = {
    split: dict(values, accuracy=values["accuracy"] - 0.01) for split, values in B4_SPLITS.items()
  }
  several = metrics.format_summary_table(
    metrics.across_members([B4_SPLITS, other]), num_members=2
  ).splitlines()
  assert several[0].split()[-2:] == ["Accuracy", "min-max"]
  assert several[4].split()[:4] == ["test", "0.9218", "+-", "0.0071"]  # mean, sample std
  assert several[4].split()[-1] == "0.9168-0.9268"
  assert several[-1].startswith("mean +- sample std over 2 members")
  one = metrics.format_summary_table(
    metrics.across_members([B4_SPLITS]), num_members=1, unit="seed pairs", unit_one="seed pair"
  ).splitlines()
  assert one[0].split() == ["Split", "Accuracy", "Precision", "Recall", "F1", "Loss"]
  assert one[4].split() == ["test", "0.9268", "0.9274", "0.9268", "0.9271", "-"]
  assert one[-1].startswith("one seed pair;")


def test_format_per_class_table():
  cm = metrics.confusion_matrix(*map(jnp.asarray, _never_predicted(12)), NUM_CLASSES)
  summary = metrics.summarize(cm)
  table = metrics.format_per_class_table(summary, CLASS_NAMES)
  lines = table.splitlines()
  assert lines[0].split() == ["Class", "Precision", "Recall", "F1", "Support"]
  assert lines[2].startswith("T-shirt/top")
  dress = lines[2 + 3]
  assert dress.startswith("Dress") and dress.split()[1:4] == ["0.000000"] * 3
  assert dress.split()[4] == str(summary["support"][3])
  assert lines[-1].split() == [
    "macro", "avg", f"{summary['precision_macro']:.6f}", f"{summary['recall_macro']:.6f}",
    f"{summary['f1_macro']:.6f}", str(NUM_EXAMPLES),
  ]  # fmt: skip
  with pytest.raises(ValueError, match="class_names"):
    metrics.format_per_class_table(summary, CLASS_NAMES[:3])
