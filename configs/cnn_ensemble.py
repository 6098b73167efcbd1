"""Study B, row B6: the CNN ensemble, B4 + B5. Reported test accuracy 0.9344.

The class with the largest sum of the tuned CNN's (configs/cnn.py) and the
residual CNN's (configs/resnet.py) softmax outputs, as the deck; each member
trains in runs/cnn and runs/resnet or is reused when finished there; ensemble m
pairs their seed m (see configs/mlp_ensemble.py).

  python launch.py --config=configs/cnn_ensemble.py --config.num_seeds=3
"""

from configs import base

# The study row this config reproduces and its reported test accuracy (fmnist_jax.report).
REPORTED = {"row": "B6 B4 + B5 ensemble", "test_accuracy": 0.9344}


def get_config():
  config = base.get_config()
  config.ensemble.members = ("cnn", "resnet")
  return config
