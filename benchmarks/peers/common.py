"""What every peer shares: reading the spec and data, timing epochs, printing the result."""

import argparse
import json
import statistics

import numpy as np


def parse_args():
  parser = argparse.ArgumentParser()
  parser.add_argument("--spec", required=True, help="JSON file written by benchmarks.compare")
  parser.add_argument("--data", required=True, help="npz: train_images/labels, test_images/labels")
  parser.add_argument("--variant", default="", help="a peer's variant, e.g. 'compile' for torch")
  parser.add_argument("--seed", type=int, default=0, help="initialisation, shuffling and dropout")
  args = parser.parse_args()
  with open(args.spec) as f:
    spec = json.load(f)
  arrays = dict(np.load(args.data))
  if len(arrays["train_labels"]) != spec["num_examples"]:  # images/s counts the spec's
    raise SystemExit(
      f"{args.data} has {len(arrays['train_labels']):,} training images, the spec "
      f"{spec['num_examples']:,}: write both with benchmarks.compare"
    )
  return args, spec, arrays


def scaled(images_uint8: np.ndarray) -> np.ndarray:
  """[0, 1] float32 inputs, as fmnist_jax's `scale01`."""
  return images_uint8.astype(np.float32) / 255.0


def report(framework: str, spec: dict, num_params: int, epoch_seconds, test_accuracy, seed: int):
  """Prints the one JSON line the runner reads."""
  if num_params != spec["num_params"]:
    raise SystemExit(
      f"{framework}: {num_params:,} parameters, fmnist_jax's {spec['model']['name']} has "
      f"{spec['num_params']:,}; the peer's model is not the same model"
    )
  steady = epoch_seconds[1:] or epoch_seconds
  print(
    json.dumps(
      {
        "framework": framework,
        "num_params": num_params,
        "epoch_seconds": epoch_seconds,
        "first_epoch_s": epoch_seconds[0],
        "images_per_s": spec["num_examples"] / statistics.median(steady),
        "test_accuracy": float(test_accuracy),
        "seed": seed,
      }
    )
  )
