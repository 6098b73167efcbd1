"""Study B, study 5: two hidden layers [1024, 512], relu, with and without batch norm and dropout.

Dense 1024 -> Dense 512 (relu; batch norm before the activation when on,
Keras' BatchNormalization momentum 0.99 / epsilon 1e-3) with B1's recipe
(Adam lr 3e-4, batch 128, early stopping with patience 15); every combination
of batch norm (off/on) and dropout (none / 0.2 and 0.4): two programs (batch norm
off / on), each training both dropout settings as members.

  python launch.py --config=configs/study_two_hidden.py
"""

from configs import mlp_1hidden


def get_config():
  config = mlp_1hidden.get_config()
  config.model.hidden_sizes = (1024, 512)
  config.model.batch_norm = False
  config.model.dropout_rates = (0.0, 0.0)
  config.sweep.grid = "model.batch_norm=False,True; model.dropout_rates=[(0.0, 0.0), (0.2, 0.4)]"
  return config
