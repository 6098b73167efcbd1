"""Beyond the studies: the fastest path to >= 92.5% test accuracy on a 2-core CPU.

Not a study row (issue "beyond the studies"). A small batch-norm CNN trained
with the parts of fast small-image recipes (the airbench family) that pay on a
CPU: on-device flips and 2-pixel translations, label smoothing 0.1, a
one-cycle learning rate with Nesterov SGD, and test-time flip averaging.
Hyperparameters were chosen on the 48,000 / 12,000 validation split
(`--config.data.validation_size=12000`), never on test; the final run trains on
all 60,000 images for a fixed number of epochs (no early stopping).

  python launch.py --config=configs/cpu_fast.py
"""

from ml_collections import ConfigDict

from configs import base


def get_config():
  config = base.get_config()
  config.model = ConfigDict(
    {
      "name": "cnn",
      "conv_features": (16, 32, 64),
      "dense_sizes": (128,),
      "kernel_size": 3,
      "activation": "relu",
      "batch_norm": True,
      "pool": (True, True, True),
      "conv_dropout_rates": 0.0,
      "dense_dropout_rates": 0.1,
    }
  )
  config.data.validation_size = 0  # the final run: all 60,000 training images
  config.num_epochs = 14
  config.batch_size = 128
  config.optimizer.name = "sgd"
  config.optimizer.nesterov = True
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 0.1
  config.optimizer.schedule = "onecycle"
  config.augment.flip = True
  config.augment.translate = 2
  config.label_smoothing = 0.1
  config.tta_flip = True
  config.checkpoint.max_to_keep = 1
  return config
