"""Fashion-MNIST from TensorFlow Datasets (the `tfds` extra), without TensorFlow.

This module owns the optional `data.source="tfds"` path: reading the tfds
`fashion_mnist` dataset through `tfds.data_source` (array_record, random
access, numpy only) and the one-time offline `prepare` command that builds that
dataset from the local IDX files.

What works without TensorFlow (tfds 4.9.10, checked):
  * `tfds.data_source` on array_record: records come back as dicts
    {"image": uint8 (28, 28, 1), "label": int}; tfds decodes the PNGs with
    pillow (or OpenCV when installed).
  * Building: the stock `FashionMNIST` builder needs TensorFlow twice: it
    reads the IDX files with `tf.io.gfile`, and `tfds.features.Image` encodes
    numpy images with `tf.image.encode_png`. Our subclass reads the IDX files
    with `fmnist_jax.data` (checksums verified) and yields PNG bytes encoded with
    pillow, which the Image feature stores as is. Serialization and the
    array_record writer need no TensorFlow.
  * Order: tfds writes examples sorted by md5(split name + key), not in file
    order (`tensorflow_datasets/core/hashing.py`, a stable on-disk contract).
    The stock builder's keys are the IDX indices, so `load_arrays` inverts that
    permutation and returns the IDX order: the study splits (A's tail, B's
    seeded split) then select the same images from either source, and the
    official checksums can be verified on the tfds arrays.
  * Speed: reading decodes 70,000 PNGs in Python (pillow), about 13 s on 2
    CPU cores (the idx source takes 0.3 s); preparing takes about 16 s.

Prepare once, offline:
  python -m fmnist_jax.tfds_source prepare [--data_dir=DIR] [--idx_dir=DIR]
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
from typing import Any

import numpy as np

from fmnist_jax import data
from fmnist_jax.errors import UserError

TFDS_NAME = "fashion_mnist"
SPLIT_NAMES = ("train", "test")
_FILE_FORMAT = "array_record"
_PNG = "PNG"
_USER_ERROR_EXIT_CODE = 2
_INSTALL_HINT = "pip install 'fmnist_jax[tfds]' (or: uv sync --extra tfds)"
_PREPARE_COMMAND = "python -m fmnist_jax.tfds_source prepare"


def _import_tfds():
  """Returns the tensorflow_datasets module, or raises a UserError saying how to install it."""
  try:
    import tensorflow_datasets as tfds  # An optional extra: imported on use.
  except ImportError as e:
    raise UserError(
      f"data.source='tfds' needs tensorflow_datasets, which is not installed ({e}). "
      f"Install it with: {_INSTALL_HINT}; or use data.source='idx'."
    ) from e
  return tfds


def _describe_data_dir(data_dir: str | None) -> str:
  return (
    data_dir
    if data_dir is not None
    else "the default tfds data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  )


def _prepare_hint(data_dir: str | None) -> str:
  flag = f" --data_dir={data_dir}" if data_dir is not None else ""
  return f"Build it once, offline, from the IDX files: {_PREPARE_COMMAND}{flag}"


def _not_prepared_message(tfds: Any, data_dir: str | None, error: Exception) -> str:
  """Says why tfds cannot read the dataset and how to prepare it."""
  # tfds reports a dataset that is not there as "random access ... for
  # FileFormat.TFRECORD is not supported"; look at the directory to say it plainly.
  builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
  if not builder.is_prepared():
    problem = f"tfds {TFDS_NAME} is not prepared: {builder.data_dir} does not exist"
  else:
    problem = (
      f"tfds {TFDS_NAME} in {builder.data_dir} cannot be read without TensorFlow "
      f"({str(error).splitlines()[0]}); it needs the {_FILE_FORMAT} format, so prepare "
      "it into another data dir"
    )
  return f"{problem}. {_prepare_hint(data_dir)}."


def _idx_order(num_examples: int, split_name: str) -> np.ndarray:
  """Returns, for each record position, the IDX index of the example stored there.

  tfds sorts examples by the md5 hash of their key salted with the split name;
  the FashionMNIST builder's keys are the IDX indices.
  """
  from tensorflow_datasets.core import hashing

  hasher = hashing.Hasher(salt=split_name)
  hashes = [hasher.hash_key(index) for index in range(num_examples)]
  return np.array(sorted(range(num_examples), key=hashes.__getitem__), dtype=np.int64)


def _read_split(tfds: Any, data_dir: str | None, split_name: str) -> data.Split:
  """Reads one split in IDX order."""
  try:
    source = tfds.data_source(TFDS_NAME, split=split_name, data_dir=data_dir, download=False)
  except (NotImplementedError, FileNotFoundError, ValueError, OSError) as e:
    raise UserError(_not_prepared_message(tfds, data_dir, e)) from e
  num_examples = len(source)
  records = source.__getitems__(range(num_examples))
  # The Image feature is (28, 28, 1); the IDX layout has no channel axis.
  images = np.array([record["image"] for record in records], np.uint8)
  images = images.reshape(num_examples, *data.IMAGE_SHAPE)
  labels = np.array([record["label"] for record in records], dtype=np.int32)
  if not source.dataset_info.disable_shuffling:
    order = _idx_order(num_examples, split_name)
    unshuffled_images = np.empty_like(images)
    unshuffled_labels = np.empty_like(labels)
    unshuffled_images[order] = images
    unshuffled_labels[order] = labels
    images, labels = unshuffled_images, unshuffled_labels
  return data.Split(images=images, labels=labels)


def load_arrays(
  data_dir: str | None, *, verify_checksums: bool = True
) -> tuple[data.Split, data.Split]:
  """Reads the full train and test sets from a prepared tfds `fashion_mnist`.

  Args:
    data_dir: the tfds data dir; None uses tfds's default.
    verify_checksums: check the standard 60,000/10,000 counts and that the
      arrays, in IDX order, hash to the official files' SHA-256. False accepts
      other data (tests); shapes, dtypes and labels are still validated.

  Returns:
    (train, test) as from `data.load_arrays`: uint8 (N, 28, 28), int32 labels, IDX order.

  Raises:
    UserError: if tensorflow_datasets is missing or the dataset is not prepared.
    DataError: if the data fails validation.
  """
  tfds = _import_tfds()
  splits = []
  for split_name in SPLIT_NAMES:
    split = _read_split(tfds, data_dir, split_name)
    where = f"tfds {TFDS_NAME} split {split_name!r} in {_describe_data_dir(data_dir)}"
    if verify_checksums:
      data.verify_checksums_of(split, split_name, where)
    else:
      data.check_split(split, where)
    splits.append(split)
  train, test = splits
  return train, test


def _encode_png(image: np.ndarray) -> bytes:
  """Encodes a uint8 (28, 28) image as grayscale PNG with pillow, not TensorFlow."""
  import PIL.Image  # A dependency of the tfds extra, like tfds itself.

  buffer = io.BytesIO()
  PIL.Image.fromarray(image).save(buffer, format=_PNG)
  return buffer.getvalue()


def _make_builder(train: data.Split, test: data.Split, data_dir: str | None):
  """Returns a FashionMNIST builder that writes `train` and `test` without TensorFlow."""
  from tensorflow_datasets.image_classification import mnist

  class IdxFashionMNIST(mnist.FashionMNIST, skip_registration=True):
    """The stock builder (same name, version, features, keys), fed from memory."""

    name = TFDS_NAME

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download: the IDX arrays are already loaded.
      return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

    def _generate_examples(self, split):  # pylint: disable=arguments-differ
      # Keys are IDX indices, as in the stock builder, so the on-disk order matches.
      for index, (image, label) in enumerate(zip(split.images, split.labels, strict=True)):
        yield index, {"image": _encode_png(image), "label": int(label)}

  return IdxFashionMNIST(data_dir=data_dir, file_format=_FILE_FORMAT)


def prepare(
  data_dir: str | None = None, idx_dir: str | None = None, *, verify_checksums: bool = True
) -> pathlib.Path:
  """Builds tfds `fashion_mnist` in array_record format from the IDX files, offline.

  Args:
    data_dir: the tfds data dir to write to; None uses tfds's default.
    idx_dir: where the IDX files are; None searches as `data.find_data_dir` does.
    verify_checksums: passed to `data.load_arrays`; False accepts non-standard
      IDX files (tests).

  Returns:
    The prepared dataset's directory. An already prepared one is left as is.
  """
  tfds = _import_tfds()
  train, test = data.load_arrays(idx_dir, verify_checksums=verify_checksums)
  builder = _make_builder(train, test, data_dir)
  builder.download_and_prepare(
    # GCS holds only the TFRecord version; looking there needs the network.
    download_config=tfds.download.DownloadConfig(try_download_gcs=False)
  )
  return pathlib.Path(builder.data_dir)


def main(argv: list[str] | None = None) -> int:
  """The `prepare` command line; returns the exit status."""
  parser = argparse.ArgumentParser(
    prog="python -m fmnist_jax.tfds_source", description=__doc__.splitlines()[0]
  )
  commands = parser.add_subparsers(dest="command", required=True)
  prepare_parser = commands.add_parser(
    "prepare", help="build tfds fashion_mnist from the IDX files"
  )
  prepare_parser.add_argument("--data_dir", default=None, help="tfds data dir (default: tfds's)")
  prepare_parser.add_argument("--idx_dir", default=None, help="IDX files (default: searched)")
  args = parser.parse_args(argv)
  try:
    path = prepare(data_dir=args.data_dir, idx_dir=args.idx_dir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return _USER_ERROR_EXIT_CODE
  print(f"Prepared {TFDS_NAME} in {path}; use --config.data.source=tfds", end="")
  print(f" --config.data.tfds_data_dir={args.data_dir}" if args.data_dir else "")
  return 0


if __name__ == "__main__":
  sys.exit(main())
