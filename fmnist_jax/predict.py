"""Classify your own images with a trained run: top-3 classes with probabilities.

  python -m fmnist_jax.predict --workdir=runs/cnn shirt.jpg boot.png
  python -m fmnist_jax.predict --workdir=runs/cnn batch.npy          # [N, 28, 28] uint8
  python -m fmnist_jax.predict --workdir=runs/cnn t10k-images-idx3-ubyte.gz --top=1

The run's own config.json says how it was trained, so nothing else is given.
The weights are the ones its results report (the best epoch's where early
stopping restored them); a run of several seeds predicts with the studies'
ensemble rule, the mean of its members' softmax.

Images of any size and colour become what the network saw in training: one
grey channel, the object scaled to fit 28x28 with its aspect ratio kept and
centred on a dark background, uint8 0-255. Fashion-MNIST items are light on
black; a photo of a garment on a white background must be inverted, which
`--invert=auto` (the default) does when the image's border is mostly light
(`--invert=yes|no` forces it). `.npy` and IDX inputs are used as they are.
"""

import pathlib
import sys

import numpy as np

from fmnist_jax import cli, data
from fmnist_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
INVERT_CHOICES = ("auto", "yes", "no")


def image_to_fmnist(path: pathlib.Path, invert: str = "auto") -> np.ndarray:
  """One image file as a [28, 28] uint8 array in Fashion-MNIST's form."""
  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(path) as image:
      image.load()
      if image.mode in ("RGBA", "LA") or "transparency" in image.info:
        # Transparent pixels count as background: composite onto white, like a page.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
      grey = image.convert("L")
  except (UnidentifiedImageError, OSError) as error:
    raise UserError(
      f"cannot read {path} as an image ({error}); pass a PNG/JPEG file, a .npy array "
      f"[N, 28, 28] or an IDX file"
    ) from None
  pixels = np.asarray(grey, dtype=np.uint8)
  border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
  if invert == "yes" or (invert == "auto" and border.mean() > 127):
    pixels = 255 - pixels
  # Fit the longer side to 28 pixels and centre on black (Fashion-MNIST's framing).
  height, width = pixels.shape
  scale = data.IMAGE_SHAPE[0] / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  resized = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
  canvas = np.zeros(data.IMAGE_SHAPE, np.uint8)
  top, left = (data.IMAGE_SHAPE[0] - size[1]) // 2, (data.IMAGE_SHAPE[1] - size[0]) // 2
  canvas[top : top + size[1], left : left + size[0]] = resized
  return canvas


def load_inputs(paths: list[str], invert: str = "auto") -> tuple[np.ndarray, list[str]]:
  """Every input as [N, 28, 28] uint8 and a name per image."""
  images, names = [], []
  for name in paths:
    path = pathlib.Path(name)
    if not path.is_file():
      raise UserError(f"no such file: {path}; pass image, .npy or IDX files")
    if path.suffix.lower() == ".npy":
      try:
        batch = np.load(path, allow_pickle=False)
      except (ValueError, OSError, EOFError) as error:
        raise UserError(
          f"cannot read {path} as a .npy array ({error}); save it with np.save"
        ) from None
      if batch.ndim == 2:
        batch = batch[None]
      if batch.ndim == 4 and batch.shape[-1] == 1:  # [N, 28, 28, 1]: one channel, as [N, 28, 28]
        batch = batch[..., 0]
      if batch.ndim == 4 and batch.shape[1:3] == data.IMAGE_SHAPE:
        raise UserError(
          f"{path} holds {batch.shape[-1]}-channel images (shape {batch.shape}); Fashion-MNIST "
          f"is greyscale: pass [N, 28, 28] arrays (e.g. batch.mean(axis=-1)), or save the "
          f"images as PNG files, which are converted to grey"
        )
      if batch.shape[1:] != data.IMAGE_SHAPE:
        raise UserError(
          f"{path} holds an array of shape {batch.shape}; predict needs [N, 28, 28] "
          f"(or one [28, 28] image) with values 0-255"
        )
      if batch.dtype != np.uint8:
        if batch.min() < 0 or batch.max() > 255:
          raise UserError(f"{path} has values outside 0-255; scale it to uint8 0-255 first")
        batch = batch.astype(np.uint8)
      names += [f"{path.name}[{i}]" for i in range(len(batch))]
      images.append(batch)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
      images.append(image_to_fmnist(path, invert)[None])
      names.append(path.name)
    else:  # IDX, raw or gzipped
      batch = data.read_idx(path)
      if batch.ndim != 3 or batch.shape[1:] != data.IMAGE_SHAPE:
        raise UserError(f"{path} is an IDX file of shape {batch.shape}, not [N, 28, 28] images")
      names += [f"{path.name}[{i}]" for i in range(len(batch))]
      images.append(batch)
  return np.concatenate(images), names


def probabilities(workdir: str | pathlib.Path, images: np.ndarray) -> np.ndarray:
  """[N, 10] class probabilities: the mean softmax of the run's members."""
  from fmnist_jax import metrics, runs  # jax only after __main__ has set XLA's flags

  run = runs.load_run(workdir)
  # The run's own evaluation program, on batches of `eval_batch_size` (its compiled
  # program is in the compilation cache). Fewer images take the next power of two (at
  # least 8), so a few images on a large model do not run a whole batch of padding;
  # each such size compiles once, then comes from the cache too.
  batch_size = min(run.trainer.eval_batch_size, max(8, 1 << (len(images) - 1).bit_length()))
  logits_MxNxC = run.trainer.predict_splits(run.state, {"inputs": images}, batch_size)["inputs"]
  return metrics.softmax(logits_MxNxC).mean(axis=0)


def format_predictions(names: list[str], probs_NxC: np.ndarray, top: int = 3) -> str:
  lines = []
  for name, probs in zip(names, probs_NxC, strict=True):
    best = np.argsort(-probs)[:top]
    shown = ", ".join(f"{data.CLASS_NAMES[c]} {probs[c]:.3f}" for c in best)
    lines.append(f"{name}: {shown}")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  import argparse

  parser = argparse.ArgumentParser(
    prog="python -m fmnist_jax.predict", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--workdir", required=True, help="a finished run, e.g. runs/cnn")
  parser.add_argument("--top", type=int, default=3, help="classes shown per image")
  parser.add_argument("--invert", choices=INVERT_CHOICES, default="auto")
  parser.add_argument("inputs", nargs="+", help="image files, .npy arrays or IDX files")
  args = parser.parse_args(argv)
  try:
    images, names = load_inputs(args.inputs, args.invert)
    probs = probabilities(args.workdir, images)
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    return cli.EXIT_USER_ERROR
  print(format_predictions(names, probs, args.top))
  return 0


if __name__ == "__main__":
  from fmnist_jax import platform

  # As launch.py: the XLA flags the run trained with, and its compilation cache,
  # where the run's evaluation program already is.
  platform.configure_xla()
  platform.enable_compilation_cache(platform.default_compilation_cache())
  sys.exit(main(sys.argv[1:]))
