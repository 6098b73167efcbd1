"""Study A's protocol and recipe, shared by configs A1-A4 (not a row by itself).

Study A (Keras): validation = the last 10,000 training images (X_train[50000:]),
inputs scaled to [0, 1], SGD lr 0.01 with momentum 0.9, batch 200, 5 epochs,
sparse categorical cross-entropy; Keras' default init (glorot-uniform, zero bias).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.validation_size = 10_000
  config.data.validation_split = "tail"
  config.batch_size = 200
  config.num_epochs = 5
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.01
  config.optimizer.momentum = 0.9
  return config
