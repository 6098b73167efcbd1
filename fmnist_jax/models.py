"""The model families of both studies, as Flax NNX modules, and their registry.

Every model maps float images `[B, 28, 28]` to logits `[B, NUM_CLASSES]` and
takes `rngs` (an `nnx.Rngs` with a `dropout` stream) only for dropout in
training mode; train/eval behaviour is switched with `.train()` / `.eval()`.
Kernels are glorot-uniform and biases zero (Keras' defaults, see `layers`).

  MLP                  A1, B1, B2: dense layers, optional dropout and batch norm.
  VGG                  A2: the intended conv stack (each conv feeds the next).
  AutoencoderClassifier A3/A4: ConvAutoencoder (encoder, decoder) + MLP head.
  CNN                  B4: conv -> pool stages, then dense layers.
  ResidualCNN          B5: stages of two convolutions with a residual connection.
"""

import itertools
import math
from collections.abc import Sequence

import jax
from flax import nnx
from ml_collections import ConfigDict

from fmnist_jax import layers
from fmnist_jax.data import IMAGE_SHAPE, NUM_CLASSES
from fmnist_jax.errors import ConfigError

IMAGE_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
# The model config keys holding dropout rates. No shape depends on them, so the members
# of one vmapped program may differ in them (layers.DropoutRate).
DROPOUT_KEYS = ("dropout_rates", "conv_dropout_rates", "dense_dropout_rates", "head_dropout_rates")


def _per_layer(value, count: int, name: str) -> tuple:
  """Broadcasts a scalar setting to `count` layers, or checks a sequence's length."""
  if isinstance(value, Sequence) and not isinstance(value, str):
    if len(value) != count:
      raise ConfigError(
        f"model.{name} has {len(value)} entries for {count} layers; give one value or {count}"
      )
    return tuple(value)
  return (value,) * count


def _add_channel(images_BxHxW):
  return images_BxHxW[..., None] if images_BxHxW.ndim == 3 else images_BxHxW


class MLP(nnx.Module):
  """Dense -> [BatchNorm] -> activation -> [Dropout] per hidden layer, then a linear head."""

  def __init__(
    self,
    hidden_sizes: Sequence[int],
    *,
    activation: str = "relu",
    dropout_rates: float | Sequence[float] = 0.0,
    batch_norm: bool = False,
    in_features: int = IMAGE_PIXELS,
    num_classes: int = NUM_CLASSES,
    rngs: nnx.Rngs,
  ):
    self.activation = layers.activation(activation)
    rates = _per_layer(dropout_rates, len(hidden_sizes), "dropout_rates")
    sizes = [in_features, *hidden_sizes]
    self.hidden = nnx.List([layers.dense(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
    self.norms = nnx.List(
      [layers.batch_norm(n, rngs=rngs) for n in hidden_sizes] if batch_norm else []
    )
    self.dropouts = nnx.List([layers.Dropout(rate) for rate in rates])
    self.output = layers.dense(sizes[-1], num_classes, rngs=rngs)

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    x = x.reshape(x.shape[0], -1)
    for i, layer in enumerate(self.hidden):
      x = layer(x)
      if self.norms:
        x = self.norms[i](x)
      x = self.dropouts[i](self.activation(x), rngs=rngs)
    return self.output(x)


class VGG(nnx.Module):
  """Study A2: blocks of 3x3 SAME convolutions, each block followed by 2x2 max pooling.

  The study's listing applied its second 64-filter convolution to the input, so
  the first convolution was dead; this is the intended stack, each layer
  feeding the next.
  """

  def __init__(
    self,
    blocks: Sequence[Sequence[int]] = ((64, 64), (128, 128), (256, 256)),
    dense_sizes: Sequence[int] = (500, 250),
    *,
    activation: str = "relu",
    conv_impl: str = "auto",
    num_classes: int = NUM_CLASSES,
    rngs: nnx.Rngs,
  ):
    self.activation = layers.activation(activation)
    convs, channels, side = [], 1, IMAGE_SHAPE[0]
    for block in blocks:
      for features in block:
        convs.append(layers.Conv(channels, features, impl=conv_impl, rngs=rngs))
        channels = features
      side //= 2
    self.block_sizes = tuple(len(block) for block in blocks)
    self.convs = nnx.List(convs)
    self.head = MLP(
      dense_sizes,
      activation=activation,
      in_features=side * side * channels,
      num_classes=num_classes,
      rngs=rngs,
    )

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    x, convs = _add_channel(x), iter(self.convs)
    for block_size in self.block_sizes:
      for _ in range(block_size):
        x = self.activation(next(convs)(x))
      x = layers.max_pool(x)
    return self.head(x, rngs=rngs)


class ConvEncoder(nnx.Module):
  """Study A3's encoder: (3x3 SAME conv -> 2x2 max pool) per width; 28x28 -> 3x3x64."""

  def __init__(
    self,
    features: Sequence[int] = (16, 32, 64),
    *,
    activation: str = "selu",
    conv_impl: str = "auto",
    rngs: nnx.Rngs,
  ):
    self.activation = layers.activation(activation)
    channels = [1, *features]
    self.convs = nnx.List(
      [layers.Conv(a, b, impl=conv_impl, rngs=rngs) for a, b in itertools.pairwise(channels)]
    )

  def __call__(self, x):
    for conv in self.convs:
      x = layers.max_pool(self.activation(conv(x)))
    return x


class ConvDecoder(nnx.Module):
  """Study A3's decoder: stride-2 3x3 transposed convolutions, 3x3x64 -> 28x28x1.

  The first is VALID (3 -> 7), the others SAME (7 -> 14 -> 28); the last has a
  sigmoid so the reconstruction lives in [0, 1] like the scaled input.
  """

  def __init__(
    self,
    features: Sequence[int] = (32, 16, 1),
    paddings: Sequence[str] = ("VALID", "SAME", "SAME"),
    in_features: int = 64,
    *,
    activation: str = "selu",
    output_activation: str = "sigmoid",
    conv_impl: str = "auto",
    rngs: nnx.Rngs,
  ):
    self.activation = layers.activation(activation)
    self.output_activation = layers.activation(output_activation)
    channels = [in_features, *features]
    paddings = _per_layer(paddings, len(features), "decoder_paddings")
    self.deconvs = nnx.List(
      [
        layers.ConvTranspose(a, b, padding=p, impl=conv_impl, rngs=rngs)
        for (a, b), p in zip(itertools.pairwise(channels), paddings, strict=True)
      ]
    )

  def __call__(self, code):
    x = code
    for deconv in self.deconvs[:-1]:
      x = self.activation(deconv(x))
    return self.output_activation(self.deconvs[-1](x))


class ConvAutoencoder(nnx.Module):
  """Encoder + decoder; `__call__` reconstructs `[B, 28, 28]` images."""

  def __init__(self, encoder: ConvEncoder, decoder: ConvDecoder):
    self.encoder = encoder
    self.decoder = decoder

  def __call__(self, x):
    return self.decoder(self.encoder(_add_channel(x)))[..., 0]


class AutoencoderClassifier(nnx.Module):
  """Study A3: the reconstruction (28x28) is flattened into an MLP head.

  313,139 parameters: encoder 23,296 + decoder 23,233 + head 266,610. The
  autoencoder can be pre-trained alone on reconstruction (`reconstruct`).
  """

  def __init__(
    self,
    encoder_features: Sequence[int] = (16, 32, 64),
    decoder_features: Sequence[int] = (32, 16, 1),
    decoder_paddings: Sequence[str] = ("VALID", "SAME", "SAME"),
    head_sizes: Sequence[int] = (300, 100),
    *,
    autoencoder_activation: str = "selu",
    head_activation: str = "relu",
    head_dropout_rates: float | Sequence[float] = 0.0,
    conv_impl: str = "auto",
    num_classes: int = NUM_CLASSES,
    rngs: nnx.Rngs,
  ):
    encoder = ConvEncoder(
      encoder_features, activation=autoencoder_activation, conv_impl=conv_impl, rngs=rngs
    )
    decoder = ConvDecoder(
      decoder_features,
      decoder_paddings,
      in_features=encoder_features[-1],
      activation=autoencoder_activation,
      conv_impl=conv_impl,
      rngs=rngs,
    )
    self.autoencoder = ConvAutoencoder(encoder, decoder)
    self.head = MLP(
      head_sizes,
      activation=head_activation,
      dropout_rates=head_dropout_rates,
      num_classes=num_classes,
      rngs=rngs,
    )

  def reconstruct(self, x):
    return self.autoencoder(x)

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    return self.head(self.autoencoder(x), rngs=rngs)


class ConvStage(nnx.Module):
  """conv -> [BatchNorm] -> activation, then [2x2 max pool] -> [Dropout]."""

  def __init__(
    self,
    in_features: int,
    features: int,
    *,
    kernel_size: int,
    activation: str,
    batch_norm: bool,
    pool: bool,
    dropout_rate: float,
    conv_impl: str,
    pool_order: str = "auto",
    rngs: nnx.Rngs,
  ):
    self.conv = layers.Conv(
      in_features, features, (kernel_size, kernel_size), impl=conv_impl, rngs=rngs
    )
    self.norm = layers.batch_norm(features, rngs=rngs) if batch_norm else None
    self.activation = layers.activation(activation)
    self.pool = pool
    self.dropout = layers.Dropout(dropout_rate)
    layers.resolve_pool_order(pool_order)  # fail early on a bad name
    # The pool can go first only where it commutes with the activation.
    self.pool_order = pool_order if activation in layers.NONDECREASING_ACTIVATIONS else "pool_last"

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    x = self.conv(x)
    pool_first = layers.resolve_pool_order(self.pool_order) == "pool_first"
    if self.pool and self.norm is not None and pool_first:
      return self.dropout(self.activation(layers.pool_then_normalize(self.norm, x)), rngs=rngs)
    if self.norm is not None:
      x = self.norm(x)
    x = self.activation(x)
    if self.pool:
      x = layers.max_pool(x)
    return self.dropout(x, rngs=rngs)


class CNN(nnx.Module):
  """Study B4: one ConvStage per entry of `conv_features`, then an MLP head."""

  def __init__(
    self,
    conv_features: Sequence[int] = (32, 64, 128),
    dense_sizes: Sequence[int] = (128,),
    *,
    kernel_size: int = 3,
    activation: str = "relu",
    batch_norm: bool = False,
    pool: bool | Sequence[bool] = True,
    conv_dropout_rates: float | Sequence[float] = 0.0,
    dense_dropout_rates: float | Sequence[float] = 0.0,
    conv_impl: str = "auto",
    pool_order: str = "auto",
    num_classes: int = NUM_CLASSES,
    rngs: nnx.Rngs,
  ):
    pools = _per_layer(pool, len(conv_features), "pool")
    rates = _per_layer(conv_dropout_rates, len(conv_features), "conv_dropout_rates")
    stages, channels, side = [], 1, IMAGE_SHAPE[0]
    for features, pool_here, rate in zip(conv_features, pools, rates, strict=True):
      stages.append(
        ConvStage(
          channels,
          features,
          kernel_size=kernel_size,
          activation=activation,
          batch_norm=batch_norm,
          pool=pool_here,
          dropout_rate=rate,
          conv_impl=conv_impl,
          pool_order=pool_order,
          rngs=rngs,
        )
      )
      channels, side = features, side // 2 if pool_here else side
    self.stages = nnx.List(stages)
    self.head = MLP(
      dense_sizes,
      activation=activation,
      dropout_rates=dense_dropout_rates,
      in_features=side * side * channels,
      num_classes=num_classes,
      rngs=rngs,
    )

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    x = _add_channel(x)
    for stage in self.stages:
      x = stage(x, rngs=rngs)
    return self.head(x, rngs=rngs)


class ResidualBlock(nnx.Module):
  """Two 3x3 convolutions with a skip: act(x' + bn(conv(act(bn(conv(x)))))).

  x' is x, or a 1x1 projection of it when the width changes (as in ResNet v1).
  """

  def __init__(
    self,
    in_features: int,
    features: int,
    *,
    kernel_size: int = 3,
    activation: str = "relu",
    batch_norm: bool = True,
    conv_impl: str = "auto",
    rngs: nnx.Rngs,
  ):
    size = (kernel_size, kernel_size)
    self.conv1 = layers.Conv(in_features, features, size, impl=conv_impl, rngs=rngs)
    self.conv2 = layers.Conv(features, features, size, impl=conv_impl, rngs=rngs)
    self.norm1 = layers.batch_norm(features, rngs=rngs) if batch_norm else None
    self.norm2 = layers.batch_norm(features, rngs=rngs) if batch_norm else None
    self.projection = (
      layers.Conv(in_features, features, (1, 1), impl=conv_impl, rngs=rngs)
      if in_features != features
      else None
    )
    self.activation = layers.activation(activation)

  def __call__(self, x):
    y = self.conv1(x)
    y = self.activation(self.norm1(y) if self.norm1 is not None else y)
    y = self.conv2(y)
    y = self.norm2(y) if self.norm2 is not None else y
    skip = self.projection(x) if self.projection is not None else x
    return self.activation(skip + y)


class ResidualCNN(nnx.Module):
  """Study B5: residual blocks (two convs each), each followed by [2x2 max pool] -> [Dropout]."""

  def __init__(
    self,
    stage_features: Sequence[int] = (32, 64, 128),
    dense_sizes: Sequence[int] = (128,),
    *,
    kernel_size: int = 3,
    activation: str = "relu",
    batch_norm: bool = True,
    pool: bool | Sequence[bool] = True,
    dropout_rates: float | Sequence[float] = 0.0,
    dense_dropout_rates: float | Sequence[float] = 0.0,
    conv_impl: str = "auto",
    num_classes: int = NUM_CLASSES,
    rngs: nnx.Rngs,
  ):
    rates = _per_layer(dropout_rates, len(stage_features), "dropout_rates")
    self.pools = _per_layer(pool, len(stage_features), "pool")
    blocks, channels, side = [], 1, IMAGE_SHAPE[0]
    for features, pool_here in zip(stage_features, self.pools, strict=True):
      blocks.append(
        ResidualBlock(
          channels,
          features,
          kernel_size=kernel_size,
          activation=activation,
          batch_norm=batch_norm,
          conv_impl=conv_impl,
          rngs=rngs,
        )
      )
      channels, side = features, side // 2 if pool_here else side
    self.blocks = nnx.List(blocks)
    self.dropouts = nnx.List([layers.Dropout(rate) for rate in rates])
    self.head = MLP(
      dense_sizes,
      activation=activation,
      dropout_rates=dense_dropout_rates,
      in_features=side * side * channels,
      num_classes=num_classes,
      rngs=rngs,
    )

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    x = _add_channel(x)
    for block, pool, dropout in zip(self.blocks, self.pools, self.dropouts, strict=True):
      x = block(x)
      x = dropout(layers.max_pool(x) if pool else x, rngs=rngs)
    return self.head(x, rngs=rngs)


class PreActBlock(nnx.Module):
  """A wide ResNet block (pre-activation): x' + conv(drop(act(bn(conv(act(bn(x))))))).

  The first convolution carries the block's stride; x' is x, or a 1x1 (strided)
  projection of act(bn(x)) when the width or the size changes (Zagoruyko and
  Komodakis 2016, after He et al.'s identity mappings).
  """

  def __init__(
    self,
    in_features: int,
    features: int,
    *,
    stride: int,
    activation: str,
    dropout_rate: float,
    batch_norm_momentum: float,
    conv_impl: str,
    rngs: nnx.Rngs,
  ):
    def conv(c_in, c_out, size, stride=1):
      return layers.Conv(
        c_in, c_out, (size, size), stride, use_bias=False, impl=conv_impl, rngs=rngs
      )

    self.norm1 = layers.batch_norm(in_features, momentum=batch_norm_momentum, rngs=rngs)
    self.conv1 = conv(in_features, features, 3, stride)
    self.norm2 = layers.batch_norm(features, momentum=batch_norm_momentum, rngs=rngs)
    self.dropout = layers.Dropout(dropout_rate)
    self.conv2 = conv(features, features, 3)
    changes_shape = in_features != features or stride != 1
    self.projection = conv(in_features, features, 1, stride) if changes_shape else None
    self.activation = layers.activation(activation)

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    activated = self.activation(self.norm1(x))
    y = self.conv1(activated)
    y = self.dropout(self.activation(self.norm2(y)), rngs=rngs)
    y = self.conv2(y)
    return (self.projection(activated) if self.projection is not None else x) + y


class WideResNet(nnx.Module):
  """WRN-depth-width: a 3x3 stem of 16 channels, three groups of (depth - 4) / 6
  pre-activation blocks at 16, 32 and 64 x width channels (the second and third
  start with a stride of 2: 28 -> 14 -> 7), then bn -> act -> global average pool
  -> Dense. Convolutions have no bias (each feeds a batch norm). Batch norm
  momentum 0.9 (the paper's Torch code; PyTorch's 0.1): with Keras' 0.99 the
  running statistics of this deep a network lag far behind its weights in a short
  run (a 2-epoch WRN-10-1: 0.21 test accuracy with them, 0.84 with batch statistics)."""

  def __init__(
    self,
    depth: int = 16,
    width: int = 4,
    *,
    activation: str = "relu",
    dropout_rates: float = 0.0,
    batch_norm_momentum: float = 0.9,
    conv_impl: str = "auto",
    num_classes: int = NUM_CLASSES,
    rngs: nnx.Rngs,
  ):
    if depth < 10 or (depth - 4) % 6:
      raise ConfigError(
        f"model.depth={depth}: a wide ResNet's depth is 6n + 4 (10, 16, 22, 28, 40)"
      )
    blocks_per_group = (depth - 4) // 6
    self.stem = layers.Conv(1, 16, (3, 3), use_bias=False, impl=conv_impl, rngs=rngs)
    blocks, channels = [], 16
    for group, stride in enumerate((1, 2, 2)):
      features = 16 * 2**group * width
      for index in range(blocks_per_group):
        blocks.append(
          PreActBlock(
            channels,
            features,
            stride=stride if index == 0 else 1,
            activation=activation,
            dropout_rate=dropout_rates,
            batch_norm_momentum=batch_norm_momentum,
            conv_impl=conv_impl,
            rngs=rngs,
          )
        )
        channels = features
    self.blocks = nnx.List(blocks)
    self.norm = layers.batch_norm(channels, momentum=batch_norm_momentum, rngs=rngs)
    self.activation = layers.activation(activation)
    self.head = layers.dense(channels, num_classes, rngs=rngs)

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    x = self.stem(_add_channel(x))
    for block in self.blocks:
      x = block(x, rngs=rngs)
    x = self.activation(self.norm(x))
    return self.head(x.mean(axis=(1, 2)))


MODELS = {
  "mlp": MLP,
  "vgg": VGG,
  "autoencoder": AutoencoderClassifier,
  "cnn": CNN,
  "resnet": ResidualCNN,
  "wide_resnet": WideResNet,
}
CONV_MODELS = ("vgg", "autoencoder", "cnn", "resnet", "wide_resnet")


def build(
  model_config: ConfigDict,
  *,
  conv_impl: str = "auto",
  pool_order: str = "auto",
  compute_dtype: str = "float32",
  rngs: nnx.Rngs,
) -> nnx.Module:
  """Builds `MODELS[model_config.name]` from the rest of `model_config`'s fields.

  `conv_impl` and `pool_order` (the CNN's) choose how, not what, the model computes
  (layers.resolve_conv_impl, layers.resolve_pool_order). `compute_dtype` other than
  float32 (e.g. bfloat16 on GPU/TPU) casts each layer's inputs and parameters on the
  fly; the parameters themselves stay float32.
  """
  kwargs = model_config.to_dict()
  name = kwargs.pop("name", None)
  if name not in MODELS:
    raise ConfigError(f"unknown model.name {name!r}; choose one of {sorted(MODELS)}")
  if name in CONV_MODELS:
    kwargs["conv_impl"] = conv_impl
  if name == "cnn":
    kwargs["pool_order"] = pool_order
  try:
    model = MODELS[name](**kwargs, rngs=rngs)
  except TypeError as error:  # an argument the constructor does not take
    raise ConfigError(
      f"model {name!r}: {error}; see fmnist_jax/models.py {MODELS[name].__name__} for its arguments"
    ) from None
  except (ValueError, ArithmeticError, IndexError) as error:
    # A value config_checks does not know (a model's own knob) that the layers cannot take.
    raise ConfigError(
      f"model {name!r} cannot be built from config.model ({type(error).__name__}: {error}); "
      f"check its values against fmnist_jax/models.py {MODELS[name].__name__}"
    ) from None
  return model if compute_dtype == "float32" else layers.set_compute_dtype(model, compute_dtype)


def count_params(module: nnx.Module | nnx.State, *, stacked: bool = False) -> int:
  """Number of trainable parameters (batch-norm statistics excluded) of a module, or of
  its parameter state; `stacked`: the leaves have a leading member axis (a TrainState's
  params, arrays or shapes), counted once."""
  params = module if isinstance(module, nnx.State) else nnx.state(module, nnx.Param)
  return sum(math.prod(p.shape[int(stacked) :]) for p in jax.tree.leaves(params))


def param_table(module: nnx.Module) -> list[tuple[str, str, int]]:
  """(layer path, its parameter shapes, its parameter count) per layer, e.g.
  ("stages.0.conv", "kernel 3x3x1x32, bias 32", 320)."""
  layers_: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
  for path, node in nnx.iter_graph(module):
    if isinstance(node, nnx.Param):
      *owner, name = map(str, path)
      layers_.setdefault(".".join(owner), []).append((name, node.shape))
  return [
    (
      layer,
      ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in params),
      sum(math.prod(shape) for _, shape in params),
    )
    for layer, params in layers_.items()
  ]
