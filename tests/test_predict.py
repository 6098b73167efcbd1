"""Predicting on user images and exporting a run: the same answers as in-process evaluation."""

import hashlib
import json
import shutil

import jax
import numpy as np
import pytest
from PIL import Image
from small import small_config, zero_checkpoint_data

from fmnist_jax import data, export, predict, runs, train

NUM_IMAGES = 20


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_dataset):
  """A finished small run (2 epochs), trained once for every test here."""
  workdir = tmp_path_factory.mktemp("run")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(data, "load", lambda config: small_dataset)
    train.fit(small_config(num_epochs=2), workdir, show_progress=False)
  return workdir


def in_process_classes(workdir, images):
  run = runs.load_run(workdir)
  return np.asarray(run.trainer.predict_members(run.state, jax.device_put(images)))[0].argmax(-1)


def test_pngs_get_the_classes_of_in_process_evaluation(
  trained_run, small_dataset, use_small_dataset, tmp_path, capsys
):
  images = small_dataset.test.images[:NUM_IMAGES]
  paths = []
  for index, image in enumerate(images):
    paths.append(str(tmp_path / f"test{index}.png"))
    Image.fromarray(image).save(paths[-1])
  assert predict.main([f"--workdir={trained_run}", *paths]) == 0
  lines = capsys.readouterr().out.splitlines()
  expected = in_process_classes(trained_run, images)
  assert len(lines) == NUM_IMAGES
  for line, label in zip(lines, expected, strict=True):
    top = line.split(": ", 1)[1].split(", ")
    assert len(top) == 3 and top[0].rsplit(" ", 1)[0] == data.CLASS_NAMES[label]
    probability = float(top[0].rsplit(" ", 1)[1])
    assert 0.1 <= probability <= 1.0


def test_probabilities_are_the_members_mean_softmax_for_any_number_of_images(
  trained_run, small_dataset, use_small_dataset
):
  run = runs.load_run(trained_run)
  for count in (1, 7, NUM_IMAGES, len(small_dataset.test.images)):
    images = small_dataset.test.images[:count]
    oracle = jax.nn.softmax(run.trainer.predict_members(run.state, jax.device_put(images)), -1)
    got = predict.probabilities(trained_run, images)
    assert got.shape == (count, data.NUM_CLASSES)
    np.testing.assert_allclose(got, np.asarray(oracle).mean(axis=0), rtol=1e-5, atol=1e-6)


def test_a_photo_on_white_is_inverted_resized_and_greyed(small_dataset, tmp_path):
  image = small_dataset.test.images[0]
  photo = np.repeat(255 - np.kron(image, np.ones((3, 3), np.uint8))[..., None], 3, axis=-1)
  Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)  # 84x84 RGB, white background
  converted = predict.image_to_fmnist(tmp_path / "photo.jpg")
  assert converted.shape == (28, 28) and converted.dtype == np.uint8
  assert converted[0].mean() < 30  # dark background, like the training data
  assert np.abs(converted.astype(int) - image).mean() < 12
  # A portrait-shaped image keeps its aspect ratio: padded left and right.
  Image.fromarray(np.full((56, 28), 200, np.uint8)).save(tmp_path / "tall.png")
  tall = predict.image_to_fmnist(tmp_path / "tall.png", invert="no")
  assert tall[:, :7].max() == 0 and tall[:, 7:21].min() > 150


def test_npy_and_idx_batches_are_accepted(small_dataset, tmp_path):
  images = small_dataset.test.images[:5]
  np.save(tmp_path / "batch.npy", images)
  (tmp_path / "batch-idx3-ubyte").write_bytes(data.to_idx_bytes(images))
  for name in ("batch.npy", "batch-idx3-ubyte"):
    loaded, names = predict.load_inputs([str(tmp_path / name)])
    np.testing.assert_array_equal(loaded, images)
    assert names[0] == f"{name}[0]"


def test_the_exported_function_gives_the_same_logits(
  trained_run, small_dataset, use_small_dataset, tmp_path
):
  assert export.main([f"--workdir={trained_run}", f"--out={tmp_path / 'model'}"]) == 0
  exported = jax.export.deserialize(bytearray((tmp_path / "model").read_bytes()))
  run = runs.load_run(trained_run)
  for count in (1, 37):  # any batch size
    images = small_dataset.test.images[:count]
    expected = np.asarray(run.trainer.predict_members(run.state, jax.device_put(images)))
    np.testing.assert_allclose(np.asarray(exported.call(images)), expected, rtol=1e-5, atol=1e-5)


def _digests(directory):
  return {
    path: hashlib.sha256(path.read_bytes()).hexdigest()
    for path in sorted(directory.rglob("*"))
    if path.is_file() and path.name != ".lock"
  }


def test_loading_a_run_changes_nothing_and_accepts_an_older_config(
  trained_run, small_dataset, use_small_dataset, tmp_path
):
  workdir = shutil.copytree(trained_run, tmp_path / "run")
  expected = in_process_classes(trained_run, small_dataset.test.images)
  # A run made before a config key existed (compute_dtype) loads with that key's default.
  saved = json.loads((workdir / "config.json").read_text())
  del saved["compute_dtype"]
  (workdir / "config.json").write_text(json.dumps(saved))
  before = _digests(workdir)
  np.testing.assert_array_equal(in_process_classes(workdir, small_dataset.test.images), expected)
  assert _digests(workdir) == before
  # A corrupt latest checkpoint is named, not replaced by an older epoch, and left in place.
  latest = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  zero_checkpoint_data(workdir / "checkpoints" / str(latest))
  before = _digests(workdir)
  with pytest.raises(
    runs.UserError, match=rf"latest checkpoint .* \(epoch {latest}\) is unreadable"
  ):
    runs.load_run(workdir)
  assert _digests(workdir) == before
