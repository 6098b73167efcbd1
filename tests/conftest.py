"""Shared fixtures: the real Fashion-MNIST directory and tiny synthetic IDX files."""

from fmnist_jax import platform

# The XLA flags every entry point sets (launch.py, the benchmarks), before anything
# imports jax: the tests run in this process compile the programs users run.
platform.configure_xla()

import atexit
import hashlib
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest
from idx_files import IMAGES_MAGIC, LABELS_MAGIC, idx_bytes, write_idx

from fmnist_jax import data
from fmnist_jax.errors import DataError

# The processes tests/run_worker.py starts share one compilation cache per test session
# (set here, before xdist starts its workers, so they inherit it), not the user's: a
# worker killed on purpose mid-write would otherwise leave a truncated entry there.
if "FMNIST_TEST_COMPILATION_CACHE" not in os.environ:
  _compilation_cache = tempfile.mkdtemp(prefix="fmnist_jax_test_compilation_")
  os.environ["FMNIST_TEST_COMPILATION_CACHE"] = _compilation_cache
  atexit.register(shutil.rmtree, _compilation_cache, ignore_errors=True)
# The tests in these processes use it too: many build the same small programs (a sweep's
# separate runs, a resumed run, another seed), each then compiled once per session, not
# once per test (the suite: 8:43 -> 6:35 on 2 cores).
platform.enable_compilation_cache(os.environ["FMNIST_TEST_COMPILATION_CACHE"])

# Tiny synthetic sets: big enough for splits, small enough to write in milliseconds.
SYNTHETIC_NUM_TRAIN = 50
SYNTHETIC_NUM_TEST = 20


@pytest.fixture(scope="session")
def real_data_dir() -> pathlib.Path:
  """The directory with the real dataset; skips without it, but fails if $CI is set.

  Looks where `data.find_data_dir(None)` does: $FMNIST_DATA_DIR, the user cache,
  then the system dir (`apt-get install dataset-fashion-mnist`).
  """
  try:
    return data.find_data_dir(None)
  except DataError as e:
    reason = f"real Fashion-MNIST not found: {e}"
  if os.environ.get("CI"):
    pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
  pytest.skip(reason)


@pytest.fixture
def synthetic_fmnist(monkeypatch):
  """Returns write(directory, ...) -> (train, test) that writes tiny random IDX files.

  write(directory, num_train=50, num_test=20, seed=0, compress=True,
  as_standard=False): `compress` writes .gz files; `as_standard` makes
  fmnist_jax.data accept these files as the official set (their SHA-256 and
  counts), so checksum-verifying paths such as `data.load` run on them.
  """

  def write(
    directory,
    *,
    num_train=SYNTHETIC_NUM_TRAIN,
    num_test=SYNTHETIC_NUM_TEST,
    seed=0,
    compress=True,
    as_standard=False,
  ):
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {}
    for split_name, count in (("train", num_train), ("test", num_test)):
      images = rng.integers(0, 256, (count, *data.IMAGE_SHAPE), dtype=np.uint8)
      # Every class present, in random order.
      labels = rng.permutation(np.arange(count) % data.NUM_CLASSES).astype(np.int32)
      images_name, labels_name = data.FILE_NAMES[split_name]
      suffix = ".gz" if compress else ""
      for name, array, magic in (
        (images_name, images, IMAGES_MAGIC),
        (labels_name, labels, LABELS_MAGIC),
      ):
        content = idx_bytes(array, magic)
        write_idx(directory / (name + suffix), content)
        if as_standard:
          monkeypatch.setitem(data._SHA256, name, hashlib.sha256(content).hexdigest())
      if as_standard:
        monkeypatch.setitem(data._STANDARD_COUNTS, split_name, count)
      splits[split_name] = data.Split(images=images, labels=labels)
    return splits["train"], splits["test"]

  return write


@pytest.fixture(scope="session")
def small_dataset(real_data_dir):
  """The first 2,000 / 500 / 1,000 real images: large enough to learn, small enough to be fast."""
  from small import small_dataset

  return small_dataset(real_data_dir)


@pytest.fixture
def use_small_dataset(monkeypatch, small_dataset):
  """`data.load` returns the small real subset, whatever the config says."""
  monkeypatch.setattr(data, "load", lambda config: small_dataset)
  return small_dataset
