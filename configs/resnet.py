"""Study B, row B5: the stacked CNN with residual connections. Reported test accuracy 0.9310.

The deck: train / val / test accuracy 0.972604 / 0.935167 / 0.9310, test F1 0.930924.

The deck gives "3 stacked (x2) conv layers with residual connections", relu,
Adam; not the widths. Chosen here (for accuracy and CPU speed): three residual
blocks of two 3x3 SAME convolutions, 24 -> 48 -> 96 channels (act(x' +
bn(conv(act(bn(conv(x)))))), x' a 1x1 projection where the width changes),
each followed by a 2x2 max pool (not after the last: 7x7x96 feeds the head)
and dropout 0.25; Dense 256 relu -> dropout 0.5 -> Dense 10 (1,374,930
params). Adam lr 0.001, batch 128, early stopping with patience 10 (the deck's
CNN patience), best weights restored. Study B's protocol, Keras init,
BatchNormalization momentum 0.99 / epsilon 1e-3.

  python launch.py --config=configs/resnet.py
"""

from ml_collections import ConfigDict

from configs import cnn

# The study row this config reproduces and its reported test accuracy (fmnist_jax.report).
REPORTED = {"row": "B5 residual CNN", "test_accuracy": 0.931}


def get_config():
  config = cnn.get_config()
  config.model = ConfigDict(
    {
      "name": "resnet",
      "stage_features": (24, 48, 96),
      "dense_sizes": (256,),
      "kernel_size": 3,
      "activation": "relu",
      "batch_norm": True,
      "pool": (True, True, False),
      "dropout_rates": 0.25,
      "dense_dropout_rates": 0.5,
    }
  )
  return config
