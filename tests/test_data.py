"""Tests for fmnist_jax.data: IDX reading, validation, search, download, splits, scaling."""

import functools
import gzip
import hashlib
import http.server
import os
import pathlib
import re
import shutil
import threading
import urllib.error

import numpy as np
import pytest
from idx_files import IMAGES_MAGIC, LABELS_MAGIC, idx_bytes, write_idx
from ml_collections import ConfigDict

from fmnist_jax import data
from fmnist_jax.errors import ConfigError, DataError

TRAIN_IMAGES, TRAIN_LABELS = data.FILE_NAMES["train"]
TEST_IMAGES, TEST_LABELS = data.FILE_NAMES["test"]
REAL_NUM_TRAIN = 60_000
REAL_NUM_TEST = 10_000
STUDY_A_VALIDATION = 10_000
STUDY_B_VALIDATION = 12_000
# float32 arithmetic on 0..255 values vs float64 host statistics.
FLOAT32_TOLERANCE = 1e-5


@pytest.fixture
def isolated(tmp_path, monkeypatch):
  """Points the search path at empty dirs under tmp_path; returns (env, cache, system)."""
  env_dir, cache_home, system_dir = (tmp_path / name for name in ("env", "cache_home", "system"))
  monkeypatch.setenv(data.DATA_DIR_ENV, str(env_dir))
  monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
  monkeypatch.setattr(data, "SYSTEM_DATA_DIR", str(system_dir))
  return env_dir, cache_home / "fmnist_jax", system_dir


def _data_config(**overrides) -> ConfigDict:
  config = ConfigDict(
    dict(
      source="idx",
      dir=None,
      tfds_data_dir=None,
      download=False,
      validation_size=10,
      validation_split="tail",
      split_seed=0,
      preprocessing="scale01",
    )
  )
  config.update(overrides)
  return config


# ----------------------------------------------------------------------------
# read_idx and file validation.


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape, magic", [((7, 28, 28), IMAGES_MAGIC), ((7,), LABELS_MAGIC)])
def test_read_idx_round_trip(tmp_path, suffix, shape, magic):
  array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  path = tmp_path / ("file" + suffix)
  write_idx(path, idx_bytes(array, magic))
  read = data.read_idx(path)
  assert read.dtype == np.uint8
  np.testing.assert_array_equal(read, array)
  assert data.read_idx(str(path)).shape == shape


def test_to_idx_bytes_matches_the_format(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
  assert data.to_idx_bytes(images) == idx_bytes(images, IMAGES_MAGIC)
  labels = np.arange(5, dtype=np.int32)
  assert data.to_idx_bytes(labels) == idx_bytes(labels, LABELS_MAGIC)


def _images_content() -> bytes:
  images = np.zeros((4, 28, 28), np.uint8)
  return idx_bytes(images, IMAGES_MAGIC)


CORRUPTIONS = {
  "wrong magic": (lambda c: b"\x00\x00\x08\x04" + c[4:], "magic"),
  "empty": (lambda c: b"", "too short"),
  "cut in header": (lambda c: c[:10], "header"),
  "wrong dims": (
    lambda c: idx_bytes(np.zeros((4, 32, 32), np.uint8), IMAGES_MAGIC),
    "shape",
  ),
  "truncated payload": (lambda c: c[:-1], "truncated"),
  "trailing bytes": (lambda c: c + b"\x00", "longer than its header"),
}


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_read_idx_rejects_corrupt_content(tmp_path, suffix, corruption):
  corrupt, expected = CORRUPTIONS[corruption]
  path = tmp_path / (TRAIN_IMAGES + suffix)
  write_idx(path, corrupt(_images_content()))
  with pytest.raises(DataError, match=re.escape(str(path))) as error:
    data.read_idx(path)
  assert expected in str(error.value)


GZIP_CORRUPTIONS = {
  "truncated gzip": lambda gz: gz[: len(gz) // 2],
  "flipped byte": lambda gz: gz[:20] + bytes([gz[20] ^ 0xFF]) + gz[21:],
  "bad crc": lambda gz: gz[:-8] + bytes(4) + gz[-4:],
  "not gzip": lambda gz: b"plain text, not gzip",
}


@pytest.mark.parametrize("corruption", GZIP_CORRUPTIONS, ids=list(GZIP_CORRUPTIONS))
def test_read_idx_rejects_corrupt_gzip(tmp_path, corruption):
  path = tmp_path / (TRAIN_IMAGES + ".gz")
  path.write_bytes(GZIP_CORRUPTIONS[corruption](gzip.compress(_images_content())))
  with pytest.raises(DataError, match=re.escape(str(path))) as error:
    data.read_idx(path)
  assert "gzip" in str(error.value) and "delete it" in str(error.value)


def test_load_arrays_reads_synthetic_files(tmp_path, synthetic_fmnist):
  train, test = synthetic_fmnist(tmp_path)
  loaded_train, loaded_test = data.load_arrays(tmp_path, verify_checksums=False)
  for loaded, written in ((loaded_train, train), (loaded_test, test)):
    assert loaded.images.dtype == np.uint8 and loaded.labels.dtype == np.int32
    np.testing.assert_array_equal(loaded.images, written.images)
    np.testing.assert_array_equal(loaded.labels, written.labels)
  assert len(loaded_train) == len(train)


def test_load_arrays_reads_raw_files_and_prefers_them(tmp_path, synthetic_fmnist):
  raw_train, _ = synthetic_fmnist(tmp_path, compress=False, seed=1)
  synthetic_fmnist(tmp_path, compress=True, seed=2)
  train, _ = data.load_arrays(tmp_path, verify_checksums=False)
  np.testing.assert_array_equal(train.images, raw_train.images)


def test_image_label_count_mismatch(tmp_path, synthetic_fmnist):
  synthetic_fmnist(tmp_path)
  write_idx(tmp_path / (TEST_LABELS + ".gz"), idx_bytes(np.zeros(3, np.uint8), LABELS_MAGIC))
  with pytest.raises(DataError, match=TEST_LABELS) as error:
    data.load_arrays(tmp_path, verify_checksums=False)
  assert TEST_IMAGES in str(error.value) and "do not belong together" in str(error.value)


def test_label_out_of_range(tmp_path, synthetic_fmnist):
  train, _ = synthetic_fmnist(tmp_path)
  labels = train.labels.copy()
  labels[3] = data.NUM_CLASSES
  write_idx(tmp_path / (TRAIN_LABELS + ".gz"), idx_bytes(labels, LABELS_MAGIC))
  with pytest.raises(DataError, match=TRAIN_LABELS) as error:
    data.load_arrays(tmp_path, verify_checksums=False)
  assert "[0, 9]" in str(error.value)


def test_labels_file_given_as_images(tmp_path, synthetic_fmnist):
  synthetic_fmnist(tmp_path)
  shutil.copy(tmp_path / (TEST_IMAGES + ".gz"), tmp_path / (TEST_LABELS + ".gz"))
  with pytest.raises(DataError, match=TEST_IMAGES):
    data.load_arrays(tmp_path, verify_checksums=False)


def test_checksum_mismatch_names_file_and_hashes(tmp_path, synthetic_fmnist):
  synthetic_fmnist(tmp_path)
  content = gzip.decompress((tmp_path / (TRAIN_IMAGES + ".gz")).read_bytes())
  with pytest.raises(DataError) as error:
    data.load_arrays(tmp_path)
  message = str(error.value)
  assert TRAIN_IMAGES in message and "checksum" in message
  assert hashlib.sha256(content).hexdigest() in message
  assert data._SHA256[TRAIN_IMAGES] in message


def test_checksums_and_counts_verified_when_standard(tmp_path, synthetic_fmnist):
  train, _ = synthetic_fmnist(tmp_path, as_standard=True)
  loaded, _ = data.load_arrays(tmp_path)  # verify_checksums=True
  np.testing.assert_array_equal(loaded.images, train.images)


def test_standard_count_is_enforced(tmp_path, synthetic_fmnist, monkeypatch):
  synthetic_fmnist(tmp_path, as_standard=True)
  monkeypatch.setitem(data._STANDARD_COUNTS, "test", REAL_NUM_TEST)
  with pytest.raises(DataError, match=f"expected {REAL_NUM_TEST}"):
    data.load_arrays(tmp_path)


def test_verify_checksums_of_checks_order(synthetic_fmnist, tmp_path):
  train, _ = synthetic_fmnist(tmp_path, as_standard=True)
  data.verify_checksums_of(train, "train", "somewhere")
  reversed_train = data.Split(train.images[::-1], train.labels[::-1])
  with pytest.raises(DataError, match="somewhere.*checksum"):
    data.verify_checksums_of(reversed_train, "train", "somewhere")


# ----------------------------------------------------------------------------
# Finding the files.


def test_search_order(tmp_path, isolated, synthetic_fmnist):
  env_dir, cache_dir, system_dir = isolated
  explicit_dir = tmp_path / "explicit"
  ordered = [explicit_dir, env_dir, cache_dir, system_dir]
  for seed, directory in enumerate(ordered):
    synthetic_fmnist(directory, seed=seed)
  expected_first_images = {d: data.read_idx(d / (TRAIN_IMAGES + ".gz"))[0] for d in ordered}

  def loads_from(directory, data_dir=None):
    assert data.find_data_dir(data_dir) == directory
    train, _ = data.load_arrays(data_dir, download=False, verify_checksums=False)
    np.testing.assert_array_equal(train.images[0], expected_first_images[directory])

  loads_from(explicit_dir, data_dir=explicit_dir)
  loads_from(env_dir)
  shutil.rmtree(env_dir)
  loads_from(cache_dir)
  (cache_dir / (TEST_LABELS + ".gz")).unlink()  # An incomplete dir is skipped.
  loads_from(system_dir)


def test_missing_file_names_file_and_every_dir(isolated, synthetic_fmnist):
  env_dir, cache_dir, system_dir = isolated
  synthetic_fmnist(system_dir)
  (system_dir / (TEST_LABELS + ".gz")).unlink()
  with pytest.raises(DataError) as error:
    data.load_arrays(download=False, verify_checksums=False)
  message = str(error.value)
  assert f"missing {TEST_LABELS}" in message
  for directory in (env_dir, cache_dir, system_dir):
    assert str(directory) in message
  assert "apt-get install dataset-fashion-mnist" in message
  assert data.DATA_DIR_ENV in message and "--config.data.dir" in message
  assert "data.download=True and an internet connection" in message


def test_explicit_dir_does_not_fall_through(tmp_path, isolated, synthetic_fmnist):
  env_dir, _, _ = isolated
  synthetic_fmnist(env_dir)
  missing = tmp_path / "typo"
  with pytest.raises(DataError, match=re.escape(str(missing))) as error:
    data.load_arrays(missing, verify_checksums=False)
  assert "no such directory" in str(error.value)


def test_explicit_dir_missing_one_file(tmp_path, synthetic_fmnist):
  synthetic_fmnist(tmp_path)
  (tmp_path / (TRAIN_LABELS + ".gz")).unlink()
  with pytest.raises(DataError, match=f"missing {TRAIN_LABELS}"):
    data.find_data_dir(tmp_path)


# ----------------------------------------------------------------------------
# Downloading (with a fake fetch: no network in tests).


@pytest.fixture
def served(tmp_path, synthetic_fmnist):
  """A directory of synthetic .gz files to download from."""
  served_dir = tmp_path / "server"
  synthetic_fmnist(served_dir)
  return served_dir


@pytest.fixture
def fake_server(served, monkeypatch):
  """Serves `served` through a fake data._fetch; returns (served dir, fetched urls)."""
  fetched = []

  def fetch(url, destination):
    fetched.append(url)
    assert url.startswith(data.DOWNLOAD_URL)
    shutil.copy(served / url.removeprefix(data.DOWNLOAD_URL), destination)

  monkeypatch.setattr(data, "_fetch", fetch)
  return served, fetched


def _accept_served_checksums(served: pathlib.Path, monkeypatch) -> None:
  for name in data._SHA256:
    content = gzip.decompress((served / (name + ".gz")).read_bytes())
    monkeypatch.setitem(data._SHA256, name, hashlib.sha256(content).hexdigest())


def test_download_into_cache(isolated, fake_server, monkeypatch):
  _, cache_dir, _ = isolated
  served, fetched = fake_server
  _accept_served_checksums(served, monkeypatch)
  train, _ = data.load_arrays(verify_checksums=False)
  assert sorted(fetched) == sorted(data.DOWNLOAD_URL + n + ".gz" for n in data._SHA256)
  assert sorted(os.listdir(cache_dir)) == sorted(n + ".gz" for n in data._SHA256)
  np.testing.assert_array_equal(train.images, data.read_idx(served / (TRAIN_IMAGES + ".gz")))
  data.load_arrays(verify_checksums=False)
  assert len(fetched) == len(data._SHA256), "a complete cache must not download again"


def test_download_over_http_from_localhost(isolated, served, monkeypatch):
  """The real _fetch (urllib) against a local HTTP server: no outside network."""
  _, cache_dir, _ = isolated
  _accept_served_checksums(served, monkeypatch)
  for proxy_variable in ("http_proxy", "HTTP_PROXY"):  # A proxy would not reach localhost.
    monkeypatch.delenv(proxy_variable, raising=False)
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=served)
  with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address
    monkeypatch.setattr(data, "DOWNLOAD_URL", f"http://{host}:{port}/")
    try:
      train, _ = data.load_arrays(verify_checksums=False)
    finally:
      server.shutdown()
  np.testing.assert_array_equal(train.images, data.read_idx(served / (TRAIN_IMAGES + ".gz")))
  assert sorted(os.listdir(cache_dir)) == sorted(n + ".gz" for n in data._SHA256)


def test_download_only_missing_files(isolated, fake_server, monkeypatch):
  _, cache_dir, _ = isolated
  served, fetched = fake_server
  _accept_served_checksums(served, monkeypatch)
  cache_dir.mkdir(parents=True)
  shutil.copy(served / (TRAIN_IMAGES + ".gz"), cache_dir)
  data.load_arrays(verify_checksums=False)
  assert len(fetched) == len(data._SHA256) - 1


def test_download_checksum_failure_keeps_nothing(isolated, fake_server):
  _, cache_dir, _ = isolated
  with pytest.raises(DataError, match="checksum") as error:
    data.load_arrays(verify_checksums=False)
  assert data.DOWNLOAD_URL in str(error.value) and "discarded" in str(error.value)
  assert os.listdir(cache_dir) == [], "a bad download must not land in the cache"


def test_download_corrupt_gzip_keeps_nothing(isolated, fake_server):
  _, cache_dir, _ = isolated
  served, _ = fake_server
  (served / (TRAIN_IMAGES + ".gz")).write_bytes(b"<html>not found</html>")
  with pytest.raises(DataError, match="corrupt"):
    data.load_arrays(verify_checksums=False)
  assert os.listdir(cache_dir) == []


def test_offline_lists_dirs_and_fixes(isolated, monkeypatch):
  def offline(url, destination):
    raise urllib.error.URLError("no network")

  monkeypatch.setattr(data, "_fetch", offline)
  with pytest.raises(DataError) as error:
    data.load_arrays()
  message = str(error.value)
  assert "no network" in message and "apt-get install dataset-fashion-mnist" in message
  for directory in isolated:
    assert str(directory) in message


def test_no_download_when_disabled(isolated, fake_server):
  _, fetched = fake_server
  with pytest.raises(DataError, match="no searched directory has all four"):
    data.load_arrays(download=False)
  assert fetched == []


def test_unwritable_cache(tmp_path, isolated, fake_server, monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  # A cache under a regular file cannot be created, even by root.
  monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
  with pytest.raises(DataError, match=re.escape(str(blocker))) as error:
    data.load_arrays()
  assert data.DATA_DIR_ENV in str(error.value)


# ----------------------------------------------------------------------------
# Splits.


def _numbered_split(num_examples: int) -> data.Split:
  """A split whose image i is filled with i % 256 and whose label is i % 10."""
  indices = np.arange(num_examples)
  images = np.broadcast_to((indices % 256).astype(np.uint8)[:, None, None], (num_examples, 28, 28))
  return data.Split(images=images, labels=(indices % data.NUM_CLASSES).astype(np.int32))


def test_tail_split_takes_the_last_examples():
  full = _numbered_split(100)
  train, validation = data.split_train(full, validation_size=30, validation_split="tail", seed=0)
  np.testing.assert_array_equal(train.images, full.images[:70])
  np.testing.assert_array_equal(validation.images, full.images[70:])
  np.testing.assert_array_equal(validation.labels, full.labels[70:])


def _indices(split: data.Split) -> np.ndarray:
  return split.images[:, 0, 0].astype(np.int64)


def test_random_split_is_seeded_disjoint_and_covering():
  full = _numbered_split(200)
  split = lambda seed: data.split_train(
    full, validation_size=40, validation_split="random", seed=seed
  )
  train, validation = split(0)
  assert len(train) == 160 and len(validation) == 40
  train_indices, validation_indices = _indices(train), _indices(validation)
  assert not set(train_indices) & set(validation_indices)
  assert sorted([*train_indices, *validation_indices]) == list(range(200))
  np.testing.assert_array_equal(validation.labels, validation_indices % data.NUM_CLASSES)
  np.testing.assert_array_equal(_indices(split(0)[1]), validation_indices)
  assert not np.array_equal(_indices(split(1)[1]), validation_indices)
  assert validation_indices.tolist() != list(range(160, 200)), "random must not be the tail"


def test_zero_validation_size():
  full = _numbered_split(10)
  for validation_split in data.VALIDATION_SPLITS:
    train, validation = data.split_train(
      full, validation_size=0, validation_split=validation_split, seed=0
    )
    assert train is full and validation is None


@pytest.mark.parametrize("size", [-1, 10, 11, 2.5, True, "3"])
def test_impossible_validation_size(size):
  with pytest.raises(ConfigError, match=r"data\.validation_size") as error:
    data.split_train(_numbered_split(10), validation_size=size, validation_split="tail", seed=0)
  assert "[0, 9]" in str(error.value) and repr(size) in str(error.value)


def test_unknown_validation_split():
  with pytest.raises(ConfigError, match=r"data\.validation_split='last'.*tail"):
    data.split_train(_numbered_split(10), validation_size=1, validation_split="last", seed=0)


# ----------------------------------------------------------------------------
# load(config).


def test_load_builds_the_dataset(tmp_path, synthetic_fmnist):
  train, test = synthetic_fmnist(tmp_path, as_standard=True)
  dataset = data.load(_data_config(dir=str(tmp_path), validation_size=10))
  assert dataset.source == f"idx:{tmp_path}"
  np.testing.assert_array_equal(dataset.validation.images, train.images[-10:])
  np.testing.assert_array_equal(dataset.train.labels, train.labels[:-10])
  np.testing.assert_array_equal(dataset.test.images, test.images)
  assert list(dataset.splits()) == ["train", "val", "test"]


def test_load_without_validation(tmp_path, synthetic_fmnist):
  synthetic_fmnist(tmp_path, as_standard=True)
  dataset = data.load(_data_config(dir=str(tmp_path), validation_size=0))
  assert dataset.validation is None and list(dataset.splits()) == ["train", "test"]


def test_load_searches_when_dir_is_none(isolated, synthetic_fmnist):
  _, _, system_dir = isolated
  synthetic_fmnist(system_dir, as_standard=True)
  assert data.load(_data_config()).source == f"idx:{system_dir}"


def test_load_unknown_source():
  with pytest.raises(ConfigError, match=r"data\.source='csv'"):
    data.load(_data_config(source="csv"))


# ----------------------------------------------------------------------------
# Preprocessing.


def test_preprocess_scale01_and_raw():
  images = np.array([[0, 51, 255]], np.uint8)
  scale01 = data.make_preprocess("scale01", images)(images)
  assert scale01.dtype == np.float32
  np.testing.assert_allclose(np.asarray(scale01), [[0.0, 0.2, 1.0]], rtol=FLOAT32_TOLERANCE)
  raw = data.make_preprocess("raw", images)(images)
  assert raw.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(raw), [[0.0, 51.0, 255.0]])


def test_preprocess_standardize_uses_train_statistics():
  train_images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
  standardize = data.make_preprocess("standardize", train_images)
  standardized = np.asarray(standardize(train_images))
  assert standardized.dtype == np.float32
  assert abs(standardized.mean()) < FLOAT32_TOLERANCE
  assert abs(standardized.std() - 1.0) < FLOAT32_TOLERANCE
  mean, std = train_images.mean(), train_images.std()  # numpy's float64 oracle
  other = np.array([0, 255], np.uint8)
  np.testing.assert_allclose(
    np.asarray(standardize(other)), (other - mean) / std, rtol=FLOAT32_TOLERANCE
  )


def test_preprocess_unknown_name():
  with pytest.raises(ConfigError, match=r"data\.preprocessing='minmax'"):
    data.make_preprocess("minmax", np.zeros((1, 28, 28), np.uint8))


# ----------------------------------------------------------------------------
# The real dataset.


@pytest.fixture(scope="session")
def real_arrays(real_data_dir):
  return data.load_arrays(real_data_dir, download=False)  # checksums verified


def test_real_counts_and_dtypes(real_arrays):
  train, test = real_arrays
  assert train.images.shape == (REAL_NUM_TRAIN, *data.IMAGE_SHAPE)
  assert test.images.shape == (REAL_NUM_TEST, *data.IMAGE_SHAPE)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32


def test_real_classes_are_balanced(real_arrays):
  train, test = real_arrays
  np.testing.assert_array_equal(
    np.bincount(train.labels), [REAL_NUM_TRAIN // data.NUM_CLASSES] * data.NUM_CLASSES
  )
  np.testing.assert_array_equal(
    np.bincount(test.labels), [REAL_NUM_TEST // data.NUM_CLASSES] * data.NUM_CLASSES
  )


def test_real_study_splits(real_arrays):
  train, _ = real_arrays
  study_a_train, study_a_val = data.split_train(
    train, validation_size=STUDY_A_VALIDATION, validation_split="tail", seed=0
  )
  num_kept = REAL_NUM_TRAIN - STUDY_A_VALIDATION
  np.testing.assert_array_equal(study_a_val.images, train.images[num_kept:])
  np.testing.assert_array_equal(study_a_train.labels, train.labels[:num_kept])
  study_b_train, study_b_val = data.split_train(
    train, validation_size=STUDY_B_VALIDATION, validation_split="random", seed=0
  )
  assert (len(study_b_train), len(study_b_val)) == (48_000, STUDY_B_VALIDATION)


def test_real_load_with_base_protocol(real_data_dir):
  dataset = data.load(
    _data_config(dir=str(real_data_dir), validation_size=STUDY_B_VALIDATION, split_seed=0)
  )
  assert [len(s) for s in dataset.splits().values()] == [48_000, STUDY_B_VALIDATION, 10_000]
  assert dataset.source == f"idx:{real_data_dir}"
