"""Beyond the studies: augmentation, label smoothing, weight averaging, TTA, one-cycle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict
from small import NUM_TRAIN, small_config

from fmnist_jax import augment, train

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def images():
  return jax.random.randint(jax.random.key(1), (64, 28, 28), 1, 256).astype(jnp.uint8)


def test_flip_mirrors_about_half_of_the_images(images):
  flipped = np.asarray(augment.flip(KEY, images))
  mirrored = [
    np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, np.asarray(images), strict=True)
  ]
  same = [np.array_equal(f, i) for f, i in zip(flipped, np.asarray(images), strict=True)]
  assert all(m or s for m, s in zip(mirrored, same, strict=True)) and 16 < sum(mirrored) < 48


def test_translate_shifts_each_image_within_range_and_fills_black(images):
  shifted = np.asarray(augment.translate(KEY, images, 3))
  padded = np.pad(np.asarray(images), [(0, 0), (3, 3), (3, 3)])
  offsets = set()
  for out, source in zip(shifted, padded, strict=True):
    matches = [
      (dy, dx)
      for dy in range(7)
      for dx in range(7)
      if np.array_equal(out, source[dy : dy + 28, dx : dx + 28])
    ]
    assert len(matches) == 1
    offsets.add(matches[0])
  assert len(offsets) > 10  # each image draws its own shift


def test_cutout_blacks_out_one_square_and_nothing_else(images):
  out = np.asarray(augment.cutout(KEY, images, 8))
  for cut, source in zip(out, np.asarray(images), strict=True):
    rows, cols = np.nonzero(cut != source)
    assert (cut[rows, cols] == 0).all()  # sources have no black pixels, so all changes show
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert height <= 8 and width <= 8 and len(rows) == height * width


def test_augment_is_seeded_and_composes(images):
  config = ConfigDict({"flip": True, "translate": 2, "cutout": 6})
  run = augment.make_augment(config)
  np.testing.assert_array_equal(run(KEY, images), run(KEY, images))
  assert not np.array_equal(run(KEY, images), run(jax.random.key(2), images))
  assert augment.make_augment(ConfigDict({"flip": False, "translate": 0, "cutout": 0})) is None


def test_label_smoothing_matches_a_hand_computation():
  logits = jnp.array([[2.0, 0.5, -1.0] + [0.0] * 7])
  model = lambda x, rngs: logits  # noqa: E731
  loss, _ = train.classification_loss(
    model, None, jnp.array([0]), jnp.ones(1), None, label_smoothing=0.1
  )
  log_p = np.asarray(jax.nn.log_softmax(logits[0]))
  target = np.full(10, 0.1 / 10)
  target[0] += 0.9
  assert float(loss) == pytest.approx(-(target * log_p).sum(), rel=1e-6)


def test_the_averaged_weights_are_the_debiased_ema_of_the_trajectory(small_dataset):
  config = small_config(ema_decay=0.9)
  trainer = train.Trainer.create(config, small_dataset.train.images, NUM_TRAIN)
  state = trainer.init(jax.random.key(0))
  images, labels = small_dataset.train.images[:64], small_dataset.train.labels[:64]
  trajectory = []
  for step in range(3):
    batch = (images, labels, jnp.ones(64))
    state, _ = trainer.train_step(state, batch, jax.random.key(step))
    trajectory.append(jax.tree.map(np.array, state.params))  # the step donates state
  averaged = train.averaged_state(config, state).params
  ema = jax.tree.map(jnp.zeros_like, trajectory[0])
  for params in trajectory:
    ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, ema, params)
  expected = jax.tree.map(lambda e: e / (1 - 0.9**3), ema)
  for a, b in zip(jax.tree.leaves(averaged), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert train.averaged_state(small_config(), state) is state  # off: the live weights


def test_flip_tta_averages_the_logits_of_an_image_and_its_mirror(small_dataset):
  images = small_dataset.test.images[:8]
  plain = train.Trainer.create(small_config(), small_dataset.train.images, NUM_TRAIN)
  tta = train.Trainer.create(small_config(tta_flip=True), small_dataset.train.images, NUM_TRAIN)
  state = plain.init(jax.random.key(0))
  expected = (plain.predict(state, images) + plain.predict(state, images[:, :, ::-1])) / 2
  np.testing.assert_allclose(tta.predict(state, images), expected, rtol=1e-5, atol=1e-6)


TINY_CNN = ConfigDict(
  {
    "name": "cnn",
    "conv_features": (4, 8),
    "dense_sizes": (16,),
    "batch_norm": True,
    "pool": (True, True),
  }
)


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state(small_dataset):
  images, labels = small_dataset.train.images[:64], small_dataset.train.labels[:64]
  batch = (images, labels, jnp.ones(64))
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = small_config(compute_dtype=dtype, model=TINY_CNN)
    trainer = train.Trainer.create(config, small_dataset.train.images, NUM_TRAIN)
    state = trainer.init(jax.random.key(0))
    logits = trainer.predict(state, small_dataset.test.images[:32])
    state, step_metrics = trainer.train_step(state, batch, jax.random.key(1))
    leaves = jax.tree.leaves((state.params, state.model_state, state.opt_state))
    assert {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)} == {
      jnp.dtype("float32")
    }
    assert logits.dtype == jnp.float32
    results[dtype] = (np.asarray(logits), float(step_metrics["loss"]), state.params)
  (logits32, loss32, params32), (logits16, loss16, params16) = results.values()
  assert not np.array_equal(logits32, logits16)  # the arithmetic did change...
  np.testing.assert_allclose(logits16, logits32, atol=0.05 * np.abs(logits32).max())  # ...by little
  assert loss16 == pytest.approx(loss32, rel=0.02)
  for a, b in zip(jax.tree.leaves(params16), jax.tree.leaves(params32), strict=True):
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_sgd_weight_decay_adds_wd_times_each_kernel_to_its_gradient(small_dataset):
  images, labels = small_dataset.train.images[:64], small_dataset.train.labels[:64]
  batch = (images, labels, jnp.ones(64))
  after = {}
  for decay in (0.0, 0.01):
    config = small_config(**{"optimizer.name": "sgd", "optimizer.learning_rate": 0.5})
    config.optimizer.weight_decay = decay
    trainer = train.Trainer.create(config, small_dataset.train.images, NUM_TRAIN)
    state = trainer.init(jax.random.key(0))
    before = jax.tree.map(np.array, state.params)  # the step donates state
    after[decay] = trainer.train_step(state, batch, jax.random.key(1))[0].params
  # One plain SGD step: w - lr (g + wd w) = (w - lr g) - lr wd w, for kernels; biases untouched.
  trees = (after[0.01], after[0.0], before)
  for decayed, plain, w in zip(*(jax.tree.leaves(tree) for tree in trees), strict=True):
    expected = -0.5 * 0.01 * w if w.ndim > 1 else np.zeros_like(w)
    np.testing.assert_allclose(np.asarray(decayed - plain), expected, atol=1e-6)


def test_onecycle_rises_to_the_peak_then_anneals():
  config = small_config(**{"optimizer.schedule": "onecycle", "optimizer.warmup_epochs": 1.0})
  _, schedule = train.make_optimizer(config.optimizer, steps_per_epoch=10, num_epochs=4)
  values = np.asarray([schedule(step) for step in range(41)])
  assert values[0] == pytest.approx(1 / 25) and values.argmax() == 10
  assert values.max() == pytest.approx(1.0) and values[-1] < 1e-3


def test_the_whole_recipe_trains_reproducibly(use_small_dataset, tmp_path):
  config = small_config(
    num_epochs=2,
    label_smoothing=0.1,
    ema_decay=0.9,
    tta_flip=True,
    **{
      "augment.flip": True,
      "augment.translate": 2,
      "augment.cutout": 4,
      "optimizer.schedule": "onecycle",
    },
  )
  runs = [train.fit(config, tmp_path / str(i), show_progress=False) for i in range(2)]
  assert runs[0]["members"] == runs[1]["members"]
  assert runs[0]["members"][0]["metrics"]["test"]["accuracy"] > 0.6
