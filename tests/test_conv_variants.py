"""The convolution variants `benchmarks.conv_variants` times compute the same convolution."""

import jax
import numpy as np
import pytest

from benchmarks import conv_variants
from configs import resnet


@pytest.mark.parametrize("name", sorted(conv_variants.VARIANTS))
@pytest.mark.parametrize("side", [6, 7])  # Winograd's 2x2 output tiles: even and odd sides
def test_variant_equals_lax_conv_with_its_gradients(name, side):
  key_x, key_k, key_g = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(key_x, (2, side, side, 3))
  kernel = jax.random.normal(key_k, (3, 3, 3, 5))
  cotangent = jax.random.normal(key_g, (2, side, side, 5))
  conv = conv_variants.VARIANTS[name]

  def grads(conv):
    return jax.grad(lambda k, x: (conv(x, k) * cotangent).sum(), argnums=(0, 1))(kernel, x)

  np.testing.assert_allclose(conv(x, kernel), conv_variants.conv_xla(x, kernel), atol=1e-4)
  for got, want in zip(grads(conv), grads(conv_variants.conv_xla), strict=True):
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_conv_shapes_are_resnet_py_s_3x3_convs_after_the_first():
  config = resnet.get_config()  # widths 24 -> 48 -> 96, pools after the first two
  assert conv_variants.conv_shapes(config) == [
    (128, 28, 24, 24),
    (128, 14, 24, 48),
    (128, 14, 48, 48),
    (128, 7, 48, 96),
    (128, 7, 96, 96),
  ]
