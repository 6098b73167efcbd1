"""Study B, study 1: input standardization, with SGD.

The deck: raw 0-255 pixels with SGD give large validation-loss fluctuations and
exploding gradients; scaling to [0, 1] converges smoothly but needs a larger
learning rate. Here B1's network without dropout (Dense 512 relu) trains with
plain SGD for 20 epochs (no early stopping, so the curves are whole), for
every input scaling (raw, scale01, standardize: the training set's mean/std)
and three learning rates. Members that blow up are frozen and reported as
diverged. Writes sweep.md/csv (validation and test metrics), sweep.png and
sweep_curves.png (validation loss per epoch for every point).

  python launch.py --config=configs/study_inputs.py     # 4 min of training on a 2-core CPU
"""

from configs import mlp_1hidden


def get_config():
  config = mlp_1hidden.get_config()
  config.model.dropout_rates = (0.0,)
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.01
  config.num_epochs = 20
  config.early_stopping.enabled = False
  config.sweep.grid = (
    "data.preprocessing=raw,scale01,standardize; optimizer.learning_rate=0.001,0.01,0.1"
  )
  config.sweep.metric = "val/loss"
  return config
