"""Study A, row A4: A3 trained longer with early stopping. Reported test accuracy 0.9033.

The A3 model and recipe (configs/autoencoder.py) with up to 100 epochs and
EarlyStopping(monitor="val_loss", patience=5); the study's run stopped at
epoch 23. Final metrics use the best epoch's weights (restore_best_weights).

  python launch.py --config=configs/autoencoder_early_stop.py
"""

from configs import autoencoder

# The study row this config reproduces and its reported test accuracy (fmnist_jax.report).
REPORTED = {"row": "A4 A3 + early stopping", "test_accuracy": 0.9033}


def get_config():
  config = autoencoder.get_config()
  config.num_epochs = 100
  config.early_stopping.enabled = True
  config.early_stopping.patience = 5
  config.early_stopping.restore_best = True
  return config
