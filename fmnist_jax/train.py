"""Training: pure, jitted functions over explicit state, and the `fit` loop around them.

The model is built once (abstractly) and split into a graph definition per mode
(train: dropout on, batch statistics updated; eval: off, running averages).
Everything that runs per example is a pure function of
(`TrainState`, device-resident uint8 images, labels, key):

  init(key)                         -> TrainState
  train_epoch(state, images, labels, key) -> state, per-step metrics   (one lax.scan)
  evaluate_batch(state, images, labels, weights) -> logits, confusion matrix, loss sum
  predict(state, images)            -> logits

Evaluation runs one compiled batch program over fixed-size batches from the
host, so a run's per-epoch validation and its final prediction of every split
share one forward program whatever the splits' sizes.

`fit(config, workdir)` drives them: data -> model -> [pre-training] -> per epoch
(train_epoch -> evaluate val -> write metrics -> early stopping -> checkpoint)
-> restore best -> evaluate every split -> results.json and a summary table.
"""

import dataclasses
import math
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from fmnist_jax import (
  analysis,
  checkpoint,
  config_checks,
  data,
  ensemble,
  layers,
  metrics,
  models,
  parallel,
  platform,
  summary,
)
from fmnist_jax import augment as augment_lib
from fmnist_jax import progress as progress_lib
from fmnist_jax.errors import Preempted

# Every train step draws dropout masks, shuffles and augmentations: on CPU, lower
# their random bits without jax's rolled loop (same bits, ~7-10% faster CNN steps).
platform.unroll_threefry_on_cpu()

# Keys of the per-epoch random streams (folded into the run key with the epoch).
_TRAIN_STREAM, _PRETRAIN_STREAM = 0, 1


@flax.struct.dataclass
class SavedState:
  """A TrainState as checkpoints hold it: without the configuration (dropout rates, label
  smoothing)."""

  step: jax.Array
  params: nnx.State
  model_state: nnx.State
  opt_state: optax.OptState


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State  # trainable
  model_state: nnx.State  # everything else: batch-norm statistics
  opt_state: optax.OptState
  # Configuration that members of one program may differ in, outside optax's state:
  # each Dropout layer's rate (layers.DropoutRate) and the label smoothing (None: off,
  # not compiled in). Not checkpointed: a resume takes them from the config.
  dropout_rates: nnx.State | None = None
  label_smoothing: jax.Array | None = None

  def checkpointed(self) -> SavedState:
    return SavedState(self.step, self.params, self.model_state, self.opt_state)

  def restored(self, saved: SavedState) -> "TrainState":
    """`saved` (restored from a checkpoint of this state) with this state's configuration."""
    return self.replace(
      step=saved.step, params=saved.params, model_state=saved.model_state, opt_state=saved.opt_state
    )


@flax.struct.dataclass
class EarlyStopping:
  """Keras EarlyStopping(monitor="val_loss") state, on device, per member when stacked."""

  best_loss: jax.Array
  best_epoch: jax.Array  # 0-based epoch of best_loss; -1 before any
  wait: jax.Array  # epochs since the last improvement
  stopped: jax.Array  # bool
  diverged: jax.Array  # bool: the member's loss became NaN/inf; it is frozen
  best_params: nnx.State
  best_model_state: nnx.State

  @classmethod
  def create(cls, state: TrainState, num_members: int | None = None) -> "EarlyStopping":
    """For one state, or for `num_members` states stacked on a leading axis."""
    shape = () if num_members is None else (num_members,)
    # Copies: the train step donates `state`'s buffers, so they must not be shared.
    state = jax.tree.map(jnp.copy, state)
    return cls(
      best_loss=jnp.full(shape, jnp.inf, jnp.float32),
      best_epoch=jnp.full(shape, -1, jnp.int32),
      wait=jnp.zeros(shape, jnp.int32),
      stopped=jnp.zeros(shape, bool),
      diverged=jnp.zeros(shape, bool),
      best_params=state.params,
      best_model_state=state.model_state,
    )


def update_early_stopping(
  es: EarlyStopping,
  state: TrainState,
  val_loss,
  epoch,
  active=True,
  *,
  patience: int,
  min_delta: float,
) -> EarlyStopping:
  """One epoch of Keras' rule: improve if val_loss < best - min_delta; stop at wait >= patience.

  An inactive member (stopped or diverged, so its weights are frozen) keeps its state.
  """
  improved = active & (val_loss < es.best_loss - min_delta)
  keep = partial(jax.tree.map, lambda new, old: jnp.where(improved, new, old))
  wait = jnp.where(improved, 0, es.wait + active)
  return es.replace(
    best_loss=jnp.where(improved, val_loss, es.best_loss),
    best_epoch=jnp.where(improved, epoch, es.best_epoch),
    wait=wait,
    stopped=es.stopped | (wait >= patience),
    best_params=keep(state.params, es.best_params),
    best_model_state=keep(state.model_state, es.best_model_state),
  )


# The numeric hyperparameters of each optimizer. They live in the optimizer state
# (optax.inject_hyperparams), so members of one vmapped program may differ in them.
OPTIMIZER_HYPERPARAMS = {
  "sgd": ("learning_rate", "momentum", "weight_decay"),  # weight_decay only when > 0
  "adam": ("learning_rate", "b1", "b2", "eps"),
  "adamw": ("learning_rate", "b1", "b2", "eps", "weight_decay"),
}


def is_vmappable(config: ConfigDict, key: str) -> bool:
  """Whether members of one program may differ in dotted config `key` (no shape depends on it)."""
  section, _, name = key.partition(".")
  if section == "optimizer":
    return name in OPTIMIZER_HYPERPARAMS[config.optimizer.name]
  return (section == "model" and name in models.DROPOUT_KEYS) or key == "label_smoothing"


def optimizer_hyperparams(opt_config: ConfigDict) -> tuple[str, ...]:
  """The hyperparameters in `opt_config`'s optax state. SGD's weight decay is compiled in
  only when it is on (a sweep turns it on for every member where any member uses it)."""
  names = OPTIMIZER_HYPERPARAMS[opt_config.name]
  if opt_config.name == "sgd" and not opt_config.weight_decay:
    names = tuple(name for name in names if name != "weight_decay")
  return names


def default_hyperparams(opt_config: ConfigDict) -> dict[str, float]:
  return {name: float(opt_config[name]) for name in optimizer_hyperparams(opt_config)}


def _sgd_with_weight_decay(learning_rate, momentum, weight_decay, nesterov=False):
  """PyTorch's SGD weight_decay: wd * w joins the gradient (so the learning rate and the
  schedule scale it too); kernels only, not biases or batch-norm scales."""
  decay = optax.add_decayed_weights(
    weight_decay, mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  )
  return optax.chain(decay, optax.sgd(learning_rate, momentum, nesterov=nesterov))


def make_optimizer(
  opt_config: ConfigDict, steps_per_epoch: int, num_epochs: int, ema_decay: float = 0.0
):
  """(make_tx, unit_schedule): `make_tx(**hyperparams)` builds the optax transformation.

  The learning rate at step t is `learning_rate * unit_schedule(t)`: the schedule's
  shape (an optax schedule peaking at 1) is shared, the peak is a per-member
  hyperparameter. For a constant schedule this is exactly optax.sgd/adam(lr).
  """
  total_steps = steps_per_epoch * num_epochs
  if opt_config.schedule == "constant":
    unit_schedule = optax.constant_schedule(1.0)
  elif opt_config.schedule == "cosine":
    unit_schedule = optax.cosine_decay_schedule(1.0, total_steps)
  elif opt_config.schedule == "onecycle":
    # Up from peak/25 over warmup_epochs (default 30% of training), then cosine down to ~0.
    warmup_fraction = opt_config.warmup_epochs / num_epochs if opt_config.warmup_epochs else 0.3
    unit_schedule = optax.cosine_onecycle_schedule(
      max(total_steps, 2), 1.0, pct_start=warmup_fraction
    )
  else:  # warmup_cosine (checked by config_checks)
    warmup = max(1, round(opt_config.warmup_epochs * steps_per_epoch))
    unit_schedule = optax.warmup_cosine_decay_schedule(
      0.0, 1.0, warmup, max(total_steps, warmup + 1)
    )
  if opt_config.name == "sgd":
    sgd = _sgd_with_weight_decay if opt_config.weight_decay else optax.sgd
    base = optax.inject_hyperparams(sgd, static_args=("nesterov",))
    extra = {"nesterov": opt_config.nesterov}
  else:
    base = optax.inject_hyperparams(getattr(optax, opt_config.name))
    extra = {}
  defaults = default_hyperparams(opt_config)

  def make_tx(**hyperparams) -> optax.GradientTransformation:
    tx = base(**{**defaults, **hyperparams}, **extra)
    if opt_config.schedule != "constant":
      tx = optax.chain(tx, optax.scale_by_schedule(unit_schedule))
    if ema_decay:
      tx = optax.chain(tx, params_ema(ema_decay))
    return tx

  return make_tx, unit_schedule


class ParamsEmaState(NamedTuple):
  ema_count: jax.Array
  ema_params: Any


def params_ema(decay: float) -> optax.GradientTransformation:
  """Keeps an exponential moving average of the parameters, after each update, in the
  optimizer state (optax.ema averages updates, not parameters). Chain it last."""

  def init(params):
    return ParamsEmaState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params):
    new_params = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, new_params)
    return updates, ParamsEmaState(state.ema_count + 1, ema)

  return optax.GradientTransformation(init, update)


def averaged_state(config: ConfigDict, state: TrainState) -> TrainState:
  """`state` with its parameters replaced by their debiased moving average when
  `config.ema_decay` > 0 (one member or stacked members); else `state` itself."""
  decay = config.get("ema_decay", 0.0)
  if not decay:
    return state
  ema = optax.tree_utils.tree_get(state.opt_state, "ema_params")
  count = optax.tree_utils.tree_get(state.opt_state, "ema_count")
  correction = 1.0 - decay ** jnp.maximum(count, 1).astype(jnp.float32)

  def debias(leaf):
    return leaf / correction.reshape(correction.shape + (1,) * (leaf.ndim - correction.ndim))

  return state.replace(params=jax.tree.map(debias, ema))


def _masked_mean(values_B, weights_B):
  return (values_B * weights_B).sum() / jnp.maximum(weights_B.sum(), 1.0)


def classification_loss(model, images, labels, weights, rngs, label_smoothing=None):
  """Masked mean softmax cross-entropy (against labels smoothed by `label_smoothing`,
  as Keras' CategoricalCrossentropy; None: plain labels); aux = number of correct
  predictions."""
  # The loss in float32 whatever the layers compute in (config.compute_dtype).
  logits = model(images, rngs=rngs).astype(jnp.float32)
  if label_smoothing is not None:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    losses = optax.softmax_cross_entropy(logits, targets)
  else:
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = ((logits.argmax(-1) == labels) * weights).sum()
  return _masked_mean(losses, weights), correct


def reconstruction_loss(kind: str):
  """Pre-training loss between the (0-1 scaled) input and the autoencoder's output."""

  def loss_fn(model, images, labels, weights, rngs, label_smoothing):
    del labels, rngs, label_smoothing
    reconstruction = model.reconstruct(images).astype(jnp.float32)
    if kind == "mse":
      per_pixel = (reconstruction - images) ** 2
    else:  # binary_crossentropy, clipped like Keras
      r = jnp.clip(reconstruction, 1e-7, 1 - 1e-7)
      per_pixel = -(images * jnp.log(r) + (1 - images) * jnp.log1p(-r))
    return _masked_mean(per_pixel.mean(axis=(1, 2)), weights), jnp.zeros(())

  return loss_fn


def _over_members(fn, in_axes, num_members: int, execution: str = "vmap"):
  """`fn` over a leading member axis: vmapped, mapped, or squeezed for one member.

  One member is a plain (un-vmapped) call, so a single run compiles exactly the
  program it would without members. "map" runs the members one after another
  inside one compiled program (`lax.map`), each on the unbatched program.
  """
  if num_members > 1 and execution == "vmap":
    return jax.vmap(fn, in_axes=in_axes)
  if num_members > 1:

    def mapped(*args):
      pairs = list(zip(args, in_axes, strict=True))

      def one(member_args):
        it = iter(member_args)
        return fn(*(arg if axis is None else next(it) for arg, axis in pairs))

      return jax.lax.map(one, tuple(arg for arg, axis in pairs if axis is not None))

    return mapped

  def squeezed(*args):
    args = [
      arg if axis is None else jax.tree.map(lambda x: x[0], arg)
      for arg, axis in zip(args, in_axes, strict=True)
    ]
    return jax.tree.map(lambda x: x[None], fn(*args))

  return squeezed


def _select(mask_M, new, old):
  """Per member: `new` where mask_M, else `old` (leaves stacked on a leading axis)."""
  return jax.tree.map(
    lambda n, o: jnp.where(mask_M.reshape(mask_M.shape + (1,) * (n.ndim - 1)), n, o), new, old
  )


# XLA options for the small programs a run compiles but barely runs (platform.py).
_CHEAP = platform.cheap_program_options()

# Outside a program, one compiled selection instead of a small program per leaf.
_select_jit = jax.jit(_select, compiler_options=_CHEAP)


def _select_by_host_mask(mask_M: np.ndarray, new, old):
  """`_select` for a mask known on the host: a program only where members differ."""
  if mask_M.all():
    return new
  if not mask_M.any():
    return old
  return _select_jit(jnp.asarray(mask_M), new, old)


@dataclasses.dataclass(frozen=True)
class Trainer:
  """The pure functions for one config, jitted once. Shapes are fixed by the dataset.

  Single-model functions take one TrainState; the `*_members` functions take
  `num_members` states stacked on a leading axis (one vmapped program).
  """

  train_graphdef: Any
  eval_graphdef: Any
  make_tx: Callable  # (**hyperparams) -> optax transformation
  tx: optax.GradientTransformation  # updates read the hyperparameters from the optimizer state
  schedule: Callable  # step -> learning-rate multiplier (peak 1)
  preprocess: Callable  # uint8 images -> float32 model input
  batch_size: int
  eval_batch_size: int
  label_smoothing: float  # the config's; members may override it
  steps_per_epoch: int
  num_members: int
  init: Callable  # (key, hyperparams=None) -> TrainState
  train_step: Callable  # (state, (images, labels, weights), key) -> state, metrics; jitted
  train_epoch: Callable  # (state, images, labels, key) -> state, {"loss", "correct", "count"}
  predict: Callable  # (state, images) -> logits
  # (keys[M], {name: values[M]}, [dropout rates[M], label smoothing[M]]; None: the config's)
  # -> stacked TrainState
  init_members: Callable
  member_dropout_rates: Callable  # ({"model.<key>": value}) -> DropoutRate state
  init_optimizer_members: Callable  # (params[M], {name: values[M]}) -> fresh opt_state[M]
  # (state, active[M], images, labels, keys[M]) -> state, metrics[M]; inactive members keep
  # their state, but a lone member always trains: call it only while the member is active
  train_members: Callable
  # (state, images[B], labels[B], 0/1 weights[B]) -> logits[M, B, C], confusion[M], loss sum[M],
  # B = eval_batch_size: the one forward program of `evaluate_members` and `predict_splits`
  evaluate_batch_members: Callable
  predict_members: Callable  # (state, images) -> logits[M, N, C]; one program per N
  layout: parallel.Layout

  @classmethod
  def create(
    cls,
    config: ConfigDict,
    train_images: np.ndarray,
    num_train: int,
    loss_fn=None,
    make_tx=None,
    num_epochs=None,
    num_members: int = 1,
    layout: parallel.Layout = parallel.SINGLE_DEVICE,
  ) -> "Trainer":
    def build(key):
      return models.build(
        config.model,
        conv_impl=config.conv_impl,
        pool_order=config.pool_order,
        compute_dtype=config.compute_dtype,
        rngs=nnx.Rngs(params=key),
      )

    abstract = nnx.eval_shape(lambda: build(jax.random.key(0)))
    abstract.train()  # dropout on, batch statistics updated
    train_graphdef = nnx.graphdef(abstract)
    abstract.eval()
    eval_graphdef = nnx.graphdef(abstract)
    config_dropout_rates = layers.configured_dropout_rates(abstract)
    training_options = platform.training_program_options(config.cpu_matmul_library)
    steps = math.ceil(num_train / config.batch_size)
    schedule = optax.constant_schedule(1.0)
    if make_tx is None:
      make_tx, schedule = make_optimizer(
        config.optimizer, steps, num_epochs or config.num_epochs, config.ema_decay
      )
    tx = make_tx()
    preprocess = data.make_preprocess(config.data.preprocessing, train_images)
    if loss_fn is None:
      loss_fn = classification_loss

    def init_optimizer(params, hyperparams=None):
      return make_tx(**(hyperparams or {})).init(params)

    def init(key, hyperparams=None, dropout_rates=None, label_smoothing=None) -> TrainState:
      _, params, rates, model_state = nnx.split(build(key), nnx.Param, layers.DropoutRate, ...)
      if label_smoothing is None and config.label_smoothing:
        label_smoothing = jnp.float32(config.label_smoothing)
      return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=init_optimizer(params, hyperparams),
        dropout_rates=rates if dropout_rates is None else dropout_rates,
        label_smoothing=label_smoothing,
      )

    def member_dropout_rates(overrides: dict[str, Any]) -> nnx.State:
      """The DropoutRate state of config.model with a member's `model.*` overrides."""
      if not overrides:
        return config_dropout_rates
      model_config = config.model.copy_and_resolve_references()
      for key, value in overrides.items():
        model_config[key.removeprefix("model.")] = value
      abstract = nnx.eval_shape(
        lambda: models.build(model_config, conv_impl=config.conv_impl, rngs=nnx.Rngs(params=0))
      )
      return layers.configured_dropout_rates(abstract)

    train_step, train_epoch = make_train_epoch(
      train_graphdef,
      tx,
      preprocess,
      loss_fn,
      config.batch_size,
      layout.split_batch,
      augment=augment_lib.make_augment(config.augment),
    )
    evaluate_batch, predict = make_evaluate(
      eval_graphdef,
      preprocess,
      config.eval_batch_size,
      layout.split_batch,
      flip_average=config.tta_flip,
    )

    execution = parallel.resolve_member_execution(config.parallel.members)

    def over(fn, in_axes):
      return _over_members(fn, in_axes, num_members, execution)

    init_each = over(init, (0, 0, 0, 0))

    def init_members(keys_M, hyperparams_M, dropout_rates_M=None, label_smoothing_M=None):
      return init_each(keys_M, hyperparams_M, dropout_rates_M, label_smoothing_M)

    def train_or_skip(state, active, images, labels, key):
      """A member's epoch, or (one after another, where a branch is really skipped) none
      for a stopped member: its state as it was, and zero metrics."""
      epoch = partial(train_epoch, images_Nx28x28=images, labels_N=labels, key=key)
      idle = jax.tree.map(jnp.zeros_like, jax.eval_shape(epoch, state)[1])
      return jax.lax.cond(active, epoch, lambda state: (state, idle), state)

    def train_members(state, active_M, images, labels, keys_M):
      if num_members > 1 and execution == "map":
        return over(train_or_skip, (0, 0, None, None, 0))(state, active_M, images, labels, keys_M)
      new_state, step_metrics = over(train_epoch, (0, None, None, 0))(state, images, labels, keys_M)
      if num_members == 1:  # `fit` trains a lone member only while it is active
        return new_state, step_metrics
      # Stopped or diverged members keep their weights while the others train on.
      return _select(active_M, new_state, state), step_metrics

    return cls(
      train_graphdef=train_graphdef,
      eval_graphdef=eval_graphdef,
      make_tx=make_tx,
      tx=tx,
      schedule=schedule,
      preprocess=preprocess,
      batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size,
      label_smoothing=config.label_smoothing,
      steps_per_epoch=steps,
      num_members=num_members,
      init=layout.jit(init),
      train_step=layout.jit(train_step, donate_argnums=0, compiler_options=training_options),
      train_epoch=layout.jit(train_epoch, donate_argnums=0, compiler_options=training_options),
      predict=layout.jit(predict),
      init_members=layout.jit(init_members, compiler_options=_CHEAP),
      member_dropout_rates=member_dropout_rates,
      init_optimizer_members=layout.jit(over(init_optimizer, (0, 0)), compiler_options=_CHEAP),
      train_members=layout.jit(train_members, donate_argnums=0, compiler_options=training_options),
      evaluate_batch_members=layout.jit(over(evaluate_batch, (0, None, None, None))),
      predict_members=layout.jit(over(predict, (0, None))),
      layout=layout,
    )

  def eval_batches(
    self, images, labels=None, batch_size: int | None = None
  ) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
    """Host images (and labels) as device (images, labels, 0/1 weights) batches of
    `batch_size` (default `eval_batch_size`), the last padded with weight-0 examples.
    Made once per split, so each epoch's validation copies nothing to the device."""
    batch_size = batch_size or self.eval_batch_size
    batches = []
    for start in range(0, images.shape[0], batch_size):
      batch_images = np.asarray(images[start : start + batch_size])
      count = batch_images.shape[0]
      batch_labels = np.zeros(count, np.int32) if labels is None else labels[start : start + count]
      batch_labels = np.asarray(batch_labels, np.int32)
      padding = batch_size - count
      weights = np.concatenate([np.ones(count, np.float32), np.zeros(padding, np.float32)])
      if padding:
        batch_images = np.pad(batch_images, [(0, padding), (0, 0), (0, 0)])
        batch_labels = np.pad(batch_labels, (0, padding))
      batches.append(tuple(self.layout.replicate(a) for a in (batch_images, batch_labels, weights)))
    return batches

  def evaluate_batches(self, state: TrainState, batches) -> tuple[np.ndarray, np.ndarray]:
    """Every member's confusion matrix [M, C, C] and loss sum [M] over `eval_batches`."""
    outputs = jax.device_get([self.evaluate_batch_members(state, *batch)[1:] for batch in batches])
    confusion_M = np.sum([confusion for confusion, _ in outputs], axis=0, dtype=np.int32)
    loss_sum_M = np.sum([loss for _, loss in outputs], axis=0, dtype=np.float64)
    return confusion_M, loss_sum_M

  def evaluate_members(self, state: TrainState, images, labels) -> tuple[np.ndarray, np.ndarray]:
    """Every member's confusion matrix [M, C, C] and loss sum [M] on host `images`, `labels`."""
    return self.evaluate_batches(state, self.eval_batches(images, labels))

  def predict_splits(
    self, state: TrainState, images_by_split, batch_size: int | None = None
  ) -> dict[str, np.ndarray]:
    """{split: every member's logits [M, N, C]} for host images, one program for every split
    (batches of `batch_size`, default `eval_batch_size`: the program evaluation runs)."""
    logits = jax.device_get(
      {
        name: [
          self.evaluate_batch_members(state, *batch)[0]
          for batch in self.eval_batches(images, batch_size=batch_size)
        ]
        for name, images in images_by_split.items()
      }
    )
    return {
      name: np.concatenate(logits[name], axis=1)[:, : images_by_split[name].shape[0]]
      for name in images_by_split
    }

  def member_settings(self, members: "Members") -> tuple[nnx.State, np.ndarray | None]:
    """Every member's dropout rates and label smoothing (None: off), stacked, on the host:
    what a TrainState holds besides a checkpoint's SavedState."""
    overrides = [tuple(sorted(members.model_overrides(i).items())) for i in range(len(members))]
    # Each distinct model config built once, from shapes.
    by_overrides = {o: self.member_dropout_rates(dict(o)) for o in set(overrides)}
    rates = jax.tree.map(lambda *values: np.stack(values), *(by_overrides[o] for o in overrides))
    smoothing = members.hyperparams.get("label_smoothing")
    if smoothing is None and self.label_smoothing:
      smoothing = (self.label_smoothing,) * len(members)
    return rates, None if smoothing is None else np.asarray(smoothing, np.float32)

  def init_state(self, members: "Members") -> TrainState:
    """The members' stacked initial state; member m's is a single run's with its seed."""
    return self.init_members(*self._init_arguments(members))

  def state_shapes(self, members: "Members") -> TrainState:
    """`init_state`'s shapes and dtypes, compiling nothing: a restore target."""
    return jax.eval_shape(self.init_members, *self._init_arguments(members))

  def _init_arguments(self, members: "Members") -> tuple:
    rates, smoothing = self.member_settings(members)
    return members.init_keys(), members.stacked_optimizer_hyperparams(), rates, smoothing

  def model(self, state: TrainState, train: bool = False) -> nnx.Module:
    """A stateful module view of one member's `state` (for inspection, export, plotting)."""
    graphdef = self.train_graphdef if train else self.eval_graphdef
    return nnx.merge(graphdef, state.params, state.dropout_rates, state.model_state)


# jax.random.permutation's stable sort of (random key, index) pairs runs in
# XLA:CPU's generic sort, one compiled comparator call per comparison (8 ms for
# 50,000 pairs, 2 rounds an epoch: 9% of an MLP epoch); a sort of one integer
# array takes a fast path (1.4 ms). Indices below 2**16 fit beside 16 key bits in
# one uint32, so two such sorts (a radix sort on the key's two halves) give the
# same stable order: the same permutation, bit for bit, ~5x faster.
_PACKED_INDEX_BITS = 16
_SHUFFLE_EXPONENT = 3  # jax's rounds: ceil(3 ln n / ln(2**32 - 1)), 2 for 50,000


def _stable_argsort_uint32(sort_keys):
  """The stable argsort of a uint32 vector of at most 2**16 keys: two single-array sorts."""
  position = jax.lax.iota(jnp.uint32, sort_keys.shape[0])
  index_mask = (1 << _PACKED_INDEX_BITS) - 1
  # By the keys' low half, ties by position; then stably by their high half.
  by_low = jax.lax.sort((sort_keys << _PACKED_INDEX_BITS) | position) & index_mask
  high = (sort_keys[by_low] >> _PACKED_INDEX_BITS) << _PACKED_INDEX_BITS
  return by_low[jax.lax.sort(high | position) & index_mask]


def shuffled_indices(key, num_examples: int):
  """`jax.random.permutation(key, num_examples)`, bit for bit, faster on CPU.

  Follows jax's algorithm (rounds of a stable sort by fresh 32-bit keys; see
  jax._src.random.core._shuffle), with each sort as `_stable_argsort_uint32`.
  """
  if num_examples > 1 << _PACKED_INDEX_BITS:
    return jax.random.permutation(key, num_examples)
  uint32_max = np.iinfo(np.uint32).max
  num_rounds = math.ceil(_SHUFFLE_EXPONENT * np.log(max(1, num_examples)) / np.log(uint32_max))
  order = jnp.arange(num_examples)
  for _ in range(num_rounds):
    key, subkey = jax.random.split(key)
    order = order[_stable_argsort_uint32(jax.random.bits(subkey, (num_examples,), jnp.uint32))]
  return order


def _epoch_batches(key, num_examples: int, batch_size: int):
  """A device-side shuffle split into [steps, batch] indices and 0/1 weights.

  The last batch is padded with weight-0 examples, so every example is seen once
  per epoch and the step count matches Keras' ceil(n / batch).
  """
  steps = -(-num_examples // batch_size)
  padding = steps * batch_size - num_examples
  order = shuffled_indices(key, num_examples)
  indices = jnp.concatenate([order, jnp.zeros((padding,), order.dtype)])
  weights = jnp.concatenate([jnp.ones((num_examples,)), jnp.zeros((padding,))])
  return indices.reshape(steps, batch_size), weights.reshape(steps, batch_size)


# TrainState.model_state: every variable but the parameters and the dropout rates.
_MODEL_STATE = nnx.Not(nnx.Any(nnx.Param, layers.DropoutRate))


def make_train_epoch(
  graphdef, tx, preprocess, loss_fn, batch_size: int, split_batch=lambda b: b, augment=None
):
  """The pure train step and one epoch of it as one compiled lax.scan over shuffled batches.

  `split_batch` places each gathered batch (on a mesh: split over the data axis);
  `augment(key, uint8 images)` (fmnist_jax/augment.py), if given, transforms each batch.
  """

  def train_step(state: TrainState, batch, key):
    """One optimizer step on (uint8 images, labels, 0/1 weights) with dropout key `key`."""
    images, labels, weights = batch
    if augment is not None:  # only then is the key split, so other runs keep their keys
      augment_key, key = jax.random.split(key)
      images = augment(augment_key, images)

    def objective(params):
      # copy=True: fresh Variables at this trace level, so BatchNorm may update its statistics.
      model = nnx.merge(graphdef, params, state.dropout_rates, state.model_state, copy=True)
      loss, correct = loss_fn(
        model, preprocess(images), labels, weights, nnx.Rngs(dropout=key), state.label_smoothing
      )
      return loss, (correct, nnx.state(model, _MODEL_STATE))

    (loss, (correct, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      model_state=model_state,
      opt_state=opt_state,
    )
    return state, {"loss": loss, "correct": correct, "count": weights.sum()}

  def train_epoch(state: TrainState, images_Nx28x28, labels_N, key):
    shuffle_key, dropout_key = jax.random.split(key)
    indices, weights = _epoch_batches(shuffle_key, labels_N.shape[0], batch_size)
    step_keys = jax.random.split(dropout_key, indices.shape[0])

    def body(state, step_inputs):
      batch_indices, batch_weights, step_key = step_inputs
      batch = (images_Nx28x28[batch_indices], labels_N[batch_indices], batch_weights)
      return train_step(state, split_batch(batch), step_key)

    return jax.lax.scan(body, state, (indices, weights, step_keys))

  return train_step, train_epoch


def _padded_batches(array, batch_size: int):
  steps = -(-array.shape[0] // batch_size)
  padding = steps * batch_size - array.shape[0]
  padded = jnp.pad(array, [(0, padding)] + [(0, 0)] * (array.ndim - 1))
  return padded.reshape(steps, batch_size, *array.shape[1:])


def make_evaluate(
  graphdef, preprocess, batch_size: int, split_batch=lambda b: b, flip_average: bool = False
):
  """Evaluation of one batch (logits, confusion matrix and loss sum), and prediction of
  any number of images (scanned over batches).

  `flip_average`: test-time augmentation, the mean logits of each image and its mirror.
  """

  def logits_fn(state: TrainState, images):
    model = nnx.merge(graphdef, state.params, state.dropout_rates, state.model_state)
    inputs = preprocess(split_batch(images))
    logits_of = lambda x: model(x).astype(jnp.float32)  # noqa: E731
    if flip_average:
      return (logits_of(inputs) + logits_of(inputs[:, :, ::-1])) / 2
    return logits_of(inputs)

  def evaluate_batch(state: TrainState, images_Bx28x28, labels_B, weights_B):
    """Logits, the confusion matrix and the loss sum of one batch (weight 0: padding)."""
    logits = logits_fn(state, images_Bx28x28)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels_B)
    confusion = metrics.confusion_matrix(labels_B, logits.argmax(-1), data.NUM_CLASSES, weights_B)
    return logits, confusion, (losses * weights_B).sum()

  def predict(state: TrainState, images_Nx28x28):
    batches = _padded_batches(images_Nx28x28, batch_size)
    logits = jax.lax.map(partial(logits_fn, state), batches)
    return logits.reshape(-1, logits.shape[-1])[: images_Nx28x28.shape[0]]

  return evaluate_batch, predict


def _member_val_metrics(trainer: Trainer, state: TrainState, batches, count: int) -> list[dict]:
  """Every member's validation metrics from one vmapped evaluation of `count` examples."""
  confusion_M, loss_sum_M = trainer.evaluate_batches(state, batches)
  return [
    metrics.summarize(confusion, loss_sum, count)
    for confusion, loss_sum in zip(confusion_M, loss_sum_M, strict=True)
  ]


def epoch_key(seed: int, stream: int, epoch: int):
  """The key of one epoch: a pure function of (seed, stream, epoch), so resumes replay it."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), epoch)


# Every member's key of one (stream, epoch); a member's keys are those of a single run
# with its seed, so member m of a vmapped run reproduces `--config.seed=<its seed>`.
_member_epoch_keys = jax.jit(jax.vmap(epoch_key, in_axes=(0, None, None)), compiler_options=_CHEAP)
_member_init_keys = jax.jit(
  jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), _TRAIN_STREAM)),
  compiler_options=_CHEAP,
)


@dataclasses.dataclass(frozen=True)
class Members:
  """The models one program trains together: each one's seed and hyperparameters.

  `hyperparams` maps dotted config keys to one value per member: the optimizer's
  (`OPTIMIZER_HYPERPARAMS`, in optax's state), the model's dropout rates
  (`models.DROPOUT_KEYS`, in `TrainState.dropout_rates`) and `label_smoothing`.
  """

  seeds: tuple[int, ...]
  hyperparams: dict[str, tuple[Any, ...]]

  def __len__(self) -> int:
    return len(self.seeds)

  def describe(self, index: int) -> dict[str, Any]:
    """Member `index`'s hyperparameters as dotted config keys."""
    return {key: values[index] for key, values in self.hyperparams.items()}

  def model_overrides(self, index: int) -> dict[str, Any]:
    return {k: v for k, v in self.describe(index).items() if k.startswith("model.")}

  def learning_rates(self) -> np.ndarray:
    return np.asarray(self.hyperparams["optimizer.learning_rate"], np.float64)

  def epoch_keys(self, stream: int, epoch: int) -> jax.Array:
    """Every member's key of one epoch of `stream`: its seed's single-run key."""
    return _member_epoch_keys(np.asarray(self.seeds, np.int32), stream, epoch)

  def init_keys(self) -> jax.Array:
    return _member_init_keys(np.asarray(self.seeds, np.int32))

  def stacked_optimizer_hyperparams(self) -> dict[str, jax.Array]:
    """{name: values[M]}, as `make_tx` takes them."""
    return {
      key.removeprefix("optimizer."): jnp.asarray(values, jnp.float32)
      for key, values in self.hyperparams.items()
      if key.startswith("optimizer.")
    }


def members_of(config: ConfigDict) -> Members:
  """`config.num_seeds` members with seeds seed, seed + 1, ... and the config's hyperparameters."""
  seeds = tuple(config.seed + index for index in range(config.num_seeds))
  return Members(
    seeds=seeds,
    hyperparams={
      f"optimizer.{name}": (value,) * len(seeds)
      for name, value in default_hyperparams(config.optimizer).items()
    },
  )


def _first_bad_step(step_metrics: dict, max_loss: float = 0.0) -> list[int | None]:
  """Per member: the index of the first step whose loss is NaN, inf or above `max_loss`
  (when > 0), or None."""
  loss_MxS = np.asarray(step_metrics["loss"])
  good_MxS = np.isfinite(loss_MxS) & ((max_loss <= 0) | (loss_MxS <= max_loss))
  return [None if row.all() else int(np.argmin(row)) for row in good_MxS]


def _divergence_error(
  loss, step: int, epoch: int, learning_rate: float, max_loss: float = 0.0
) -> FloatingPointError:
  what = (
    f"became {loss}"
    if not np.isfinite(loss)
    else f"reached {loss:.4g}, above divergence_threshold={max_loss:g}"
  )
  return FloatingPointError(
    f"training diverged: the loss {what} at step {step} (epoch {epoch + 1}). The checkpoint "
    f"of the last good epoch is kept. Lower optimizer.learning_rate (now {learning_rate:g}) "
    f"or use data.preprocessing='scale01', in a new --workdir (or rerun with --overwrite)."
  )


def _newly_diverged(
  step_metrics: dict,
  active_M: np.ndarray,
  steps_before_M: np.ndarray,
  epoch: int,
  members: Members,
  peak_learning_rates_M: np.ndarray,
  max_loss: float,
) -> np.ndarray:
  """The active members whose loss went bad in this epoch, each warned about.

  A single run, or a run whose every member diverged, raises instead: nothing is left to train.
  """
  diverged_M = np.zeros(len(members), bool)
  error = None
  for index, first_bad in enumerate(_first_bad_step(step_metrics, max_loss)):
    if first_bad is None or not active_M[index]:
      continue
    loss = step_metrics["loss"][index, first_bad]
    error = _divergence_error(
      loss,
      int(steps_before_M[index]) + first_bad + 1,
      epoch,
      float(peak_learning_rates_M[index]),
      max_loss,
    )
    if len(members) == 1:
      raise error
    diverged_M[index] = True
    described = ", ".join(
      f"{k}={metrics.format_value(v)}" for k, v in members.describe(index).items()
    )
    print(
      f"warning: member {index} (seed {members.seeds[index]}, {described}) diverged: its "
      f"training loss became {loss} in epoch {epoch + 1}. "
      f"It is frozen and reported as diverged; the other members go on.",
      file=sys.stderr,
    )
  if diverged_M.any() and not (active_M & ~diverged_M).any():
    raise FloatingPointError(f"every member diverged by epoch {epoch + 1}; {error}")
  return diverged_M


def _train_records(
  epoch: int, step_metrics: dict, seeds: Sequence[int], learning_rates_M: np.ndarray
) -> list[dict]:
  """Each member's training loss and accuracy over the epoch's examples, as logged."""
  # A skipped (stopped) member's epoch counted no examples; the caller drops its record.
  counts_M = np.maximum(step_metrics["count"].sum(axis=1), 1)
  return [
    {
      "epoch": epoch + 1,
      "member": index,
      "seed": seed,
      "train/loss": float(
        np.sum(step_metrics["loss"][index] * step_metrics["count"][index]) / counts_M[index]
      ),
      "train/accuracy": float(step_metrics["correct"][index].sum() / counts_M[index]),
      "learning_rate": float(learning_rates_M[index]),
    }
    for index, seed in enumerate(seeds)
  ]


def _pretrain(config, trainer_args, members: Members, state, train_data, log, layout) -> TrainState:
  """Trains the autoencoders on reconstruction; returns states with their own, fresh optimizer."""
  pre = config.pretrain

  def make_tx():
    return optax.adam(
      pre.learning_rate, b1=config.optimizer.b1, b2=config.optimizer.b2, eps=config.optimizer.eps
    )

  trainer = Trainer.create(
    config,
    *trainer_args,
    loss_fn=reconstruction_loss(pre.loss),
    make_tx=make_tx,
    num_members=len(members),
    layout=layout,
  )
  # A copy: train_members donates its state, and `state` must stay valid for the caller.
  pre_state = jax.tree.map(jnp.copy, state)
  pre_state = pre_state.replace(opt_state=trainer.init_optimizer_members(pre_state.params, {}))
  images, labels = train_data
  active = jnp.ones((len(members),), bool)
  for epoch in range(pre.num_epochs):
    pre_state, step_metrics = trainer.train_members(
      pre_state, active, images, labels, members.epoch_keys(_PRETRAIN_STREAM, epoch)
    )
    losses_MxS = np.asarray(step_metrics["loss"])
    for index, first_bad in enumerate(_first_bad_step(step_metrics)):
      if first_bad is not None:
        raise _divergence_error(
          losses_MxS[index, first_bad], first_bad + 1, epoch, pre.learning_rate
        )
      log(
        {
          "phase": "pretrain",
          "epoch": epoch + 1,
          "member": index,
          "seed": members.seeds[index],
          "pretrain/loss": float(np.mean(losses_MxS[index])),
        }
      )
  return pre_state


_VAL_KEYS = ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro")


def protocol(config: ConfigDict, dataset: data.Dataset, members: Members | None = None) -> str:
  """How the numbers were made, in one line (for tables and results.json).

  Label smoothing is the members' where they set it (a sweep), else the config's.
  """
  sizes = f"train {len(dataset.train):,}"
  if dataset.validation is not None:
    split = config.data.validation_split
    seed = f" seed {config.data.split_seed}" if split == "random" else ""
    sizes += f" / val {len(dataset.validation):,} ({split} split{seed})"
  sizes += f" / test {len(dataset.test):,}"
  es = config.early_stopping
  stopping = (
    f"early stopping on val loss (patience {es.patience})"
    + (", best weights restored" if es.restore_best else "")
    if es.enabled
    else f"{config.num_epochs} epochs"
  )
  values = (config.label_smoothing,)
  if members is not None and "label_smoothing" in members.hyperparams:
    values = members.hyperparams["label_smoothing"]
  smoothed = sorted({float(value) for value in values if value})
  smoothing = ""
  if smoothed:
    which = " (the members with label_smoothing > 0)" if not all(values) else ""
    smoothing = (
      f"; training targets smoothed by {', '.join(f'{v:g}' for v in smoothed)}{which} "
      f"(val and test losses: true labels)"
    )
  return f"{sizes}; inputs {config.data.preprocessing}; {stopping}{smoothing}"


def fit(
  config: ConfigDict,
  workdir: str | pathlib.Path,
  *,
  show_progress: bool = True,
  members: Members | None = None,
) -> dict:
  """Trains `config`'s members in `workdir` (resuming from its latest checkpoint).

  All members (`config.num_seeds` seeds, or the given `members`) train in one
  vmapped program; each has its own keys, hyperparameters and early stopping.
  Returns the results: per member, and mean/std/min/max over members.
  """
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

  with run:  # closed (saves finished, lock released) however training ends
    layout = parallel.make_layout(config)
    # Training reads the uint8 split on the device; evaluation feeds host batches.
    train_data = (layout.replicate(dataset.train.images), layout.replicate(dataset.train.labels))
    members = members or members_of(config)
    num_members = len(members)
    trainer_args = (dataset.train.images, len(dataset.train))
    trainer = Trainer.create(config, *trainer_args, num_members=num_members, layout=layout)
    state = trainer.init_state(members)
    # One member's trainable parameters, from the stacked shapes (nothing traced or compiled).
    num_params = models.count_params(state.params, stacked=True)
    # Jitted, so its arrays live where the state does (replicated on a mesh).
    new_early_stopping = layout.jit(
      partial(EarlyStopping.create, num_members=num_members), compiler_options=_CHEAP
    )
    early = new_early_stopping(state)
    es_config = config.early_stopping
    has_val = dataset.validation is not None
    if has_val:  # on the device once, for every epoch's validation
      val_batches = trainer.eval_batches(dataset.validation.images, dataset.validation.labels)
    update_members = jax.jit(
      jax.vmap(
        partial(update_early_stopping, patience=es_config.patience, min_delta=es_config.min_delta),
        in_axes=(0, 0, 0, None, 0),
      ),
      compiler_options=_CHEAP,
    )
    peak_learning_rates = members.learning_rates()
    # The learning-rate multiplier of every step of the run (for the logs), computed before
    # training: lowered after the first epoch, as it was, this small program took 0.3-0.9 s
    # (sota.py, sota_wrn.py), 0.03 s before it.
    run_steps = config.num_epochs * trainer.steps_per_epoch
    step_multipliers = np.broadcast_to(  # a constant schedule returns a scalar
      jax.jit(jax.vmap(trainer.schedule), compiler_options=_CHEAP)(
        np.arange(run_steps, dtype=np.int32)
      ),
      (run_steps,),
    )

    start_epoch = 0
    restored = run.restore_latest({"state": state.checkpointed(), "early_stopping": early})
    if restored is not None:
      start_epoch, payload = restored[0], layout.adopt(restored[1])
      state = state.restored(payload["state"])
      early = payload["early_stopping"]
    elif config.pretrain.num_epochs > 0:
      pretrained = _pretrain(
        config, trainer_args, members, state, train_data, run.log_metrics, layout
      )
      state = state.replace(
        params=pretrained.params,
        model_state=pretrained.model_state,
        opt_state=trainer.init_optimizer_members(
          pretrained.params, members.stacked_optimizer_hyperparams()
        ),
      )
      early = new_early_stopping(state)

    def active_members() -> np.ndarray:
      stopped, diverged = jax.device_get((early.stopped, early.diverged))
      return ~diverged & ~(stopped & es_config.enabled)

    resuming = restored is not None and start_epoch < config.num_epochs
    if resuming and checkpoint.is_writer() and active_members().any():
      print(f"{run.path}: resuming after epoch {start_epoch}, its latest save", file=sys.stderr)

    bar = progress_lib.EpochBar(
      config.num_epochs,
      start_epoch,
      enabled=show_progress and checkpoint.is_writer(),
      desc=config.model.name,
      patience=es_config.patience if has_val and es_config.enabled else None,
    )
    saved_epoch = trained_epoch = start_epoch
    summaries = summary.Writer(
      run.path,
      config,
      summary.member_names(members.seeds, [members.describe(i) for i in range(num_members)]),
      steps_per_epoch=trainer.steps_per_epoch,
      start_epoch=start_epoch,
      enabled=checkpoint.is_writer(),
    )

    def save():
      run.save(trained_epoch, {"state": state.checkpointed(), "early_stopping": early})

    preemption = parallel.PreemptionSignal()
    try:
      for epoch in range(start_epoch, config.num_epochs):
        active = active_members()
        if not active.any():
          break
        epoch_start = time.time()
        steps_before = np.asarray(state.step)
        state, step_metrics = trainer.train_members(
          state,
          jnp.asarray(active),
          *train_data,
          members.epoch_keys(_TRAIN_STREAM, epoch),
        )
        step_metrics = jax.device_get(step_metrics)
        diverged_now = _newly_diverged(
          step_metrics,
          active,
          steps_before,
          epoch,
          members,
          peak_learning_rates,
          config.divergence_threshold,
        )
        if diverged_now.any():
          early = early.replace(diverged=early.diverged | jnp.asarray(diverged_now))
        first_step = int(steps_before.max())
        # first_step is epoch * steps_per_epoch: the active members trained every epoch.
        multipliers_S = step_multipliers[first_step : first_step + trainer.steps_per_epoch]
        learning_rates = peak_learning_rates * multipliers_S[0]
        summaries.log_steps(
          epoch + 1,
          step_metrics,
          steps_before,
          peak_learning_rates[:, None] * multipliers_S[None, :],
          active & ~diverged_now,
        )
        records = _train_records(epoch, step_metrics, members.seeds, learning_rates)
        if has_val:
          # With ema_decay, validation and early stopping see the averaged weights.
          evaluated = averaged_state(config, state)
          val_metrics = _member_val_metrics(
            trainer, evaluated, val_batches, len(dataset.validation)
          )
          for record, val in zip(records, val_metrics, strict=True):
            record.update({f"val/{key}": val[key] for key in _VAL_KEYS})
          early = update_members(
            early,
            evaluated,
            jnp.asarray([val["loss"] for val in val_metrics], jnp.float32),
            epoch,
            jnp.asarray(active & ~diverged_now),
          )
        seconds = time.time() - epoch_start
        active_records = [records[index] for index in np.flatnonzero(active)]
        for record in active_records:
          record["seconds"] = seconds
          run.log_metrics(record)
        summaries.log_epoch(active_records)
        trained_epoch = epoch + 1
        if has_val and (np.asarray(early.best_epoch) == epoch).any():
          run.save_best(
            trained_epoch, {"params": early.best_params, "model_state": early.best_model_state}
          )
        preempted = preemption.received()
        if preempted or trained_epoch % config.checkpoint.every_epochs == 0:
          save()
          saved_epoch = trained_epoch
        shown = _mean_record(active_records, num_active=int(active.sum()))
        if bar.enabled and bar.patience:  # (nothing to fetch for a hidden bar)
          still_training = active_members()
          if still_training.any():  # the member that stops last
            shown["since_best"] = int(np.asarray(early.wait)[still_training].min())
        bar.update(shown)
        if preempted:
          raise Preempted(
            f"stopped by SIGTERM (preemption) after epoch {trained_epoch}; its checkpoint is in "
            f"{run.path}: rerun the same command to resume"
          )
      if trained_epoch > saved_epoch:  # early stopping ended the run between two saves
        save()
    finally:
      # A NaN, Ctrl-C or SIGTERM must not cut off an asynchronous save of the last good epoch.
      preemption.close()
      bar.close()
      run.wait()
      summaries.close()

    stopped, diverged, best_epoch = jax.device_get(
      (early.stopped, early.diverged, early.best_epoch)
    )
    final_state, restore = final_states(config, state, early, has_validation=has_val)
    # One forward pass over every split gives every member's metrics and the ensembles'.
    logits = trainer.predict_splits(
      final_state, {name: split.images for name, split in dataset.splits().items()}
    )
    scored = ensemble.score(
      logits, {name: split.labels for name, split in dataset.splits().items()}
    )
    member_metrics = scored["members"]
    steps = np.asarray(state.step)
    results = {
      "model": config.model.name,
      "num_params": num_params,
      "num_members": num_members,
      "protocol": protocol(config, dataset, members),
      "data": dataset.source,
      "summary": metrics.across_members(member_metrics),
      "members": [
        {
          "member": index,
          "seed": members.seeds[index],
          "hyperparameters": members.describe(index),
          "epochs_trained": int(steps[index]) // trainer.steps_per_epoch,
          "stopped_early": bool(es_config.enabled and stopped[index]),
          "diverged": bool(diverged[index]),
          "best_epoch": int(best_epoch[index]) + 1 if has_val and best_epoch[index] >= 0 else None,
          "restored_best": bool(restore[index]),
          "metrics": member_metrics[index],
        }
        for index in range(num_members)
      ],
      "wall_seconds": time.time() - start_time,  # this process, so a resume counts from 0
      "train_seconds": checkpoint.train_seconds(run.read_metrics()),  # every epoch, across resumes
    }
    if num_members > 1 and all(len(set(v)) == 1 for v in members.hyperparams.values()):
      # Seeds of one recipe: their ensemble is free to score, and worth knowing.
      results["ensemble"] = {"rules": scored["rules"], "gain": ensemble.best_member_gain(scored)}
    # Before results.json, which marks the run finished: ensembles score these logits.
    results["logits"] = run.write_logits(logits, dataset.fingerprint())
    summaries.log_results(config, results["members"])
    run.write_results(results)
  if config.figures:
    smoothed = bool(config.label_smoothing) or any(  # the config's, or a swept member's
      member["hyperparameters"].get("label_smoothing") for member in results["members"]
    )
    analysis.write_run_outputs(
      run.path,
      workdir.name,
      results,
      dataset.test,
      jax.device_get(logits["test"]),
      smoothed_train_loss=smoothed,
    )
  return results


def final_states(
  config: ConfigDict, state: TrainState, early: EarlyStopping, *, has_validation: bool
) -> tuple[TrainState, np.ndarray]:
  """The members' reported weights, and per member whether they are its best epoch's.

  As Keras: best weights come back only with EarlyStopping(restore_best_weights=True).
  """
  es_config = config.early_stopping
  restore = (np.asarray(early.best_epoch) >= 0) & bool(
    has_validation and es_config.enabled and es_config.restore_best
  )
  state = averaged_state(config, state)  # the weights evaluated (EMA ones with ema_decay)
  best = state.replace(params=early.best_params, model_state=early.best_model_state)
  return _select_by_host_mask(restore, best, state), restore


def _mean_record(records: list[dict], num_active: int) -> dict:
  """The progress bar's view of an epoch: each metric's mean over the active members."""
  mean = {
    key: float(np.mean([record[key] for record in records]))
    for key in records[0]
    if key.startswith(("train/", "val/"))
  }
  return {
    **mean,
    "epoch": records[0]["epoch"],
    "seconds": records[0]["seconds"],
    "members": num_active,
  }
