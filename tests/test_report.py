"""The report: runs pooled over seeds beside the studies' numbers; a self-contained HTML page."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from fmnist_jax import checkpoint, cli, report

SPLITS = ("train", "val", "test")


def write_run(workdir, config, accuracies: dict[int, float], *, figure: bytes | None = None):
  """A finished run's config.json and results.json: one member per seed with these test
  accuracies (train and val fixed)."""
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(checkpoint.config_json(config))
  members = [
    {
      "seed": seed,
      "hyperparameters": {},
      "metrics": {
        split: {"accuracy": value, "f1_macro": value - 0.001}
        for split, value in zip(SPLITS, (0.97, 0.93, accuracy), strict=True)
      },
    }
    for seed, accuracy in accuracies.items()
  ]
  results = {"members": members, "num_params": 1234, "protocol": "p", "train_seconds": 1.0}
  (workdir / "results.json").write_text(json.dumps(results))
  if figure:
    (workdir / "confusion.png").write_bytes(figure)


@pytest.fixture
def runs_dir(tmp_path):
  root = tmp_path / "runs"
  cnn = cli.load_config("cnn")
  write_run(root / "cnn", cnn, {0: 0.9291}, figure=b"\x89PNG fake")
  cnn.seed = 1
  write_run(root / "cnn_seed1", cnn, {1: 0.9281})
  cnn.model.batch_norm = False
  write_run(root / "cnn_nobn", cnn, {0: 0.9257})
  mlp = cli.load_config("mlp_1hidden")
  mlp.num_seeds = 3
  write_run(root / "mlp_1hidden", mlp, {0: 0.8960, 1: 0.8970, 2: 0.8983})
  return root


def row_of(markdown: str, label: str) -> list[str]:
  for line in markdown.splitlines():
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    if len(cells) > 1 and cells[1] == label:
      return cells
  raise AssertionError(f"no row {label!r} in\n{markdown}")


def test_runs_of_one_config_pool_over_seeds_beside_the_reported_number(runs_dir, tmp_path):
  markdown, _ = report.build(runs_dir, tmp_path / "out")
  cells = row_of(markdown, "cnn")
  assert cells[0] == "B4 3-conv CNN" and cells[2] == "0, 1"
  expected = np.array([0.9291, 0.9281])
  assert cells[4] == f"**{expected.mean():.4f} +- {expected.std(ddof=1):.4f}**"
  assert cells[7] == "0.9268" and cells[8] == f"{expected.mean() - 0.9268:+.4f}"
  assert cells[9] == "2 s" and cells[10] == "cnn, cnn_seed1"  # 1 s per workdir
  assert "): runs 4 s, sweeps 0 s, together 4 s." in markdown
  # An override is a different experiment, named by its difference, with no reported number.
  cells = row_of(markdown, "cnn (model.batch_norm=False)")
  assert cells[4] == "**0.9257**" and cells[7] == ""
  cells = row_of(markdown, "mlp_1hidden")
  assert cells[0].startswith("B1") and cells[5] == "0.8960-0.8983"
  assert "![Test confusion matrix](../runs/cnn/confusion.png)" in markdown


def test_runs_of_one_name_in_different_directories_are_named_by_their_paths(tmp_path):
  root = tmp_path / "runs"
  resnet = cli.load_config("resnet")
  write_run(root / "b6" / "seed0" / "resnet", resnet, {0: 0.9345}, figure=b"\x89PNG fake")
  resnet.seed, resnet.num_seeds = 1, 2
  write_run(root / "b6" / "seed1" / "resnet", resnet, {1: 0.9324, 2: 0.9318}, figure=b"\x89PNG")
  markdown, _ = report.build(root, tmp_path / "out")
  cells = row_of(markdown, "resnet")
  assert cells[2] == "0, 1, 2" and cells[10] == "b6/seed0/resnet, b6/seed1/resnet"
  assert "### b6/seed0/resnet: resnet" in markdown and "### b6/seed1/resnet: resnet" in markdown
  # A report on one run's own workdir names it by its name.
  markdown, _ = report.build(root / "b6" / "seed0" / "resnet", tmp_path / "out")
  assert row_of(markdown, "resnet")[10] == "resnet" and "### resnet: resnet" in markdown


def test_unfinished_runs_are_listed_with_their_progress(runs_dir, tmp_path):
  cnn = cli.load_config("cnn")
  cnn.num_seeds = 2
  running = runs_dir / "cnn_running"
  running.mkdir()
  (running / "config.json").write_text(checkpoint.config_json(cnn))
  records = [{"epoch": 1, "phase": "pretrain", "seconds": 50.0}]  # not a training epoch
  for epoch, accuracies in ((1, (0.80, 0.82)), (2, (0.86, 0.85)), (3, (0.84, 0.85))):
    records += [
      {"epoch": epoch, "member": m, "val/accuracy": a, "seconds": 30.0}
      for m, a in enumerate(accuracies)
    ]
  (running / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  # An ensemble's own directory is not a run: its members are.
  ensemble = runs_dir / "cnn_ensemble"
  ensemble.mkdir()
  (ensemble / "config.json").write_text(checkpoint.config_json(cli.load_config("cnn_ensemble")))
  markdown, page = report.build(runs_dir, tmp_path / "out")
  assert "(1 more not finished)" in markdown
  cells = row_of(markdown, "cnn")  # the finished runs' row is unchanged
  assert cells[10] == "cnn, cnn_seed1"
  rows = [line for line in markdown.splitlines() if line.startswith("| cnn_running |")]
  # Epoch 3's mean 0.845 is the last; epoch 2's 0.855 the best; 3 epochs of 30 s.
  assert rows == ["| cnn_running | cnn | 3 of 100 | 0.8450 / 0.8550 | 1 min 30 s |"]
  assert "cnn_ensemble |" not in markdown.split("## Not finished")[1]
  assert "<td>cnn_running</td>" in page


def scores(test_accuracy: float) -> dict:
  """An ensemble's softmax-sum metrics on each split (train and val fixed)."""
  accuracies = zip(SPLITS, (0.98, 0.94, test_accuracy), strict=True)
  return {"softmax_sum": {s: {"accuracy": a, "f1_macro": a - 0.001} for s, a in accuracies}}


def test_ensembles_of_the_same_member_configs_pool_into_one_row(runs_dir, tmp_path):
  write_run(runs_dir / "resnet", cli.load_config("resnet"), {0: 0.9321})
  # B6 by its config: one pair, member paths as written from the directory it ran in.
  ensemble_config = cli.load_config("cnn_ensemble")
  (runs_dir / "cnn_ensemble").mkdir()
  (runs_dir / "cnn_ensemble" / "config.json").write_text(checkpoint.config_json(ensemble_config))
  pair = {"members": ["cnn/seed0", "resnet/seed0"], "rules": scores(0.9345)}
  results = {"workdirs": ["elsewhere/cnn", "elsewhere/resnet"], "pairs": [pair]}
  (runs_dir / "cnn_ensemble" / "results.json").write_text(json.dumps(results))

  def write_ensemble(name, workdirs, member_names, test_accuracy):
    (runs_dir / name).mkdir()
    result = {"workdirs": [str(runs_dir / w) for w in workdirs], "member_names": member_names}
    (runs_dir / name / "ensemble.json").write_text(
      json.dumps(result | {"rules": scores(test_accuracy)})
    )

  # The next pair by `python -m fmnist_jax.runs ... --out=`, the first pair again (counted
  # once), and an ensemble with a different member config (its own row).
  write_ensemble(
    "cnn_ensemble_seed1", ["cnn_seed1", "resnet"], ["cnn_seed1/seed1", "resnet/seed0"], 0.9371
  )
  write_ensemble("again", ["cnn", "resnet"], ["cnn/seed0", "resnet/seed0"], 0.9345)
  write_ensemble(
    "cnn_ensemble_nobn", ["cnn_nobn", "resnet"], ["cnn_nobn/seed0", "resnet/seed0"], 0.9341
  )

  markdown, _ = report.build(runs_dir, tmp_path / "out")
  cells = row_of(markdown, "cnn + resnet")
  expected = np.array([0.9345, 0.9371])
  assert cells[0] == "B6 B4 + B5 ensemble" and cells[2] == "2"
  assert cells[4] == f"**{expected.mean():.4f} +- {expected.std(ddof=1):.4f}**"
  assert cells[6] == "0.9344" and cells[7] == f"{expected.mean() - 0.9344:+.4f}"
  assert cells[8] == "again, cnn_ensemble, cnn_ensemble_seed1"
  cells = row_of(markdown, "cnn (model.batch_norm=False) + resnet")
  assert cells[0] == "" and cells[2] == "1" and cells[4] == "**0.9341**" and cells[6] == ""


def test_a_single_program_sweep_is_a_sweep_not_a_run(runs_dir, tmp_path):
  sweep_dir = runs_dir / "study_one_hidden_dropout"
  mlp = cli.load_config("mlp_1hidden")
  mlp.optimizer.learning_rate = 1e-3
  write_run(sweep_dir, mlp, {0: 0.8873})
  (sweep_dir / "sweep.json").write_text(
    json.dumps({"swept": ["optimizer.learning_rate"], "rows": []})
  )
  markdown, _ = report.build(runs_dir, tmp_path / "out")
  assert "(optimizer.learning_rate=0.001)" not in markdown
  assert "| study_one_hidden_dropout | optimizer.learning_rate | 0 |" in markdown


def test_durations_read_as_a_person_would_write_them():
  assert [report.duration(s) for s in (4.4, 586.2, 3599.6, 7380)] == [
    "4 s",
    "9 min 46 s",
    "1 h 00 min",
    "2 h 03 min",
  ]


def test_the_html_is_one_self_contained_file(runs_dir, tmp_path):
  _, page = report.build(runs_dir, tmp_path / "out")
  assert page.startswith("<!doctype html>") and "<table>" in page
  sources = re.findall(r'(?:src|href)="([^"]*)"', page)
  assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
  assert "<b>0.9286 +- 0.0007</b>" in page


def test_the_command_writes_both_files(runs_dir, tmp_path):
  assert report.main([str(runs_dir), f"--out={tmp_path / 'out'}"]) == 0
  assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "report.html").is_file()
  assert report.main([str(tmp_path / "nothing")]) == 2


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium")
def test_a_headless_browser_renders_the_tables(runs_dir, tmp_path):
  report.main([str(runs_dir), f"--out={tmp_path}"])
  dom = subprocess.run(
    ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"]
    + [(tmp_path / "report.html").as_uri()],
    capture_output=True,
    text=True,
    timeout=120,
  ).stdout
  assert "B4 3-conv CNN" in dom and dom.count("<tr>") == 4  # header and 3 experiments
