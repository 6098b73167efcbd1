"""One page for every run in a directory: results against the studies, curves, errors.

  python -m fmnist_jax.report runs/                 # writes runs/report/report.md and .html
  python -m fmnist_jax.report runs/ --out=/tmp/r    # elsewhere

Every workdir under the directory (a run, an ensemble, a sweep) is read from its
config.json and results.json (or the ensemble.json of `python -m fmnist_jax.runs
--out=...`); nothing is recomputed. Each run is matched to the
config file it came from (configs/*.py, ignoring seed and num_seeds; any other
difference is named, e.g. `cnn (model.batch_norm=False)`), and the runs of one
config are pooled across workdirs, so `runs/cnn` and `runs/cnn_seed1` give one row
with mean +- std over both seeds, next to the study's reported number
(`REPORTED` in the config file). Ensembles pool the same way: every ensemble of
the same member configs is one row, so B6's seed pairs from `runs/cnn_ensemble`
and `runs/cnn_ensemble_seed1` give one mean +- std. A run without results.json yet
(training, interrupted or crashed) is listed apart with its progress from
metrics.jsonl. The Markdown links the runs' figures; the HTML embeds them (one
self-contained file to mail or attach).
"""

import argparse
import base64
import datetime
import html
import importlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fmnist_jax import checkpoint, cli

# Keys that do not make two runs different experiments (seeds pool; the rest is plumbing).
POOLED_KEYS = ("seed", "num_seeds", "checkpoint", *checkpoint.OUTPUT_KEYS)
FIGURES = (
  ("learning_curves.png", "Learning curves"),
  ("confusion.png", "Test confusion matrix"),
  ("per_class_f1.png", "Per-class F1"),
  ("misclassified.png", "Most confident test errors"),
)
SPLITS = ("train", "val", "test")


@dataclass
class Experiment:
  """The runs of one config (with the same overrides), pooled over seeds."""

  label: str
  config_name: str | None
  reported: dict | None
  workdirs: list[pathlib.Path] = field(default_factory=list)
  members: dict[int, dict] = field(default_factory=dict)  # by seed; the first workdir wins
  num_params: int | None = None
  protocol: str = ""
  train_seconds: float = 0.0
  timed_by_wall: bool = False  # a run made before train_seconds was recorded: its wall time


def known_configs() -> dict[str, tuple[dict, dict | None]]:
  """{name: (flattened config.json of configs/<name>.py, its REPORTED or None)}."""
  configs = {}
  for name in cli.available_configs():
    try:
      module = importlib.import_module(f"configs.{name}")
      config = module.get_config()
    except Exception:  # configs that need an argument (the study sweeps) are not rows
      continue
    configs[name] = (json.loads(checkpoint.config_json(config)), getattr(module, "REPORTED", None))
  return configs


def _flat_value(config: dict, dotted: str):
  for part in dotted.split("."):
    if not isinstance(config, dict) or part not in config:
      return None
    config = config[part]
  return config


def identify(saved: dict, configs: dict) -> tuple[str | None, list[str]]:
  """The config file a run came from and its overrides: (name, ['key=value', ...])."""
  best = None
  for name, (candidate, _) in configs.items():
    differences = checkpoint.config_differences(saved, candidate, ignore=POOLED_KEYS)
    if best is None or len(differences) < len(best[1]):
      best = (name, differences)
  if best is None or len(best[1]) > 6:  # too far from every config to be a variant of one
    return None, []
  name, differences = best
  return name, [f"{key}={_flat_value(saved, key)!r}" for key in differences]


def _label(name: str | None, overrides: list[str], fallback: str) -> str:
  """How a table names an experiment: its config file and any overrides."""
  return (name or fallback) + (f" ({', '.join(overrides)})" if overrides else "")


def find_workdirs(root: pathlib.Path) -> tuple[list, list, list, list]:
  """(runs, ensembles, sweeps, unfinished) under `root`: directories with results.json,
  ensemble.json or sweep.json, and runs with a config.json but no results.json yet
  (training, interrupted or crashed). A sweep's programs are part of the sweep."""
  runs, ensembles, sweeps, unfinished = [], [], [], []
  sweep_dirs = sorted(p.parent for p in root.rglob("sweep.json"))

  def in_sweep(workdir: pathlib.Path) -> bool:
    return any(s == workdir or s in workdir.parents for s in sweep_dirs)

  for results_path in sorted(root.rglob("results.json")):
    workdir = results_path.parent
    if in_sweep(workdir) or not (workdir / "config.json").exists():
      continue
    results = json.loads(results_path.read_text())
    (ensembles if "pairs" in results else runs).append((workdir, results))
  for ensemble_path in sorted(root.rglob("ensemble.json")):
    if not in_sweep(ensemble_path.parent):
      ensembles.append((ensemble_path.parent, json.loads(ensemble_path.read_text())))
  ensembles.sort(key=lambda item: item[0])
  for workdir in sweep_dirs:
    sweeps.append((workdir, json.loads((workdir / "sweep.json").read_text())))
  for config_path in sorted(root.rglob("config.json")):
    workdir = config_path.parent
    if (workdir / "results.json").exists() or in_sweep(workdir):
      continue
    saved = json.loads(config_path.read_text())
    if not saved.get("ensemble", {}).get("members"):  # an ensemble's members are runs
      unfinished.append((workdir, saved, checkpoint.read_metrics(workdir)))
  return runs, ensembles, sweeps, unfinished


def _shown(workdir: pathlib.Path, root: pathlib.Path) -> str:
  """A workdir as the report names it: its path under `root` (runs/b6/seed0/cnn and
  runs/b6/seed1/cnn are told apart), or its name when it is `root` itself."""
  relative = workdir.relative_to(root)
  return str(relative) if relative.parts else workdir.name


def pool_runs(runs, configs) -> list[Experiment]:
  experiments: dict[str, Experiment] = {}
  for workdir, results in runs:
    saved = json.loads((workdir / "config.json").read_text())
    name, overrides = identify(saved, configs)
    label = _label(name, overrides, workdir.name)
    reported = configs[name][1] if name and not overrides else None
    experiment = experiments.setdefault(label, Experiment(label, name, reported))
    experiment.workdirs.append(workdir)
    for member in results["members"]:
      if member.get("diverged"):
        continue
      experiment.members.setdefault(member["seed"], member)
    experiment.num_params = results.get("num_params")
    experiment.protocol = results.get("protocol", "")
    experiment.train_seconds += _train_seconds(results)
    experiment.timed_by_wall |= "train_seconds" not in results
  order = {name: index for index, name in enumerate(configs)}
  return sorted(
    experiments.values(),
    key=lambda e: (
      e.reported is None,
      (e.reported or {}).get("row", ""),
      order.get(e.config_name, 99),
      e.label,
    ),
  )


def mean_std(values: Sequence[float]) -> str:
  values = np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{values.mean():.4f} +- {values.std(ddof=1):.4f}"


def _min_max(values: Sequence[float]) -> str:
  return f"{min(values):.4f}-{max(values):.4f}" if len(values) > 1 else ""


def results_rows(experiments: list[Experiment], root: pathlib.Path) -> list[list[str]]:
  rows = []
  for e in experiments:
    members = list(e.members.values())
    if not members:
      continue
    accuracy = {
      split: [m["metrics"][split]["accuracy"] for m in members if split in m["metrics"]]
      for split in SPLITS
    }
    test_f1 = [m["metrics"]["test"]["f1_macro"] for m in members]
    reported = (e.reported or {}).get("test_accuracy")
    mean_test = float(np.mean(accuracy["test"]))
    rows.append(
      [
        (e.reported or {}).get("row", ""),
        e.label,
        ", ".join(str(seed) for seed in sorted(e.members)),
        " / ".join(mean_std(accuracy[s]) for s in SPLITS if accuracy[s]),
        f"**{mean_std(accuracy['test'])}**",
        _min_max(accuracy["test"]),
        mean_std(test_f1),
        "" if reported is None else f"{reported:.4f}",
        "" if reported is None else f"{mean_test - reported:+.4f}",
        duration(e.train_seconds) + (" (wall)" if e.timed_by_wall else ""),
        ", ".join(_shown(w, root) for w in e.workdirs),
      ]
    )
  return rows


def duration(seconds: float) -> str:
  """586.2 -> "9 min 46 s"; 7380 -> "2 h 03 min"."""
  seconds = round(seconds)
  if seconds < 60:
    return f"{seconds} s"
  if seconds < 3600:
    return f"{seconds // 60} min {seconds % 60:02d} s"
  return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _train_seconds(results: dict) -> float:
  """A run's training time; its process's wall time for runs older than that record."""
  return results.get("train_seconds", results.get("wall_seconds", 0.0))


def _sweep_train_seconds(workdir: pathlib.Path) -> float:
  """Every program's training time in a sweep's workdir."""
  return sum(_train_seconds(json.loads(path.read_text())) for path in workdir.rglob("results.json"))


RESULTS_HEADER = [
  "Row",
  "Config",
  "Seeds",
  "Accuracy train / val / test",
  "Test accuracy",
  "Test min-max",
  "Test F1 (macro)",
  "Reported",
  "Difference",
  "Training time",
  "Workdirs",
]


@dataclass
class EnsembleGroup:
  """Every scored ensemble of the same member configs, pooled (B6's seed pairs: one row)."""

  members: tuple[str, ...]  # the member runs' labels, e.g. ("cnn", "resnet")
  reported: dict | None
  workdirs: list[pathlib.Path] = field(default_factory=list)
  scores: dict[tuple, dict] = field(default_factory=dict)  # by member names; per split metrics


def _member_label(path: str, ensemble_dir: pathlib.Path, root: pathlib.Path, configs) -> str:
  """The label of the run an ensemble read from `path` (as written, maybe relative to the
  directory the ensemble ran in)."""
  name = pathlib.PurePath(path).name
  for candidate in (pathlib.Path(path), ensemble_dir.parent / name, root / name):
    if (candidate / "config.json").exists():
      saved = json.loads((candidate / "config.json").read_text())
      return _label(*identify(saved, configs), fallback=name)
  return name


def pool_ensembles(ensembles, configs, root: pathlib.Path) -> list[EnsembleGroup]:
  """Ensembles grouped by their member configs; each distinct set of member runs counts once
  (an ensemble config scores one per seed pair; `python -m fmnist_jax.runs` one in all)."""
  by_members = {
    tuple(candidate.get("ensemble", {}).get("members", ())): reported
    for candidate, reported in configs.values()
    if reported and candidate.get("ensemble", {}).get("members")
  }
  groups: dict[tuple, EnsembleGroup] = {}
  for workdir, result in ensembles:
    members = tuple(_member_label(w, workdir, root, configs) for w in result["workdirs"])
    group = groups.setdefault(members, EnsembleGroup(members, by_members.get(members)))
    group.workdirs.append(workdir)
    if "pairs" in result:
      scored = [(pair["members"], pair["rules"]) for pair in result["pairs"]]
    else:
      scored = [(result["member_names"], result["rules"])]
    for names, rules in scored:
      group.scores.setdefault(tuple(names), rules["softmax_sum"])
  return sorted(
    groups.values(),
    key=lambda g: (g.reported is None, (g.reported or {}).get("row", ""), g.members),
  )


def ensemble_rows(groups: list[EnsembleGroup], root: pathlib.Path) -> list[list[str]]:
  rows = []
  for group in groups:
    scores = list(group.scores.values())
    accuracy = {s: [score[s]["accuracy"] for score in scores if s in score] for s in SPLITS}
    reported = (group.reported or {}).get("test_accuracy")
    mean_test = float(np.mean(accuracy["test"]))
    rows.append(
      [
        (group.reported or {}).get("row", ""),
        " + ".join(group.members),
        str(len(scores)),
        " / ".join(mean_std(accuracy[s]) for s in SPLITS if accuracy[s]),
        f"**{mean_std(accuracy['test'])}**",
        mean_std([score["test"]["f1_macro"] for score in scores]),
        "" if reported is None else f"{reported:.4f}",
        "" if reported is None else f"{mean_test - reported:+.4f}",
        ", ".join(_shown(w, root) for w in group.workdirs),
      ]
    )
  return rows


ENSEMBLE_HEADER = [
  "Row",
  "Members",
  "Ensembles",
  "Accuracy train / val / test",
  "Test accuracy",
  "Test F1",
  "Reported",
  "Difference",
  "Workdirs",
]


def sweep_rows(sweeps, root: pathlib.Path) -> list[list[str]]:
  rows = []
  for workdir, result in sweeps:
    best = result.get("best") or {}
    point = best.get("point") or best.get("label") or best
    rows.append(
      [
        _shown(workdir, root),
        ", ".join(result.get("swept", [])),
        str(len(result.get("rows", []))),
        result.get("metric", ""),
        json.dumps(point) if not isinstance(point, str) else point,
      ]
    )
  return rows


SWEEP_HEADER = ["Sweep", "Swept keys", "Points", "Metric", "Best point"]


UNFINISHED_HEADER = ["Workdir", "Config", "Epochs done", "Val accuracy, last / best", "Train time"]


def unfinished_rows(unfinished, configs, root: pathlib.Path) -> list[list[str]]:
  """One row per run still training or stopped before its end (rerun its command to resume):
  epochs done of num_epochs, the members' mean validation accuracy at the last epoch and
  the best of any epoch, from metrics.jsonl."""
  rows = []
  for workdir, saved, all_records in unfinished:
    records = [r for r in all_records if "phase" not in r]  # not pre-training's epochs
    name, overrides = identify(saved, configs)
    done = max((r["epoch"] for r in records), default=0)
    val = {}
    for record in records:
      if "val/accuracy" in record:
        val.setdefault(record["epoch"], []).append(record["val/accuracy"])
    mean_val = {epoch: float(np.mean(values)) for epoch, values in val.items()}
    accuracy = f"{mean_val[max(mean_val)]:.4f} / {max(mean_val.values()):.4f}" if mean_val else "-"
    rows.append(
      [
        _shown(workdir, root),
        _label(name, overrides, "?"),
        f"{done} of {saved.get('num_epochs', '?')}",
        accuracy,
        duration(checkpoint.train_seconds(all_records)),
      ]
    )
  return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  def cell(text: str, tag: str) -> str:
    text = html.escape(text)
    if text.startswith("**") and text.endswith("**"):
      text = f"<b>{text[2:-2]}</b>"
    return f"<{tag}>{text}</{tag}>"

  head = "".join(cell(h, "th") for h in header)
  body = "".join("<tr>" + "".join(cell(c, "td") for c in row) + "</tr>" for row in rows)
  return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures(workdir: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
  return [(workdir / name, title) for name, title in FIGURES if (workdir / name).exists()]


def _image_tag(path: pathlib.Path, title: str) -> str:
  data = base64.b64encode(path.read_bytes()).decode("ascii")
  return (
    f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
    f"<figcaption>{html.escape(title)}</figcaption></figure>"
  )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f2f4f7; } tr:nth-child(even) td { background: #fafbfc; }
details { margin: 0.5em 0; border: 1px solid #e3e3e3; border-radius: 4px; padding: 0.4em 0.8em; }
summary { cursor: pointer; font-weight: 600; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 620px; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; }
.note { color: #555; font-size: 0.9em; }
"""


def build(root: pathlib.Path, out: pathlib.Path) -> tuple[str, str]:
  """(markdown, html) of the report on every workdir under `root`; links relative to `out`."""
  configs = known_configs()
  runs, ensembles, sweeps, unfinished = find_workdirs(root)
  experiments = pool_runs(runs, configs)
  results = results_rows(experiments, root)
  ensemble_table = ensemble_rows(pool_ensembles(ensembles, configs, root), root)
  sweep_table = sweep_rows(sweeps, root)
  unfinished_table = unfinished_rows(unfinished, configs, root)
  stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  intro = (
    f"{len(runs)} runs, {len(ensembles)} ensembles and {len(sweeps)} sweeps under `{root}`"
    + (f" ({len(unfinished)} more not finished)" if unfinished else "")
    + "; "
    f"generated {stamp} by `python -m fmnist_jax.report`. Each row pools the runs of one "
    f"config over their seeds (mean +- sample std); `Reported` is the study's test accuracy."
  )
  run_seconds = sum(e.train_seconds for e in experiments)
  sweep_seconds = sum(_sweep_train_seconds(workdir) for workdir, _ in sweeps)
  total = (
    f'Training time (every epoch of every run, summed from results.json; "(wall)": an '
    f"older run's whole process): runs "
    f"{duration(run_seconds)}, sweeps {duration(sweep_seconds)}, together "
    f"{duration(run_seconds + sweep_seconds)}. Ensembles reuse their members' runs."
  )
  md = [f"# fmnist_jax report: {root}", "", intro, "", "## Results", ""]
  md.append(markdown_table(RESULTS_HEADER, results) if results else "No finished runs.")
  md += ["", total]
  doc = [
    f"<h1>fmnist_jax report: {html.escape(str(root))}</h1>",
    f"<p class='note'>{html.escape(intro)}</p>",
    "<h2>Results</h2>",
    html_table(RESULTS_HEADER, results) if results else "<p>No finished runs.</p>",
    f"<p class='note'>{html.escape(total)}</p>",
  ]
  if ensemble_table:
    md += [
      "",
      "## Ensembles (argmax of summed softmax)",
      "",
      markdown_table(ENSEMBLE_HEADER, ensemble_table),
    ]
    doc += [
      "<h2>Ensembles (argmax of summed softmax)</h2>",
      html_table(ENSEMBLE_HEADER, ensemble_table),
    ]
  if sweep_table:
    md += ["", "## Sweeps", "", markdown_table(SWEEP_HEADER, sweep_table)]
    doc += ["<h2>Sweeps</h2>", html_table(SWEEP_HEADER, sweep_table)]
  if unfinished_table:
    title = "Not finished (training, or stopped: rerun the run's command to resume)"
    md += ["", f"## {title}", "", markdown_table(UNFINISHED_HEADER, unfinished_table)]
    doc += [f"<h2>{html.escape(title)}</h2>", html_table(UNFINISHED_HEADER, unfinished_table)]
  md += ["", "## Runs", ""]
  doc.append("<h2>Runs</h2>")
  for e in experiments:
    for workdir in e.workdirs:
      title = f"{_shown(workdir, root)}: {e.label}"
      members = [m for m in e.members.values()]
      detail = f"{e.num_params:,} params; {e.protocol}" if e.num_params else e.protocol
      md += [f"### {title}", "", detail, ""]
      md += [f"![{t}]({_relative(p, out)})" for p, t in _figures(workdir)] + [""]
      images = "".join(_image_tag(p, t) for p, t in _figures(workdir))
      seeds = ", ".join(str(m["seed"]) for m in members)
      doc.append(
        f"<details><summary>{html.escape(title)}</summary>"
        f"<p class='note'>{html.escape(detail)}; seeds {seeds}</p>{images}</details>"
      )
  for workdir, _ in ensembles + sweeps:
    figures = [
      (workdir / n, t)
      for n, t in (
        ("per_class_f1.png", "Per-class F1"),
        ("sweep.png", "Sweep"),
        ("sweep_curves.png", "Sweep curves"),
      )
    ]
    figures = [(p, t) for p, t in figures if p.exists()]
    if figures:
      shown = _shown(workdir, root)
      md += [f"### {shown}", ""] + [f"![{t}]({_relative(p, out)})" for p, t in figures] + [""]
      doc.append(
        f"<details><summary>{html.escape(shown)}</summary>"
        + "".join(_image_tag(p, t) for p, t in figures)
        + "</details>"
      )
  page = (
    "<!doctype html><html><head><meta charset='utf-8'>"
    f"<title>fmnist_jax report: {html.escape(str(root))}</title><style>{STYLE}</style></head>"
    f"<body>{''.join(doc)}</body></html>"
  )
  return "\n".join(md) + "\n", page


def _relative(path: pathlib.Path, out: pathlib.Path) -> str:
  return os.path.relpath(path.absolute(), out.absolute())


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m fmnist_jax.report", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("root", help="a directory of workdirs, e.g. runs/")
  parser.add_argument("--out", help="where report.md and report.html go (default ROOT/report)")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  root = pathlib.Path(args.root)
  if not root.is_dir():
    print(
      f"error: {root} is not a directory; pass the directory holding your runs", file=sys.stderr
    )
    return cli.EXIT_USER_ERROR
  out = pathlib.Path(args.out) if args.out else root / "report"
  out.mkdir(parents=True, exist_ok=True)
  markdown, page = build(root, out)
  checkpoint.write_whole(out / "report.md", markdown)
  checkpoint.write_whole(out / "report.html", page)
  print(f"Wrote {out}/report.md and report.html in {time.perf_counter() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
