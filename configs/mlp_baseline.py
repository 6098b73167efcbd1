"""Study A, row A1: the baseline MLP. Reported test accuracy 0.8512 (one Keras run).

Flatten -> Dense 300 relu -> Dense 100 relu -> Dense 10 (266,610 params), study
A's recipe (configs/study_a.py): 50,000 / 10,000 tail split, [0, 1] inputs,
SGD lr 0.01 momentum 0.9, batch 200, 5 epochs, Keras init.

  python launch.py --config=configs/mlp_baseline.py     # ~10 s on a 2-core CPU
"""

from configs import study_a

# The study row this config reproduces and its reported test accuracy (fmnist_jax.report).
REPORTED = {"row": "A1 MLP 300-100, SGD", "test_accuracy": 0.8512}


def get_config():
  config = study_a.get_config()
  config.model.name = "mlp"
  config.model.hidden_sizes = (300, 100)
  config.model.activation = "relu"
  # Its 300x100 matmuls are too small for YNNPACK to use both cores: Eigen trains this
  # MLP ~15% faster on CPU (fmnist_jax/platform.py). Runs before 2026-12-05 used
  # "ynnpack"; only float rounding differs.
  config.cpu_matmul_library = "eigen"
  return config
