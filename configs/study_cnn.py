"""Study B, study 6: CNNs: dropout and batch norm in the tuned CNN (B4).

configs/cnn.py's CNN with every combination of convolution dropout (none /
0.25 after each pool) and batch norm (off / on): two programs (batch norm off / on),
each training both dropout settings as members. The deck's
other CNN comparisons are whole configs, compared per class with
fmnist_jax.analysis: convolutions against the tuned MLP (B2), and the stacked
residual CNN (B5):

  python launch.py --config=configs/study_cnn.py  # four B4-sized members, 62 min on 2 cores
  python -m fmnist_jax.analysis runs/mlp_2hidden runs/cnn runs/resnet --out=runs/study_cnn_compare
"""

from configs import cnn


def get_config():
  config = cnn.get_config()
  config.sweep.grid = "model.conv_dropout_rates=0.0,0.25; model.batch_norm=False,True"
  return config
