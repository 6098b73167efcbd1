"""Study B, row B3: the MLP ensemble, B1 + B2. Reported test accuracy 0.8960.

The class with the largest sum of B1's and B2's softmax outputs (the deck's
rule; mean logit and majority vote are reported beside it). Each member config
trains in its own workdir (runs/mlp_1hidden, runs/mlp_2hidden) or is reused
when it has finished there; with --config.num_seeds=N each member trains N
seeds and ensemble m pairs B1's seed m with B2's, so the ensemble is reported
as mean +- std over N pairs. Writes results.json and per_class_f1.png (B1, B2
and the ensemble per class, as the deck's comparison).

  python launch.py --config=configs/mlp_ensemble.py --config.num_seeds=5
"""

from configs import base

# The study row this config reproduces and its reported test accuracy (fmnist_jax.report).
REPORTED = {"row": "B3 B1 + B2 ensemble", "test_accuracy": 0.896}


def get_config():
  config = base.get_config()
  config.ensemble.members = ("mlp_1hidden", "mlp_2hidden")
  return config
