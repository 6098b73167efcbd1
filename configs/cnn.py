"""Study B, row B4: the tuned 3-conv CNN. Reported train/val/test 0.9697 / 0.9332 / 0.9268.

The deck gives "3 conv layers, relu everywhere, Adam lr 0.001, early stopping
patience 10" but not the widths; chosen here (for accuracy and CPU speed):
Conv 32 -> pool -> Conv 64 -> pool -> Conv 128 -> pool (3x3 SAME relu, 2x2 max
pools, dropout 0.25 after each pool) -> Dense 128 relu -> dropout 0.5 ->
Dense 10; batch 128. Study B's protocol: 48,000 / 12,000 seeded split, [0, 1]
inputs; Keras init and Adam epsilon 1e-7; best weights restored.

  python launch.py --config=configs/cnn.py
"""

from ml_collections import ConfigDict

from configs import base


def get_config():
  config = base.get_config()
  config.model = ConfigDict(
    {
      "name": "cnn",
      "conv_features": (32, 64, 128),
      "dense_sizes": (128,),
      "kernel_size": 3,
      "activation": "relu",
      "batch_norm": False,
      "pool": True,
      "conv_dropout_rates": 0.25,
      "dense_dropout_rates": 0.5,
    }
  )
  config.batch_size = 128
  config.num_epochs = 100  # upper bound; early stopping ends the run
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.early_stopping.enabled = True
  config.early_stopping.patience = 10
  return config
