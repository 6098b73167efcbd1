"""Keras 3 peer: `model.fit`, on the backend named by --variant (jax or tensorflow).

python -m benchmarks.peers.keras_peer --spec=SPEC.json --data=DATA.npz --variant=jax
"""

import os
import sys

if __name__ == "__main__":  # the backend is chosen before keras is imported
  variant = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--variant=")), "jax")
  os.environ["KERAS_BACKEND"] = variant

import time

import keras
import numpy as np
from keras import layers

from benchmarks.peers.common import parse_args, report, scaled


def _head(x, model):
  x = layers.Flatten()(x)
  for size in model["dense_sizes"]:
    x = layers.Dense(size, activation="relu")(x)
    x = layers.Dropout(model["dense_dropout_rates"])(x)
  return layers.Dense(10)(x)


def build(spec):
  model = spec["model"]
  inputs = keras.Input((28, 28, 1))
  x = inputs
  if model["name"] == "mlp":
    x = layers.Flatten()(x)
    for size in model["hidden_sizes"]:
      x = layers.Dense(size, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(10)(x))
  if model["name"] == "cnn":
    for features, pool in zip(model["conv_features"], model["pool"], strict=True):
      x = layers.Conv2D(features, 3, padding="same")(x)
      if model["batch_norm"]:
        x = layers.BatchNormalization()(x)
      x = layers.Activation("relu")(x)
      if pool:
        x = layers.MaxPooling2D()(x)
      x = layers.Dropout(model["conv_dropout_rates"])(x)
    return keras.Model(inputs, _head(x, model))
  for features, pool in zip(model["stage_features"], model["pool"], strict=True):  # resnet
    y = layers.Conv2D(features, 3, padding="same")(x)
    y = layers.Activation("relu")(layers.BatchNormalization()(y))
    y = layers.BatchNormalization()(layers.Conv2D(features, 3, padding="same")(y))
    skip = layers.Conv2D(features, 1)(x) if x.shape[-1] != features else x
    x = layers.Activation("relu")(layers.Add()([skip, y]))
    if pool:
      x = layers.MaxPooling2D()(x)
    x = layers.Dropout(model["dropout_rates"])(x)
  return keras.Model(inputs, _head(x, model))


class EpochTimer(keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.seconds = []

  def on_epoch_begin(self, epoch, logs=None):
    self.start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds.append(time.perf_counter() - self.start)


def main():
  args, spec, arrays = parse_args()
  keras.utils.set_random_seed(args.seed)
  model = build(spec)
  opt = spec["optimizer"]
  if opt["name"] == "sgd":
    optimizer = keras.optimizers.SGD(opt["learning_rate"], opt["momentum"], opt["nesterov"])
  else:
    optimizer = keras.optimizers.Adam(
      opt["learning_rate"], beta_1=opt["b1"], beta_2=opt["b2"], epsilon=opt["eps"]
    )
  model.compile(
    optimizer,
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
  )
  timer = EpochTimer()
  model.fit(
    scaled(arrays["train_images"])[..., None],
    arrays["train_labels"],
    batch_size=spec["batch_size"],
    epochs=spec["epochs"],
    callbacks=[timer],
    verbose=0,
  )
  _, accuracy = model.evaluate(
    scaled(arrays["test_images"])[..., None], arrays["test_labels"], batch_size=1000, verbose=0
  )
  trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
  report(f"keras ({keras.backend.backend()})", spec, trainable, timer.seconds, accuracy, args.seed)


if __name__ == "__main__":
  main()
