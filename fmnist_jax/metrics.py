"""Classification metrics, all derived from one confusion matrix.

`confusion_matrix` and `from_confusion` are pure JAX: they run inside jitted,
scanned and vmapped code, so an epoch accumulates one int32 [C, C] matrix (plus a
loss sum) and the host fetches it once. `summarize`, `flatten` and the
`format_*` functions are host-side only: they fetch and format.

Conventions follow scikit-learn with `zero_division=0` and
`labels=range(num_classes)`: a class never predicted has precision 0, a class
absent from the labels has recall 0, F1 is 0 when precision + recall is 0, and
macro averages are unweighted means over all `num_classes` classes (the F1 macro
is the mean of per-class F1, not the F1 of macro precision and recall).
"""

import re
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import platform

# `from_confusion`'s outputs: scalars (macro over classes), then per-class [C].
SCALAR_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
PER_CLASS_KEYS = ("precision", "recall", "f1", "support")
# Rows of `format_table` come in this order; other splits follow as given.
SPLIT_ORDER = ("train", "val", "test")
# Six decimals, as the study B deck reports (e.g. 0.969708).
DECIMALS = 6
# Minimum width of a numeric column: "0." plus DECIMALS digits.
_NUM_WIDTH = DECIMALS + 2
# Spaces between table columns.
_GAP = "  "
# Scalar metrics in `format_table`, as (key, header); F1 is "f1_macro".
_TABLE_COLUMNS = (
  ("accuracy", "Accuracy"),
  ("precision_macro", "Precision"),
  ("recall_macro", "Recall"),
  ("f1_macro", "F1"),
)
_LOSS_COLUMN = ("loss", "Loss")
# Per-class metrics in `format_per_class_table`, as (key, header).
_PER_CLASS_COLUMNS = (("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"))
# Shown for a metric that a split does not have (e.g. no loss for an ensemble).
_MISSING = "-"


def confusion_matrix(
  labels: jax.Array,
  predictions: jax.Array,
  num_classes: int,
  weights: jax.Array | None = None,
  groups: jax.Array | None = None,
  num_groups: int = 1,
) -> jax.Array:
  """Counts (true class, predicted class) pairs, optionally per group of examples.

  Args:
    labels: int true classes in [0, num_classes), any shape.
    predictions: int predicted classes, same shape as `labels`.
    num_classes: C, static.
    weights: optional 0/1 float or bool mask, same shape as `labels`; 0 drops a
      (padded) example, whatever its label and prediction.
    groups: optional int group of each example in [0, num_groups) (e.g. its
      split), same shape as `labels`: one matrix per group from one count.
    num_groups: G, static; used with `groups`.

  Returns:
    int32 [C, C], or [G, C, C] with `groups`; rows are true classes, columns
    predicted classes.
  """
  # int32 before multiplying: uint8 labels would overflow labels * C.
  labels_N = jnp.ravel(labels).astype(jnp.int32)
  predictions_N = jnp.ravel(predictions).astype(jnp.int32)
  counts_N = jnp.ones_like(labels_N) if weights is None else jnp.ravel(weights).astype(jnp.int32)
  # A scatter-add on the flat cell index beats one_hot(labels)^T @ one_hot(preds)
  # on CPU: for B=2000, C=10 it takes 2.4 us per call inside a scan vs 45 us
  # (12 vs 55 us as a standalone jit, 4.5 vs 52 us under vmap), and it counts in
  # int32, so there is no float rounding. Masked examples add 0 to whatever cell
  # they index (out-of-range cells are dropped), so padding with any label is safe.
  cells_N = labels_N * num_classes + predictions_N
  if groups is None:
    counts = jax.ops.segment_sum(counts_N, cells_N, num_segments=num_classes**2)
    return counts.reshape(num_classes, num_classes)
  cells_N += jnp.ravel(groups).astype(jnp.int32) * num_classes**2
  counts = jax.ops.segment_sum(counts_N, cells_N, num_segments=num_groups * num_classes**2)
  return counts.reshape(num_groups, num_classes, num_classes)


def softmax(logits) -> np.ndarray:
  """Class probabilities of host logits [..., C], in float64 (for reports and predictions)."""
  logits = np.asarray(logits, np.float64)
  shifted = np.exp(logits - logits.max(-1, keepdims=True))
  return shifted / shifted.sum(-1, keepdims=True)


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """numerator / denominator, and 0 where denominator is 0 (sklearn zero_division=0)."""
  nonzero = denominator > 0
  # Dividing by 1 where masked keeps NaNs out of values and gradients.
  return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1), 0.0)


def from_confusion(cm: jax.Array) -> dict[str, jax.Array]:
  """Accuracy and per-class / macro precision, recall, F1 from a confusion matrix.

  Args:
    cm: [..., C, C] counts, rows true and columns predicted; leading axes batch.

  Returns:
    float32 "accuracy", "precision_macro", "recall_macro", "f1_macro" of shape
    [...]; float32 "precision", "recall", "f1" and int32 "support" of shape
    [..., C].
  """
  cm = jnp.asarray(cm)
  # Counts up to 2^24 are exact in float32, far above any split here.
  cm_f = cm.astype(jnp.float32)
  true_positives = jnp.diagonal(cm_f, axis1=-2, axis2=-1)
  support_int = jnp.sum(cm, axis=-1, dtype=jnp.int32)
  support = jnp.sum(cm_f, axis=-1)
  predicted = jnp.sum(cm_f, axis=-2)
  total = jnp.sum(support, axis=-1)
  precision = _safe_divide(true_positives, predicted)
  recall = _safe_divide(true_positives, support)
  # 2PR / (P + R) == 2TP / (2TP + FP + FN) == 2TP / (support + predicted) when
  # TP > 0, and both are 0 otherwise; the count form is what sklearn computes.
  f1 = _safe_divide(2.0 * true_positives, support + predicted)
  return {
    "accuracy": _safe_divide(jnp.sum(true_positives, axis=-1), total),
    "precision_macro": jnp.mean(precision, axis=-1),
    "recall_macro": jnp.mean(recall, axis=-1),
    "f1_macro": jnp.mean(f1, axis=-1),
    "precision": precision,
    "recall": recall,
    "f1": f1,
    "support": support_int,
  }


# One compiled program per shape, so `summarize` does not dispatch op by op.
_from_confusion_jit = jax.jit(from_confusion, compiler_options=platform.cheap_program_options())


def _to_python(value: np.ndarray) -> float | int | list:
  """A float32/int32 array as Python numbers.

  Floats take the shortest decimal that round-trips in float32, so logs show
  0.696 rather than float32's exact 0.6959999799728394.
  """
  value = np.asarray(value)
  if value.ndim:
    return [_to_python(item) for item in value]
  if np.issubdtype(value.dtype, np.integer):
    return int(value)
  # value[()] is an np.float32 scalar, whose shortest repr is float32's.
  return float(np.format_float_positional(value[()], unique=True))


def summarize(
  cm: jax.Array | np.ndarray,
  loss_sum: jax.Array | float | None = None,
  count: jax.Array | int | None = None,
) -> dict[str, Any]:
  """Host-side metrics for one split, as Python floats and lists.

  Args:
    cm: int [C, C] confusion matrix, on device or host.
    loss_sum: optional summed loss over the split's (unmasked) examples.
    count: number of examples in `loss_sum`; defaults to the total of `cm`.

  Returns:
    `from_confusion`'s keys (scalars as float, per-class as lists, "support" as
    ints), "confusion_matrix" as a nested list of ints, and "loss" =
    loss_sum / count when `loss_sum` is given.

  Raises:
    ValueError: `loss_sum` is given and the count is 0.
  """
  if not isinstance(cm, jax.Array):
    # Explicit, so that the call also works under jax.transfer_guard("disallow").
    cm = jax.device_put(cm)
  # One fetch for everything.
  metrics, cm_host, loss_sum, count = jax.device_get((_from_confusion_jit(cm), cm, loss_sum, count))
  # device_get sorts dict keys; keep the documented order for logs.
  summary: dict[str, Any] = {key: _to_python(metrics[key]) for key in SCALAR_KEYS + PER_CLASS_KEYS}
  summary["confusion_matrix"] = np.asarray(cm_host).tolist()
  if loss_sum is not None:
    count = int(np.sum(cm_host)) if count is None else float(count)
    if count == 0:
      raise ValueError("summarize: loss_sum given but count is 0; pass the number of examples")
    summary["loss"] = float(loss_sum) / count
  return summary


def flatten(metrics_by_split: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
  """{"val": {"accuracy": a}} -> {"val/accuracy": a}, scalars only.

  Per-class lists and the confusion matrix are skipped, so the result suits a
  metrics.jsonl line or a TensorBoard writer.
  """
  flat = {}
  for split, metrics in metrics_by_split.items():
    for key, value in metrics.items():
      if isinstance(value, bool | str) or np.ndim(value) != 0:
        continue
      if isinstance(value, Real | np.number | np.ndarray | jax.Array):
        flat[f"{split}/{key}"] = float(value)
  return flat


def ordered_splits(splits: Sequence[str]) -> list[str]:
  """train, val, test first (those present), then any others in the given order."""
  known = [split for split in SPLIT_ORDER if split in splits]
  return known + [split for split in splits if split not in SPLIT_ORDER]


def _format_number(value: Any) -> str:
  return _MISSING if value is None else f"{float(value):.{DECIMALS}f}"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], title: str | None) -> str:
  """Left-aligned first column, right-aligned numbers, a rule under the header."""
  widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
  widths[1:] = [max(width, _NUM_WIDTH) for width in widths[1:]]

  def line(cells: Sequence[str]) -> str:
    first = cells[0].ljust(widths[0])
    rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
    return _GAP.join([first, *rest]).rstrip()

  lines = [] if title is None else [title]
  lines += [line(header), _GAP.join("-" * width for width in widths)]
  lines += [line(row) for row in rows]
  return "\n".join(lines)


def format_table(
  metrics_by_split: Mapping[str, Mapping[str, Any]], title: str | None = None
) -> str:
  """The studies' table: one row per split, macro precision, recall and F1.

  Args:
    metrics_by_split: split name -> `summarize` output (or any mapping with the
      same scalar keys).
    title: optional first line, e.g. the study row ("B4 tuned CNN").

  Returns:
    Fixed-width plain text; a Loss column appears when any split has a loss.
  """
  splits = ordered_splits(list(metrics_by_split))
  columns = list(_TABLE_COLUMNS)
  if any(_LOSS_COLUMN[0] in metrics_by_split[split] for split in splits):
    columns.append(_LOSS_COLUMN)
  header = ["Split", *(name for _, name in columns)]
  rows = [
    [split, *(_format_number(metrics_by_split[split].get(key)) for key, _ in columns)]
    for split in splits
  ]
  table = render_table(header, rows, title)
  return table + "\nPrecision, Recall, F1: unweighted (macro) means over classes."


def format_per_class_table(metrics: Mapping[str, Any], class_names: Sequence[str]) -> str:
  """Per-class precision, recall, F1 and support for one split, then the macro row.

  Args:
    metrics: `summarize` or `from_confusion` output for one split.
    class_names: one name per class, in label order.

  Raises:
    ValueError: `class_names` does not have one name per class.
  """
  per_class = {key: np.asarray(metrics[key]) for key, _ in _PER_CLASS_COLUMNS}
  support = np.asarray(metrics["support"])
  if len(class_names) != len(support):
    raise ValueError(
      f"format_per_class_table: {len(class_names)} class_names for {len(support)} classes; "
      "pass one name per class"
    )
  header = ["Class", *(name for _, name in _PER_CLASS_COLUMNS), "Support"]
  rows = [
    [
      name,
      *(_format_number(per_class[key][i]) for key, _ in _PER_CLASS_COLUMNS),
      str(int(support[i])),
    ]
    for i, name in enumerate(class_names)
  ]
  rows.append(
    [
      "macro avg",
      *(_format_number(metrics[f"{key}_macro"]) for key, _ in _PER_CLASS_COLUMNS),
      str(int(support.sum())),
    ]
  )
  return render_table(header, rows, title=None)


# Statistics over members (seeds or sweep points) of one experiment.
STAT_KEYS = ("mean", "std", "min", "max")
# Per-split keys that `across_members` summarizes: scalars, the loss, then per-class lists.
_MEMBER_KEYS = SCALAR_KEYS + ("loss", "precision", "recall", "f1")


def across_members(member_metrics: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict:
  """Mean, std, min and max over members of {split: `summarize` output}.

  Args:
    member_metrics: one {split: metrics} mapping per member (seed).

  Returns:
    {split: {key: {"mean", "std", "min", "max"}}} for the scalar keys, "loss" and
    the per-class lists (whose statistics are lists). `std` is the sample
    standard deviation (ddof=1), the usual "mean +- std over seeds"; 0 for one
    member.
  """
  if not member_metrics:
    raise ValueError("across_members: no members given")
  summary = {}
  for split in member_metrics[0]:
    summary[split] = {}
    for key in _MEMBER_KEYS:
      if not all(key in member[split] for member in member_metrics):
        continue
      values = np.asarray([member[split][key] for member in member_metrics], np.float64)
      std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros_like(values[0])
      stats = (values.mean(axis=0), std, values.min(axis=0), values.max(axis=0))
      summary[split][key] = {
        name: (stat.tolist() if np.ndim(stat) else float(stat))
        for name, stat in zip(STAT_KEYS, stats, strict=True)
      }
  return summary


def format_stat(stats: Mapping[str, Any], decimals: int = 4, spread: bool = True) -> str:
  """ "0.8469 +- 0.0070" from `across_members` statistics of one scalar; "0.8469" without
  the spread (one member: a spread of one is no spread)."""
  mean = f"{stats['mean']:.{decimals}f}"
  return f"{mean} +- {stats['std']:.{decimals}f}" if spread else mean


def format_summary_table(
  summary: Mapping[str, Mapping[str, Any]],
  *,
  num_members: int,
  title: str | None = None,
  unit: str = "members",
  unit_one: str = "member",
) -> str:
  """The studies' table with mean +- std over members per cell, and accuracy's min and max;
  for a single member its values alone (a spread of one is no spread).

  `unit` names what the statistics run over: "members" (seeds), or "seed pairs" for an
  ensemble scored once per seed; `unit_one` is its singular.
  """
  splits = ordered_splits(list(summary))
  columns = list(_TABLE_COLUMNS)
  if any(_LOSS_COLUMN[0] in summary[split] for split in splits):
    columns.append(_LOSS_COLUMN)
  single = num_members == 1
  header = ["Split", *(name for _, name in columns), *([] if single else ["Accuracy min-max"])]
  rows = []
  for split in splits:
    stats = summary[split]
    cells = [
      format_stat(stats[key], spread=not single) if key in stats else _MISSING for key, _ in columns
    ]
    spread = [] if single else [f"{stats['accuracy']['min']:.4f}-{stats['accuracy']['max']:.4f}"]
    rows.append([split, *cells, *spread])
  table = render_table(header, rows, title)
  over = f"one {unit_one}" if single else f"mean +- sample std over {num_members} {unit}"
  return f"{table}\n{over}; Precision, Recall, F1: unweighted (macro) means over classes."


def format_value(value) -> str:
  """A config value for tables and names: 0.0003 -> "0.0003", (0.2, 0.4) -> "(0.2, 0.4)"."""
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, tuple | list):
    return "(" + ", ".join(map(format_value, value)) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def name_safe(value) -> str:
  """A config value as part of a file name: (0.2, 0.4) -> "0.2-0.4", 1e-05 -> "1e-05"."""
  return re.sub(r"[^A-Za-z0-9.]+", "-", format_value(value)).strip("-")


def format_members_table(members: Sequence[Mapping[str, Any]], swept: Sequence[str] = ()) -> str:
  """One row per member: seed, swept hyperparameters, epochs, best epoch, val and test accuracy."""
  header = ["Member", "Seed", *swept, "Epochs", "Best epoch", "Val acc", "Test acc"]
  rows = []
  for member in members:
    split_metrics = member["metrics"]
    rows.append(
      [
        str(member["member"]),
        str(member["seed"]),
        *(format_value(member["hyperparameters"][key]) for key in swept),
        str(member["epochs_trained"]) + (" (diverged)" if member.get("diverged") else ""),
        _MISSING if member["best_epoch"] is None else str(member["best_epoch"]),
        _format_number(split_metrics.get("val", {}).get("accuracy")),
        _format_number(split_metrics.get("test", {}).get("accuracy")),
      ]
    )
  return render_table(header, rows, title=None)
