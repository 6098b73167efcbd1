"""Data augmentation on the device, inside the compiled epoch: flips, translations, cutout.

Each transform works on a batch of uint8 images [B, 28, 28] with one key per
step, so an augmented epoch is still one `lax.scan` with no host work, and the
same seed gives the same augmented batches. Horizontal flips suit Fashion-MNIST
(garments and shoes are roughly mirror-symmetric, and the test set has shoes
facing both ways); vertical ones do not.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict


def flip(key, images_BxHxW):
  """Mirrors each image left-right with probability 1/2."""
  mirror_B = jax.random.bernoulli(key, 0.5, images_BxHxW.shape[:1])
  return jnp.where(mirror_B[:, None, None], images_BxHxW[:, :, ::-1], images_BxHxW)


def translate(key, images_BxHxW, max_shift: int):
  """Shifts each image by up to `max_shift` pixels along each axis, filling with black
  (a random crop of the image padded by `max_shift`)."""
  batch, height, width = images_BxHxW.shape
  padded = jnp.pad(images_BxHxW, [(0, 0), (max_shift, max_shift), (max_shift, max_shift)])
  offsets_Bx2 = jax.random.randint(key, (batch, 2), 0, 2 * max_shift + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1]), (height, width))

  return jax.vmap(crop)(padded, offsets_Bx2)


def cutout(key, images_BxHxW, size: int):
  """Blacks out one `size` x `size` square per image, centred anywhere in the image
  (so it may be clipped at the border), as DeVries & Taylor (2017)."""
  batch, height, width = images_BxHxW.shape
  row_key, col_key = jax.random.split(key)
  top_Bx1 = jax.random.randint(row_key, (batch, 1), 0, height) - size // 2
  left_Bx1 = jax.random.randint(col_key, (batch, 1), 0, width) - size // 2
  rows, cols = jnp.arange(height)[None], jnp.arange(width)[None]
  inside_rows = (rows >= top_Bx1) & (rows < top_Bx1 + size)
  inside_cols = (cols >= left_Bx1) & (cols < left_Bx1 + size)
  mask_BxHxW = inside_rows[:, :, None] & inside_cols[:, None, :]
  return jnp.where(mask_BxHxW, jnp.zeros_like(images_BxHxW), images_BxHxW)


def make_augment(config: ConfigDict) -> Callable | None:
  """`augment(key, images) -> images` for `config.augment`, or None when it does nothing."""
  steps = []
  if config.flip:
    steps.append(flip)
  if config.translate:
    steps.append(lambda key, images: translate(key, images, config.translate))
  if config.cutout:
    steps.append(lambda key, images: cutout(key, images, config.cutout))
  if not steps:
    return None

  def augment(key, images_BxHxW):
    for step, step_key in zip(steps, jax.random.split(key, len(steps)), strict=True):
      images_BxHxW = step(step_key, images_BxHxW)
    return images_BxHxW

  return augment
