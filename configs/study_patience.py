"""Study B, study 3: early-stopping patience analysis, for the MLP (B1) or the CNN (B4).

Trains the model with early stopping off for a fixed number of epochs, then
analysis.md in the workdir tabulates the running minimum of the validation
loss (each new minimum and the epochs it took to arrive) and the patience it
implies, and learning_curves.png marks the minima. The deck found: MLP best
loss 0.421137, new minima within 11 epochs, so patience 15; CNN best 0.2039,
within 6 epochs, so patience 10.

  python launch.py --config=configs/study_patience.py:mlp   # B1, 100 epochs
  python launch.py --config=configs/study_patience.py:cnn   # B4, 40 epochs
"""

from configs import cnn, mlp_1hidden

_MODELS = {"mlp": (mlp_1hidden, 100), "cnn": (cnn, 40)}


def get_config(model: str = "mlp"):
  if model not in _MODELS:
    raise ValueError(f"study_patience.py:{model}: choose one of {sorted(_MODELS)}, e.g. :mlp")
  module, num_epochs = _MODELS[model]
  config = module.get_config()
  config.num_epochs = num_epochs
  config.early_stopping.enabled = False
  return config
