"""Hyperparameter sweeps declared in the config, run as few compiled programs as possible.

A sweep names config keys and their values:

  config.sweep.grid = "optimizer.learning_rate=0.1,0.01,0.001; optimizer.momentum=0,0.9"
  config.sweep.zip = "model.hidden_sizes=[(256,), (512,)]; model.dropout_rates=0.2,0.4"

Axes are separated by ';'. Values are comma-separated Python literals, or one
Python list for values that contain commas. `grid` takes every combination,
`zip` pairs its axes element by element; with both, every grid point is combined
with every zip point. Each point trains `config.num_seeds` seeds.

Points that differ only in optimizer hyperparameters (learning rate, momentum,
Adam's b1/b2/eps, weight decay: `train.OPTIMIZER_HYPERPARAMS`), dropout rates
(`models.DROPOUT_KEYS`) and label smoothing train together as members of one
vmapped program. Any other key (units, depth, activation, batch size, ...)
changes the compiled program, so each of its values runs as a separate program
in `<workdir>/<key>-<value>/`, driven by the same declaration. The sweep then
writes sweep.csv, sweep.md and sweep.png (the swept metric, mean +- std over
seeds, against the first swept key) and sweep_curves.png (the metric per epoch
for every point) into the workdir.
"""

import ast
import copy
import csv
import dataclasses
import difflib
import io
import itertools
import json
import math
import pathlib
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from fmnist_jax import analysis, checkpoint, config_checks, metrics, models, train
from fmnist_jax.errors import ConfigError

SWEEP_METRICS = config_checks.SWEEP_METRICS
# Table columns: (split/metric), in order.
_TABLE_METRICS = ("val/accuracy", "val/loss", "test/accuracy", "test/f1_macro")


def parse_axes(spec: str, field: str) -> dict[str, list]:
  """ "a.b=1,2; c=[(1,), (2,)]" -> {"a.b": [1, 2], "c": [(1,), (2,)]}."""
  axes = {}
  for part in filter(None, (p.strip() for p in spec.split(";"))):
    key, sep, values_text = (s.strip() for s in part.partition("="))
    if not sep or not key or not values_text:
      raise ConfigError(
        f"config.sweep.{field}={spec!r}: cannot read {part!r}; write KEY=V1,V2,... and "
        f"separate keys with ';' (e.g. 'optimizer.learning_rate=0.1,0.01; "
        f"optimizer.momentum=0,0.9')"
      )
    if key in axes:
      raise ConfigError(f"config.sweep.{field}: {key} appears twice; list its values once")
    if values_text.startswith("["):
      try:
        values = ast.literal_eval(values_text)
      except (ValueError, SyntaxError):
        raise ConfigError(
          f"config.sweep.{field}: the values of {key}, {values_text}, are not a Python list"
        ) from None
    else:
      values = [_literal(text.strip()) for text in values_text.split(",")]
    if not values:
      raise ConfigError(f"config.sweep.{field}: {key} has no values")
    axes[key] = list(values)
  return axes


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare word: relu, adam, tail


def points(config: ConfigDict) -> list[dict[str, Any]]:
  """Every sweep point as {dotted key: value}; [{}] when the config declares no sweep."""
  grid = parse_axes(config.sweep.grid, "grid")
  zipped = parse_axes(config.sweep.zip, "zip")
  for key in set(grid) & set(zipped):
    raise ConfigError(f"config.sweep: {key} is in both grid and zip; put it in one of them")
  lengths = {key: len(values) for key, values in zipped.items()}
  if len(set(lengths.values())) > 1:
    raise ConfigError(
      f"config.sweep.zip pairs its axes element by element, but their lengths differ "
      f"({', '.join(f'{k}: {n}' for k, n in lengths.items())}); give each as many values, "
      f"or use sweep.grid for every combination"
    )
  grid_points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
  zip_points = [
    dict(zip(zipped, combo, strict=True)) for combo in zip(*zipped.values(), strict=True)
  ] or [{}]
  return [{**g, **z} for g in grid_points for z in zip_points]


def swept_keys(config: ConfigDict) -> list[str]:
  return list(parse_axes(config.sweep.grid, "grid")) + list(parse_axes(config.sweep.zip, "zip"))


def apply(config: ConfigDict, overrides: dict[str, Any]) -> ConfigDict:
  """A copy of `config` with dotted-key `overrides`; unknown keys and wrong types are named."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    if key.startswith("sweep.") or key == "num_seeds":
      raise ConfigError(f"config.sweep: {key} cannot be swept; set it directly")
    *parents, leaf = key.split(".")
    target = config
    for depth, name in enumerate([*parents, leaf]):
      if not isinstance(target, ConfigDict) or name not in target:
        known = list(target.keys()) if isinstance(target, ConfigDict) else []
        close = difflib.get_close_matches(name, known, n=1)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        raise ConfigError(f"config.sweep: unknown config key {key}{hint}")
      if depth < len(parents):
        target = target[name]
    try:
      target[leaf] = value
    except (TypeError, ValueError) as error:
      raise ConfigError(f"config.sweep: {key}={value!r} does not fit that key: {error}") from None
  return config


@dataclasses.dataclass(frozen=True)
class Program:
  """One compiled program of a sweep: its config, workdir name and members."""

  name: str  # sub-workdir; "" when the whole sweep is one program
  config: ConfigDict
  members: train.Members
  member_points: tuple[dict[str, Any], ...]  # each member's sweep point


def _slug(overrides: dict[str, Any]) -> str:
  """{"model.hidden_sizes": (300, 100), "model.activation": "tanh"}
  -> "hidden_sizes-300-100_activation-tanh"."""
  parts = []
  for key, value in overrides.items():
    parts.append(f"{key.rpartition('.')[2]}-{metrics.name_safe(value)}")
  return "_".join(parts) or "default"


def programs(config: ConfigDict) -> list[Program]:
  """Groups the sweep's points into programs; checks every point's config first."""
  config_checks.check(config)
  groups: dict[str, tuple[dict, list[dict]]] = {}
  for point in points(config):
    config_checks.check(apply(config, point))  # an impossible value fails before any training
    structural = {k: v for k, v in point.items() if not train.is_vmappable(config, k)}
    group_key = json.dumps(structural, sort_keys=True, default=str)
    groups.setdefault(group_key, (structural, []))[1].append(point)
  result = []
  for structural, group_points in groups.values():
    program_config = apply(config, structural)
    # A dropout layer, SGD's weight decay or label smoothing is compiled in where any member
    # uses it (each member's own value, possibly 0, is in its state): the program takes the
    # largest.
    gating = sorted({k for point in group_points for k in point if k in _GATING_KEYS})
    program_config = apply(
      program_config,
      {key: _largest([point[key] for point in group_points]) for key in gating},
    )
    optimizer_names = train.optimizer_hyperparams(program_config.optimizer)
    # Vmapped keys outside optax's state: dropout rates, label smoothing.
    swept_state_keys = sorted(
      {
        k
        for p in group_points
        for k in p
        if not k.startswith("optimizer.") and train.is_vmappable(config, k)
      }
    )
    seeds, member_points, hyperparams = [], [], {}
    for point in group_points:
      point_config = apply(program_config, point)
      point_hyperparams = {
        f"optimizer.{name}": float(point_config.optimizer[name]) for name in optimizer_names
      }
      for key in swept_state_keys:
        point_hyperparams[key] = _value(point_config, key)
      for index in range(config.num_seeds):
        seeds.append(config.seed + index)
        member_points.append(point)
        for name, value in point_hyperparams.items():
          hyperparams.setdefault(name, []).append(value)
    result.append(
      Program(
        name=_slug(structural) if len(groups) > 1 else "",
        config=program_config,
        members=train.Members(
          seeds=tuple(seeds), hyperparams={k: tuple(v) for k, v in hyperparams.items()}
        ),
        member_points=tuple(member_points),
      )
    )
  return result


def run(config: ConfigDict, workdir: str | pathlib.Path, *, show_progress: bool = True) -> dict:
  """Trains every program of the sweep (resuming each) and writes its table and plots."""
  workdir = pathlib.Path(workdir)
  plan = programs(config)
  rows_by_point: dict[str, dict] = {}
  histories = {}
  for program in plan:
    program_dir = workdir / program.name if program.name else workdir
    if show_progress and len(plan) > 1:
      print(f"sweep program {program.name} ({len(program.members)} members)", flush=True)
    results = train.fit(
      program.config, program_dir, show_progress=show_progress, members=program.members
    )
    history = analysis.read_history(program_dir)
    for member, point in zip(results["members"], program.member_points, strict=True):
      key = json.dumps(point, sort_keys=True, default=str)
      row = rows_by_point.setdefault(key, {"point": point, "members": []})
      row["members"].append(member)
      histories.setdefault(key, []).append(history.get(member["member"], {}))
  keys = swept_keys(config)
  rows = [_summarize_row(row, keys) for row in rows_by_point.values()]
  sweep_results = {
    "swept": keys,
    "metric": config.sweep.metric,
    "num_seeds": config.num_seeds,
    "programs": [program.name for program in plan],
    "rows": rows,
    "best": _best(rows, config.sweep.metric),
  }
  write_outputs(workdir, sweep_results, histories)
  return sweep_results


def _summarize_row(row: dict, keys: list[str]) -> dict:
  members = row["members"]
  summary = metrics.across_members([member["metrics"] for member in members])
  stats = {}
  for name in SWEEP_METRICS:
    split, key = name.split("/")
    if split in summary and key in summary[split]:
      stats[name] = summary[split][key]
  return {
    "point": {key: row["point"].get(key) for key in keys},
    "seeds": [member["seed"] for member in members],
    "epochs_trained": [member["epochs_trained"] for member in members],
    "diverged": sum(member["diverged"] for member in members),
    "stats": stats,
  }


def _best(rows: list[dict], metric: str) -> dict | None:
  scored = [
    row for row in rows if metric in row["stats"] and math.isfinite(row["stats"][metric]["mean"])
  ]
  if not scored:
    return None
  sign = 1 if metric.endswith("loss") else -1
  return min(scored, key=lambda row: sign * row["stats"][metric]["mean"])["point"]


# Keys whose non-zero value compiles something in (a dropout layer, SGD's weight decay,
# label smoothing).
_GATING_KEYS = (
  "optimizer.weight_decay",
  "label_smoothing",
  *(f"model.{key}" for key in models.DROPOUT_KEYS),
)


def _value(config: ConfigDict, key: str):
  for name in key.split("."):
    config = config[name]
  return config


def _largest(values: list) -> float | tuple[float, ...]:
  """The largest value; per layer for dropout rates (a scalar applies to every layer)."""
  if not any(isinstance(value, tuple | list) for value in values):
    return max(values)
  lengths = {len(value) for value in values if isinstance(value, tuple | list)}
  if len(lengths) > 1:
    raise ConfigError(
      f"config.sweep: dropout rates {values} give different numbers of layers; "
      f"give every value as many rates (or one scalar)"
    )
  (length,) = lengths
  per_layer = [v if isinstance(v, tuple | list) else (v,) * length for v in values]
  return tuple(max(rates) for rates in zip(*per_layer, strict=True))


def write_outputs(workdir: pathlib.Path, sweep_results: dict, histories: dict):
  """sweep.json, sweep.csv, sweep.md, sweep.png and sweep_curves.png in `workdir`."""
  if not checkpoint.is_writer():
    return
  workdir.mkdir(parents=True, exist_ok=True)
  keys, rows = sweep_results["swept"], sweep_results["rows"]
  checkpoint.write_whole(
    workdir / "sweep.json", json.dumps(sweep_results, indent=2, default=str) + "\n"
  )
  table = io.StringIO(newline="")
  writer = csv.writer(table)
  header = [*keys, "num_seeds", "epochs_mean", "diverged"]
  header += [f"{m}_{stat}" for m in SWEEP_METRICS for stat in metrics.STAT_KEYS]
  writer.writerow(header)
  for row in rows:
    values = [metrics.format_value(row["point"][key]) for key in keys]
    values += [len(row["seeds"]), float(np.mean(row["epochs_trained"])), row["diverged"]]
    values += [
      row["stats"].get(m, {}).get(stat, "") for m in SWEEP_METRICS for stat in metrics.STAT_KEYS
    ]
    writer.writerow(values)
  checkpoint.write_whole(workdir / "sweep.csv", table.getvalue())
  checkpoint.write_whole(workdir / "sweep.md", format_markdown(sweep_results) + "\n")
  _plot(workdir, sweep_results, histories)


def format_markdown(sweep_results: dict) -> str:
  """The sweep as a markdown table: swept values, then mean +- std (min-max) over seeds."""
  keys, rows, best = sweep_results["swept"], sweep_results["rows"], sweep_results["best"]
  header = [*keys, *_TABLE_METRICS, "epochs"]
  one_seed = sweep_results["num_seeds"] == 1
  statistics = (
    "one seed"
    if one_seed
    else (f"mean +- std over {sweep_results['num_seeds']} seeds (min-max in brackets)")
  )
  lines = [
    f"Sweep of {', '.join(keys)}: {statistics}; best by {sweep_results['metric']} in bold.",
    "",
    "| " + " | ".join(header) + " |",
    "|" + "|".join("---" for _ in header) + "|",
  ]
  for row in rows:
    cells = [metrics.format_value(row["point"][key]) for key in keys]
    for name in _TABLE_METRICS:
      stats = row["stats"].get(name)
      if stats is None:
        cells.append("-")
      elif one_seed:
        cells.append(metrics.format_stat(stats, spread=False))
      else:
        cells.append(f"{metrics.format_stat(stats)} ({stats['min']:.4f}-{stats['max']:.4f})")
    epochs = row["epochs_trained"]
    cells.append(f"{min(epochs)}-{max(epochs)}" if min(epochs) != max(epochs) else str(epochs[0]))
    if row["diverged"]:
      cells[-1] += f" ({row['diverged']} diverged)"
    if row["point"] == best:
      cells = [f"**{cell}**" for cell in cells]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _plot(workdir: pathlib.Path, sweep_results: dict, histories: dict):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys, rows, metric = sweep_results["swept"], sweep_results["rows"], sweep_results["metric"]
  x_key, other_keys = keys[0], keys[1:]
  fig, ax = plt.subplots(figsize=(6, 4))
  series: dict[str, list[dict]] = {}
  for row in rows:
    label = ", ".join(f"{k}={metrics.format_value(row['point'][k])}" for k in other_keys)
    series.setdefault(label, []).append(row)
  numeric = all(
    isinstance(row["point"][x_key], int | float) and not isinstance(row["point"][x_key], bool)
    for row in rows
  )
  for label, series_rows in series.items():
    series_rows = [row for row in series_rows if metric in row["stats"]]
    if numeric:
      series_rows.sort(key=lambda row: row["point"][x_key])
    xs = [
      row["point"][x_key] if numeric else metrics.format_value(row["point"][x_key])
      for row in series_rows
    ]
    means = [row["stats"][metric]["mean"] for row in series_rows]
    stds = [row["stats"][metric]["std"] for row in series_rows]
    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label or None)
  if numeric:
    values = [row["point"][x_key] for row in rows]
    if min(values) > 0 and max(values) / min(values) >= 10:
      ax.set_xscale("log")
  ax.set_xlabel(x_key)
  num_seeds = sweep_results["num_seeds"]
  ax.set_ylabel(
    f"{metric} (one seed)" if num_seeds == 1 else f"{metric} (mean \u00b1 std, {num_seeds} seeds)"
  )
  if any(series):
    ax.legend(fontsize="small")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  analysis.save_figure(fig, workdir / "sweep.png")

  curve_metric = metric if not metric.startswith("test/") else "val/" + metric.split("/")[1]
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, member_histories in histories.items():
    curves = [h[curve_metric] for h in member_histories if curve_metric in h]
    if not curves:
      continue
    length = min(len(c) for c in curves)
    mean = np.mean([c[:length] for c in curves], axis=0)
    point = json.loads(key)
    label = ", ".join(f"{k.rpartition('.')[2]}={metrics.format_value(v)}" for k, v in point.items())
    ax.plot(np.arange(1, length + 1), mean, label=label)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel("epoch")
  ax.set_ylabel(
    f"{curve_metric} (one seed)"
    if num_seeds == 1
    else f"{curve_metric} (mean of {num_seeds} seeds, to the first one's stop)"
  )
  ax.legend(fontsize="x-small")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  analysis.save_figure(fig, workdir / "sweep_curves.png")
