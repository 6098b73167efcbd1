"""fmnist_jax against the frameworks a user would pick instead, side by side in one run.

  python -m benchmarks.compare --peer_python=.venv-bench/bin/python
  python -m benchmarks.compare --models=cnn --peers=fmnist_jax,pytorch --repeats=5

Every implementation trains the same model with the same recipe (read from the
config file: widths, optimizer, batch size) on the same examples for the same
epochs, each in a process of its own, one at a time, each process after waiting
for a quiet machine (`benchmarks/quiet.py`: no other busy process, and both
cores at their quiet speed). The repeats are interleaved, each starting one
implementation later than the one before (fmnist_jax, peer 1, peer 2; then
peer 1, peer 2, fmnist_jax; ...), so a slow minute at the start of a repeat
does not always fall on the same implementation. Repeat r runs every
implementation with seed r, so the timings are medians over seeds and the test
accuracy is a mean over them. Every implementation trains on the same first
`num_examples` training images, whole batches only; a batch-norm model's table
says when its runs were too short for the accuracy to mean anything
(BATCH_NORM_SETTLED_STEPS).
Reported per model and implementation: steady training images/s (median over
repeats of each run's median epoch after the first; min-max), the first epoch's
seconds (compilation included), the whole process's wall, test accuracy after
those epochs (mean over the seeds; min-max), the ratio to fmnist_jax and the fraction of the
roofline (training FLOPs per image from XLA's cost analysis x images/s, over
`--peak_gflops`). Writes compare.md, compare.json and compare.png to `--out`
after every run, so an interrupted comparison keeps the runs it finished.

Each implementation runs in the environment compare was started in: fmnist_jax
with the XLA flags it sets itself (`fmnist_jax.platform`), Keras on JAX with
XLA's defaults, as its users run it. `--peers=...,keras_jax_xla_flags` adds
Keras on JAX given fmnist_jax's flags: what the flags alone are worth to a peer.

The peers (benchmarks/peers/) need PyTorch, Keras 3 and TensorFlow, kept out of
fmnist_jax's environment (see benchmarks/requirements-peers.txt and the README).
"""

import os

# Every implementation runs in the user's environment as it was: fmnist_jax's own
# program sets its XLA flags itself, and a peer runs as its users run it, with
# XLA's defaults (Keras on JAX), unless in GIVEN_FMNIST_JAX_FLAGS.
_USER_ENV = os.environ.copy()

from fmnist_jax import platform

platform.configure_xla()

import functools
import json

# This process only traces the models (FLOPs) and must leave the accelerator's
# memory to the implementations it runs.
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks import quiet

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Examples per epoch and epochs per run: each run is a few steady epochs after the first.
# The CNN trains 2 full epochs (936 steps) so that its test accuracy is settled and
# comparable (see BATCH_NORM_SETTLED_STEPS). The ResNet keeps a short timing workload
# (2 full epochs would take ~1 hour more with 5 repeats), and its table says so.
WORKLOADS = {
  "mlp_baseline": {"num_examples": 50_000, "epochs": 4},
  "cnn": {"num_examples": 60_000, "epochs": 2},
  "resnet": {"num_examples": 6_400, "epochs": 3},
}
# Batch norm's moving averages (Keras' momentum 0.99) still carry the first steps'
# statistics, when the weights move fastest, for several hundred steps: after 300
# steps the CNN's test accuracy spread 0.19-0.53 over seeds and frameworks, after 936
# 0.867-0.889 (means 0.876-0.883; benchmarks/README.md, 2026-12-06). Below this many
# steps a batch-norm model's accuracy column measures that lag, not the model, and the
# table says so.
BATCH_NORM_SETTLED_STEPS = 900
# Implementation -> (module, variant); fmnist_jax runs in this interpreter, peers in --peer_python.
IMPLEMENTATIONS = {
  "fmnist_jax": ("fmnist_jax_peer", ""),
  "pytorch": ("torch_peer", ""),
  "pytorch_compile": ("torch_peer", "compile"),
  "keras_jax": ("keras_peer", "jax"),
  "keras_tensorflow": ("keras_peer", "tensorflow"),
  "keras_jax_xla_flags": ("keras_peer", "jax"),
}
# Given fmnist_jax's XLA flags (platform.CPU_FLAGS): what the flags alone give a JAX
# peer. Not default peers: no Keras user runs with them.
GIVEN_FMNIST_JAX_FLAGS = frozenset({"keras_jax_xla_flags"})
DEFAULT_IMPLEMENTATIONS = [name for name in IMPLEMENTATIONS if name not in GIVEN_FMNIST_JAX_FLAGS]

_MODELS = flags.DEFINE_list("models", list(WORKLOADS), "Configs to compare (configs/<name>.py).")
_PEERS = flags.DEFINE_list(
  "peers",
  DEFAULT_IMPLEMENTATIONS,
  f"Implementations, fmnist_jax first; of {', '.join(IMPLEMENTATIONS)}.",
)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved repeats of every implementation.")
_PEER_PYTHON = flags.DEFINE_string(
  "peer_python", str(ROOT / ".venv-bench" / "bin" / "python"), "Python with the peers installed."
)
_PEAK_GFLOPS = flags.DEFINE_float(
  "peak_gflops",
  0.0,
  "The machine's fp32 peak for the roofline; 0 measures it (a large float32 matmul).",
)
_NUM_EXAMPLES = flags.DEFINE_integer(
  "num_examples", 0, "Examples per epoch for every model (0: WORKLOADS'; a GPU wants 60000)."
)
_EPOCHS = flags.DEFINE_integer("epochs", 0, "Epochs per run for every model (0: WORKLOADS').")
_OUT = flags.DEFINE_string("out", "benchmarks/results", "Directory for compare.md/json/png.")
_WAIT_QUIET = flags.DEFINE_bool(
  "wait_quiet", True, f"Before each run, wait for a quiet machine ({quiet.WAIT_QUIET})."
)


def spec_for(name: str) -> tuple[dict, float]:
  """The recipe every implementation follows, and fmnist_jax's training FLOPs per image."""
  import jax
  from flax import nnx

  from fmnist_jax import cli, models

  config = cli.load_config(name)
  model = models.build(
    config.model, conv_impl=config.conv_impl, pool_order=config.pool_order, rngs=nnx.Rngs(0)
  )
  model.eval()  # FLOPs of the layers; dropout's masks are not counted
  graphdef, state = nnx.split(model)

  def loss(state, images):
    return nnx.merge(graphdef, state)(images).sum()

  images = jax.ShapeDtypeStruct((config.batch_size, 28, 28), jax.numpy.float32)
  cost = jax.jit(jax.grad(loss)).lower(state, images).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  workload = dict(WORKLOADS[name])
  if _NUM_EXAMPLES.value:
    workload["num_examples"] = _NUM_EXAMPLES.value
  if _EPOCHS.value:
    workload["epochs"] = _EPOCHS.value
  # Whole batches only, so every framework trains the same steps on the same images:
  # fmnist_jax drops a last partial batch, Keras and PyTorch train it.
  workload["num_examples"] -= workload["num_examples"] % config.batch_size
  spec = {
    **workload,
    "model": config.model.to_dict(),
    "optimizer": config.optimizer.to_dict(),
    "batch_size": config.batch_size,
    "num_params": models.count_params(model),
    "config": json.loads(config.to_json_best_effort()),
  }
  return spec, cost["flops"] / config.batch_size


def training_steps(spec: dict) -> int:
  """Optimizer steps of one run (spec_for makes an epoch whole batches)."""
  return spec["num_examples"] // spec["batch_size"] * spec["epochs"]


def accuracy_settled(spec: dict) -> bool:
  """Whether the run's test accuracy measures the model (see BATCH_NORM_SETTLED_STEPS)."""
  has_batch_norm = spec["model"].get("batch_norm", False)
  return not has_batch_norm or training_steps(spec) >= BATCH_NORM_SETTLED_STEPS


def table_spec(spec: dict) -> dict:
  """What the table and compare.json say of a model's spec."""
  shown = {key: spec[key] for key in ("num_params", "batch_size", "num_examples", "epochs")}
  return shown | {"steps": training_steps(spec), "accuracy_settled": accuracy_settled(spec)}


@functools.cache
def _all_training_data():
  """All 60,000 training images (no validation split: the peers do not validate)."""
  from configs import base
  from fmnist_jax import data

  config = base.get_config().data
  config.validation_size = 0
  return data.load(config)


def write_data(name: str, spec: dict, directory: pathlib.Path) -> pathlib.Path:
  """The first `num_examples` training images and the test set, as npz.

  Every implementation trains on exactly these, so images/s is `num_examples`
  over an epoch's seconds.
  """
  dataset = _all_training_data()
  count = spec["num_examples"]
  if not spec["batch_size"] <= count <= len(dataset.train):
    raise app.UsageError(
      f"--num_examples={_NUM_EXAMPLES.value}: {name} needs one batch of "
      f"{spec['batch_size']} to {len(dataset.train):,} (the training set) images per epoch; "
      "0 gives each model its default."
    )
  path = directory / f"data_{count}.npz"
  if not path.exists():
    np.savez(
      path,
      train_images=dataset.train.images[:count],
      train_labels=dataset.train.labels[:count],
      test_images=dataset.test.images,
      test_labels=dataset.test.labels,
    )
  return path


def child_env(implementation: str) -> dict[str, str]:
  """The user's environment; XLA_FLAGS gain fmnist_jax's for GIVEN_FMNIST_JAX_FLAGS."""
  env = dict(_USER_ENV)
  if implementation in GIVEN_FMNIST_JAX_FLAGS:
    env["XLA_FLAGS"] = platform.with_xla_flags(env.get("XLA_FLAGS", ""))
  return env


def label(implementation: str, framework: str) -> str:
  """A table row's name: the framework as its program reports it."""
  given = implementation in GIVEN_FMNIST_JAX_FLAGS
  return framework + (" + fmnist_jax's XLA flags" if given else "")


def repeat_order(implementations: list[str], repeat: int) -> list[str]:
  """The order repeat `repeat` (from 0) runs the implementations in: rotated by `repeat`.

  A slow stretch of the machine that meets one slot of the repeats then meets a
  different implementation each repeat instead of always the same one.
  """
  shift = repeat % len(implementations)
  return implementations[shift:] + implementations[:shift]


def run_one(implementation: str, spec_path, data_path, seed: int) -> dict:
  module, variant = IMPLEMENTATIONS[implementation]
  python = sys.executable if implementation == "fmnist_jax" else _PEER_PYTHON.value
  quiet.wait_for_quiet(_WAIT_QUIET.value)
  command = [
    python,
    "-m",
    f"benchmarks.peers.{module}",
    f"--spec={spec_path}",
    f"--data={data_path}",
    f"--seed={seed}",
  ]
  if variant:
    command.append(f"--variant={variant}")
  start = time.perf_counter()
  env = child_env(implementation)
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
  wall = time.perf_counter() - start
  if done.returncode != 0:
    return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
  result = json.loads(done.stdout.strip().splitlines()[-1])
  return {**result, "process_wall_s": wall}


def _accelerator() -> str:
  import jax

  device = jax.devices()[0]
  return "CPU" if device.platform == "cpu" else device.device_kind


def measure_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
  """The best float32 matmul throughput jax reaches here: the roofline's peak.

  A size x size matmul is large enough for the library kernel to run at its peak
  (2-core AVX-512 CPU: 345-410 GFLOP/s, 2026-12-01).
  """
  import jax
  import jax.numpy as jnp

  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()  # compile
  return 2 * size**3 / quiet.best_seconds(lambda: matmul(a).block_until_ready(), repeats) / 1e9


def summarize(runs: list[dict], flops_per_image: float, peak_gflops: float) -> dict:
  ok = [run for run in runs if "error" not in run]
  if not ok:
    return {"error": runs[-1]["error"]}
  speeds = [run["images_per_s"] for run in ok]
  median = statistics.median(speeds)
  return {
    "framework": ok[0]["framework"],
    "images_per_s": median,
    "images_per_s_min": min(speeds),
    "images_per_s_max": max(speeds),
    "first_epoch_s": statistics.median(run["first_epoch_s"] for run in ok),
    "process_wall_s": statistics.median(run["process_wall_s"] for run in ok),
    "test_accuracy": statistics.mean(run["test_accuracy"] for run in ok),
    "test_accuracy_min": min(run["test_accuracy"] for run in ok),
    "test_accuracy_max": max(run["test_accuracy"] for run in ok),
    "roofline": median * flops_per_image / (peak_gflops * 1e9),
    "runs": len(ok),
  }


def markdown(table: dict, meta: dict) -> str:
  lines = [
    f"Steady training images/s (median of {meta['repeats']} interleaved runs, min-max), "
    f"compile excluded; first epoch includes compilation; test accuracy: mean over the "
    f"runs' seeds 0-{meta['repeats'] - 1} (min-max). {meta['machine']}.",
  ]
  if meta["runs_done"] < meta["runs_planned"]:
    lines.append(
      f"\n**Partial:** {meta['runs_done']} of the {meta['runs_planned']} runs finished "
      f"(still running, or interrupted); the medians are over those."
    )
  for name, rows in table.items():
    spec = meta["specs"][name]
    lines += [
      "",
      f"**{name}** ({spec['num_params']:,} params, batch {spec['batch_size']}, "
      f"{spec['num_examples']:,} examples x {spec['epochs']} epochs = {spec['steps']:,} steps, "
      f"{meta['flops'][name] / 1e6:.2f} MFLOP per training image)",
      "",
      "| Implementation | images/s | min-max | vs fmnist_jax | roofline | first epoch s "
      "| process wall s | test acc |",
      "|---|---|---|---|---|---|---|---|",
    ]
    reference = rows.get("fmnist_jax", {}).get("images_per_s")
    for implementation, row in rows.items():
      if "error" in row:
        lines.append(f"| {implementation} | failed: {row['error'][:80]} | | | | | | |")
        continue
      ratio = f"{row['images_per_s'] / reference:.2f}x" if reference else ""
      row_name = label(implementation, row["framework"])
      lines.append(
        f"| {row_name} | {row['images_per_s']:,.0f} | {row['images_per_s_min']:,.0f}-"
        f"{row['images_per_s_max']:,.0f} | {ratio} | {row['roofline']:.0%} | "
        f"{row['first_epoch_s']:.1f} | {row['process_wall_s']:.1f} | {row['test_accuracy']:.4f} "
        f"({row['test_accuracy_min']:.4f}-{row['test_accuracy_max']:.4f}) |"
      )
    if not spec["accuracy_settled"]:
      lines += [
        "",
        f"Test accuracy after {spec['steps']:,} steps measures batch norm's lag, not the "
        f"model: its moving averages still carry the first steps' statistics (settled from "
        f"~{BATCH_NORM_SETTLED_STEPS} steps). Compare it with `--models={name} "
        f"--num_examples=60000 --epochs=2`.",
      ]
  return "\n".join(lines) + "\n"


def plot(table: dict):
  """A bar chart of images/s per model (min-max as error bars), fmnist_jax in blue."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  fig, axes = plt.subplots(1, len(table), figsize=(4.5 * len(table), 3.6), squeeze=False)
  for ax, (name, rows) in zip(axes[0], table.items(), strict=True):
    ok = {k: v for k, v in rows.items() if "error" not in v}
    values = [v["images_per_s"] for v in ok.values()]
    errors = np.array(
      [
        [v["images_per_s"] - v["images_per_s_min"], v["images_per_s_max"] - v["images_per_s"]]
        for v in ok.values()
      ]
    ).T
    colors = ["tab:blue" if k == "fmnist_jax" else "tab:gray" for k in ok]
    ax.barh(list(ok), values, xerr=errors if len(values) else None, color=colors)
    ax.invert_yaxis()
    ax.set_title(name)
    ax.set_xlabel("training images/s")
    # The MLP's six-digit rates: thousands, so the tick labels do not run together.
    ax.xaxis.set_major_formatter(
      matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1e3:g}k" if x >= 1e4 else f"{x:g}")
    )
  fig.tight_layout()
  return fig


def _runs_done(runs: dict) -> int:
  return sum(len(impl_runs) for by_impl in runs.values() for impl_runs in by_impl.values())


def write_outputs(out: pathlib.Path, runs: dict, meta: dict, peak_gflops: float) -> str:
  """compare.json, compare.md and compare.png from the runs finished so far, each written
  whole, so that an interrupted comparison keeps every run it finished. Returns the Markdown."""
  from fmnist_jax import analysis, checkpoint

  table = {
    name: {
      impl: summarize(impl_runs, meta["flops"][name], peak_gflops)
      for impl, impl_runs in by_impl.items()
      if impl_runs
    }
    for name, by_impl in runs.items()
  }
  table = {name: rows for name, rows in table.items() if rows}
  meta = meta | {"runs_done": _runs_done(runs)}
  text = markdown(table, meta)
  checkpoint.write_whole(
    out / "compare.json", json.dumps({"meta": meta, "table": table, "runs": runs}, indent=2)
  )
  checkpoint.write_whole(out / "compare.md", text)
  if table:
    analysis.save_figure(plot(table), out / "compare.png")
  return text


def main(argv):
  del argv
  implementations = _PEERS.value
  unknown = [name for name in implementations if name not in IMPLEMENTATIONS]
  if unknown:
    raise app.UsageError(f"--peers: unknown {unknown}; choose from {', '.join(IMPLEMENTATIONS)}.")
  runs = {name: {impl: [] for impl in implementations} for name in _MODELS.value}
  specs, flops, data_paths = {}, {}, {}
  out = pathlib.Path(_OUT.value)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    for name in _MODELS.value:  # every spec and data file first: a mistake shows before any timing
      specs[name], flops[name] = spec_for(name)
      (tmp / f"{name}.json").write_text(json.dumps(specs[name]))
      data_paths[name] = write_data(name, specs[name], tmp)
    out.mkdir(parents=True, exist_ok=True)
    peak_gflops = _PEAK_GFLOPS.value or measure_peak_gflops()
    meta = {
      "repeats": _REPEATS.value,
      "runs_planned": len(_MODELS.value) * _REPEATS.value * len(implementations),
      "machine": (
        f"{_accelerator()}, {os.cpu_count()} CPU cores, fp32 peak {peak_gflops:,.0f} GFLOP/s "
        + ("(given)" if _PEAK_GFLOPS.value else "(measured: 2048x2048 matmul)")
      ),
      "specs": {name: table_spec(spec) for name, spec in specs.items()},
      "flops": flops,
    }
    try:
      for name in _MODELS.value:
        for repeat in range(_REPEATS.value):
          for implementation in repeat_order(implementations, repeat):
            result = run_one(implementation, tmp / f"{name}.json", data_paths[name], seed=repeat)
            runs[name][implementation].append(result)
            text = write_outputs(out, runs, meta, peak_gflops)
            shown = result.get("images_per_s")
            print(
              f"{name} repeat {repeat + 1} {implementation}: "
              + (f"{shown:,.0f} images/s" if shown else f"failed: {result['error']}"),
              flush=True,
            )
    except KeyboardInterrupt:
      done = _runs_done(runs)
      kept = (
        f"{out}/compare.md, compare.json and compare.png hold the {done} of "
        f"{meta['runs_planned']} runs that finished"
        if done
        else "no run had finished; nothing written"
      )
      print(f"\nInterrupted: {kept}.", file=sys.stderr)
      return 130
  print(text)
  print(f"Wrote {out}/compare.md, compare.json and compare.png.")
  return 0


if __name__ == "__main__":
  app.run(main)
