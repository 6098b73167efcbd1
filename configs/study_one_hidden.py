"""Study B, study 4: one hidden layer: activations, dropout with a lower learning rate, units.

B1's network and recipe (configs/mlp_1hidden.py: Dense 512, dropout 0.4, Adam
3e-4, batch 128, early stopping with patience 15), one part per argument:

  python launch.py --config=configs/study_one_hidden.py:activation  # relu, tanh, sigmoid, elu, selu
  python launch.py --config=configs/study_one_hidden.py:dropout     # rate 0-0.5 x lr 1e-3, 3e-4
  python launch.py --config=configs/study_one_hidden.py:units       # 64 ... 2048 hidden units

The dropout part is one vmapped program of 8 members (dropout rates and learning
rates both vary between members); the others compile one program per value.
Each writes sweep.md/csv, sweep.png and sweep_curves.png into runs/study_one_hidden_<part>.
Add --config.num_seeds=3 for mean +- std.
"""

from configs import mlp_1hidden

_SWEEPS = {
  "activation": "model.activation=relu,tanh,sigmoid,elu,selu",
  "dropout": (
    "model.dropout_rates=[(0.0,), (0.2,), (0.35,), (0.5,)]; optimizer.learning_rate=1e-3,3e-4"
  ),
  "units": "model.hidden_sizes=[(64,), (128,), (256,), (512,), (1024,), (2048,)]",
}


def get_config(part: str = "activation"):
  if part not in _SWEEPS:
    raise ValueError(f"study_one_hidden.py:{part}: choose one of {sorted(_SWEEPS)}")
  config = mlp_1hidden.get_config()
  config.sweep.grid = _SWEEPS[part]
  return config
