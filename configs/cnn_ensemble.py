"""Study B, row B6: the CNN ensemble, B4 + B5. Reported test accuracy 0.9344.

The class with the largest sum of the tuned CNN's (configs/cnn.py) and the
residual CNN's (configs/resnet.py) softmax outputs, as the deck; each member
trains in runs/cnn and runs/resnet or is reused when finished there; ensemble m
pairs their seed m (see configs/mlp_ensemble.py).

  python launch.py --config=configs/cnn_ensemble.py --config.num_seeds=3

Five pairs with today's CPU paths (README: 0.9357 +- 0.0007), in two programs:
  python launch.py --config=configs/cnn_ensemble.py --workdir=runs/b6/seed0/cnn_ensemble
  python launch.py --config=configs/cnn_ensemble.py --config.seed=1 --config.num_seeds=4 \
    --workdir=runs/b6/seed1/cnn_ensemble
"""

from configs import base

# The study row this config reproduces and its reported test accuracy (fmnist_jax.report).
REPORTED = {"row": "B6 B4 + B5 ensemble", "test_accuracy": 0.9344}


def get_config():
  config = base.get_config()
  config.ensemble.members = ("cnn", "resnet")
  return config
