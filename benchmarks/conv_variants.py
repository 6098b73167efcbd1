"""Ways to compute a 3x3 SAME convolution on the CPU, forward and backward inside a scan.

  python -m benchmarks.conv_variants [--config=configs/resnet.py]
      [--variants=im2col,hybrid,rows,winograd]

Times, for every 3x3 convolution of the config's residual CNN at its batch size,
a scanned loop of steps that each take the convolution's gradients with respect
to its kernel and its input (as training does), one variant after another in
each repeat (interleaved), and prints the median milliseconds per step:

- im2col: the 9 shifted input slices concatenated on channels, one matmul
  (`layers._im2col_conv`, what `Conv` runs on CPU);
- xla: `lax.conv_general_dilated`, the library convolution;
- hybrid: the library convolution for the forward pass and the input gradient,
  the kernel gradient as 9 shifted matmuls (`layers._hybrid_conv`, what `Conv`
  runs on CPU with conv_impl="hybrid");
- rows: the 3 width shifts concatenated (a third of im2col's copy), then 3
  height-shifted matmuls summed;
- winograd: Winograd F(2x2, 3x3): 4x4 input tiles transformed, 16 matmuls with
  2.25x fewer multiplications than the direct convolution, outputs transformed back.

Every variant is checked against `lax.conv_general_dilated` before it is timed.
Wait for a quiet machine first: ../shared/tools/wait-quiet.
"""

from fmnist_jax import platform

platform.configure_xla()

import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from jax import lax
from ml_collections import config_flags

from fmnist_jax import data, layers


def conv_xla(x, kernel):
  return lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def conv_im2col(x, kernel):
  return layers._im2col_conv(x, kernel, "SAME")


def conv_hybrid(x, kernel):
  return layers._hybrid_conv(x, kernel, layers._explicit_padding(x, kernel.shape[:2], "SAME"))


def conv_rows(x, kernel):
  kh, kw, channels, features = kernel.shape
  _, height, width, _ = x.shape
  padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  columns = jnp.concatenate([padded[:, :, j : j + width] for j in range(kw)], axis=-1)
  return sum(
    columns[:, i : i + height] @ kernel[i].reshape(kw * channels, features) for i in range(kh)
  )


# Winograd F(2x2, 3x3) transforms (Lavin & Gray, 2015): Y = A^T [(G g G^T) * (B^T d B)] A.
_BT = jnp.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], jnp.float32)
_G = jnp.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], jnp.float32)
_AT = jnp.array([[1, 1, 1, 0], [0, 1, -1, -1]], jnp.float32)


def conv_winograd(x, kernel):
  batch, height, width, channels = x.shape
  features = kernel.shape[-1]
  tiles_h, tiles_w = -(-height // 2), -(-width // 2)
  padded = jnp.pad(x, ((0, 0), (1, 1 + 2 * tiles_h - height), (1, 1 + 2 * tiles_w - width), (0, 0)))
  rows = jnp.stack([padded[:, a : a + 2 * tiles_h : 2] for a in range(4)], axis=2)
  tiles = jnp.stack([rows[:, :, :, b : b + 2 * tiles_w : 2] for b in range(4)], axis=4)
  inputs = jnp.einsum("ia,ntaubc->intubc", _BT, tiles)
  inputs = jnp.einsum("jb,intubc->ijntuc", _BT, inputs).reshape(4, 4, -1, channels)
  weights = jnp.einsum("ia,abcf,jb->ijcf", _G, kernel, _G)
  products = jnp.einsum("ijnc,ijcf->ijnf", inputs, weights)
  products = products.reshape(4, 4, batch, tiles_h, tiles_w, features)
  out = jnp.einsum("pi,ijntuf->pjntuf", _AT, products)
  out = jnp.einsum("qj,pjntuf->ntpuqf", _AT, out)
  return out.reshape(batch, 2 * tiles_h, 2 * tiles_w, features)[:, :height, :width]


VARIANTS = {
  "im2col": conv_im2col,
  "xla": conv_xla,
  "hybrid": conv_hybrid,
  "rows": conv_rows,
  "winograd": conv_winograd,
}


def conv_shapes(config) -> list[tuple[int, int, int, int]]:
  """(side, in channels, out channels) of each 3x3 conv of the residual CNN, with the batch."""
  model, side, channels = config.model, data.IMAGE_SHAPE[0], 1
  shapes = []
  for features, pool in zip(model.stage_features, model.pool, strict=True):
    shapes += [(side, channels, features), (side, features, features)]
    channels, side = features, side // 2 if pool else side
  # The first conv's input is the image itself: no input gradient, and 1 channel.
  return [(config.batch_size, *shape) for shape in shapes if shape[1] > 1]


def time_variants(shape, names, steps, repeats):
  batch, side, channels, features = shape
  key_x, key_k, key_g = jax.random.split(jax.random.key(0), 3)
  xs = jax.random.normal(key_x, (steps, batch, side, side, channels))
  kernel = 0.1 * jax.random.normal(key_k, (3, 3, channels, features))
  cotangent = jax.random.normal(key_g, (batch, side, side, features))
  reference = conv_xla(xs[0], kernel)
  epochs, errors = {}, {}
  for name in names:
    conv = VARIANTS[name]
    errors[name] = float(jnp.max(jnp.abs(conv(xs[0], kernel) - reference)))

    def epoch(kernel, xs, conv=conv):
      def step(kernel, x):
        grads = jax.grad(lambda k, x: jnp.vdot(conv(x, k), cotangent), argnums=(0, 1))(kernel, x)
        return kernel - 1e-6 * grads[0], jnp.sum(grads[1])

      return lax.scan(step, kernel, xs)

    epochs[name] = jax.jit(epoch)
    jax.block_until_ready(epochs[name](kernel, xs))  # compile and warm up
  seconds = {name: [] for name in names}
  for _ in range(repeats):
    for name in names:
      start = time.perf_counter()
      jax.block_until_ready(epochs[name](kernel, xs))
      seconds[name].append((time.perf_counter() - start) / steps)
  return {name: (statistics.median(seconds[name]), errors[name]) for name in names}


def main(argv):
  del argv
  flag = flags.FLAGS
  names = flag.variants
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
  print(f"ms per step (forward + kernel and input gradients), median of {flag.repeats}")
  print("batch x side x side x in -> out | " + " | ".join(names))
  totals = dict.fromkeys(names, 0.0)
  for shape in conv_shapes(flag.config):
    results = time_variants(shape, names, flag.steps, flag.repeats)
    for name in names:
      assert results[name][1] < 1e-3, f"{name} differs from lax.conv by {results[name][1]}"
      totals[name] += results[name][0]
    batch, side, channels, features = shape
    cells = " | ".join(f"{1e3 * results[name][0]:.1f}" for name in names)
    print(f"{batch} x {side} x {side} x {channels} -> {features} | {cells}")
  print("all convs | " + " | ".join(f"{1e3 * totals[name]:.1f}" for name in names))


def _define_flags():
  # Defined only when run: the tests import this module beside other benchmarks' `--config`.
  config_flags.DEFINE_config_file(
    "config", "configs/resnet.py", "A residual CNN config.", lock_config=True
  )
  flags.DEFINE_list("variants", ["im2col", "hybrid", "rows", "winograd"], "Variants to time.")
  flags.DEFINE_integer("steps", 10, "Steps in each timed scan.")
  flags.DEFINE_integer("repeats", 5, "Interleaved repeats.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
