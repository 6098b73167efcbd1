"""Process-level speed settings change speed only: the unrolled CPU threefry gives jax's bits."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict
from small import NUM_TRAIN, small_config

from fmnist_jax import platform, train  # noqa: F401  (importing train applies the lowering)
from fmnist_jax.errors import ConfigError

# Random draws whose values a plain jax process (jax's own rolled CPU lowering) prints.
_DRAWS = """
import json, jax, numpy as np
key = jax.random.key(7)
draws = jax.jit(lambda key: (
  jax.random.bits(key, (3, 1001)),
  jax.random.bernoulli(jax.random.fold_in(key, 1), 0.75, (64, 7, 7)),
  jax.random.permutation(jax.random.fold_in(key, 2), 5000),
  jax.random.split(key, 4),
))(key)
keyless = [jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
           for x in draws]
print(json.dumps([np.asarray(x).ravel().tolist() for x in keyless]))
"""


def test_unrolled_threefry_draws_the_bits_of_jaxs_own_lowering():
  assert platform.unroll_threefry_on_cpu()
  reference = subprocess.run(
    [sys.executable, "-c", _DRAWS], capture_output=True, text=True, check=True, timeout=120
  )
  expected = json.loads(reference.stdout)
  namespace = {}
  exec(_DRAWS.replace("print(", "drawn = ("), namespace)  # the same draws in this process
  drawn = json.loads(namespace["drawn"])
  assert [len(x) for x in drawn] == [3003, 64 * 49, 5000, 8]
  for ours, theirs in zip(drawn, expected, strict=True):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_unrolled_threefry_compiles_without_a_loop():
  hlo = (
    jax.jit(lambda key: jax.random.bits(key, (1000,))).lower(jax.random.key(0)).compile().as_text()
  )
  assert jax.default_backend() == "cpu"
  assert " while(" not in hlo


def test_cheap_program_options_apply_only_where_no_accelerator_plugin_is_installed(monkeypatch):
  monkeypatch.setattr(platform, "_accelerator_plugin_installed", lambda: False)
  assert platform.cheap_program_options() == platform.CHEAP_PROGRAM_OPTIONS
  monkeypatch.setattr(platform, "_accelerator_plugin_installed", lambda: True)
  assert platform.cheap_program_options() == {}


def test_initial_weights_compiled_cheaply_equal_the_optimised_programs(small_dataset):
  """init_members compiles with the cheap options; init with the default ones. Same bits."""
  cnn = {"name": "cnn", "conv_features": (4, 8), "dense_sizes": (16,), "batch_norm": True}
  for model in (small_config().model, ConfigDict({**cnn, "pool": (True, True)})):
    config = small_config(model=model, num_seeds=2, seed=3)
    trainer = train.Trainer.create(config, small_dataset.train.images, NUM_TRAIN, num_members=2)
    members = train.members_of(config)
    stacked = trainer.init_state(members)
    for index, key in enumerate(members.init_keys()):
      single = trainer.init(key)
      for got, want in zip(
        [leaf[index] for leaf in jax.tree.leaves(stacked)], jax.tree.leaves(single), strict=True
      ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# One of resnet.py's 3x3 convolutions (XLA leaves small ones to Eigen anyway), compiled
# in a fresh process after `configure_xla`: the flags it set and the optimised HLO.
_CONV_HLO = """
from fmnist_jax import platform
platform.configure_xla()
import os, jax
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
  x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
x, w = jax.numpy.ones((128, 14, 14, 48)), jax.numpy.ones((3, 3, 48, 48))
print(os.environ["XLA_FLAGS"])
print(conv.lower(x, w).compile().as_text())
"""


def _conv_program(xla_flags: str) -> tuple[str, str]:
  env = {**os.environ, "XLA_FLAGS": xla_flags}
  done = subprocess.run(
    [sys.executable, "-c", _CONV_HLO], capture_output=True, text=True, env=env, timeout=120
  )
  assert done.returncode == 0, done.stderr
  flags, _, hlo = done.stdout.partition("\n")
  return flags, hlo


def test_cpu_flags_keep_convolutions_out_of_single_threaded_ynnpack():
  # YNNPACK's convolution runs on one core (platform.py has the timings); Eigen's uses all.
  flags, hlo = _conv_program("")
  assert flags.split() == list(platform.CPU_FLAGS + platform.CPU_ONLY_FLAGS)
  assert "convolution(" in hlo
  assert "ynn" not in hlo
  # The user's own value of a flag is kept, not overridden: here YNNPACK convolutions.
  ynn_convolutions = (
    "--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
  )
  flags, hlo = _conv_program(ynn_convolutions)
  assert flags.split()[0] == ynn_convolutions
  assert "xla_cpu_experimental_xnn_graph_fusion_mode" in flags
  assert "ynn" in hlo


def test_the_in_process_tests_compile_with_the_entry_points_xla_flags():
  # conftest.py sets them before anything imports jax; were jax imported first,
  # configure_xla would leave XLA_FLAGS as it was (XLA would never read them).
  assert set(platform.CPU_FLAGS) <= set(os.environ.get("XLA_FLAGS", "").split())


def _library_matmuls(compiled_hlo: str) -> int:
  """Matmuls that XLA:CPU hands to YNNPACK (each a custom fusion named for its dot)."""
  return sum(
    "kind=kCustom" in line and "/dot_general" in line and "ynn_fusion" in line
    for line in compiled_hlo.splitlines()
  )


_SMALL_MLP = {"name": "mlp", "hidden_sizes": (64,)}
_SMALL_CNN = {"name": "cnn", "conv_features": (4,), "dense_sizes": (16,), "pool": (True,)}


@pytest.mark.parametrize("model", [_SMALL_MLP, _SMALL_CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("library, ynnpack_matmuls", [("eigen", False), ("ynnpack", True)])
def test_the_training_program_compiles_its_matmuls_with_the_chosen_library(
  small_dataset, model, library, ynnpack_matmuls
):
  config = small_config(model=ConfigDict(model), cpu_matmul_library=library)
  trainer = train.Trainer.create(config, small_dataset.train.images, NUM_TRAIN)
  state = trainer.init_state(train.members_of(config))
  images, labels = small_dataset.train.images, small_dataset.train.labels
  keys = jax.random.split(jax.random.key(0), 1)
  active = np.ones(1, bool)
  hlo = trainer.train_members.lower(state, active, images, labels, keys).compile().as_text()
  assert (_library_matmuls(hlo) > 0) == ynnpack_matmuls
  # Evaluation keeps the process-wide choice (YNNPACK) whatever the training program's.
  lowered = trainer.predict_members.lower(state, images[: config.eval_batch_size])
  assert _library_matmuls(lowered.compile().as_text()) > 0


def test_an_unknown_matmul_library_is_a_config_error():
  with pytest.raises(ConfigError, match="cpu_matmul_library 'mkl'; choose one of"):
    platform.training_program_options("mkl")
