"""Training: pure, jitted functions over explicit state, and the `fit` loop around them.

The model is built once (abstractly) and split into a graph definition per mode
(train: dropout on, batch statistics updated; eval: off, running averages).
Everything that runs per example is a pure function of
(`TrainState`, device-resident uint8 images, labels, key):

  init(key)                         -> TrainState
  train_epoch(state, images, labels, key) -> state, per-step metrics   (one lax.scan)
  evaluate(state, images, labels)   -> confusion matrix, loss sum      (one lax.scan)
  predict(state, images)            -> logits

`fit(config, workdir)` drives them: data -> model -> [pre-training] -> per epoch
(train_epoch -> evaluate val -> write metrics -> early stopping -> checkpoint)
-> restore best -> evaluate every split -> results.json and a summary table.
"""

import dataclasses
import math
import pathlib
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from fmnist_jax import checkpoint, config_checks, data, metrics, models
from fmnist_jax import progress as progress_lib

# Keys of the per-epoch random streams (folded into the run key with the epoch).
_TRAIN_STREAM, _PRETRAIN_STREAM = 0, 1


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State  # trainable
  model_state: nnx.State  # everything else: batch-norm statistics
  opt_state: optax.OptState


@flax.struct.dataclass
class EarlyStopping:
  """Keras EarlyStopping(monitor="val_loss") state, on device (so it vmaps per member)."""

  best_loss: jax.Array
  best_epoch: jax.Array  # 0-based epoch of best_loss; -1 before any
  wait: jax.Array  # epochs since the last improvement
  stopped: jax.Array  # bool
  best_params: nnx.State
  best_model_state: nnx.State

  @classmethod
  def create(cls, state: TrainState) -> "EarlyStopping":
    # Copies: the train step donates `state`'s buffers, so they must not be shared.
    state = jax.tree.map(jnp.copy, state)
    return cls(
      best_loss=jnp.array(jnp.inf, jnp.float32),
      best_epoch=jnp.array(-1, jnp.int32),
      wait=jnp.array(0, jnp.int32),
      stopped=jnp.array(False),
      best_params=state.params,
      best_model_state=state.model_state,
    )


def update_early_stopping(
  es: EarlyStopping, state: TrainState, val_loss, epoch, *, patience: int, min_delta: float
) -> EarlyStopping:
  """One epoch of Keras' rule: improve if val_loss < best - min_delta; stop at wait >= patience."""
  improved = val_loss < es.best_loss - min_delta
  keep = partial(jax.tree.map, lambda new, old: jnp.where(improved, new, old))
  wait = jnp.where(improved, 0, es.wait + 1)
  return EarlyStopping(
    best_loss=jnp.where(improved, val_loss, es.best_loss),
    best_epoch=jnp.where(improved, epoch, es.best_epoch),
    wait=wait,
    stopped=es.stopped | (wait >= patience),
    best_params=keep(state.params, es.best_params),
    best_model_state=keep(state.model_state, es.best_model_state),
  )


def make_optimizer(opt_config: ConfigDict, steps_per_epoch: int, num_epochs: int):
  """optax transformation and its learning-rate schedule (a function of the step)."""
  lr, total_steps = opt_config.learning_rate, steps_per_epoch * num_epochs
  if opt_config.schedule == "constant":
    schedule = optax.constant_schedule(lr)
  elif opt_config.schedule == "cosine":
    schedule = optax.cosine_decay_schedule(lr, total_steps)
  else:  # warmup_cosine (checked by config_checks)
    warmup = max(1, round(opt_config.warmup_epochs * steps_per_epoch))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1))
  if opt_config.name == "sgd":
    tx = optax.sgd(schedule, momentum=opt_config.momentum or None, nesterov=opt_config.nesterov)
  elif opt_config.name == "adam":
    tx = optax.adam(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps)
  else:  # adamw
    tx = optax.adamw(
      schedule,
      b1=opt_config.b1,
      b2=opt_config.b2,
      eps=opt_config.eps,
      weight_decay=opt_config.weight_decay,
    )
  return tx, schedule


def _masked_mean(values_B, weights_B):
  return (values_B * weights_B).sum() / jnp.maximum(weights_B.sum(), 1.0)


def classification_loss(model, images, labels, weights, rngs):
  """Masked mean softmax cross-entropy; aux = number of correct predictions."""
  logits = model(images, rngs=rngs)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = ((logits.argmax(-1) == labels) * weights).sum()
  return _masked_mean(losses, weights), correct


def reconstruction_loss(kind: str):
  """Pre-training loss between the (0-1 scaled) input and the autoencoder's output."""

  def loss_fn(model, images, labels, weights, rngs):
    del labels, rngs
    reconstruction = model.reconstruct(images)
    if kind == "mse":
      per_pixel = (reconstruction - images) ** 2
    else:  # binary_crossentropy, clipped like Keras
      r = jnp.clip(reconstruction, 1e-7, 1 - 1e-7)
      per_pixel = -(images * jnp.log(r) + (1 - images) * jnp.log1p(-r))
    return _masked_mean(per_pixel.mean(axis=(1, 2)), weights), jnp.zeros(())

  return loss_fn


@dataclasses.dataclass(frozen=True)
class Trainer:
  """The pure functions for one config, jitted once. Shapes are fixed by the dataset."""

  train_graphdef: Any
  eval_graphdef: Any
  tx: optax.GradientTransformation
  schedule: Callable
  preprocess: Callable  # uint8 images -> float32 model input
  batch_size: int
  eval_batch_size: int
  steps_per_epoch: int
  init: Callable  # key -> TrainState
  train_step: Callable  # (state, (images, labels, weights), key) -> state, metrics; jitted
  train_epoch: (
    Callable  # (state, images, labels, key) -> state, {"loss", "correct", "count"}[steps]
  )
  evaluate: Callable  # (state, images, labels) -> (confusion matrix, loss sum)
  predict: Callable  # (state, images) -> logits

  @classmethod
  def create(
    cls,
    config: ConfigDict,
    train_images: np.ndarray,
    num_train: int,
    loss_fn=classification_loss,
    tx=None,
    num_epochs=None,
  ) -> "Trainer":
    def build(key):
      return models.build(config.model, conv_impl=config.conv_impl, rngs=nnx.Rngs(params=key))

    abstract = nnx.eval_shape(lambda: build(jax.random.key(0)))
    abstract.train()  # dropout on, batch statistics updated
    train_graphdef = nnx.graphdef(abstract)
    abstract.eval()
    eval_graphdef = nnx.graphdef(abstract)
    steps = math.ceil(num_train / config.batch_size)
    schedule = None
    if tx is None:
      tx, schedule = make_optimizer(config.optimizer, steps, num_epochs or config.num_epochs)
    preprocess = data.make_preprocess(config.data.preprocessing, train_images)

    def init(key) -> TrainState:
      _, params, model_state = nnx.split(build(key), nnx.Param, ...)
      return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
      )

    train_step, train_epoch = make_train_epoch(
      train_graphdef, tx, preprocess, loss_fn, config.batch_size
    )
    evaluate, predict = make_evaluate(eval_graphdef, preprocess, config.eval_batch_size)
    return cls(
      train_graphdef=train_graphdef,
      eval_graphdef=eval_graphdef,
      tx=tx,
      schedule=schedule,
      preprocess=preprocess,
      batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size,
      steps_per_epoch=steps,
      init=jax.jit(init),
      train_step=jax.jit(train_step, donate_argnums=0),
      train_epoch=train_epoch,
      evaluate=evaluate,
      predict=predict,
    )

  def model(self, state: TrainState, train: bool = False) -> nnx.Module:
    """A stateful module view of `state` (for inspection, export, plotting)."""
    graphdef = self.train_graphdef if train else self.eval_graphdef
    return nnx.merge(graphdef, state.params, state.model_state)


def _epoch_batches(key, num_examples: int, batch_size: int):
  """A device-side shuffle split into [steps, batch] indices and 0/1 weights.

  The last batch is padded with weight-0 examples, so every example is seen once
  per epoch and the step count matches Keras' ceil(n / batch).
  """
  steps = -(-num_examples // batch_size)
  padding = steps * batch_size - num_examples
  order = jax.random.permutation(key, num_examples)
  indices = jnp.concatenate([order, jnp.zeros((padding,), order.dtype)])
  weights = jnp.concatenate([jnp.ones((num_examples,)), jnp.zeros((padding,))])
  return indices.reshape(steps, batch_size), weights.reshape(steps, batch_size)


def make_train_epoch(graphdef, tx, preprocess, loss_fn, batch_size: int):
  """The pure train step and one epoch of it as one compiled lax.scan over shuffled batches."""

  def train_step(state: TrainState, batch, key):
    """One optimizer step on (uint8 images, labels, 0/1 weights) with dropout key `key`."""
    images, labels, weights = batch

    def objective(params):
      # copy=True: fresh Variables at this trace level, so BatchNorm may update its statistics.
      model = nnx.merge(graphdef, params, state.model_state, copy=True)
      loss, correct = loss_fn(model, preprocess(images), labels, weights, nnx.Rngs(dropout=key))
      return loss, (correct, nnx.state(model, nnx.Not(nnx.Param)))

    (loss, (correct, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = TrainState(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      model_state=model_state,
      opt_state=opt_state,
    )
    return state, {"loss": loss, "correct": correct, "count": weights.sum()}

  @partial(jax.jit, donate_argnums=0)
  def train_epoch(state: TrainState, images_Nx28x28, labels_N, key):
    shuffle_key, dropout_key = jax.random.split(key)
    indices, weights = _epoch_batches(shuffle_key, labels_N.shape[0], batch_size)
    step_keys = jax.random.split(dropout_key, indices.shape[0])

    def body(state, step_inputs):
      batch_indices, batch_weights, step_key = step_inputs
      batch = (images_Nx28x28[batch_indices], labels_N[batch_indices], batch_weights)
      return train_step(state, batch, step_key)

    return jax.lax.scan(body, state, (indices, weights, step_keys))

  return train_step, train_epoch


def _padded_batches(array, batch_size: int):
  steps = -(-array.shape[0] // batch_size)
  padding = steps * batch_size - array.shape[0]
  padded = jnp.pad(array, [(0, padding)] + [(0, 0)] * (array.ndim - 1))
  return padded.reshape(steps, batch_size, *array.shape[1:])


def make_evaluate(graphdef, preprocess, batch_size: int):
  """Jitted evaluation (confusion matrix and loss sum) and prediction, scanned over batches."""

  def logits_fn(state: TrainState, images):
    model = nnx.merge(graphdef, state.params, state.model_state)
    return model(preprocess(images))

  @jax.jit
  def evaluate(state: TrainState, images_Nx28x28, labels_N):
    weights = jnp.ones(labels_N.shape, jnp.float32)
    batches = tuple(_padded_batches(a, batch_size) for a in (images_Nx28x28, labels_N, weights))

    def body(carry, batch):
      confusion, loss_sum = carry
      images, labels, batch_weights = batch
      logits = logits_fn(state, images)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      confusion += metrics.confusion_matrix(
        labels, logits.argmax(-1), data.NUM_CLASSES, batch_weights
      )
      return (confusion, loss_sum + (losses * batch_weights).sum()), None

    init = (jnp.zeros((data.NUM_CLASSES, data.NUM_CLASSES), jnp.int32), jnp.zeros(()))
    return jax.lax.scan(body, init, batches)[0]

  @jax.jit
  def predict(state: TrainState, images_Nx28x28):
    batches = _padded_batches(images_Nx28x28, batch_size)
    logits = jax.lax.map(partial(logits_fn, state), batches)
    return logits.reshape(-1, logits.shape[-1])[: images_Nx28x28.shape[0]]

  return evaluate, predict


def evaluate_splits(trainer: Trainer, state: TrainState, splits: dict) -> dict[str, dict]:
  """Full metrics (per class included) for each split of {name: (images, labels)} on device."""
  results = {}
  for name, (images, labels) in splits.items():
    confusion, loss_sum = trainer.evaluate(state, images, labels)
    results[name] = metrics.summarize(confusion, loss_sum, labels.shape[0])
  return results


def epoch_key(seed: int, stream: int, epoch: int):
  """The key of one epoch: a pure function of (seed, stream, epoch), so resumes replay it."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), epoch)


def _check_finite(step_metrics: dict, epoch: int, steps_done: int, config: ConfigDict):
  losses = np.asarray(step_metrics["loss"])
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    raise FloatingPointError(
      f"training loss became {losses[bad[0]]} at step {steps_done + bad[0] + 1} "
      f"(epoch {epoch + 1}); the last good checkpoint is kept. Lower "
      f"optimizer.learning_rate (now {config.optimizer.learning_rate}) or use "
      f"data.preprocessing='scale01'."
    )


def _pretrain(config, trainer_args, state: TrainState, device_data, log) -> TrainState:
  """Trains the autoencoder on reconstruction; returns a state with its own, fresh optimizer."""
  pre = config.pretrain
  tx = optax.adam(
    pre.learning_rate, b1=config.optimizer.b1, b2=config.optimizer.b2, eps=config.optimizer.eps
  )
  trainer = Trainer.create(config, *trainer_args, loss_fn=reconstruction_loss(pre.loss), tx=tx)
  # A copy: train_epoch donates its state, and `state` must stay valid for the caller.
  pre_state = jax.tree.map(jnp.copy, state).replace(opt_state=tx.init(state.params))
  images, labels = device_data["train"]
  for epoch in range(pre.num_epochs):
    pre_state, step_metrics = trainer.train_epoch(
      pre_state, images, labels, epoch_key(config.seed, _PRETRAIN_STREAM, epoch)
    )
    _check_finite(step_metrics, epoch, 0, config)
    log(
      {
        "phase": "pretrain",
        "epoch": epoch + 1,
        "pretrain/loss": float(np.mean(step_metrics["loss"])),
      }
    )
  return pre_state


def fit(config: ConfigDict, workdir: str | pathlib.Path, *, show_progress: bool = True) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and returns results."""
  start_time = time.time()
  workdir = pathlib.Path(workdir)
  config_checks.check(config)  # before any data is read or anything compiles
  dataset = data.load(config.data)
  config_checks.check(
    config, num_train=len(dataset.train), has_validation=dataset.validation is not None
  )
  # Refuses a workdir made by another config.
  run = checkpoint.RunDir(
    workdir,
    config,
    checkpoints=config.checkpoint.enabled,
    max_to_keep=config.checkpoint.max_to_keep,
  )

  device_data = {
    name: (jax.device_put(split.images), jax.device_put(split.labels))
    for name, split in dataset.splits().items()
  }
  trainer_args = (dataset.train.images, len(dataset.train))
  trainer = Trainer.create(config, *trainer_args)
  state = trainer.init(jax.random.fold_in(jax.random.key(config.seed), _TRAIN_STREAM))
  num_params = models.count_params(trainer.model(state))
  early = EarlyStopping.create(state)
  es_config = config.early_stopping
  has_val = "val" in device_data

  start_epoch = 0
  restored = run.restore_latest({"state": state, "early_stopping": early})
  if restored is not None:
    start_epoch, payload = restored
    state, early = payload["state"], payload["early_stopping"]
  elif config.pretrain.num_epochs > 0:
    pretrained = _pretrain(config, trainer_args, state, device_data, run.log_metrics)
    state = state.replace(
      params=pretrained.params,
      model_state=pretrained.model_state,
      opt_state=trainer.tx.init(pretrained.params),
    )
    early = EarlyStopping.create(state)

  bar = progress_lib.EpochBar(
    config.num_epochs, start_epoch, enabled=show_progress, desc=config.model.name
  )
  stop = bool(early.stopped) and es_config.enabled
  try:
    for epoch in range(start_epoch, config.num_epochs):
      if stop:
        break
      epoch_start = time.time()
      steps_before = int(state.step)
      state, step_metrics = trainer.train_epoch(
        state, *device_data["train"], epoch_key(config.seed, _TRAIN_STREAM, epoch)
      )
      step_metrics = jax.device_get(step_metrics)
      _check_finite(step_metrics, epoch, steps_before, config)
      record = {
        "epoch": epoch + 1,
        "train/loss": float(
          np.sum(step_metrics["loss"] * step_metrics["count"]) / np.sum(step_metrics["count"])
        ),
        "train/accuracy": float(np.sum(step_metrics["correct"]) / np.sum(step_metrics["count"])),
        "learning_rate": float(trainer.schedule(steps_before)),
      }
      if has_val:
        val = metrics.summarize(
          *trainer.evaluate(state, *device_data["val"]), count=device_data["val"][1].shape[0]
        )
        record.update(
          {
            f"val/{k}": val[k]
            for k in ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro")
          }
        )
        early = update_early_stopping(
          early,
          state,
          jnp.float32(val["loss"]),
          epoch,
          patience=es_config.patience,
          min_delta=es_config.min_delta,
        )
        stop = es_config.enabled and bool(early.stopped)
      record["seconds"] = time.time() - epoch_start
      run.log_metrics(record)
      run.save(
        epoch + 1,
        {"state": state, "early_stopping": early},
        best=has_val and int(early.best_epoch) == epoch,
      )
      bar.update(record)
  finally:
    # A NaN or Ctrl-C must not cut off an asynchronous save of the last good epoch.
    bar.close()
    run.wait()

  final_state = state
  # As Keras: best weights come back only with EarlyStopping(restore_best_weights=True).
  if has_val and es_config.enabled and es_config.restore_best and int(early.best_epoch) >= 0:
    final_state = state.replace(params=early.best_params, model_state=early.best_model_state)
  results = {
    "model": config.model.name,
    "num_params": num_params,
    "epochs_trained": int(state.step) // trainer.steps_per_epoch,
    "stopped_early": bool(stop),
    "best_epoch": int(early.best_epoch) + 1 if has_val else None,
    "restored_best": final_state is not state,
    "data": dataset.source,
    "metrics": evaluate_splits(trainer, final_state, device_data),
    "wall_seconds": time.time() - start_time,
  }
  run.write_results(results)
  run.close()
  return results
