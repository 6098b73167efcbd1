"""Tests for fmnist_jax.tfds_source: tfds data_source reading and the offline prepare."""

import sys

import numpy as np
import pytest
from ml_collections import ConfigDict

from fmnist_jax import data, tfds_source
from fmnist_jax.errors import DataError, UserError

tfds = pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")

MOCK_NUM_EXAMPLES = 7
VALIDATION_SIZE = 10


@pytest.fixture
def prepared(tmp_path, synthetic_fmnist):
  """Prepares tfds fashion_mnist from synthetic IDX files; returns (tfds dir, train, test)."""
  train, test = synthetic_fmnist(tmp_path / "idx", as_standard=True)
  tfds_dir = tmp_path / "tfds"
  prepared_dir = tfds_source.prepare(data_dir=str(tfds_dir), idx_dir=str(tmp_path / "idx"))
  assert prepared_dir.parent.parent == tfds_dir
  return str(tfds_dir), train, test


def test_mock_data_shapes_and_dtypes(monkeypatch):
  # tfds 4.9.10's mock sets `__getitems__` on a MagicMock, where it is not a
  # magic method, so it is called without `self` and raises TypeError; route the
  # batch read through the mocked `__getitem__` instead.
  from tensorflow_datasets.core.data_sources import base

  monkeypatch.setattr(
    base.BaseDataSource, "__getitems__", lambda self, keys: [self[key] for key in keys]
  )
  with tfds.testing.mock_data(num_examples=MOCK_NUM_EXAMPLES):
    train, test = tfds_source.load_arrays(None, verify_checksums=False)
  for split in (train, test):
    assert split.images.shape == (MOCK_NUM_EXAMPLES, *data.IMAGE_SHAPE)
    assert split.images.dtype == np.uint8
    assert split.labels.shape == (MOCK_NUM_EXAMPLES,) and split.labels.dtype == np.int32
    assert split.labels.min() >= 0 and split.labels.max() < data.NUM_CLASSES


def test_prepare_then_load_is_identical_to_idx(prepared):
  tfds_dir, train, test = prepared
  loaded_train, loaded_test = tfds_source.load_arrays(tfds_dir)  # checksums verified
  for loaded, written in ((loaded_train, train), (loaded_test, test)):
    assert loaded.images.dtype == np.uint8 and loaded.labels.dtype == np.int32
    np.testing.assert_array_equal(loaded.images, written.images)
    np.testing.assert_array_equal(loaded.labels, written.labels)


def test_records_on_disk_are_in_tfds_order(prepared):
  """tfds stores examples in hash order; load_arrays must undo it, not rely on luck."""
  tfds_dir, train, _ = prepared
  source = tfds.data_source("fashion_mnist", split="train", data_dir=tfds_dir, download=False)
  first_record = source[0]
  assert first_record["image"].shape == (*data.IMAGE_SHAPE, 1)
  stored = np.stack([source[i]["image"][..., 0] for i in range(len(source))])
  assert not np.array_equal(stored, train.images)
  assert sorted(map(bytes, stored)) == sorted(map(bytes, train.images))


def test_prepare_twice_keeps_the_dataset(prepared, tmp_path):
  tfds_dir, train, _ = prepared
  again = tfds_source.prepare(data_dir=tfds_dir, idx_dir=str(tmp_path / "idx"))
  assert again.parent.parent == tmp_path / "tfds"
  np.testing.assert_array_equal(tfds_source.load_arrays(tfds_dir)[0].images, train.images)


def test_data_load_with_tfds_source(prepared):
  tfds_dir, train, test = prepared
  config = ConfigDict(
    dict(
      source="tfds",
      dir=None,
      tfds_data_dir=tfds_dir,
      download=False,
      validation_size=VALIDATION_SIZE,
      validation_split="tail",
      split_seed=0,
    )
  )
  dataset = data.load(config)
  assert dataset.source == f"tfds:{tfds_dir}"
  np.testing.assert_array_equal(dataset.validation.images, train.images[-VALIDATION_SIZE:])
  np.testing.assert_array_equal(dataset.test.labels, test.labels)


def test_wrong_data_fails_checksums(prepared, monkeypatch):
  tfds_dir, _, _ = prepared
  monkeypatch.setitem(data._SHA256, data.FILE_NAMES["train"][0], "0" * 64)
  with pytest.raises(DataError, match="checksum"):
    tfds_source.load_arrays(tfds_dir)


def test_not_prepared_says_how_to_prepare(tmp_path):
  with pytest.raises(UserError, match="not prepared") as error:
    tfds_source.load_arrays(str(tmp_path / "empty"))
  assert f"python -m fmnist_jax.tfds_source prepare --data_dir={tmp_path / 'empty'}" in str(
    error.value
  )


def test_missing_tfds_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
  with pytest.raises(UserError, match=r"fmnist_jax\[tfds\].*uv sync --extra tfds"):
    tfds_source.load_arrays(None)


def test_prepare_command_line(tmp_path, synthetic_fmnist, capsys):
  synthetic_fmnist(tmp_path / "idx", as_standard=True)
  argv = ["prepare", f"--data_dir={tmp_path / 'tfds'}", f"--idx_dir={tmp_path / 'idx'}"]
  assert tfds_source.main(argv) == 0
  assert "--config.data.source=tfds" in capsys.readouterr().out
  assert tfds_source.main(["prepare", f"--idx_dir={tmp_path / 'missing'}"]) == 2
  assert "does not hold Fashion-MNIST" in capsys.readouterr().err
