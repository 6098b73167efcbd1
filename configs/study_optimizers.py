"""Study B, study 2: learning-rate search with SGD, then SGD with momentum, then Adam.

B1's network (Dense 512 relu, dropout 0.4, batch 128) for 15 epochs (no early
stopping) at eight learning rates, for each optimizer: SGD, SGD with momentum
0.9, Adam. Every learning rate of one optimizer trains in one vmapped program
(the learning rate lives in the optimizer state), so the whole study is two
compiled programs. Writes sweep.md/csv, sweep.png (validation accuracy against
the learning rate, one line per optimizer) and sweep_curves.png.

  python launch.py --config=configs/study_optimizers.py     # 4 min on a 2-core CPU (2 programs)
"""

from configs import mlp_1hidden


def get_config():
  config = mlp_1hidden.get_config()
  config.num_epochs = 15
  config.early_stopping.enabled = False
  config.optimizer.name = "sgd"  # momentum is then vmappable: sgd and sgd+momentum share a program
  config.sweep.grid = "optimizer.learning_rate=1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,0.1,0.3"
  config.sweep.zip = "optimizer.name=sgd,sgd,adam; optimizer.momentum=0.0,0.9,0.0"
  return config
