"""Time to accuracy, reported as airbench does: mean accuracy and training wall over seeds.

  python -m benchmarks.speedrun --config=configs/speedrun.py --seeds=10
  python -m benchmarks.speedrun --config=configs/speedrun.py --config.data.validation_size=12000

Runs `--seeds` trainings of one config one after another in one process (seeds
config.seed, config.seed + 1, ...), on the data already on the device. Each
training is timed from its model's initialisation to its last epoch's weights
(`block_until_ready`), so the wall covers everything training does and nothing
else: compilation is done first by a warm-up (one epoch and one evaluation,
reported as `compile_s`) and evaluation is timed apart. Evaluation is on the
validation split when the config holds one out (to choose hyperparameters) and
on test otherwise, for each seed and for the seeds' ensemble (the sum of their
softmax outputs). Prints a line per seed and the summary as one JSON line;
`--out` also writes it to a file.
"""

from fmnist_jax import platform

platform.configure_xla()

import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_SEEDS = flags.DEFINE_integer(
  "seeds", 10, "Trainings, with seeds config.seed, config.seed + 1, ..."
)
_OUT = flags.DEFINE_string("out", "", "Also write the summary JSON here.")
flags.mark_flag_as_required("config")


def run(config, num_seeds: int) -> dict:
  from fmnist_jax import data, ensemble, train

  dataset = data.load(config.data)
  evaluated = dataset.validation or dataset.test
  split = "validation" if dataset.validation else "test"
  train_images, train_labels = (
    jax.device_put(a) for a in (dataset.train.images, dataset.train.labels)
  )
  eval_images, eval_labels = (jax.device_put(a) for a in (evaluated.images, evaluated.labels))
  trainer = train.Trainer.create(config, dataset.train.images, len(dataset.train.labels))
  active = jnp.ones((1,), bool)

  def train_seed(seed: int, num_epochs: int):
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    members = train.members_of(seeded)
    state = trainer.init_state(members)
    for epoch in range(num_epochs):
      state, _ = trainer.train_members(
        state, active, train_images, train_labels, members.epoch_keys(0, epoch)
      )
    return jax.block_until_ready(state)

  def evaluate(state) -> tuple[float, jax.Array]:
    """(accuracy, logits [N, C]) on the evaluated split."""
    logits = trainer.predict_members(train.averaged_state(config, state), eval_images)[0]
    return float((logits.argmax(-1) == eval_labels).mean()), logits

  start = time.perf_counter()
  evaluate(train_seed(config.seed, 1))  # compiles init, the epoch and the evaluation
  compile_s = time.perf_counter() - start
  runs, member_logits = [], []
  for seed in range(config.seed, config.seed + num_seeds):
    start = time.perf_counter()
    state = train_seed(seed, config.num_epochs)
    train_s = time.perf_counter() - start
    accuracy, logits = evaluate(state)
    member_logits.append(logits)
    runs.append({"seed": seed, "train_s": train_s, "accuracy": accuracy})
    print(
      f"seed {seed}: {split} accuracy {runs[-1]['accuracy']:.4f} in {train_s:.2f} s", flush=True
    )
  accuracies = [r["accuracy"] for r in runs]
  seconds = [r["train_s"] for r in runs]
  return {
    "split": split,
    "device": jax.devices()[0].device_kind,
    "num_epochs": config.num_epochs,
    "compute_dtype": config.compute_dtype,
    "mean_accuracy": statistics.fmean(accuracies),
    "std_accuracy": statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
    "min_accuracy": min(accuracies),
    "mean_train_s": statistics.fmean(seconds),
    "median_train_s": statistics.median(seconds),
    "compile_s": compile_s,
    # The seeds' ensemble (the studies' rule: the sum of softmax outputs).
    "ensemble_accuracy": float(
      (ensemble.combine(jnp.stack(member_logits), ensemble.STUDY_RULE) == eval_labels).mean()
    ),
    "runs": runs,
  }


def main(argv):
  del argv
  summary = run(_CONFIG.value, _SEEDS.value)
  line = json.dumps(summary)
  print(line)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(line + "\n")


if __name__ == "__main__":
  app.run(main)
