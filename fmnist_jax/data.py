"""Fashion-MNIST on the host: the IDX files, the study splits and input scaling.

This module owns where the data comes from and that it is the real dataset:
every file's IDX header and length are validated, and the standard set's
SHA-256 checksums (over the uncompressed bytes) are verified. It returns numpy
arrays; nothing here imports JAX at module level (`make_preprocess` imports
`jax.numpy` when called).

Study splits of the 60,000 training images:
  A: validation = the last 10,000 (`validation_split="tail"`), as X_train[50000:].
  B: a seeded 80/20 split (`validation_split="random"`, `validation_size=12000`).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import os
import pathlib
import shutil
import tempfile
import urllib.request
import zlib
from typing import Any

import numpy as np

from fmnist_jax import platform
from fmnist_jax.errors import ConfigError, DataError

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
CLASS_NAMES = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)
# Debian's `dataset-fashion-mnist` package installs the four .gz files here.
SYSTEM_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DATA_DIR_ENV = "FMNIST_DATA_DIR"
DOWNLOAD_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_DOWNLOAD_TIMEOUT_S = 60
_GZ_SUFFIX = ".gz"

# The four files, by split: (images, labels).
FILE_NAMES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_ALL_FILE_NAMES = tuple(name for pair in FILE_NAMES.values() for name in pair)
# SHA-256 of the uncompressed files: Debian's .gz differ from Zalando's only in
# the gzip header, so hashes of the compressed bytes would not be portable.
_SHA256 = {
  "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
  "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
  "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
  "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
_STANDARD_COUNTS = {"train": 60_000, "test": 10_000}

# IDX format: a big-endian uint32 magic (0x0000, data type, number of dims),
# then one big-endian uint32 size per dim, then the data in C order. Data type
# 0x08 is unsigned byte; images have 3 dims, labels 1.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801
_NUM_DIMS = {_IMAGES_MAGIC: len(IMAGE_SHAPE) + 1, _LABELS_MAGIC: 1}
_IDX_MAGIC_BYTES = 4
_IDX_DIM_BYTES = 4
_IDX_HEADER_DTYPE = np.dtype(">u4")

_MAX_PIXEL = 255.0
_NUM_PIXEL_VALUES = 256
VALIDATION_SPLITS = ("tail", "random")
SOURCES = ("idx", "tfds")
PREPROCESSINGS = ("scale01", "raw", "standardize")

_FIX_CORRUPT = (
  "delete it so that it is downloaded again, or reinstall it "
  "(sudo apt-get install --reinstall dataset-fashion-mnist)"
)


@dataclasses.dataclass(frozen=True)
class Split:
  """Images and labels of one split, in dataset order.

  Attributes:
    images: uint8 (N, 28, 28).
    labels: int32 (N,), in [0, NUM_CLASSES).
  """

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """The splits a run trains, validates and tests on.

  Attributes:
    train: the training split (the full 60k minus validation).
    validation: held out from the training set; None when validation_size is 0.
    test: the official 10k test set.
    source: where the data came from, e.g. "idx:/usr/share/datasets/fashion-mnist".
  """

  train: Split
  validation: Split | None
  test: Split
  source: str

  def splits(self) -> dict[str, Split]:
    """Returns {"train", "val", "test"} -> Split, without "val" if there is none."""
    named = {"train": self.train, "val": self.validation, "test": self.test}
    return {name: split for name, split in named.items() if split is not None}

  def fingerprint(self) -> str:
    """SHA-256 of every split's name, images and labels: equal exactly when a run would
    see the same examples in the same order (e.g. a finished run's saved logits still
    match the data)."""
    digest = hashlib.sha256()
    for name, split in self.splits().items():
      for array in (np.ascontiguousarray(split.images), np.ascontiguousarray(split.labels)):
        digest.update(f"{name}:{array.dtype}{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------
# Reading and validating IDX files.


def _read_bytes(path: pathlib.Path) -> bytes:
  """Returns the uncompressed content of a raw or gzipped file."""
  try:
    content = path.read_bytes()
  except OSError as e:
    raise DataError(f"Cannot read {path}: {e}.") from e
  if path.suffix != _GZ_SUFFIX:
    return content
  try:
    return gzip.decompress(content)
  except (OSError, EOFError, zlib.error) as e:
    # OSError covers gzip.BadGzipFile (bad header or CRC); EOFError a truncated stream.
    raise DataError(
      f"{path} is not a valid gzip file ({e}); it is truncated or corrupt: {_FIX_CORRUPT}."
    ) from e


def _parse_idx(content: bytes, path: pathlib.Path) -> np.ndarray:
  """Parses IDX bytes into a uint8 array, checking magic, dims and length."""
  if len(content) < _IDX_MAGIC_BYTES:
    raise DataError(f"{path} is too short to be an IDX file: {_FIX_CORRUPT}.")
  magic = int(np.frombuffer(content, _IDX_HEADER_DTYPE, count=1)[0])
  if magic not in (_IMAGES_MAGIC, _LABELS_MAGIC):
    raise DataError(
      f"{path} has IDX magic {magic:#010x}, expected {_IMAGES_MAGIC:#010x} (images) or "
      f"{_LABELS_MAGIC:#010x} (labels); it is not a Fashion-MNIST file: {_FIX_CORRUPT}."
    )
  num_dims = _NUM_DIMS[magic]
  header_bytes = _IDX_MAGIC_BYTES + _IDX_DIM_BYTES * num_dims
  if len(content) < header_bytes:
    raise DataError(f"{path} ends inside its IDX header: {_FIX_CORRUPT}.")
  shape = tuple(
    int(d)
    for d in np.frombuffer(content, _IDX_HEADER_DTYPE, count=num_dims, offset=_IDX_MAGIC_BYTES)
  )
  if magic == _IMAGES_MAGIC and shape[1:] != IMAGE_SHAPE:
    raise DataError(
      f"{path} holds images of shape {shape[1:]}, expected {IMAGE_SHAPE}: {_FIX_CORRUPT}."
    )
  expected_bytes = header_bytes + int(np.prod(shape))
  if len(content) != expected_bytes:
    state = "truncated" if len(content) < expected_bytes else "longer than its header says"
    raise DataError(
      f"{path} is {state}: its header declares shape {shape} ({expected_bytes} bytes) "
      f"but it has {len(content)} bytes: {_FIX_CORRUPT}."
    )
  # frombuffer does not copy; the arrays are read-only views of the file content.
  return np.frombuffer(content, np.uint8, offset=header_bytes).reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads a raw or gzipped IDX file of unsigned bytes.

  Args:
    path: the file; a name ending in ".gz" is decompressed.

  Returns:
    A read-only uint8 array of the shape the header declares.

  Raises:
    DataError: naming the file and the fix, if it cannot be read or decompressed,
      has the wrong magic or image dims, or is shorter or longer than its header says.
  """
  path = pathlib.Path(path)
  return _parse_idx(_read_bytes(path), path)


def _check_sha256(content: bytes, name: str, where: str, fix: str = _FIX_CORRUPT) -> None:
  """Raises DataError unless `content` is the official uncompressed file `name`."""
  actual = hashlib.sha256(content).hexdigest()
  if actual != _SHA256[name]:
    raise DataError(
      f"{where} fails its checksum: SHA-256 of the uncompressed {name} is {actual}, "
      f"expected {_SHA256[name]}; it is not the official file: {fix}."
    )


def to_idx_bytes(array: np.ndarray) -> bytes:
  """Returns the uncompressed IDX file of a uint8-valued (N,) or (N, 28, 28) array."""
  magic = _IMAGES_MAGIC if array.ndim == _NUM_DIMS[_IMAGES_MAGIC] else _LABELS_MAGIC
  header = np.array((magic, *array.shape), _IDX_HEADER_DTYPE)
  return header.tobytes() + np.ascontiguousarray(array, np.uint8).tobytes()


def verify_checksums_of(split: Split, split_name: str, where: str) -> None:
  """Checks that a split from elsewhere (e.g. tfds) is byte-identical to the official one.

  Args:
    split: the split, in dataset order.
    split_name: "train" or "test".
    where: names the split's origin in error messages.

  Raises:
    DataError: if the split's count, order or content differ from the official files.
  """
  check_split(split, where, expected_count=_STANDARD_COUNTS[split_name])
  images_name, labels_name = FILE_NAMES[split_name]
  fix = "the data there is not the official Fashion-MNIST in the official order; rebuild it"
  _check_sha256(to_idx_bytes(split.images), images_name, where, fix)
  _check_sha256(to_idx_bytes(split.labels), labels_name, where, fix)


def check_split(split: Split, where: str, *, expected_count: int | None = None) -> None:
  """Checks shapes, dtypes, image/label counts and label range of a split.

  Args:
    split: the split to check.
    where: names the split's origin in error messages (file paths, a tfds dir).
    expected_count: the number of examples it must have; None accepts any.

  Raises:
    DataError: if anything is off.
  """
  images, labels = split.images, split.labels
  if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
    raise DataError(
      f"{where}: images are {images.dtype} {images.shape}, expected uint8 (N, *{IMAGE_SHAPE})."
    )
  if labels.ndim != 1 or len(images) != len(labels):
    raise DataError(
      f"{where}: {len(images)} images but labels of shape {labels.shape}; the image and "
      f"label files do not belong together: {_FIX_CORRUPT}."
    )
  if expected_count is not None and len(labels) != expected_count:
    raise DataError(f"{where}: {len(labels)} examples, expected {expected_count}: {_FIX_CORRUPT}.")
  if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise DataError(
      f"{where}: labels range over [{labels.min()}, {labels.max()}], expected "
      f"[0, {NUM_CLASSES - 1}]: {_FIX_CORRUPT}."
    )


# ----------------------------------------------------------------------------
# Finding and downloading the files.


def _file_in(directory: pathlib.Path, name: str) -> pathlib.Path | None:
  """Returns directory/name (raw, preferred: no decompression) or name.gz, or None."""
  for candidate in (directory / name, directory / (name + _GZ_SUFFIX)):
    if candidate.is_file():
      return candidate
  return None


def _missing_files(directory: pathlib.Path) -> list[str]:
  return [name for name in _ALL_FILE_NAMES if _file_in(directory, name) is None]


def _describe(label: str, directory: pathlib.Path) -> str:
  """One searched directory and what it lacks, for error messages."""
  if not directory.is_dir():
    return f"{label} {directory} (no such directory)"
  missing = _missing_files(directory)
  return f"{label} {directory} (missing {', '.join(n + '[.gz]' for n in missing)})"


def _search_path() -> list[tuple[str, pathlib.Path]]:
  """The implicit search path: $FMNIST_DATA_DIR, the user cache, the system dir."""
  searched = []
  if os.environ.get(DATA_DIR_ENV):
    searched.append((f"${DATA_DIR_ENV}", pathlib.Path(os.environ[DATA_DIR_ENV])))
  searched.append(("cache", platform.user_cache_dir()))
  searched.append(("system", pathlib.Path(SYSTEM_DATA_DIR)))
  return searched


def _not_found_message(searched: list[tuple[str, pathlib.Path]], reason: str) -> str:
  return (
    f"Fashion-MNIST files not found ({reason}). Searched: "
    + "; ".join(_describe(label, d) for label, d in searched)
    + ". Fix one of: (1) sudo apt-get install dataset-fashion-mnist; "
    f"(2) set {DATA_DIR_ENV} or --config.data.dir to a directory with the four files "
    f"{', '.join(_ALL_FILE_NAMES)} (each raw or .gz); "
    "(3) with data.download=True and an internet connection they download to "
    f"{platform.user_cache_dir()}."
  )


def find_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
  """Returns the first directory that holds all four files.

  Search order: `data_dir` if given (and only it), then $FMNIST_DATA_DIR, the
  user cache ($XDG_CACHE_HOME/fmnist_jax or ~/.cache/fmnist_jax), and
  SYSTEM_DATA_DIR. Each file may be raw or gzipped.

  Raises:
    DataError: listing what was searched, what is missing, and the fixes.
  """
  if data_dir is not None:
    directory = pathlib.Path(data_dir).expanduser()
    if not _missing_files(directory):
      return directory
    # An explicit directory is what the user asked for: do not silently fall through.
    raise DataError(
      f"The data directory {str(data_dir)!r}, given explicitly (data.dir), does not hold "
      f"Fashion-MNIST: {_describe('directory', directory)}. Put the four files "
      f"{', '.join(_ALL_FILE_NAMES)} (raw or .gz) there, or leave it unset to search "
      f"${DATA_DIR_ENV}, {platform.user_cache_dir()} and {SYSTEM_DATA_DIR}."
    )
  searched = _search_path()
  for _, directory in searched:
    if not _missing_files(directory):
      return directory
  raise DataError(_not_found_message(searched, "no searched directory has all four"))


def _fetch(url: str, destination: pathlib.Path) -> None:
  """Downloads url into destination, overwriting it."""
  with (
    urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
    destination.open("wb") as out,
  ):
    shutil.copyfileobj(response, out)


def _download(searched: list[tuple[str, pathlib.Path]]) -> pathlib.Path:
  """Downloads the missing .gz files into the cache dir, verified, and returns it."""
  cache = platform.user_cache_dir()
  try:
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=cache):
      pass
  except OSError as e:
    raise DataError(
      f"Cannot write to the download cache {cache} ({e}). Set {DATA_DIR_ENV} (or "
      "--config.data.dir) to a directory with the four Fashion-MNIST files, or "
      "XDG_CACHE_HOME to a writable directory."
    ) from e
  for name in _missing_files(cache):
    url = DOWNLOAD_URL + name + _GZ_SUFFIX
    # Download to a temp file in the same dir and rename it into place only once
    # verified, so that an interrupted or corrupt download never looks complete.
    fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{name}-", suffix=_GZ_SUFFIX)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
      try:
        _fetch(url, tmp)
      except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors.
        raise DataError(_not_found_message(searched, f"downloading {url} failed: {e}")) from e
      fix = "it was discarded; retry, or install the files another way (see data.dir)"
      try:
        content = _read_bytes(tmp)
      except DataError as e:
        raise DataError(f"The download of {url} is corrupt ({e}); {fix}.") from e
      _check_sha256(content, name, f"The download of {url}", fix)
      os.replace(tmp, cache / (name + _GZ_SUFFIX))
    finally:
      tmp.unlink(missing_ok=True)
  return cache


# ----------------------------------------------------------------------------
# Loading and splitting.


def _locate(data_dir: str | os.PathLike | None, download: bool) -> pathlib.Path:
  """Returns the directory with the four files, downloading them if allowed."""
  try:
    return find_data_dir(data_dir)
  except DataError:
    if data_dir is not None or not download:
      raise
    return _download(_search_path())


def _read_splits(directory: pathlib.Path, verify_checksums: bool) -> tuple[Split, Split]:
  """Reads and validates (train, test) from a directory holding the four files."""
  splits = []
  for split_name, (images_name, labels_name) in FILE_NAMES.items():
    arrays = []
    for name in (images_name, labels_name):
      path = _file_in(directory, name)
      if path is None:
        raise DataError(f"{directory / name}[.gz] disappeared while loading; load again.")
      content = _read_bytes(path)
      if verify_checksums:
        _check_sha256(content, name, str(path))
      arrays.append(_parse_idx(content, path))
    images, labels = arrays
    split = Split(images=images, labels=labels.astype(np.int32))
    check_split(
      split,
      f"{directory}/{{{images_name},{labels_name}}}",
      expected_count=_STANDARD_COUNTS[split_name] if verify_checksums else None,
    )
    splits.append(split)
  train, test = splits
  return train, test


def load_arrays(
  data_dir: str | os.PathLike | None = None,
  *,
  download: bool = True,
  verify_checksums: bool = True,
) -> tuple[Split, Split]:
  """Finds (or downloads), reads and validates the full train and test sets.

  Args:
    data_dir: an explicit directory; None searches (see `find_data_dir`).
    download: whether to download into the user cache when no directory has the files.
    verify_checksums: check the SHA-256 of each file and the standard 60,000/10,000
      counts. False accepts other IDX files (tests); they are still validated.

  Returns:
    (train, test): the full 60k training set and the 10k test set; labels int32.

  Raises:
    DataError: naming the file, or the directories searched, and the fix.
  """
  return _read_splits(_locate(data_dir, download), verify_checksums)


def split_train(
  train: Split, *, validation_size: int, validation_split: str, seed: int
) -> tuple[Split, Split | None]:
  """Holds out `validation_size` training examples for validation.

  Args:
    train: the full training split.
    validation_size: examples to hold out; 0 means no validation split.
    validation_split: "tail" takes the last `validation_size` examples (study A:
      X_train[50000:]); "random" takes a uniformly random subset drawn with
      `np.random.default_rng(seed)` (study B's 80/20). Both parts keep dataset order.
    seed: seeds the "random" split; ignored by "tail".

  Returns:
    (train, validation), validation None when validation_size is 0.

  Raises:
    ConfigError: for an unknown split or a size outside [0, len(train) - 1].
  """
  if validation_split not in VALIDATION_SPLITS:
    raise ConfigError(
      f"data.validation_split={validation_split!r} is unknown; use one of {VALIDATION_SPLITS}."
    )
  num_examples = len(train)
  if (
    isinstance(validation_size, bool)
    or not isinstance(validation_size, int | np.integer)
    or not 0 <= validation_size < num_examples
  ):
    raise ConfigError(
      f"data.validation_size={validation_size!r} is impossible: it must be an int in "
      f"[0, {num_examples - 1}] (the training set has {num_examples} examples; 0 means "
      "no validation split)."
    )
  if validation_size == 0:
    return train, None
  if validation_split == "tail":
    num_train = num_examples - validation_size
    return (
      Split(train.images[:num_train], train.labels[:num_train]),
      Split(train.images[num_train:], train.labels[num_train:]),
    )
  permutation = np.random.default_rng(seed).permutation(num_examples)
  # Sorted so both parts keep dataset order: the split is then a function of the
  # chosen index sets alone, and training shuffles every epoch anyway.
  validation_indices = np.sort(permutation[:validation_size])
  train_indices = np.sort(permutation[validation_size:])
  return (
    Split(train.images[train_indices], train.labels[train_indices]),
    Split(train.images[validation_indices], train.labels[validation_indices]),
  )


def load(config: Any) -> Dataset:
  """Loads the dataset a `data` config describes.

  Args:
    config: the `data` ConfigDict; reads `source` ("idx" | "tfds"), `dir`,
      `download`, `verify_checksums`, `validation_size`, `validation_split`,
      `split_seed` and `tfds_data_dir`.

  Returns:
    The train/validation/test Dataset.

  Raises:
    ConfigError: for an unknown source or an impossible split.
    DataError, UserError: if the data cannot be found or is not valid.
  """
  if config.source == "idx":
    directory = _locate(config.dir, config.download)
    verify = config.get("verify_checksums", True)
    train, test = _read_splits(directory, verify_checksums=verify)
    source = f"idx:{directory}"
  elif config.source == "tfds":
    # Imported here: tensorflow_datasets is an optional extra.
    from fmnist_jax import tfds_source

    train, test = tfds_source.load_arrays(
      config.tfds_data_dir, verify_checksums=config.get("verify_checksums", True)
    )
    source = f"tfds:{config.tfds_data_dir or '(tfds default data dir)'}"
  else:
    raise ConfigError(f"data.source={config.source!r} is unknown; use one of {SOURCES}.")
  train, validation = split_train(
    train,
    validation_size=config.validation_size,
    validation_split=config.validation_split,
    seed=config.split_seed,
  )
  return Dataset(train=train, validation=validation, test=test, source=source)


# ----------------------------------------------------------------------------
# Input scaling.


def _pixel_mean_std(images: np.ndarray) -> tuple[float, float]:
  """Returns the mean and std over all pixels, exact in float64.

  Computed from the 256-bin histogram: no float64 copy of the images is made.
  """
  counts = np.bincount(images.ravel(), minlength=_NUM_PIXEL_VALUES).astype(np.float64)
  values = np.arange(_NUM_PIXEL_VALUES, dtype=np.float64)
  total = counts.sum()
  mean = (counts * values).sum() / total
  variance = (counts * (values - mean) ** 2).sum() / total
  return float(mean), float(np.sqrt(variance))


def make_preprocess(name: str, train_images: np.ndarray):
  """Returns a function mapping uint8 images (any shape) to float32 model inputs.

  Args:
    name: "scale01" (x / 255, the studies' scaling), "raw" (float 0..255, study
      B's unscaled baseline) or "standardize" ((x - mean) / std with the scalar
      mean and std over all pixels of `train_images`).
    train_images: the training split's uint8 images; used by "standardize" only.

  Raises:
    ConfigError: for an unknown name.
  """
  import jax.numpy as jnp  # Lazily: the rest of this module is numpy only.

  if name == "scale01":
    return lambda images: images.astype(jnp.float32) / _MAX_PIXEL
  if name == "raw":
    return lambda images: images.astype(jnp.float32)
  if name == "standardize":
    mean, std = _pixel_mean_std(np.asarray(train_images))
    return lambda images: (images.astype(jnp.float32) - mean) / std
  raise ConfigError(f"data.preprocessing={name!r} is unknown; use one of {PREPROCESSINGS}.")
