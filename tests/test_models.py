"""Layers and models: im2col and hybrid equal XLA's conv, parameter counts, output shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from fmnist_jax import layers, models
from fmnist_jax.errors import ConfigError


def _conv_params(kernel, c_in, c_out):
  return kernel * kernel * c_in * c_out + c_out


def _dense_params(n_in, n_out):
  return n_in * n_out + n_out


def _assert_matches_xla(module, x, impl):
  """`module` computes the outputs and gradients of XLA's convolution with `impl`."""

  def loss(module, x):
    return jnp.sum(jnp.sin(module(x)))

  def outputs_and_grads(impl):
    module.impl = impl
    return module(x), nnx.grad(loss, argnums=(0, 1))(module, x)

  (out_xla, grads_xla), (out, grads) = outputs_and_grads("xla"), outputs_and_grads(impl)
  np.testing.assert_allclose(out, out_xla, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_xla), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  "cls,padding,side,extra",
  [
    (layers.Conv, "SAME", 7, {}),
    (layers.Conv, "VALID", 7, {}),
    (layers.Conv, "SAME", 6, {}),
    # Strided (the wide ResNet's downsampling): odd and even sides, 3x3 and 1x1.
    (layers.Conv, "SAME", 7, {"strides": 2}),
    (layers.Conv, "SAME", 6, {"strides": 2}),
    (layers.Conv, "VALID", 7, {"strides": 2}),
    (layers.Conv, "SAME", 7, {"strides": 2, "kernel_size": (1, 1)}),
    (layers.ConvTranspose, "SAME", 7, {}),
    (layers.ConvTranspose, "VALID", 3, {}),
  ],
)
def test_im2col_matches_xla_outputs_and_gradients(cls, padding, side, extra):
  x = jax.random.normal(jax.random.key(0), (3, side, side, 4))
  extra = {"kernel_size": (3, 3), **extra}
  _assert_matches_xla(cls(4, 5, padding=padding, rngs=nnx.Rngs(0), **extra), x, "im2col")


@pytest.mark.parametrize(
  "padding,side,kernel_size,c_in",
  [
    ("SAME", 7, (3, 3), 4),
    ("SAME", 6, (3, 3), 4),
    ("VALID", 7, (3, 3), 4),
    ("SAME", 7, (1, 1), 8),  # a 1x1 conv that narrows (one that widens runs as im2col)
    ("SAME", 6, (2, 3), 1),  # uneven SAME padding, one input channel
    (((2, 0), (1, 3)), 5, (3, 3), 4),  # explicit, asymmetric padding
  ],
)
def test_hybrid_matches_xla_outputs_and_gradients(padding, side, kernel_size, c_in):
  x = jax.random.normal(jax.random.key(0), (3, side, side, c_in))
  module = layers.Conv(c_in, 5, kernel_size, padding=padding, rngs=nnx.Rngs(0))
  _assert_matches_xla(module, x, "hybrid")


def test_hybrid_computes_the_kernel_gradient_as_matmuls_not_a_convolution():
  # XLA:CPU's kernel-gradient convolution is what the path exists to avoid.
  x = jnp.ones((2, 6, 6, 4))

  def convolutions_in_kernel_gradient(impl):
    graphdef, params = nnx.split(layers.Conv(4, 5, impl=impl, rngs=nnx.Rngs(0)))
    loss = lambda params: jnp.sum(nnx.merge(graphdef, params)(x) ** 2)  # noqa: E731
    return jax.jit(jax.grad(loss)).lower(params).as_text().count("stablehlo.convolution")

  assert convolutions_in_kernel_gradient("xla") == 2  # forward, kernel gradient
  assert convolutions_in_kernel_gradient("hybrid") == 1  # forward only


def test_hybrid_runs_narrow_convolutions_as_im2col():
  # kh*kw*C <= F: the single-channel first conv and the 1x1 projections of resnet.py.
  def convolutions(c_in, c_out, kernel_size):
    module = layers.Conv(c_in, c_out, kernel_size, impl="hybrid", rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(module)
    x = jnp.ones((2, 6, 6, c_in))
    loss = lambda params: jnp.sum(nnx.merge(graphdef, params)(x) ** 2)  # noqa: E731
    return jax.jit(jax.grad(loss)).lower(params).as_text().count("stablehlo.convolution")

  assert convolutions(1, 24, (3, 3)) == 0
  assert convolutions(24, 48, (1, 1)) == 0
  assert convolutions(24, 24, (3, 3)) == 1  # forward (x is no argument of the gradient)
  assert convolutions(48, 24, (1, 1)) == 1


def test_hybrid_kernel_gradient_over_batch_chunks_matches_xla(monkeypatch):
  x = jax.random.normal(jax.random.key(0), (8, 7, 7, 4))
  monkeypatch.setattr(layers, "HYBRID_CHUNK_BYTES", x.nbytes // 4)
  assert layers._batch_chunks(x) == 4
  _assert_matches_xla(layers.Conv(4, 5, rngs=nnx.Rngs(0)), x, "hybrid")
  half = layers.Conv(4, 5, impl="hybrid", dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  grads = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32)))(half)
  assert grads.kernel[...].dtype == jnp.float32


def test_hybrid_batch_chunks_divide_the_batch_or_none():
  def chunks(*shape):
    return layers._batch_chunks(jax.ShapeDtypeStruct(shape, jnp.float32))

  images_per_chunk = layers.HYBRID_CHUNK_BYTES // (28 * 28 * 24 * 4)
  assert chunks(images_per_chunk, 28, 28, 24) == 1
  assert chunks(128, 28, 28, 24) == 4  # resnet.py's first stage
  assert chunks(128, 14, 14, 24) == 1
  assert chunks(131, 28, 28, 24) == 1  # a prime batch: no split


def test_hybrid_runs_strided_convolutions_as_im2col_and_in_bfloat16():
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
  strided = layers.Conv(4, 5, strides=2, impl="xla", rngs=nnx.Rngs(0))
  expected = strided(x)
  strided.impl = "hybrid"
  np.testing.assert_allclose(strided(x), expected, rtol=1e-5, atol=1e-5)
  half = layers.Conv(4, 5, impl="hybrid", dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  grads = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32)))(half)
  assert half(x).dtype == jnp.bfloat16 and grads.kernel[...].dtype == jnp.float32


def test_conv_transpose_output_sizes_match_the_study():
  # A3's decoder: 3 -> 7 (VALID), 7 -> 14 -> 28 (SAME), all stride 2.
  for impl in ("xla", "im2col"):
    decoder = models.ConvDecoder(conv_impl=impl, rngs=nnx.Rngs(0))
    assert decoder(jnp.zeros((2, 3, 3, 64))).shape == (2, 28, 28, 1)


def test_max_pool_matches_reduce_window_and_drops_ragged_edge():
  x = jax.random.normal(jax.random.key(1), (2, 7, 7, 3))
  expected = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  np.testing.assert_array_equal(layers.max_pool(x), expected)
  assert layers.max_pool(x).shape == (2, 3, 3, 3)


def test_conv_impl_auto_resolves_by_backend_and_rejects_unknown():
  on_cpu = jax.default_backend() == "cpu"
  assert layers.resolve_conv_impl("auto") == ("im2col" if on_cpu else "xla")
  assert layers.resolve_conv_impl("hybrid") == ("hybrid" if on_cpu else "xla")
  with pytest.raises(ConfigError, match="conv_impl"):
    layers.resolve_conv_impl("cudnn")


def _norm_with_scales(scales, biases):
  norm = layers.batch_norm(len(scales), rngs=nnx.Rngs(0))
  norm.scale[...] = jnp.asarray(scales, jnp.float32)
  norm.bias[...] = jnp.asarray(biases, jnp.float32)
  return norm


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("side", [8, 9])  # 9: the ragged last row and column are dropped
def test_pool_first_equals_batch_norm_then_pool(mode, side):
  """pool_then_normalize + relu == max_pool(relu(norm(x))): outputs, gradients, statistics."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, side, side, 5)).astype(np.float32)
  x[:, :4, :4, :] = 0.5  # tied windows, as a background of equal pixels gives
  x = jnp.asarray(x)
  # Negative scales pool the minimum; scales are nonzero (at 0 the two orders
  # pick different subgradients of the kink, see pool_then_normalize).
  scales, biases = [1.5, -0.7, 2.0, -1.0, 0.3], [0.1, -0.2, 0.0, 0.5, -1.0]
  cotangent = jnp.asarray(rng.standard_normal((4, side // 2, side // 2, 5)), jnp.float32)

  def loss(norm, x, pool_first):
    if pool_first:
      y = jax.nn.relu(layers.pool_then_normalize(norm, x))
    else:
      y = layers.max_pool(jax.nn.relu(norm(x)))
    return jnp.sum(y * cotangent), y

  results = {}
  for pool_first in (False, True):
    norm = _norm_with_scales(scales, biases)
    norm.mean[...], norm.var[...] = jnp.full((5,), 0.2), jnp.full((5,), 1.7)
    if mode == "eval":
      norm.eval()
    (_, y), grads = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(norm, x, pool_first)
    results[pool_first] = y, grads, norm.mean[...], norm.var[...]
  (y_last, g_last, mean_last, var_last), (y_first, g_first, mean_first, var_first) = (
    results[False],
    results[True],
  )
  assert y_first.shape == (4, side // 2, side // 2, 5)
  np.testing.assert_allclose(y_first, y_last, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(g_first[1], g_last[1], rtol=1e-5, atol=1e-6)  # d loss / d x
  for name in ("scale", "bias"):
    np.testing.assert_allclose(g_first[0][name][...], g_last[0][name][...], rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(g_last[1])).sum() > 1  # the gradients compared are not all 0
  # The running statistics move in training (and equally), not in evaluation.
  np.testing.assert_allclose(mean_first, mean_last, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(var_first, var_last, rtol=1e-6)
  moved = not np.allclose(np.asarray(var_first), 1.7)
  assert moved == (mode == "train")


def test_cnn_pool_orders_compute_the_same_model():
  """A batch-norm CNN: pool_first and pool_last give the same logits and gradients, and
  pool_last is the layers as written (an activation that does not commute with the
  pool keeps it too)."""
  images = jnp.asarray(np.random.default_rng(1).random((8, 28, 28)), jnp.float32)
  config = dict(conv_features=(8, 16), dense_sizes=(32,), batch_norm=True, pool=True)

  def logits_and_grads(pool_order, activation="relu"):
    model = models.CNN(**config, activation=activation, pool_order=pool_order, rngs=nnx.Rngs(0))
    model.train()
    loss = lambda model: jnp.sum(jnp.sin(model(images)))  # noqa: E731
    return model(images), nnx.grad(loss)(model), model

  last, first = logits_and_grads("pool_last"), logits_and_grads("pool_first")
  np.testing.assert_allclose(first[0], last[0], rtol=1e-4, atol=1e-5)
  # atol: the conv biases ahead of batch norm have a true gradient of 0 (float noise ~1e-5).
  for a, b in zip(jax.tree.leaves(first[1]), jax.tree.leaves(last[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  assert first[2].stages[0].pool_order == "pool_first"
  assert logits_and_grads("pool_first", "gelu")[2].stages[0].pool_order == "pool_last"


def test_pool_order_auto_resolves_by_backend_and_rejects_unknown():
  on_cpu = jax.default_backend() == "cpu"
  assert layers.resolve_pool_order("auto") == ("pool_first" if on_cpu else "pool_last")
  assert layers.resolve_pool_order("pool_last") == "pool_last"
  with pytest.raises(ConfigError, match="pool_order"):
    models.CNN(pool_order="before", rngs=nnx.Rngs(0))


def test_autoencoder_parameter_counts_are_study_a3s():
  model = models.AutoencoderClassifier(rngs=nnx.Rngs(0))
  encoder_oracle = _conv_params(3, 1, 16) + _conv_params(3, 16, 32) + _conv_params(3, 32, 64)
  decoder_oracle = _conv_params(3, 64, 32) + _conv_params(3, 32, 16) + _conv_params(3, 16, 1)
  assert models.count_params(model.autoencoder.encoder) == encoder_oracle == 23_296
  assert models.count_params(model.autoencoder.decoder) == decoder_oracle == 23_233
  assert models.count_params(model.head) == 235_500 + 30_100 + 1_010
  assert models.count_params(model) == 313_139
  x = jnp.zeros((2, 28, 28))
  assert model.autoencoder.encoder(x[..., None]).shape == (2, 3, 3, 64)
  assert model.reconstruct(x).shape == (2, 28, 28)


def test_model_parameter_counts_match_formulas():
  rngs = nnx.Rngs(0)
  assert (
    models.count_params(models.MLP((300, 100), rngs=rngs))
    == (_dense_params(784, 300) + _dense_params(300, 100) + _dense_params(100, 10))
    == 266_610
  )
  vgg_convs = [(1, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256)]
  assert models.count_params(models.VGG(rngs=rngs)) == (
    sum(_conv_params(3, a, b) for a, b in vgg_convs)
    + _dense_params(3 * 3 * 256, 500)
    + _dense_params(500, 250)
    + _dense_params(250, 10)
  )
  assert models.count_params(models.CNN((32, 64, 128), (128,), rngs=rngs)) == (
    _conv_params(3, 1, 32)
    + _conv_params(3, 32, 64)
    + _conv_params(3, 64, 128)
    + _dense_params(3 * 3 * 128, 128)
    + _dense_params(128, 10)
  )
  batch_norm = 2  # trainable scale and bias per channel; statistics are not params
  resnet = sum(
    _conv_params(3, a, b) + _conv_params(3, b, b) + _conv_params(1, a, b) + 2 * batch_norm * b
    for a, b in [(1, 32), (32, 64), (64, 128)]
  )
  assert models.count_params(models.ResidualCNN((32, 64, 128), (128,), rngs=rngs)) == (
    resnet + _dense_params(3 * 3 * 128, 128) + _dense_params(128, 10)
  )
  # B5 (configs/resnet.py): no pool after the last block, so 7x7x128 feeds the head.
  b5 = models.ResidualCNN((32, 64, 128), (256,), pool=(True, True, False), rngs=rngs)
  assert models.count_params(b5) == resnet + _dense_params(7 * 7 * 128, 256) + _dense_params(
    256, 10
  )
  assert b5(jnp.zeros((2, 28, 28))).shape == (2, 10)


def _wide_resnet_params(depth, width, in_channels=1, num_classes=10):
  """WRN-depth-width's parameter count, block by block (batch norm: scale and bias)."""
  total, channels = 3 * 3 * in_channels * 16, 16
  for group in range(3):
    features = 16 * 2**group * width
    for index in range((depth - 4) // 6):
      projection = channels != features or (group > 0 and index == 0)
      total += 2 * channels + 9 * channels * features + 2 * features + 9 * features * features
      total += channels * features if projection else 0
      channels = features
  return total + 2 * channels + channels * num_classes + num_classes


def test_wide_resnet_parameter_counts_match_the_paper():
  # Zagoruyko and Komodakis 2016, on 3-channel CIFAR-10: WRN-40-4 8.9M, WRN-16-8 11.0M,
  # WRN-28-10 36.5M. The formula agrees; the model (1 input channel) agrees with it.
  for depth, width, millions in ((40, 4, 8.9), (16, 8, 11.0), (28, 10, 36.5)):
    assert round(_wide_resnet_params(depth, width, in_channels=3) / 1e6, 1) == millions
  for depth, width in ((10, 1), (16, 4)):
    model = models.WideResNet(depth, width, rngs=nnx.Rngs(0))
    assert models.count_params(model) == _wide_resnet_params(depth, width)
  with pytest.raises(ConfigError, match="6n \\+ 4"):
    models.WideResNet(12, 1, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
  "name,kwargs",
  [
    ("mlp", {"hidden_sizes": (32, 16), "dropout_rates": 0.5, "batch_norm": True}),
    ("vgg", {"blocks": ((8,), (8,)), "dense_sizes": (16,)}),
    ("autoencoder", {}),
    (
      "cnn",
      {
        "conv_features": (8, 16),
        "dense_sizes": (16,),
        "batch_norm": True,
        "conv_dropout_rates": 0.25,
        "dense_dropout_rates": 0.5,
      },
    ),
    ("resnet", {"stage_features": (8, 16), "dense_sizes": (16,), "dropout_rates": 0.1}),
    ("wide_resnet", {"depth": 10, "width": 1, "dropout_rates": 0.3}),
  ],
)
def test_every_model_maps_images_to_logits_in_both_modes(name, kwargs):
  model = models.build(ConfigDict({"name": name, **kwargs}), rngs=nnx.Rngs(0))
  images = jax.random.uniform(jax.random.key(0), (4, 28, 28))
  model.train()
  train_logits = model(images, rngs=nnx.Rngs(dropout=1))
  model.eval()
  eval_logits = model(images)
  assert train_logits.shape == eval_logits.shape == (4, 10)
  assert np.isfinite(np.asarray(eval_logits)).all()
  np.testing.assert_array_equal(eval_logits, model(images))  # eval is deterministic


def test_dropout_masks_depend_only_on_the_key():
  model = models.MLP((64,), dropout_rates=0.5, rngs=nnx.Rngs(0))
  images = jnp.ones((2, 28, 28))
  first = model(images, rngs=nnx.Rngs(dropout=7))
  np.testing.assert_array_equal(first, model(images, rngs=nnx.Rngs(dropout=7)))
  assert not np.array_equal(first, model(images, rngs=nnx.Rngs(dropout=8)))


def test_dropout_equals_flax_dropout_and_takes_its_rate_from_state():
  x = jax.random.normal(jax.random.key(0), (64, 32))
  ours = layers.Dropout(0.3)(x, rngs=nnx.Rngs(dropout=5))
  flax_dropout = nnx.Dropout(0.3)(x, rngs=nnx.Rngs(dropout=5))
  np.testing.assert_array_equal(ours == 0, flax_dropout == 0)
  np.testing.assert_allclose(ours, flax_dropout, rtol=1e-6)

  # Members of one vmapped call with their own rates, from a layer built with 0.5.
  layer = layers.Dropout(0.5)
  graphdef, rates, rest = nnx.split(layer, layers.DropoutRate, ...)
  member_rates = jax.tree.map(lambda r: jnp.asarray([0.0, 0.25, 0.75]), rates)

  def apply(rates_one, key):
    return nnx.merge(graphdef, rates_one, rest)(x, rngs=nnx.Rngs(dropout=key))

  out = jax.vmap(apply, in_axes=(0, None))(member_rates, jax.random.key(1))
  np.testing.assert_array_equal(out[0], x)  # rate 0: exactly the input
  for member, rate in ((1, 0.25), (2, 0.75)):
    dropped = np.asarray(out[member] == 0)
    assert abs(dropped.mean() - rate) < 0.05
    np.testing.assert_allclose(out[member][~dropped], x[~dropped] / (1 - rate), rtol=1e-6)


def test_a_model_draws_the_dropout_keys_flax_dropout_draws():
  # Layers that are off take no key, as with nnx.Dropout, so runs keep their numbers.
  model = models.MLP((32, 16, 8), dropout_rates=(0.0, 0.3, 0.5), rngs=nnx.Rngs(0))
  images = jax.random.uniform(jax.random.key(1), (4, 28, 28))
  ours = model(images, rngs=nnx.Rngs(dropout=3))
  model.dropouts = nnx.List([nnx.Dropout(rate) for rate in (0.0, 0.3, 0.5)])
  np.testing.assert_allclose(ours, model(images, rngs=nnx.Rngs(dropout=3)), rtol=1e-5)


def test_configured_dropout_rates_reads_an_abstract_model():
  config = ConfigDict({"name": "mlp", "hidden_sizes": (8, 4), "dropout_rates": (0.2, 0.0)})
  abstract = nnx.eval_shape(lambda: models.build(config, rngs=nnx.Rngs(0)))
  rates = [float(r) for r in jax.tree.leaves(layers.configured_dropout_rates(abstract))]
  assert rates == pytest.approx([0.2, 0.0])


def test_keras_initialisation_glorot_uniform_kernels_zero_biases():
  layer = layers.dense(784, 300, rngs=nnx.Rngs(0))
  limit = np.sqrt(6 / (784 + 300))
  kernel = np.asarray(layer.kernel[...])
  assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit
  np.testing.assert_array_equal(layer.bias[...], 0)


def test_build_rejects_unknown_names_and_arguments():
  with pytest.raises(ConfigError, match="unknown model.name 'transformer'"):
    models.build(ConfigDict({"name": "transformer"}), rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match="widths"):
    models.build(ConfigDict({"name": "cnn", "widths": (8,)}), rngs=nnx.Rngs(0))
  # A value the layers cannot take, past config_checks (a direct call): named, not a traceback.
  with pytest.raises(ConfigError, match=r"model 'cnn' cannot be built .*ZeroDivisionError"):
    models.build(ConfigDict({"name": "cnn", "kernel_size": 0}), rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match="activation 'relux'"):
    models.build(
      ConfigDict({"name": "mlp", "hidden_sizes": (8,), "activation": "relux"}), rngs=nnx.Rngs(0)
    )
  with pytest.raises(ConfigError, match="dropout_rates has 3 entries for 2 layers"):
    models.build(
      ConfigDict({"name": "mlp", "hidden_sizes": (8, 8), "dropout_rates": (0.1, 0.1, 0.1)}),
      rngs=nnx.Rngs(0),
    )


def test_param_table_lists_every_layer_and_adds_up():
  model = models.CNN((8, 16), (32,), rngs=nnx.Rngs(0))
  table = models.param_table(model)
  assert ("stages.0.conv", "bias 8, kernel 3x3x1x8", 80) in table
  assert sum(count for _, _, count in table) == models.count_params(model)
