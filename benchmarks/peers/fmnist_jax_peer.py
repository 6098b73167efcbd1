"""fmnist_jax itself, timed the way the peers are: the program `fit` runs, epoch by epoch.

python -m benchmarks.peers.fmnist_jax_peer --spec=SPEC.json --data=DATA.npz
"""

from fmnist_jax import platform

platform.configure_xla()

import time

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from benchmarks.peers.common import parse_args, report
from fmnist_jax import metrics, models, train


def main():
  args, spec, arrays = parse_args()
  config = ConfigDict(spec["config"])
  config.seed = args.seed
  images = jax.device_put(arrays["train_images"])
  labels = jax.device_put(arrays["train_labels"].astype(np.int32))
  trainer = train.Trainer.create(config, arrays["train_images"], len(arrays["train_labels"]))
  members = train.members_of(config)
  state = trainer.init_state(members)
  active = jnp.ones((1,), bool)
  epoch_seconds = []
  for epoch in range(spec["epochs"]):
    start = time.perf_counter()
    state, step_metrics = trainer.train_members(
      state, active, images, labels, members.epoch_keys(0, epoch)
    )
    jax.block_until_ready((state, step_metrics))
    epoch_seconds.append(time.perf_counter() - start)
  confusion, _ = trainer.evaluate_members(state, arrays["test_images"], arrays["test_labels"])
  accuracy = metrics.summarize(np.asarray(confusion[0]), 0.0, len(arrays["test_labels"]))
  num_params = models.count_params(state.params, stacked=True)
  report("fmnist_jax", spec, num_params, epoch_seconds, accuracy["accuracy"], config.seed)


if __name__ == "__main__":
  main()
