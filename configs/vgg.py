"""Study A, row A2: "Add Conv2D layers". Reported: "too slow to run" (no number).

Conv 64,64 -> pool -> Conv 128,128 -> pool -> Conv 256,256 -> pool (3x3 SAME
relu, 2x2 max pools: 28 -> 14 -> 7 -> 3) -> Dense 500 -> Dense 250 -> Dense 10,
2,424,516 params. The study's listing applied the second 64-filter conv to the
input, leaving the first one dead; this is the intended stack, each layer
feeding the next. Study A's recipe (configs/study_a.py). It is the costliest
model here (~0.7 GFLOP per training image): minutes per epoch on a 2-core CPU,
seconds on a GPU.

  python launch.py --config=configs/vgg.py --config.num_epochs=1
"""

from ml_collections import ConfigDict

from configs import study_a

# The study row this config reproduces and its reported test accuracy (fmnist_jax.report).
REPORTED = {"row": "A2 VGG-like CNN", "test_accuracy": None}  # "too slow to run"


def get_config():
  config = study_a.get_config()
  config.model = ConfigDict(
    {
      "name": "vgg",
      "blocks": ((64, 64), (128, 128), (256, 256)),
      "dense_sizes": (500, 250),
      "activation": "relu",
    }
  )
  return config
