"""Training speed of one config: steady images/s, first-epoch seconds, whole wall.

  python -m benchmarks.train_speed --config=configs/cnn.py [--repeats=3] [--num_examples=12800]
  python -m benchmarks.train_speed --config=configs/mlp_baseline.py --config.num_seeds=8

Times the program `fit` runs (`Trainer.train_members`, all `config.num_seeds`
members in one vmapped epoch). Steady images/s counts every member's images and
is the median over `repeats` timed epochs after a warm-up epoch (compile
excluded, `block_until_ready` before stopping the clock); seconds per member-epoch
divide an epoch's time by the number of members. First-epoch
seconds include tracing and compilation, as a user's first epoch does.
`--num_examples` trains on a prefix of the training split to time slow models
quickly (the step function and batch size are unchanged). Wait for a quiet
machine first: ../shared/tools/wait-quiet.
"""

from fmnist_jax import platform

platform.configure_xla()

import statistics
import time

import jax
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed epochs after the warm-up epoch.")
_NUM_EXAMPLES = flags.DEFINE_integer(
  "num_examples", 0, "Train on this many examples (0 = the whole split)."
)
flags.mark_flag_as_required("config")


def measure(config, repeats: int, num_examples: int = 0) -> dict:
  """Times `repeats` steady epochs after one compile-including epoch."""
  from fmnist_jax import data, train

  start = time.perf_counter()
  dataset = data.load(config.data)
  images, labels = dataset.train.images, dataset.train.labels
  if num_examples:
    images, labels = images[:num_examples], labels[:num_examples]
  images, labels = jax.device_put(images), jax.device_put(labels)
  members = train.members_of(config)
  num_members = len(members)
  trainer = train.Trainer.create(
    config, dataset.train.images, labels.shape[0], num_members=num_members
  )
  state = trainer.init_state(members)
  active = jax.numpy.ones((num_members,), bool)
  jax.block_until_ready(state)

  def run_epoch(state, epoch):
    keys = jax.random.split(jax.random.key(epoch), num_members)
    t0 = time.perf_counter()
    state, step_metrics = trainer.train_members(state, active, images, labels, keys)
    jax.block_until_ready((state, step_metrics))
    return state, time.perf_counter() - t0

  state, first_epoch = run_epoch(state, 0)
  seconds = []
  for epoch in range(1, repeats + 1):
    state, elapsed = run_epoch(state, epoch)
    seconds.append(elapsed)
  images_per_epoch = num_members * int(labels.shape[0])
  return {
    "examples_per_epoch": int(labels.shape[0]),
    "num_members": num_members,
    "member_epoch_s": statistics.median(seconds) / num_members,
    "images_per_s": images_per_epoch / statistics.median(seconds),
    "images_per_s_range": (images_per_epoch / max(seconds), images_per_epoch / min(seconds)),
    "first_epoch_s": first_epoch,
    "wall_s": time.perf_counter() - start,
    "backend": jax.default_backend(),
  }


def main(argv):
  del argv
  result = measure(_CONFIG.value, _REPEATS.value, _NUM_EXAMPLES.value)
  low, high = result["images_per_s_range"]
  print(
    f"backend {result['backend']}, {result['examples_per_epoch']} examples/epoch, "
    f"{result['num_members']} members, {_REPEATS.value} timed epochs"
  )
  print(
    f"steady training   {result['images_per_s']:,.0f} images/s (median; range "
    f"{low:,.0f}-{high:,.0f})"
  )
  print(f"per member-epoch  {result['member_epoch_s']:.3f} s (median)")
  print(f"first epoch       {result['first_epoch_s']:.2f} s (compile included)")
  print(f"total wall        {result['wall_s']:.2f} s")


if __name__ == "__main__":
  app.run(main)
