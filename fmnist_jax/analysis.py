"""Error analysis: the tables and figures of study B's last slides, for any run or runs.

Every finished run writes into its workdir (`write_run_outputs`, called by `fit`):

  analysis.md          most confused class pairs; the validation-loss running minima
                       and the early-stopping patience they imply (study B, study 3)
  confusion.png        test confusion matrix (summed over members), rows normalised
  per_class_f1.png     test F1 per class, mean +- std over members
  misclassified.png    member 0's most confident test errors: true, predicted, probability
  learning_curves.png  loss and accuracy per epoch, train and validation

Several runs (and ensembles) side by side, as the deck compared them:

  python -m fmnist_jax.analysis runs/mlp_1hidden runs/mlp_2hidden runs/mlp_ensemble \\
    --out=runs/b_mlps

writes per_class_f1.png (one bar per run and class), per_class_f1.md and, for the runs
trained with a validation split, learning_curves.png (their validation curves) there.
Everything here is host-side NumPy and matplotlib over results already computed.
"""

import io
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fmnist_jax import checkpoint, data, ensemble, metrics

# Most confused pairs listed in analysis.md, and images in the misclassified gallery.
NUM_CONFUSED_PAIRS = 10
GALLERY_ROWS, GALLERY_COLUMNS = 4, 8
FIGURE_DPI = 110
# Runs of at most this many epochs get a dot per epoch and a tick per epoch on their curves.
SHORT_RUN_EPOCHS = 12
SHORT_NAMES = tuple(name.split("/")[0] for name in data.CLASS_NAMES)  # "T-shirt", "Trouser", ...


# ---------------------------------------------------------------------------
# Tables: pure functions of metrics and histories.
# ---------------------------------------------------------------------------


def most_confused_pairs(confusion_CxC, k: int = NUM_CONFUSED_PAIRS) -> list[dict]:
  """The k largest off-diagonal cells: true class, predicted class, count, share of the class."""
  confusion = np.asarray(confusion_CxC, np.int64)
  off_diagonal = confusion - np.diag(np.diag(confusion))
  order = np.argsort(-off_diagonal, axis=None, kind="stable")[:k]
  pairs = []
  for flat in order:
    true, predicted = np.unravel_index(flat, confusion.shape)
    count = int(off_diagonal[true, predicted])
    if count == 0:
      break
    pairs.append(
      {
        "true": data.CLASS_NAMES[true],
        "predicted": data.CLASS_NAMES[predicted],
        "count": count,
        "share_of_true_class": count / max(int(confusion[true].sum()), 1),
      }
    )
  return pairs


def running_minima(val_losses: Sequence[float]) -> list[dict]:
  """Each new minimum of the validation loss: its epoch (1-based), value and the wait before it.

  `waited` is the number of epochs since the previous minimum; Keras'
  EarlyStopping (min_delta 0) keeps a minimum that arrives `waited` epochs
  later only if patience >= waited.
  """
  rows, best, best_epoch = [], np.inf, 0
  for epoch, loss in enumerate(val_losses, start=1):
    if np.isfinite(loss) and loss < best:
      rows.append({"epoch": epoch, "val_loss": float(loss), "waited": epoch - best_epoch})
      best, best_epoch = loss, epoch
  return rows


def patience_needed(val_losses: Sequence[float]) -> int:
  """The smallest early-stopping patience that would still have reached the best epoch."""
  return max((row["waited"] for row in running_minima(val_losses)[1:]), default=0)


def read_history(workdir: str | pathlib.Path) -> dict[int, dict[str, list[float]]]:
  """member -> metric (e.g. "val/loss") -> value per epoch, from the workdir's metrics.jsonl."""
  history: dict[int, dict[str, list[float]]] = {}
  for record in checkpoint.read_metrics(workdir):
    if record.get("phase") == "pretrain":
      continue
    per_metric = history.setdefault(record["member"], {})
    for key, value in record.items():
      if key.startswith(("train/", "val/")) or key == "learning_rate":
        per_metric.setdefault(key, []).append(value)
  return history


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  return [
    "| " + " | ".join(header) + " |",
    "|" + "|".join("---" for _ in header) + "|",
    *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
  ]


def patience_markdown(history: Mapping[int, Mapping[str, list[float]]]) -> list[str]:
  """The deck's patience table: member 0's running minima, then every member's best and need."""
  val_histories = {m: h["val/loss"] for m, h in sorted(history.items()) if "val/loss" in h}
  if not val_histories:
    return ["No validation loss was recorded, so there is no patience analysis."]
  first_member, losses = next(iter(val_histories.items()))
  lines = [
    f"Running minimum of the validation loss (member {first_member}): each new minimum and "
    "the epochs it took to arrive.",
    "",
    *_markdown_table(
      ["epoch", "val loss", "epochs since the previous minimum"],
      [(r["epoch"], f"{r['val_loss']:.6f}", r["waited"]) for r in running_minima(losses)],
    ),
    "",
  ]
  needs = {m: patience_needed(h) for m, h in val_histories.items()}
  lines += _markdown_table(
    ["member", "epochs run", "best val loss", "best epoch", "patience needed"],
    [
      (
        m,
        len(h),
        f"{min(h):.6f}",
        int(np.argmin(h)) + 1,
        needs[m],
      )
      for m, h in val_histories.items()
    ],
  )
  lines += [
    "",
    f"Every new minimum arrived within {max(needs.values())} epochs of the previous one, so "
    f"patience >= {max(needs.values())} keeps the best epoch of every run above (the deck "
    "added a margin: needing 11 it chose 15 for the MLP, needing 6 it chose 10 for the CNN). "
    "A run that stopped early can only show minima before its stop: measure on a run "
    "without early stopping.",
  ]
  return lines


def run_markdown(name: str, results: Mapping[str, Any], history) -> str:
  """analysis.md of one run: confused pairs (summed over members) and the patience analysis."""
  confusion = _summed_test_confusion(results)
  pairs = most_confused_pairs(confusion)
  lines = [
    f"# Error analysis: {name}",
    "",
    f"{results['protocol']}. Test confusion summed over {len(results['members'])} member(s).",
    "",
    "## Most confused class pairs (test)",
    "",
    *_markdown_table(
      ["true class", "predicted as", "count", "share of the true class"],
      [(p["true"], p["predicted"], p["count"], f"{p['share_of_true_class']:.1%}") for p in pairs],
    ),
    "",
    "## Early-stopping patience",
    "",
    *patience_markdown(history),
  ]
  return "\n".join(lines) + "\n"


def _summed_test_confusion(results: Mapping[str, Any]) -> np.ndarray:
  return np.sum(
    [np.asarray(member["metrics"]["test"]["confusion_matrix"]) for member in results["members"]],
    axis=0,
  )


# ---------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------


def save_figure(fig, path: pathlib.Path):
  """Saves `fig` as a PNG whole or not at all (a kill mid-save leaves the old file), and
  closes it."""
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=FIGURE_DPI)
  _pyplot().close(fig)
  checkpoint.write_whole(pathlib.Path(path), png.getvalue())


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt

  return plt


def plot_confusion(confusion_CxC, path: pathlib.Path, title: str):
  """Heatmap of the row-normalised confusion matrix, counts written in every cell."""
  plt = _pyplot()
  confusion = np.asarray(confusion_CxC, np.float64)
  rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(7.5, 6.5))
  image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
  for (row, column), count in np.ndenumerate(confusion):
    if count:
      color = "white" if rates[row, column] > 0.5 else "black"
      ax.text(column, row, f"{int(count)}", ha="center", va="center", fontsize=7, color=color)
  ticks = np.arange(len(SHORT_NAMES))
  ax.set_xticks(ticks, SHORT_NAMES, rotation=45, ha="right")
  ax.set_yticks(ticks, SHORT_NAMES)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(title, fontsize=10)
  fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
  fig.tight_layout()
  save_figure(fig, path)


def plot_per_class_f1(per_model: Mapping[str, Mapping[str, Any]], path: pathlib.Path, title: str):
  """Grouped bars: per class, one bar per model (mean F1, std whiskers when several members).

  Args:
    per_model: model name -> {"mean": [C] F1, "std": [C] F1}.
  """
  plt = _pyplot()
  num_models = len(per_model)
  width = 0.8 / num_models
  fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(SHORT_NAMES)), 4.5))
  positions = np.arange(len(SHORT_NAMES))
  for index, (name, f1) in enumerate(per_model.items()):
    offsets = positions - 0.4 + width * (index + 0.5)
    std = np.asarray(f1.get("std", np.zeros(len(SHORT_NAMES))))
    ax.bar(offsets, f1["mean"], width, yerr=std if std.any() else None, capsize=2, label=name)
  lowest = min(float(np.min(f1["mean"])) for f1 in per_model.values())
  ax.set_ylim(max(0.0, lowest - 0.1), 1.0)
  ax.set_xticks(positions, SHORT_NAMES, rotation=30, ha="right")
  ax.set_ylabel("test F1")
  ax.set_title(title, fontsize=10)
  ax.grid(axis="y", alpha=0.3)
  # Below the class names, so no bar is hidden.
  ax.legend(
    fontsize="small", ncol=min(num_models, 4), loc="upper center", bbox_to_anchor=(0.5, -0.22)
  )
  fig.tight_layout()
  save_figure(fig, path)


def plot_misclassified(
  images_NxHxW, labels_N, probabilities_NxC, path: pathlib.Path, title: str
) -> int:
  """The most confident errors (largest wrong-class probability first) as an image grid.

  Returns the number of misclassified examples.
  """
  plt = _pyplot()
  probabilities = np.asarray(probabilities_NxC)
  predicted = probabilities.argmax(-1)
  wrong = np.flatnonzero(predicted != np.asarray(labels_N))
  confidence = probabilities[wrong, predicted[wrong]]
  shown = wrong[np.argsort(-confidence, kind="stable")][: GALLERY_ROWS * GALLERY_COLUMNS]
  fig, axes = plt.subplots(
    GALLERY_ROWS, GALLERY_COLUMNS, figsize=(1.6 * GALLERY_COLUMNS, 1.9 * GALLERY_ROWS)
  )
  for ax in axes.flat:
    ax.axis("off")
  for ax, index in zip(axes.flat, shown, strict=False):
    ax.imshow(images_NxHxW[index], cmap="gray_r", vmin=0, vmax=255)
    ax.set_title(
      f"#{index} {SHORT_NAMES[labels_N[index]]}\n-> {SHORT_NAMES[predicted[index]]} "
      f"{probabilities[index, predicted[index]]:.2f}",
      fontsize=7,
    )
  fig.suptitle(f"{title}: {len(wrong)} test errors, the most confident first", fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)
  return len(wrong)


def plot_learning_curves(
  history: Mapping[int, Mapping[str, list[float]]],
  path,
  title: str,
  smoothed_train_loss: bool = False,
):
  """Loss and accuracy per epoch, train and validation, and the learning rate; one thin
  line per member. `smoothed_train_loss`: the train loss is against label-smoothed
  targets (so it sits above the validation loss), and its legend says so."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), width_ratios=(1, 1, 0.7))
  colors = {"train": "tab:blue", "val": "tab:orange"}
  num_epochs = max((len(v) for curves in history.values() for v in curves.values()), default=1)
  # Dots on a short run's curves: a one-epoch run is a point, which a bare line never draws.
  marker = {"marker": "o", "markersize": 3} if num_epochs <= SHORT_RUN_EPOCHS else {}
  for _, curves in sorted(history.items()):
    rates = curves.get("learning_rate")
    if rates:
      axes[2].plot(np.arange(1, len(rates) + 1), rates, color="tab:green", alpha=0.7, **marker)
  axes[2].set_xlabel("epoch")
  axes[2].set_ylabel("learning rate (epoch start)")
  axes[2].grid(alpha=0.3)
  for ax, metric in zip(axes[:2], ("loss", "accuracy"), strict=True):
    for split, color in colors.items():
      for member, curves in sorted(history.items()):
        values = curves.get(f"{split}/{metric}")
        if values:
          epochs = np.arange(1, len(values) + 1)
          label = split if member == min(history) else None
          if label == "train" and metric == "loss" and smoothed_train_loss:
            label = "train (smoothed targets)"
          alpha = 0.8 if len(history) == 1 else 0.5
          ax.plot(epochs, values, color=color, alpha=alpha, label=label, **marker)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a history without this metric has no lines
      ax.legend(fontsize="small")
  if any("val/loss" in h for h in history.values()):
    for curves in history.values():
      losses = curves.get("val/loss", [])
      minima = running_minima(losses)
      axes[0].scatter(
        [r["epoch"] for r in minima],
        [r["val_loss"] for r in minima],
        s=36,
        facecolors="none",
        edgecolors="black",
        linewidths=0.8,
        zorder=3,
      )
  from matplotlib.ticker import MaxNLocator

  for ax in axes:  # whole epochs only, also for runs of a few epochs
    if num_epochs <= SHORT_RUN_EPOCHS:
      ax.set_xticks(np.arange(1, num_epochs + 1))
      ax.set_xlim(0.5, num_epochs + 0.5)
    else:
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  fig.suptitle(f"{title} (rings: new minima of the validation loss)", fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)


def write_run_outputs(
  workdir: pathlib.Path,
  name: str,
  results: Mapping[str, Any],
  test: data.Split,
  test_logits,
  smoothed_train_loss: bool = False,
) -> list[pathlib.Path]:
  """analysis.md and the four figures of one finished run; returns the files written.

  Args:
    test_logits: [M, N, C] every member's test logits (member 0 makes the gallery).
    smoothed_train_loss: the run trained on label-smoothed targets (the curves say so).
  """
  if not checkpoint.is_writer():
    return []
  workdir = pathlib.Path(workdir)
  history = read_history(workdir)
  outputs = {
    "analysis.md": workdir / "analysis.md",
    "confusion": workdir / "confusion.png",
    "f1": workdir / "per_class_f1.png",
    "gallery": workdir / "misclassified.png",
    "curves": workdir / "learning_curves.png",
  }
  checkpoint.write_whole(outputs["analysis.md"], run_markdown(name, results, history))
  members = len(results["members"])
  suffix = f"{members} members summed" if members > 1 else "1 member"
  plot_confusion(_summed_test_confusion(results), outputs["confusion"], f"{name}: test ({suffix})")
  plot_per_class_f1({name: results["summary"]["test"]["f1"]}, outputs["f1"], f"{name}: test F1")
  plot_misclassified(
    test.images, test.labels, metrics.softmax(np.asarray(test_logits)[0]), outputs["gallery"], name
  )
  plot_learning_curves(history, outputs["curves"], name, smoothed_train_loss)
  return list(outputs.values())


def write_ensemble_outputs(workdir: pathlib.Path, name: str, result: Mapping[str, Any]):
  """per_class_f1.png of an ensemble run (`runs.fit_ensemble`): its members and itself."""
  if not checkpoint.is_writer():
    return
  f1 = {member: summary["test"]["f1"] for member, summary in result["run_summaries"].items()}
  f1[f"{name} ({ensemble.STUDY_RULE})"] = result["ensemble_summary"]["test"]["f1"]
  plot_per_class_f1(
    f1, pathlib.Path(workdir) / "per_class_f1.png", f"{name}: test F1 per class (mean +- std)"
  )


# ---------------------------------------------------------------------------
# Several runs side by side.
# ---------------------------------------------------------------------------


def per_class_f1_of(workdir: pathlib.Path, label: str | None = None) -> tuple[str, dict]:
  """("label (N seeds)", {"mean", "std"} per-class test F1) of a run or an ensemble workdir;
  the label is the workdir's name unless given."""
  results_path = workdir / "results.json"
  if not results_path.exists():
    raise FileNotFoundError(
      f"{workdir} has no results.json; finish its run first (rerun its launch.py command)"
    )
  results = json.loads(results_path.read_text())
  if "ensemble_summary" in results:  # an ensemble workdir (fmnist_jax/runs.py)
    count, f1 = len(results["pairs"]), results["ensemble_summary"]["test"]["f1"]
  else:
    count, f1 = len(results["members"]), results["summary"]["test"]["f1"]
  return f"{label or workdir.name} ({count} seed{'s' if count > 1 else ''})", f1


def _run_labels(workdirs: Sequence[str | pathlib.Path]) -> list[str]:
  """Each workdir's name, or its path as given where two workdirs share a name."""
  names = [pathlib.Path(workdir).name for workdir in workdirs]
  return [
    str(workdir) if names.count(name) > 1 else name
    for workdir, name in zip(workdirs, names, strict=True)
  ]


def plot_compared_curves(histories: Mapping[str, Mapping[int, Mapping[str, list]]], path):
  """Validation loss and accuracy per epoch of several runs: a color per run, a thin line
  per member, each run's best validation loss ringed."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for index, (name, history) in enumerate(histories.items()):
    color = colors[index % len(colors)]
    for member, curves in sorted(history.items()):
      for ax, metric in zip(axes, ("val/loss", "val/accuracy"), strict=True):
        values = curves.get(metric, [])
        label = name if member == min(history) else None
        ax.plot(np.arange(1, len(values) + 1), values, color=color, alpha=0.7, label=label)
      losses = curves.get("val/loss", [])
      if losses:
        best = int(np.argmin(losses))
        axes[0].scatter(best + 1, losses[best], s=36, facecolors="none", edgecolors=color)
  for ax, key, metric in zip(
    axes, ("val/loss", "val/accuracy"), ("validation loss", "validation accuracy"), strict=True
  ):
    # The first epochs' values would squeeze the part worth comparing into a sliver: the
    # axis spans the epochs after the first tenth (the first epoch at least) of each run.
    settled = [
      value
      for history in histories.values()
      for curves in history.values()
      for value in curves.get(key, [])[max(1, len(curves.get(key, [])) // 10) :]
    ]
    if len(settled) > 1:
      low, high = min(settled), max(settled)
      pad = 0.1 * (high - low) or 0.01
      ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize="small")
  fig.suptitle("validation curves (rings: each member's best epoch)", fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)


def compare(
  workdirs: Sequence[str | pathlib.Path], out: str | pathlib.Path
) -> tuple[str, list[str]]:
  """per_class_f1.png and per_class_f1.md comparing the runs, and learning_curves.png with
  the validation curves of those that trained with a validation split (not ensembles);
  returns the markdown and the names of the files written."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  per_model = dict(
    per_class_f1_of(pathlib.Path(workdir), label)
    for workdir, label in zip(workdirs, _run_labels(workdirs), strict=True)
  )
  plot_per_class_f1(per_model, out / "per_class_f1.png", "test F1 per class (mean +- std)")
  histories = {
    name: read_history(workdir) for name, workdir in zip(per_model, workdirs, strict=True)
  }
  with_validation = {
    name: history
    for name, history in histories.items()
    if any("val/loss" in curves for curves in history.values())
  }
  written = ["per_class_f1.png", "per_class_f1.md"]
  if with_validation:
    plot_compared_curves(with_validation, out / "learning_curves.png")
    written.append("learning_curves.png")
  header = ["class", *per_model]
  rows = [
    (name, *(metrics.format_stat({k: v[i] for k, v in f1.items()}) for f1 in per_model.values()))
    for i, name in enumerate(data.CLASS_NAMES)
  ]
  text = "\n".join(
    ["Test F1 per class, mean +- std over seeds.", "", *_markdown_table(header, rows)]
  )
  checkpoint.write_whole(out / "per_class_f1.md", text + "\n")
  return text, written


def main(argv: list[str]) -> int:
  import argparse

  parser = argparse.ArgumentParser(prog="python -m fmnist_jax.analysis", description=__doc__)
  parser.add_argument("workdirs", nargs="+", help="finished run or ensemble directories")
  parser.add_argument("--out", required=True, help="directory for the comparison")
  args = parser.parse_args(argv)
  try:
    text, written = compare(args.workdirs, args.out)
  except (FileNotFoundError, KeyError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(text)
  print(f"\nWrote {', '.join(written)} in {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
